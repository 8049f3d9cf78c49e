//! Unique conflicts found in one pass. A batch that breaks a unique index
//! (a re-load of rows already there, duplicate keys in the file) would
//! otherwise be bisected down to single rows — thousands of COPYs for a
//! batch of duplicates. Instead the batch is copied into a temporary table
//! with each row's index, and one query names every row that collides with
//! the table or with an earlier row of the batch on that index; those rows
//! are rejected with the index's name and key, and the rest is COPYed in
//! one go. Whatever else goes wrong is still narrowed by bisection
//! (`writer.rs`).
//!
//! Only plain unique indexes qualify (no predicate, no expressions, NULLs
//! distinct, every column loaded): for them "equal key, no NULL" is exactly
//! the index's notion of a conflict. An index on one integer or uuid
//! column — whose binary form is its identity — needs no temporary table:
//! its keys are read from the COPY body, compared with each other in
//! memory, and looked up in the table with one array query.

use std::collections::HashSet;

use nexus_pipeline::types::ColumnType;

use nexus_pipeline::batch::EncodedRow;
use nexus_pipeline::encode::{COPY_HEADER, COPY_TRAILER, put_i32};
use nexus_pipeline::types::quote_ident;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// The temporary table a batch is probed in.
const PROBE: &str = "nexus_probe";
/// Its extra column: the row's index in the batch.
const ROW_COL: &str = "__nexus_row";

/// A unique index whose conflicts can be found by a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueIndex {
    pub name: String,
    pub columns: Vec<String>,
    /// For a one-column integer or uuid index: the column's position in
    /// the COPY and its type (see [`probe_keys`]).
    pub by_key: Option<(usize, ColumnType)>,
}

/// The plain unique index `name` on `table`, if it is one whose columns
/// are all among `loaded`.
pub async fn lookup(
    client: &Client,
    table: &str,
    name: &str,
    loaded: &[String],
    types: &[ColumnType],
) -> Result<Option<UniqueIndex>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                    AND NOT coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false),
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(n, o)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                          ORDER BY k.o)
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = $1::text::regclass AND c.relname = $2",
            &[&table, &name],
        )
        .await?;
    Ok(row.and_then(|r| {
        let plain: bool = r.get(0);
        let columns: Vec<String> = r.get(1);
        if !plain || columns.is_empty() || !columns.iter().all(|c| loaded.contains(c)) {
            return None;
        }
        let by_key = match columns.as_slice() {
            [one] => loaded.iter().position(|c| c == one).and_then(|at| {
                let ty = types[at];
                matches!(
                    ty,
                    ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt | ColumnType::Uuid
                )
                .then_some((at, ty))
            }),
            _ => None,
        };
        Some(UniqueIndex {
            name: name.to_string(),
            columns,
            by_key,
        })
    }))
}

/// Readies the (empty) probe table for `columns` of `table`, inside the
/// probe's savepoint: made on a session's first probe rather than when it
/// connects (most loads never probe, and a first temporary table costs a
/// new backend tens of milliseconds of catalog work), and made again after
/// a rollback took it away. `SET LOCAL` keeps the server's "already
/// exists" notices off the log.
pub fn probe_table_sql(table: &str, columns: &[String]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "SET LOCAL client_min_messages = warning;
         CREATE TEMP TABLE IF NOT EXISTS {PROBE} AS
             SELECT {}, 0::int4 AS {ROW_COL} FROM {table} WITH NO DATA;
         TRUNCATE pg_temp.{PROBE}",
        cols.join(", ")
    )
}

/// The COPY that fills the probe table.
pub fn probe_copy_sql(columns: &[String]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "COPY pg_temp.{PROBE} ({}, {ROW_COL}) FROM STDIN (FORMAT binary)",
        cols.join(", ")
    )
}

