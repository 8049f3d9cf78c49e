//! The database a command talks to: `DATABASE_URL`, or the embedded
//! default (see `embedded.rs`), which is stopped again when the command ends.

use nexus_pipeline::ModelSet;
use tokio_postgres::Client;

use crate::config::Config;
use crate::embedded::{EmbeddedError, EmbeddedPg};
use crate::exit;

pub struct Database {
    pub url: String,
    embedded: Option<EmbeddedPg>,
    /// How long connecting retries while the server is out of reach.
    retry: std::time::Duration,
    /// The connection that checked `DATABASE_URL`, for the first `connect`.
    checked: std::sync::Mutex<Option<Client>>,
}

impl Database {
    pub async fn open(config: &Config) -> anyhow::Result<Database> {
        if let Some(url) = &config.database_url {
            // A wrong URL, password or port fails here, at once and saying
            // so, rather than after a window of retries.
            use nexus_loaders::pg::{FirstContact, first_contact};
            let checked = match first_contact(url, config.db_retry).await {
                Ok(c) => c,
                Err(e @ FirstContact::Config(_)) => {
                    return Err(exit::usage(format!("DATABASE_URL: {e}")));
                }
                Err(e @ FirstContact::Unreachable(_)) => {
                    return Err(exit::failed(format!("DATABASE_URL: {e}")));
                }
            };
            return Ok(Database {
                url: url.clone(),
                embedded: None,
                retry: config.db_retry,
                checked: std::sync::Mutex::new(Some(checked)),
            });
        }
        let dir = config.data_dir.clone();
        let pg = tokio::task::spawn_blocking(move || EmbeddedPg::start(&dir)).await?;
        match pg {
            Ok(pg) => Ok(Database {
                url: pg.url.clone(),
                embedded: Some(pg),
                retry: config.db_retry,
                checked: Default::default(),
            }),
            Err(e @ EmbeddedError::NoBinaries) => Err(exit::usage(e.to_string())),
            Err(e) => Err(exit::failed(e.to_string())),
        }
    }

    pub async fn connect(&self) -> anyhow::Result<Client> {
        let checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(c) = checked.filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        nexus_loaders::pg::connect_retrying(&self.url, self.retry)
            .await
            .map_err(|e| {
                exit::failed(format!(
                    "cannot connect to PostgreSQL: {}",
                    nexus_loaders::pg::describe(&e)
                ))
            })
    }

    pub async fn close(self) {
        if let Some(pg) = self.embedded {
            pg.stop().await;
        }
    }
}

/// The model set in force: `NEXUS_MODELS`, or the built-in models.
pub fn models(config: &Config) -> anyhow::Result<ModelSet> {
    match &config.models {
        Some(path) => ModelSet::from_path(path).map_err(|e| exit::usage(e.to_string())),
        None => Ok(ModelSet::builtin()),
    }
}
