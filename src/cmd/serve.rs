//! `nexus serve`: checks its configuration, migrates, makes sure there is an
//! admin, and serves HTTP until SIGTERM/SIGINT, then stops accepting and
//! lets in-flight requests finish within a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Args;
use rand::RngCore;

use crate::api::{self, AppState, middleware};
use crate::auth::store::{self, Audit};
use crate::auth::{Role, passwords, tokens::Keys};
use crate::background::Background;
use crate::config::Config;
use crate::db::{self, Database};
use crate::events::{ProgressBus, spawn_listeners};
use crate::exit;
use crate::jobs::worker::WorkerContext;
use tokio_util::sync::CancellationToken;

/// What a server with no administrator says at startup.
pub const NO_ADMIN_HINT: &str = "nexus: no administrator exists yet, so nobody can log in: create one with \
     `nexus user add admin --role admin --password-stdin` (the password on stdin), \
     or set NEXUS_ADMIN_PASSWORD and start the server again";

/// How long in-flight requests may run on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address (overrides NEXUS_BIND).
    #[arg(long)]
    bind: Option<String>,
    /// Development mode: a random token secret if none is configured.
    #[arg(long)]
    dev: bool,
}

fn secret(config: &Config, dev: bool) -> anyhow::Result<Vec<u8>> {
    match &config.jwt_secret {
        Some(s) if s.len() >= 32 => Ok(s.as_bytes().to_vec()),
        Some(_) if !dev => Err(exit::usage(
            "NEXUS_JWT_SECRET is shorter than 32 bytes; use a long random secret (e.g. `openssl rand -base64 48`)",
        )),
        None if !dev => Err(exit::usage(
            "NEXUS_JWT_SECRET is not set; set a random secret of at least 32 bytes, or run `nexus serve --dev` for local development",
        )),
        _ => {
            tracing::warn!("--dev: using a random token secret; tokens do not survive a restart");
            let mut s = [0u8; 48];
            rand::rng().fill_bytes(&mut s);
            Ok(base64::engine::general_purpose::STANDARD
                .encode(s)
                .into_bytes())
        }
    }
}

pub async fn run(config: Config, args: ServeArgs) -> anyhow::Result<u8> {
    let secret = secret(&config, args.dev)?;
    let bind = args.bind.clone().unwrap_or_else(|| config.bind.clone());
    let addr: SocketAddr = bind
        .parse()
        .map_err(|_| exit::usage(format!("bind address `{bind}` is not host:port")))?;
    let models = db::models(&config)?;
    let database = Database::open(&config).await?;
    let result = serve(config, database.url.clone(), secret, addr, models).await;
    database.close().await;
    result
}

