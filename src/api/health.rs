//! Liveness, a detailed health report for admins, and Prometheus metrics.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use super::AppState;
use super::auth::CurrentUser;
use super::problem::{Authenticated, Problem};
use crate::auth::Role;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
}

/// 200 while the process serves.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, description = "Serving", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[derive(Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct Component {
    /// `ok`, `down` or `disabled`.
    pub status: String,
    pub required: bool,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct DetailedHealth {
    /// `ok` when every required component is.
    pub status: String,
    pub uptime_seconds: u64,
    pub postgres: Component,
    pub redis: Component,
    pub pool: Component,
    pub queue: Component,
    pub workers: Component,
    pub http: Component,
}

impl DetailedHealth {
    /// The statuses alone, for those who may not see the figures.
    pub fn without_details(mut self) -> DetailedHealth {
        for c in [
            &mut self.postgres,
            &mut self.redis,
            &mut self.pool,
            &mut self.queue,
            &mut self.workers,
            &mut self.http,
        ] {
            c.details = serde_json::json!({});
        }
        self
    }
}

fn component(status: &str, required: bool, details: serde_json::Value) -> Component {
    Component {
        status: status.into(),
        required,
        details,
    }
}

/// What a health report is made of; `http` and `uptime` only where a
/// server answers requests.
pub struct Parts<'a> {
    pub pool: &'a deadpool_postgres::Pool,
    pub cache: &'a nexus_loaders::cache::Cache,
    pub hub: &'a crate::jobs::progress::Hub,
    pub config: &'a crate::config::Config,
    pub http: Option<&'a super::middleware::HttpStats>,
    pub uptime: Option<std::time::Duration>,
}

/// Each component with its figures.
pub async fn report(parts: &Parts<'_>) -> DetailedHealth {
    let started = Instant::now();
    let (postgres, queue) = match parts.pool.get().await {
        Ok(db) => {
            let ping = db.query_one("SELECT 1", &[]).await.is_ok();
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let counts = db
                .query_one(
                    nexus_loaders::status_sql!("SELECT count(*) FILTER (WHERE status = {queued}), count(*) FILTER (WHERE status = {running})
                     FROM nexus.jobs"),
                    &[],
                )
                .await
                .ok()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
            (
                component(
                    if ping { "ok" } else { "down" },
                    true,
                    serde_json::json!({ "latency_ms": latency_ms }),
                ),
                match counts {
                    Some((q, r)) => component(
                        "ok",
                        false,
                        serde_json::json!({ "queued": q, "running": r }),
                    ),
                    None => component("down", false, serde_json::json!({})),
                },
            )
        }
        Err(e) => (
            component("down", true, serde_json::json!({ "error": e.to_string() })),
            component("down", false, serde_json::json!({})),
        ),
    };
    let s = parts.pool.status();
    let pool = component(
        "ok",
        false,
        serde_json::json!({ "size": s.size, "available": s.available, "waiting": s.waiting, "max_size": s.max_size }),
    );
    // Redis is optional: when it is down, loads go on and the cache
    // repairs itself, so it never makes the service degraded.
    let cache = parts.cache.snapshot();
    let figures = serde_json::json!({
        "local_entries": cache.local_entries,
        "local_bytes": cache.local_bytes,
        "write_behind_depth": cache.write_behind_depth,
        "write_behind_dropped": cache.write_behind_dropped,
        "errors": cache.redis_errors,
    });
    let redis = match parts.cache.ping_redis().await {
        None => component("disabled", false, figures),
        Some(Ok(latency)) => {
            let mut f = figures;
            f["latency_ms"] = (latency.as_secs_f64() * 1000.0).into();
            component("ok", false, f)
        }
        Some(Err(e)) => {
            let mut f = figures;
            f["error"] = e.to_string().into();
            component("down", false, f)
        }
    };
    let workers = component(
        if parts.config.workers > 0 {
            "ok"
        } else {
            "disabled"
        },
        false,
        serde_json::json!({
            "configured": parts.config.workers,
            "running_here": parts.hub.running_here(),
            "lease_seconds": parts.config.job_lease.as_secs(),
        }),
    );
    let http = match parts.http {
        Some(stats) => {
            let (count, p50, p95, p99) = stats.percentiles();
            component(
                "ok",
                false,
                serde_json::json!({ "requests": count, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99 }),
            )
        }
        None => component("disabled", false, serde_json::json!({})),
    };
    let ok = postgres.status == "ok";
    DetailedHealth {
        status: if ok { "ok" } else { "degraded" }.into(),
        uptime_seconds: parts.uptime.map_or(0, |u| u.as_secs()),
        postgres,
        redis,
        pool,
        queue,
        workers,
        http,
    }
}

/// Each component with its figures; 503 when a required one is down.
#[utoipa::path(get, path = "/health/detailed", tag = "health", security(("bearer" = [])),
    responses(
        (status = 200, description = "All required components are up", body = DetailedHealth),
        (status = 503, description = "A required component is down", body = DetailedHealth),
        Authenticated,
    ))]
