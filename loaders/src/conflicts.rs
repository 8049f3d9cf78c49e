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
//! the index's notion of a conflict.

use nexus_pipeline::batch::EncodedRow;
use nexus_pipeline::encode::{COPY_HEADER, COPY_TRAILER, put_i32};
use nexus_pipeline::types::quote_ident;
use tokio_postgres::Client;

/// The temporary table a batch is probed in.
const PROBE: &str = "nexus_probe";
/// Its extra column: the row's index in the batch.
const ROW_COL: &str = "__nexus_row";

/// A unique index whose conflicts can be found by a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueIndex {
    pub name: String,
    pub columns: Vec<String>,
}

/// The plain unique index `name` on `table`, if it is one whose columns
/// are all among `loaded`.
pub async fn lookup(
    client: &Client,
    table: &str,
    name: &str,
    loaded: &[String],
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
        (plain && !columns.is_empty() && columns.iter().all(|c| loaded.contains(c))).then(|| {
            UniqueIndex {
                name: name.to_string(),
                columns,
            }
        })
    }))
}

/// The SQL that creates the probe table for `columns` of `table`.
pub fn probe_table_sql(table: &str, columns: &[String]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {PROBE} AS SELECT {} FROM {table} WITH NO DATA;
         ALTER TABLE pg_temp.{PROBE} ADD COLUMN IF NOT EXISTS {ROW_COL} int4",
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

/// Empties the probe table between batches.
pub const PROBE_TRUNCATE: &str = "TRUNCATE pg_temp.nexus_probe";

/// The key columns as PostgreSQL lists them in a conflict's detail.
pub fn key_list(index: &UniqueIndex) -> String {
    index.columns.join(", ")
}