async fn serve(
    config: Config,
    url: String,
    secret: Vec<u8>,
    addr: SocketAddr,
    models: nexus_pipeline::ModelSet,
) -> anyhow::Result<u8> {
    let mut control = nexus_loaders::pg::connect_retrying(&url, config.db_retry)
        .await
        .map_err(|e| {
            exit::failed(format!(
                "cannot connect to PostgreSQL: {}",
                nexus_loaders::pg::describe(&e)
            ))
        })?;
    nexus_loaders::migrate::migrate(&mut control).await?;
    if let Some(pw) = &config.admin_password
        && !store::any_admin(&control).await?
    {
        let hash = passwords::hash(pw.clone()).await?;
        if let Some(id) = store::add_user(&control, "admin", &hash, Role::Admin).await? {
            store::audit(
                &control,
                Audit {
                    event: "user_created",
                    username: Some("admin"),
                    user_id: Some(id),
                    detail: Some("from NEXUS_ADMIN_PASSWORD"),
                    ..Default::default()
                },
            )
            .await?;
            tracing::info!("created user `admin` from NEXUS_ADMIN_PASSWORD");
        }
    }
    if !store::any_admin(&control).await? {
        // Nobody could log in to this server: say how to get in.
        eprintln!("{NO_ADMIN_HINT}");
        tracing::warn!("{NO_ADMIN_HINT}");
    }
    let pool = pool(&url, &config)?;
    let data_dir = config.data_dir.clone();
    let storage = config
        .storage
        .open(&data_dir)
        .map_err(|e| exit::failed(format!("upload storage {}: {e}", config.storage)))?;
    // Durations as histograms (buckets, not a summary's quantiles), so that
    // one p99 can be computed over every server (deploy/prometheus/).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )
        .map_err(|e| exit::failed(format!("metrics: {e}")))?
        .install_recorder()
        .map_err(|e| exit::failed(format!("metrics: {e}")))?;
    nexus_loaders::load::register_metrics(models.iter().map(|m| m.name.as_str()));
    api::health::register_metrics(&models);
    let caches = Arc::new(crate::read_cache::ReadCaches::new());
    let cache = super::cache::open(&config, true, caches.listening.clone())?;
    let ws_event_buffer = config.ws_event_buffer;
    let mcp_roots = crate::mcp::files::Roots::resolve(&config.mcp_roots).map_err(exit::usage)?;
    // The root of every stop: each running job's interrupt is a child of it.
    let shutdown = CancellationToken::new();
    let state = AppState(Arc::new(api::Services {
        pool: pool.clone(),
        limiter: Arc::new(middleware::limiter(config.rate_limit, config.rate_burst)),
        config: Arc::new(config),
        keys: Arc::new(Keys::new(&secret)),
        models: Arc::new(models),
        prometheus,
        started: Instant::now(),
        stats: Arc::new(middleware::HttpStats::new()),
        request_ids: middleware::RequestIds::new(),
        rendered_jobs: api::jobs::RenderedJobs::new(),
        storage,
        queue: Arc::new(tokio::sync::Notify::new()),
        instance: uuid::Uuid::new_v4(),
        database_url: url.clone(),
        hub: Arc::new(crate::jobs::progress::Hub::new(ws_event_buffer)),
        caches,
        cache,
        mcp_roots,
        shutdown: shutdown.clone(),
    }));
    let bus = Arc::new(ProgressBus::new(&state.cache, pool.clone()));
    let background = Background::default();
    spawn_listeners(
        &background,
        state.hub.clone(),
        state.caches.clone(),
        state.cache.clone(),
        url.clone(),
        &bus,
    );
    background.spawn(crate::events::publish_progress(state.hub.clone(), bus));
    drop(control);
    background.spawn(housekeeping(state.clone()));
    background.spawn(middleware::prune_limiter(state.limiter.clone()));
    background.spawn(crate::jobs::retention::sweep_periodically(
        state.storage.clone(),
        pool.clone(),
        state.config.upload_retention,
    ));
    background.spawn(cache_upkeep(state.clone()));
    if let Some(metrics_addr) = state.config.metrics_bind {
        let listener = listen(metrics_addr).map_err(|e| {
            exit::failed(format!(
                "cannot listen on {metrics_addr} (NEXUS_METRICS_BIND): {e}"
            ))
        })?;
        eprintln!(
            "nexus: metrics on http://{}/metrics",
            listener.local_addr()?
        );
        let router = api::metrics_router(state.clone());
        background.spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let tls = match &state.config.tls {
        Some(files) => {
            Some(crate::https::server_config(&files.cert, &files.key).map_err(exit::usage)?)
        }
        None => None,
    };
    let listener =
        listen(addr).map_err(|e| exit::failed(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, https = tls.is_some(), "nexus serving");
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("nexus: listening on {scheme}://{local}");

    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        on_signal.cancel();
    });
    let app = api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let server: futures_util::future::BoxFuture<'static, std::io::Result<()>> = match tls {
        None => Box::pin(
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        ),
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stop = handle.clone();
            let stopping = shutdown.clone();
            tokio::spawn(async move {
                stopping.cancelled().await;
                stop.graceful_shutdown(Some(SHUTDOWN_GRACE));
            });
            let server = axum_server::from_tcp_rustls(
                listener.into_std()?,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )?
            .handle(handle);
            Box::pin(server.serve(app))
        }
    };
    let workers = crate::jobs::worker::spawn(
        WorkerContext {
            pool: state.pool.clone(),
            database_url: state.database_url.clone(),
            models: state.models.clone(),
            storage: state.storage.clone(),
            hub: state.hub.clone(),
            cache: state.cache.clone(),
            queue: state.queue.clone(),
            instance: state.instance,
            lease: state.config.job_lease,
            copy_connections: state.config.copy_connections,
            db_retry: state.config.db_retry,
        },
        state.config.workers,
        shutdown.clone(),
    );
    tokio::select! {
        r = server => r?,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    // Running jobs stop at their next batch boundary and go back to the queue.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, futures_util::future::join_all(workers)).await;
    if !background.stop(SHUTDOWN_GRACE).await {
        tracing::warn!("background tasks did not stop within {SHUTDOWN_GRACE:?}");
    }
    flush_stats(&state).await;
    state.pool.close();
    Ok(0)
}

pub(crate) fn pool(url: &str, config: &Config) -> anyhow::Result<deadpool_postgres::Pool> {
    let database = nexus_loaders::tls::Database::parse(url)
        .map_err(|e| exit::usage(format!("DATABASE_URL: {e}")))?;
    let mut pg = database.config;
    // No statement of a request outlives the request.
    let ours = format!(
        "-c statement_timeout={}",
        config.request_timeout.as_millis()
    );
    nexus_loaders::tls::add_options(&mut pg, &ours);
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        database.tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(config.db_pool_max)
        .wait_timeout(Some(config.db_pool_timeout))
        .create_timeout(Some(config.db_pool_timeout))
        .recycle_timeout(Some(config.db_pool_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| exit::failed(format!("database pool: {e}")))
}

pub(crate) async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Every minute: retire pooled connections older than the recycle age,
/// write the minute's request latencies for `nexus perf report`, and forget
/// idle login throttles.
async fn housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let max_age = state.config.db_pool_recycle;
        state.pool.retain(|_, m| m.age() < max_age);
        flush_stats(&state).await;
        if let Ok(db) = state.pool.get().await
            && let Err(e) =
                crate::auth::store::prune_login_throttle(&**db, api::auth::THROTTLE_IDLE).await
        {
            tracing::warn!(error = %e, "pruning login throttles failed");
        }
    }
}

