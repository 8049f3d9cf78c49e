//! The cache's rows made from the batches a load committed, instead of
//! reading them back: a row's JSON is what `row_to_json` prints for it
//! (nexus_pipeline's `row_json`), which holds when the table stores
//! exactly what the batch sent. That is checked once per load in the
//! catalog: a plain table, no triggers of its own (they could change a
//! row), every column either loaded with the model's type or — appends
//! only — left out without a default (so NULL). Otherwise the stage reads
//! rows back as `row_to_json` prints them. Where a batch's rows were not
//! kept (write-behind beyond its byte budget), the rows are read back in
//! binary, in the batch's layout, and printed the same way: the server's
//! binary form prints as `row_to_json` does too (tests/row_json_differential.rs),
//! at a fraction of the server's work.

use bytes::Bytes;
use nexus_pipeline::batch::EncodedRow;
use nexus_pipeline::row_json::RowJson;
use nexus_pipeline::types::{ColumnType, quote_ident};
use tokio_postgres::GenericClient;
use tokio_postgres::types::{FromSql, Type};

use super::keys;

/// How a load's rows print, if its batches say all of it; `None` when the
/// table may store something else.
pub async fn row_json(
    db: &impl GenericClient,
    table: &str,
    columns: &[String],
    types: &[ColumnType],
    upsert: bool,
) -> Result<Option<RowJson>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                    c.relkind = 'r'
                      AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
             FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
             WHERE c.oid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&table],
        )
        .await?;
    let mut shape = Vec::with_capacity(rows.len());
    for r in &rows {
        let (name, ty, defaulted, plain): (String, String, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if !plain {
            return Ok(None);
        }
        let Ok(ty) = ColumnType::parse(&ty) else {
            return Ok(None);
        };
        match columns.iter().position(|c| *c == name) {
            Some(i) if types.get(i) == Some(&ty) => shape.push((name, ty, Some(i))),
            None if !upsert && !defaulted => shape.push((name, ty, None)),
            _ => return Ok(None),
        }
    }
    if shape.iter().filter(|c| c.2.is_some()).count() != columns.len() {
        return Ok(None);
    }
    Ok(Some(RowJson::new(
        shape.iter().map(|(n, ty, f)| (n.as_str(), *ty, *f)),
    )))
}

/// The query that reads rows back in a batch's layout: the load's COPY
/// `columns` of `table`, for the keys in `$1` (as text).
pub fn read_back_sql(
    table: &str,
    columns: &[String],
    key_column: &str,
    key_type: ColumnType,
) -> String {
    let columns: Vec<String> = columns
        .iter()
        .map(|c| format!("t.{}", quote_ident(c)))
        .collect();
    format!(
        "SELECT {} FROM {table} t WHERE t.{} = ANY($1::text[]::{key_type}[])",
        columns.join(", "),
        quote_ident(key_column)
    )
}

/// A column's value as the server sent it, whatever its type.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A committed batch's rows, for the cache to print.
pub struct BatchRows {
    pub body: Bytes,
    pub rows: Vec<EncodedRow>,
    /// Rows the database refused (indices into `rows`, in order).
    pub refused: Vec<u32>,
}

/// A key and the Redis value it is to hold: the write's version head and
/// the row's JSON, or the head alone (a tombstone).
pub type Entry = (String, Vec<u8>);

