//! `nexus mcp`: the MCP server over stdio, for a desktop assistant that
//! launches it. It acts for the launching user as an admin of the local
//! installation (the same configuration as the CLI), runs loads in this
//! process as `nexus load` does, and publishes their progress like a
//! server, so dashboards and WebSocket clients see them too. When the
//! client goes (or on SIGTERM), running loads stop at a batch boundary and
//! resume when the same file is loaded again.

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::background::Background;
use crate::config::Config;
use crate::db::{self, Database};
use crate::events::{ProgressBus, publish_progress, spawn_listeners};
use crate::exit;
use crate::jobs::progress::Hub;
use crate::mcp::{Channel, McpCore, NexusMcp};

/// How long running loads may take to reach a batch boundary at the end.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> anyhow::Result<u8> {
    let models = db::models(&config)?;
    let database = Database::open(&config).await?;
    let result = serve_stdio(config, &database, models).await;
    database.close().await;
    result
}

async fn serve_stdio(
    config: Config,
    database: &Database,
    models: nexus_pipeline::ModelSet,
) -> anyhow::Result<u8> {
    let mut control = database.connect().await?;
    nexus_loaders::migrate::migrate(&mut control).await?;
    drop(control);
    let pool = super::serve::pool(&database.url, &config)?;
    let caches = Arc::new(crate::read_cache::ReadCaches::new());
    let cache = super::cache::open(&config, false, caches.listening.clone())?;
    let hub = Arc::new(Hub::new(config.ws_event_buffer));
    let bus = Arc::new(ProgressBus::new(&cache, pool.clone()));
    let background = Background::default();
    spawn_listeners(
        &background,
        hub.clone(),
        caches,
        cache.clone(),
        database.url.clone(),
        &bus,
    );
    background.spawn(publish_progress(hub.clone(), bus));
    let storage = config
        .storage
        .open(&config.data_dir)
        .map_err(|e| exit::failed(format!("upload storage {}: {e}", config.storage)))?;
    let loads = TaskTracker::new();
    let interrupt = CancellationToken::new();
    let core = Arc::new(McpCore {
        pool: pool.clone(),
        models: Arc::new(models),
        cache: cache.clone(),
        hub,
        storage,
        config: Arc::new(config),
        database_url: database.url.clone(),
        channel: Channel::Stdio {
            owner: super::load::local_owner("mcp"),
            loads: loads.clone(),
            interrupt: interrupt.clone(),
        },
    });
    let service = NexusMcp::new(core)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| exit::failed(format!("MCP over stdio: {e}")))?;
    let stop = service.cancellation_token();
    tokio::select! {
        ended = service.waiting() => {
            if let Err(e) = ended {
                tracing::warn!(error = %e, "the MCP session ended with an error");
            }
        }
        _ = super::serve::shutdown_signal() => stop.cancel(),
    }
    interrupt.cancel();
    loads.close();
    if tokio::time::timeout(STOP_GRACE, loads.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "running loads did not stop within {STOP_GRACE:?}; they resume when loaded again"
        );
    }
    super::cache::finish(&cache, database).await?;
    if !background.stop(STOP_GRACE).await {
        tracing::warn!("background tasks did not stop within {STOP_GRACE:?}");
    }
    pool.close();
    Ok(0)
}
