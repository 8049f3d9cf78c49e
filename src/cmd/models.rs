//! `nexus models` (list, show, check, import) and `nexus migrate`.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use nexus_loaders::catalog;
use nexus_pipeline::ModelSet;
use nexus_pipeline::model::ModelFile;

use crate::config::Config;
use crate::db::{self, Database};
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The models in force (NEXUS_MODELS, or the built-in ones).
    List,
    /// One model, as TOML.
    Show { model: String },
    /// Check a model file (default: the one in force).
    Check { file: Option<PathBuf> },
    /// Print a model file derived from an existing table.
    Import {
        #[arg(long)]
        table: String,
    },
}

pub async fn run(config: &Config, command: ModelsCommand) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match command {
        ModelsCommand::List => {
            let models = db::models(config)?;
            writeln!(
                out,
                "{:<24}  {:<28}  {:<12}  {:>6}  {:<14}  {:>6}  columns",
                "model", "table", "key", "batch", "cache", "ttl"
            )?;
            for m in models.iter() {
                writeln!(
                    out,
                    "{:<24}  {:<28}  {:<12}  {:>6}  {:<14}  {:>6}  {}",
                    m.name,
                    m.def.table,
                    m.key.join(","),
                    m.batch_size,
                    m.cache.strategy.as_str(),
                    m.cache_ttl_text(),
                    m.columns.len()
                )?;
            }
        }
        ModelsCommand::Show { model } => {
            let m = db::models(config)?
                .get(&model)
                .map_err(|e| exit::usage(e.to_string()))?;
            write!(out, "{}", m.to_toml())?;
        }
        ModelsCommand::Check { file } => {
            let (set, what) = match file.or_else(|| config.models.clone()) {
                Some(p) => (ModelSet::from_path(&p), p.display().to_string()),
                None => (Ok(ModelSet::builtin()), "built-in models".to_string()),
            };
            match set {
                Ok(set) => writeln!(out, "ok: {what}: {} models", set.iter().count())?,
                Err(e) => return Err(exit::failed(format!("{what}: {e}"))),
            }
        }
        ModelsCommand::Import { table } => {
            let database = Database::open(config).await?;
            let result = async {
                let client = database.connect().await?;
                let def = catalog::model_def_from_table(&client, &table)
                    .await
                    .map_err(|e| match e {
                        catalog::CatalogError::Db(e) => {
                            exit::failed(nexus_loaders::pg::describe(&e))
                        }
                        other => exit::usage(other.to_string()),
                    })?;
                let name = catalog::split_name(&def.table).1.to_string();
                let mut file = ModelFile::default();
                file.models.insert(name, def);
                Ok::<_, anyhow::Error>(toml::to_string_pretty(&file)?)
            }
            .await;
            database.close().await;
            write!(out, "{}", result?)?;
        }
    }
    Ok(0)
}

/// Applies the schema migrations and creates the model tables.
pub async fn migrate(config: &Config, schema_only: bool) -> anyhow::Result<u8> {
    let models = db::models(config)?;
    let database = Database::open(config).await?;
    let result = async {
        let mut client = database.connect().await?;
        let applied = nexus_loaders::migrate::migrate(&mut client).await?;
        let mut out = std::io::stdout().lock();
        match applied.as_slice() {
            [] => writeln!(out, "schema nexus is up to date")?,
            v => writeln!(out, "schema nexus: applied migrations {v:?}")?,
        }
        if !schema_only {
            for m in models.iter() {
                catalog::ensure_table(&mut client, m).await?;
                writeln!(
                    out,
                    "table {} ready (model {})",
                    m.qualified_table(),
                    m.name
                )?;
            }
        }
        Ok(0)
    }
    .await;
    database.close().await;
    result
}