impl BatchRows {
    /// The committed rows of `keys`, read with `select` (from
    /// [`read_back_sql`]) in binary and laid out as a batch's COPY rows
    /// (those past 4 GiB of them are left out, their keys then hold
    /// tombstones).
    pub async fn read_back(
        db: &impl GenericClient,
        select: &str,
        keys: &[String],
    ) -> Result<BatchRows, tokio_postgres::Error> {
        let found = db.query(select, &[&keys]).await?;
        let mut body = Vec::new();
        let mut rows = Vec::with_capacity(found.len());
        for (i, row) in found.iter().enumerate() {
            let Ok(start) = u32::try_from(body.len()) else {
                break;
            };
            // At most 1,600 columns, each value at most 1 GB.
            body.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for c in 0..row.len() {
                match row.try_get::<_, Raw>(c)?.0 {
                    None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        body.extend_from_slice(v);
                    }
                }
            }
            let Ok(end) = u32::try_from(body.len()) else {
                break;
            };
            rows.push(EncodedRow {
                start,
                end,
                record: i as u32,
            });
        }
        Ok(BatchRows {
            body: body.into(),
            rows,
            refused: Vec::new(),
        })
    }

    /// Every key of the batch with its row as committed: for a key loaded
    /// twice, the last row (an upsert keeps it; an append refuses the
    /// second); keys whose rows were all refused, or whose JSON cannot be
    /// made, get a tombstone. Each value starts with `head`. Ordered by
    /// key length, then key.
    pub fn entries(
        &self,
        json: &RowJson,
        key_field: usize,
        key_type: ColumnType,
        head: &[u8],
    ) -> Vec<Entry> {
        let mut refused = self.refused.iter().peekable();
        let mut entries: Vec<(String, u32, Vec<u8>)> = Vec::with_capacity(self.rows.len());
        for (i, r) in self.rows.iter().enumerate() {
            let Some(row) = self.body.get(r.start as usize..r.end as usize) else {
                continue;
            };
            let Some(key) = keys::from_binary_row(row, key_field, key_type) else {
                continue;
            };
            while refused.next_if(|&&x| (x as usize) < i).is_some() {}
            if refused.next_if(|&&x| x as usize == i).is_some() {
                entries.push((key, 0, head.to_vec()));
                continue;
            }
            let mut value = Vec::with_capacity(head.len() + 2 * row.len() + 64);
            value.extend_from_slice(head);
            if json.write(row, &mut value).is_err() {
                value.truncate(head.len());
            }
            // Committed rows rank above refused ones, later above earlier.
            entries.push((key, i as u32 + 1, value));
        }
        // By length, then bytes: for canonical integer keys that is their
        // numeric order, so a batch of ascending ids is sorted already
        // (the sort then only checks it).
        entries.sort_unstable_by(|a, b| {
            (a.0.len(), &a.0)
                .cmp(&(b.0.len(), &b.0))
                .then(b.1.cmp(&a.1))
        });
        entries.dedup_by(|later, kept| later.0 == kept.0);
        entries.into_iter().map(|(k, _, j)| (k, j)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, name: &str) -> Vec<u8> {
        let mut r = vec![0, 2];
        r.extend_from_slice(&8i32.to_be_bytes());
        r.extend_from_slice(&id.to_be_bytes());
        r.extend_from_slice(&(name.len() as i32).to_be_bytes());
        r.extend_from_slice(name.as_bytes());
        r
    }

    #[test]
    fn the_last_committed_row_of_a_key_wins_and_refused_keys_are_dropped() {
        let mut body = Vec::new();
        let mut rows = Vec::new();
        for (i, (id, name)) in [(1, "a"), (2, "b"), (1, "c"), (3, "d"), (2, "e")]
            .iter()
            .enumerate()
        {
            let start = body.len() as u32;
            body.extend_from_slice(&row(*id, name));
            rows.push(EncodedRow {
                start,
                end: body.len() as u32,
                record: i as u32,
            });
        }
        // The second row of key 2 and the only row of key 3 were refused.
        let batch = BatchRows {
            body: Bytes::from(body),
            rows,
            refused: vec![3, 4],
        };
        let json = RowJson::new([
            ("id", ColumnType::BigInt, Some(0)),
            ("name", ColumnType::Text, Some(1)),
        ]);
        let entries = batch.entries(&json, 0, ColumnType::BigInt, b"7|");
        let got: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.0.clone(), String::from_utf8_lossy(&e.1).into_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1".into(), r#"7|{"id":1,"name":"c"}"#.into()),
                ("2".into(), r#"7|{"id":2,"name":"b"}"#.into()),
                ("3".into(), "7|".into()),
            ]
        );
    }
}