/// A COPY body of the rows `which` of `body`, each with its index appended.
pub fn probe_body(body: &[u8], rows: &[EncodedRow], which: &[u32]) -> Vec<u8> {
    let size: usize = which
        .iter()
        .map(|&i| (rows[i as usize].end - rows[i as usize].start) as usize + 8)
        .sum();
    let mut out = Vec::with_capacity(COPY_HEADER.len() + size + COPY_TRAILER.len());
    out.extend_from_slice(COPY_HEADER);
    for &i in which {
        let r = rows[i as usize];
        let row = &body[r.start as usize..r.end as usize];
        let fields = i16::from_be_bytes([row[0], row[1]]) + 1;
        out.extend_from_slice(&fields.to_be_bytes());
        out.extend_from_slice(&row[2..]);
        put_i32(&mut out, 4);
        put_i32(&mut out, i as i32);
    }
    out.extend_from_slice(COPY_TRAILER);
    out
}

/// The probe: rows (of those now in the probe table) whose key has no NULL
/// and equals a row of `table` or of an earlier row in the batch, each
/// with PostgreSQL's wording of the conflict. Two semi-joins, not one
/// `EXISTS … OR EXISTS …`, which PostgreSQL runs as a subplan per row
/// (quadratic in the batch).
pub fn conflicts_sql(table: &str, index: &UniqueIndex) -> String {
    let cols: Vec<String> = index.columns.iter().map(|c| quote_ident(c)).collect();
    let eq = |a: &str, b: &str| {
        cols.iter()
            .map(|c| format!("{a}.{c} = {b}.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let not_null: Vec<String> = cols.iter().map(|c| format!("s.{c} IS NOT NULL")).collect();
    let values: Vec<String> = cols.iter().map(|c| format!("s.{c}::text")).collect();
    let select = format!(
        "SELECT s.{ROW_COL}, 'duplicate key value violates unique constraint \"' || $1::text
                || '\": Key (' || $2::text || ')=(' || concat_ws(', ', {values}) || ') already exists.'
         FROM pg_temp.{PROBE} s WHERE {not_null}",
        values = values.join(", "),
        not_null = not_null.join(" AND "),
    );
    format!(
        "{select} AND EXISTS (SELECT 1 FROM {table} t WHERE {in_table})
         UNION
         {select} AND EXISTS (SELECT 1 FROM pg_temp.{PROBE} p WHERE {in_batch} AND p.{ROW_COL} < s.{ROW_COL})",
        in_table = eq("t", "s"),
        in_batch = eq("p", "s"),
    )
}

/// The key columns as PostgreSQL lists them in a conflict's detail.
pub fn key_list(index: &UniqueIndex) -> String {
    index.columns.join(", ")
}

/// Where the keys of a one-column index that the table holds can lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBounds {
    /// Anywhere (a uuid, or not known).
    Any,
    /// Nowhere: the table is empty.
    Empty,
    /// Between these integers.
    Within(i64, i64),
}

/// The bounds of an integer index's keys in `table` now.
pub async fn key_bounds(
    client: &Client,
    table: &str,
    index: &UniqueIndex,
) -> Result<KeyBounds, tokio_postgres::Error> {
    if !matches!(index.by_key, Some((_, ty)) if ty != ColumnType::Uuid) {
        return Ok(KeyBounds::Any);
    }
    let col = quote_ident(&index.columns[0]);
    let row = client
        .query_one(
            &format!("SELECT min({col})::int8, max({col})::int8 FROM {table}"),
            &[],
        )
        .await?;
    Ok(match (row.get(0), row.get(1)) {
        (Some(min), Some(max)) => KeyBounds::Within(min, max),
        _ => KeyBounds::Empty,
    })
}

/// Finds the rows of `which` whose key (field `at`, of type `ty`, of an
/// index on one integer or uuid column) equals a row of `table` or an
/// earlier row of the batch: their indices and PostgreSQL's wording. Keys
/// outside `bounds` are not looked up in the table: with keys that grow
/// (the common case) a batch of new rows needs no lookup at all.
pub async fn probe_keys(
    client: &Client,
    table: &str,
    index: &UniqueIndex,
    bounds: KeyBounds,
    body: &[u8],
    rows: &[EncodedRow],
    which: &[u32],
) -> Result<Vec<(u32, String)>, tokio_postgres::Error> {
    let Some((at, ty)) = index.by_key else {
        return Ok(Vec::new());
    };
    let mut keys: Vec<(u32, &[u8])> = Vec::with_capacity(which.len());
    for &i in which {
        let r = rows[i as usize];
        // A key of another width than its type's is left to the COPY.
        if let Some(key) = field(&body[r.start as usize..r.end as usize], at)
            && key.len() == key_width(ty)
        {
            keys.push((i, key));
        }
    }
    let message = |key: &[u8]| {
        format!(
            "duplicate key value violates unique constraint \"{}\": Key ({})=({}) already exists.",
            index.name,
            index.columns[0],
            key_text(ty, key)
        )
    };
    let mut found = Vec::new();
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(keys.len());
    let mut unique: Vec<(u32, &[u8])> = Vec::with_capacity(keys.len());
    for &(i, key) in &keys {
        if !seen.insert(key) {
            found.push((i, message(key)));
        } else {
            unique.push((i, key));
        }
    }
    let col = quote_ident(&index.columns[0]);
    match bounds {
        KeyBounds::Any => {}
        KeyBounds::Empty => return Ok(found),
        KeyBounds::Within(min, max) => {
            unique.retain(|(_, k)| (min..=max).contains(&int_key(k)));
            if unique.is_empty() {
                return Ok(found);
            }
        }
    }
    let sql = format!(
        "SELECT u.o::int4 FROM unnest($1::{ty}[]) WITH ORDINALITY AS u(k, o)
         WHERE EXISTS (SELECT 1 FROM {table} t WHERE t.{col} = u.k)",
        ty = ty.input_type().0,
    );
    let values = key_values(ty, &unique);
    let values: &(dyn ToSql + Sync) = values.as_ref();
    for hit in client.query(&sql, &[values]).await? {
        let ordinal = hit.get::<_, i32>(0) as usize;
        if let Some(&(i, key)) = ordinal.checked_sub(1).and_then(|o| unique.get(o)) {
            found.push((i, message(key)));
        }
    }
    Ok(found)
}

/// Field `at` of a binary COPY row; `None` for NULL.
fn field(row: &[u8], at: usize) -> Option<&[u8]> {
    let mut p = 2;
    for k in 0..=at {
        let len = i32::from_be_bytes(row.get(p..p + 4)?.try_into().ok()?);
        p += 4;
        if len < 0 {
            if k == at {
                return None;
            }
            continue;
        }
        if k == at {
            return row.get(p..p + len as usize);
        }
        p += len as usize;
    }
    None
}

/// The width of a key type's binary form.
fn key_width(ty: ColumnType) -> usize {
    match ty {
        ColumnType::SmallInt => 2,
        ColumnType::Int => 4,
        ColumnType::BigInt => 8,
        _ => 16,
    }
}

/// A big-endian integer field of 2, 4 or 8 bytes.
fn int_key(k: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b[8 - k.len()..].copy_from_slice(k);
    // Sign-extend from the field's width.
    let shift = 64 - 8 * k.len() as u32;
    (i64::from_be_bytes(b) << shift) >> shift
}

/// The keys as a typed array parameter.
fn key_values(ty: ColumnType, keys: &[(u32, &[u8])]) -> Box<dyn ToSql + Sync + Send> {
    match ty {
        ColumnType::SmallInt => Box::new(
            keys.iter()
                .map(|(_, k)| int_key(k) as i16)
                .collect::<Vec<_>>(),
        ),
        ColumnType::Int => Box::new(
            keys.iter()
                .map(|(_, k)| int_key(k) as i32)
                .collect::<Vec<_>>(),
        ),
        ColumnType::BigInt => Box::new(keys.iter().map(|(_, k)| int_key(k)).collect::<Vec<_>>()),
        _ => Box::new(
            keys.iter()
                .map(|(_, k)| uuid::Uuid::from_slice(k).unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
    }
}

/// A key as PostgreSQL prints it.
fn key_text(ty: ColumnType, key: &[u8]) -> String {
    match ty {
        ColumnType::Uuid => uuid::Uuid::from_slice(key)
            .map(|u| u.to_string())
            .unwrap_or_default(),
        _ => int_key(key).to_string(),
    }
}
