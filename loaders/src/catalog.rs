//! Models and tables, both ways: a model derived from an existing table's
//! catalog entry (`load --table`, `models import`), and a table created from
//! a model (`migrate`). Names reach SQL only as bind parameters or quoted
//! identifiers.

use nexus_pipeline::model::{ColumnDef, ModelDef};
use nexus_pipeline::types::{ColumnType, quote_ident};
use nexus_pipeline::{Model, ModelError};
use tokio_postgres::Client;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("table `{0}` does not exist")]
    NoSuchTable(String),
    #[error("table `{table}`: column `{column}` has type {ty}, which Nexus cannot load")]
    Unsupported {
        table: String,
        column: String,
        ty: String,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Splits `schema.table` (or `table`, in the current schema).
pub fn split_name(name: &str) -> (Option<&str>, &str) {
    match name.split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, name),
    }
}

/// Builds a model definition from the catalog entry of `name`.
pub async fn model_def_from_table(client: &Client, name: &str) -> Result<ModelDef, CatalogError> {
    let (schema, table) = split_name(name);
    let rows = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.atthasdef, a.attidentity::text, a.attgenerated::text, n.nspname
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = coalesce($1, current_schema()) AND c.relname = $2
               AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await?;
    if rows.is_empty() {
        return Err(CatalogError::NoSuchTable(name.to_string()));
    }
    let nspname: String = rows[0].get(6);
    let mut columns = Vec::new();
    for r in &rows {
        let (col, ty): (String, String) = (r.get(0), r.get(1));
        let (notnull, hasdef): (bool, bool) = (r.get(2), r.get(3));
        let (identity, generated): (String, String) = (r.get(4), r.get(5));
        if !generated.is_empty() || identity == "a" {
            continue; // the server computes these; COPY may not set them
        }
        let parsed = ColumnType::parse(&ty).map_err(|_| CatalogError::Unsupported {
            table: name.to_string(),
            column: col.clone(),
            ty: ty.clone(),
        })?;
        columns.push(ColumnDef {
            name: col,
            ty: parsed.to_string(),
            required: (notnull && !hasdef && identity.is_empty()).then_some(true),
            ..Default::default()
        });
    }
    let key: Vec<String> = client
        .query(
            "SELECT a.attname
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&nspname, &table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(ModelDef {
        table: format!("{nspname}.{table}"),
        key,
        batch_size: Some(5000),
        columns,
        ..Default::default()
    })
}

/// The model of an existing table, named `schema.table`.
/// The name jobs and the loaded-file ledger know a table by when it is
/// loaded by its columns (`--table`), apart from any model's name.
pub fn table_key(model: &Model) -> String {
    format!("{TABLE_KEY_PREFIX}{}", model.def.table)
}

/// What [`table_key`] puts before the table's name.
pub const TABLE_KEY_PREFIX: &str = "table:";

pub async fn model_from_table(client: &Client, name: &str) -> Result<Model, CatalogError> {
    let def = model_def_from_table(client, name).await?;
    let model_name = def.table.clone();
    Ok(Model::from_def(&model_name, def)?)
}

/// Whether the model's table exists.
pub async fn table_exists(client: &Client, model: &Model) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&model.qualified_table()],
        )
        .await?;
    Ok(row.get(0))
}

/// `CREATE TABLE IF NOT EXISTS` for a model (and its schema).
pub fn create_table_sql(model: &Model) -> String {
    let mut sql = String::new();
    if let Some(s) = &model.schema {
        sql.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS {};\n",
            quote_ident(s)
        ));
    }
    let mut parts: Vec<String> = model
        .columns
        .iter()
        .map(|c| {
            format!(
                "    {} {}{}",
                quote_ident(&c.name),
                c.ty,
                if c.required { " NOT NULL" } else { "" }
            )
        })
        .collect();
    if !model.key.is_empty() {
        let key: Vec<String> = model.key.iter().map(|k| quote_ident(k)).collect();
        parts.push(format!("    PRIMARY KEY ({})", key.join(", ")));
    }
    sql.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n)",
        model.qualified_table(),
        parts.join(",\n")
    ));
    sql
}

/// An arbitrary, fixed advisory-lock key for creating model tables ("NXCT").
const CREATE_LOCK_KEY: i64 = 0x4e58_4354;

/// Creates the model's table when it does not exist yet. Two loads that
/// start at once would both try (`IF NOT EXISTS` does not serialise them:
/// the loser fails on the catalog's unique index; so would two creating one
/// schema), so creation is done in a transaction under one advisory lock.
pub async fn ensure_table(client: &mut Client, model: &Model) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK_KEY])
        .await?;
    tx.batch_execute(&create_table_sql(model)).await?;
    tx.commit().await
}