/// How often pending cache writes are settled and cache figures saved.
const CACHE_UPKEEP_EVERY: Duration = Duration::from_secs(2);

/// Warms the models marked `warm` once, then settles pending cache writes
/// (repairing Redis after an outage) and saves the cache figures for
/// `nexus cache stats`, every few seconds.
async fn cache_upkeep(state: AppState) {
    if let Ok(db) = state.pool.get().await {
        for m in state.models.iter().filter(|m| m.warm) {
            let Some(c) = nexus_loaders::cache::CachedModel::of(m) else {
                continue;
            };
            match state
                .cache
                .warm(&c, &**db, state.config.cache_warm_rows)
                .await
            {
                Ok(n) => tracing::info!(model = %m.name, rows = n, "cache warmed"),
                Err(e) => {
                    tracing::warn!(model = %m.name, error = %e, "warming the cache failed")
                }
            }
        }
    }
    let mut tick = tokio::time::interval(CACHE_UPKEEP_EVERY);
    // What was last saved per model: unchanged figures are not written again.
    let mut saved = std::collections::HashMap::new();
    loop {
        tick.tick().await;
        let Ok(db) = state.pool.get().await else {
            continue;
        };
        match state.cache.settle(&**db).await {
            // Redis still away: counted already; repaired when it is back.
            Err(e @ nexus_loaders::cache::CacheError::Db(_)) => {
                tracing::warn!(error = %e, "settling pending cache writes failed")
            }
            Err(e) => tracing::debug!(error = %e, "cache settle: later"),
            Ok(_) => {}
        }
        let snapshot = state.cache.snapshot();
        for m in snapshot.models {
            let counts = (m.hits_local, m.hits_redis, m.misses);
            if saved.get(&m.model) == Some(&counts) {
                continue;
            }
            let written = db
                .execute(
                    "INSERT INTO nexus.cache_stats (instance, model, hits_local, hits_redis, misses)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (instance, model) DO UPDATE SET hits_local = EXCLUDED.hits_local,
                         hits_redis = EXCLUDED.hits_redis, misses = EXCLUDED.misses, updated_at = now()",
                    &[
                        &state.instance,
                        &m.model,
                        &(m.hits_local as i64),
                        &(m.hits_redis as i64),
                        &(m.misses as i64),
                    ],
                )
                .await;
            if written.is_ok() {
                saved.insert(m.model, counts);
            }
        }
    }
}

async fn flush_stats(state: &AppState) {
    let minute = state.stats.take_minute();
    if minute.is_empty() {
        return;
    }
    let instance = state.instance;
    let Ok(db) = state.pool.get().await else {
        return;
    };
    for (route, s) in minute {
        let mut bytes = Vec::new();
        use hdrhistogram::serialization::Serializer as _;
        if hdrhistogram::serialization::V2Serializer::new()
            .serialize(&s.histogram, &mut bytes)
            .is_err()
        {
            continue;
        }
        let result = db
            .execute(
                "INSERT INTO nexus.request_stats (minute, route, instance, requests, errors, histogram)
                 VALUES (date_trunc('minute', now()), $1, $2, $3, $4, $5)
                 ON CONFLICT (minute, route, instance) DO UPDATE
                 SET requests = nexus.request_stats.requests + EXCLUDED.requests,
                     errors = nexus.request_stats.errors + EXCLUDED.errors,
                     histogram = EXCLUDED.histogram",
                &[&route, &instance, &(s.requests as i64), &(s.errors as i64), &bytes],
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record request statistics");
        }
    }
}

/// How many connections may wait to be accepted. The default (128, as the
/// standard library's) overflowed when 500 clients connected at once
/// (benches/ws-load.sh: ~440 overflows per run in `nstat`): the kernel then
/// drops the handshake's last ACK, the client sends its first request
/// anyway, and that request waits for TCP's retransmission — 200 ms and
/// more. The kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own `bind`: a restarted server may take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// More clients than the old backlog (128) connect before any is
    /// accepted: each connects at once instead of waiting for a SYN
    /// retransmission (a second) after the accept queue overflowed.
    #[tokio::test]
    async fn a_burst_of_connections_queues_for_accept() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for i in 0..300 {
            let connect = tokio::net::TcpStream::connect(addr);
            let client = tokio::time::timeout(Duration::from_millis(500), connect)
                .await
                .unwrap_or_else(|_| panic!("connection {i} waited: the accept queue overflowed"))
                .unwrap();
            clients.push(client);
        }
        // All of them are there to be accepted.
        for _ in 0..300 {
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .unwrap()
                .unwrap();
        }
    }
}