pub async fn detailed(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<impl IntoResponse, Problem> {
    user.require(&[Role::Admin])?;
    let body = report(&Parts {
        pool: &state.pool,
        cache: &state.cache,
        hub: &state.hub,
        config: &state.config,
        http: Some(&state.stats),
        uptime: Some(state.started.elapsed()),
    })
    .await;
    let status = if body.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(body)))
}

/// Every series the alert rules and the dashboard read (deploy/prometheus,
/// deploy/grafana) exists from the start, at zero, so that a query over
/// it means "none yet" rather than "no such metric".
pub fn register_metrics(models: &nexus_pipeline::ModelSet) {
    use nexus_loaders::JobStatus;
    metrics::describe_counter!(
        "nexus_jobs_finished_total",
        "Jobs this server ran to an end, by status"
    );
    metrics::describe_gauge!(
        "nexus_jobs_queued",
        "Jobs waiting for a worker (all servers)"
    );
    metrics::describe_gauge!(
        "nexus_jobs_oldest_queued_seconds",
        metrics::Unit::Seconds,
        "How long the oldest queued job has waited"
    );
    metrics::describe_gauge!("nexus_jobs_running", "Jobs running (all servers)");
    metrics::describe_gauge!(
        "nexus_jobs_lease_expired",
        "Running jobs whose lease expired: their server died and none took them over yet"
    );
    for status in JobStatus::ALL.iter().filter(|s| s.is_finished()) {
        metrics::counter!("nexus_jobs_finished_total", "status" => status.as_str()).increment(0);
    }
    for name in [
        "nexus_http_rate_limited_total",
        "nexus_http_timeouts_total",
        "nexus_cache_redis_errors_total",
        "nexus_ws_resyncs_total",
        "nexus_ws_progress_dropped_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("nexus_ws_connections").increment(0.0);
    for m in models.iter() {
        if nexus_loaders::cache::CachedModel::of(m).is_some() {
            let model = m.name.clone();
            for tier in ["local", "redis"] {
                metrics::counter!("nexus_cache_hits_total", "model" => model.clone(), "tier" => tier)
                    .increment(0);
            }
            metrics::counter!("nexus_cache_misses_total", "model" => model).increment(0);
        }
    }
}

/// The queue as every server sees it (so any one scrape tells): jobs
/// waiting, how long the oldest has waited, and running jobs whose lease
/// expired (their server died; another takes them over). Left as they were
/// when the database does not answer.
async fn queue_gauges(state: &AppState) {
    let sql = nexus_loaders::status_sql!(
        "SELECT count(*) FILTER (WHERE status = {queued}),
                coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = {queued})), 0)::float8,
                count(*) FILTER (WHERE status = {running}),
                count(*) FILTER (WHERE status = {running} AND lease_owner IS NOT NULL AND lease_expires_at < now())
         FROM nexus.jobs WHERE status IN ({queued}, {running})"
    );
    let Ok(db) = state.pool.get().await else {
        return;
    };
    if let Ok(row) = db.query_one(sql, &[]).await {
        metrics::gauge!("nexus_jobs_queued").set(row.get::<_, i64>(0) as f64);
        metrics::gauge!("nexus_jobs_oldest_queued_seconds").set(row.get::<_, f64>(1));
        metrics::gauge!("nexus_jobs_running").set(row.get::<_, i64>(2) as f64);
        metrics::gauge!("nexus_jobs_lease_expired").set(row.get::<_, i64>(3) as f64);
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Metrics", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let s = state.pool.status();
    metrics::gauge!("nexus_db_pool_size").set(s.size as f64);
    metrics::gauge!("nexus_db_pool_available").set(s.available as f64);
    metrics::gauge!("nexus_db_pool_waiting").set(s.waiting as f64);
    metrics::gauge!("nexus_db_pool_max_size").set(s.max_size as f64);
    metrics::gauge!("nexus_uptime_seconds").set(state.started.elapsed().as_secs_f64());
    metrics::gauge!("nexus_http_rate_limit_keys").set(state.limiter.len() as f64);
    queue_gauges(&state).await;
    // Sets the cache's gauges (sizes, write-behind depth).
    state.cache.snapshot();
    state.prometheus.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}
