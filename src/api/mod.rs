//! The HTTP service: shared state, the router with its middleware stack,
//! and the OpenAPI document generated from the handlers. One module per
//! route group.

pub mod auth;
pub mod client_addr;
pub mod dashboard;
pub mod health;
pub mod jobs;
pub mod middleware;
pub mod models;
pub mod problem;
pub mod records;
pub mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use nexus_pipeline::ModelSet;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;

use crate::auth::tokens::Keys;
use crate::config::Config;

/// What every handler shares; cloned per request, hence one `Arc`.
#[derive(Clone)]
pub struct AppState(pub Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub pool: deadpool_postgres::Pool,
    pub config: Arc<Config>,
    pub keys: Arc<Keys>,
    pub models: Arc<ModelSet>,
    pub prometheus: PrometheusHandle,
    pub started: Instant,
    pub limiter: Arc<middleware::Limiter>,
    pub stats: Arc<middleware::HttpStats>,
    pub request_ids: middleware::RequestIds,
    pub rendered_jobs: jobs::RenderedJobs,
    pub storage: Arc<dyn crate::jobs::storage::Storage>,
    /// Wakes a queue worker when a job is queued here.
    pub queue: Arc<tokio::sync::Notify>,
    /// This process, as a lease owner.
    pub instance: uuid::Uuid,
    /// For loads, which open their own COPY connections.
    pub database_url: String,
    /// Live job events for WebSocket subscribers.
    pub hub: Arc<crate::jobs::progress::Hub>,
    /// Sessions and job records, kept by notification.
    pub caches: Arc<crate::read_cache::ReadCaches>,
    /// The record cache (local tier, and Redis when configured).
    pub cache: Arc<nexus_loaders::cache::Cache>,
    /// Where MCP callers may load files from (NEXUS_MCP_ROOTS, resolved).
    pub mcp_roots: crate::mcp::files::Roots,
    /// Cancelled when the server stops: ends MCP's open streams.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Largest JSON request body the API takes.
const JSON_BODY_LIMIT: usize = 64 << 10;

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

#[derive(OpenApi)]
#[openapi(
    info(title = "Nexus", description = "Bulk ingestion into PostgreSQL"),
    paths(
        auth::login,
        auth::refresh,
        auth::logout,
        models::list,
        models::show,
        health::health,
        health::detailed,
        health::metrics,
        jobs::create,
        jobs::list,
        jobs::show,
        jobs::cancel,
        jobs::rejects,
        jobs::reject_summary,
        records::show,
        openapi_json,
    ),
    components(schemas(problem::ProblemBody, nexus_loaders::JobStatus, nexus_loaders::Mode, jobs::FormatParam, jobs::EncodingParam)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v2/openapi.json", tag = "meta", responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<utoipa::openapi::OpenApi> {
    let mut doc = openapi();
    // The models are configuration: name the ones in force.
    let names: Vec<String> = state.models.iter().map(|m| m.name.clone()).collect();
    if let Some(op) = doc
        .paths
        .paths
        .get_mut("/api/v2/jobs")
        .and_then(|p| p.post.as_mut())
        && let Some(params) = op.parameters.as_mut()
    {
        for p in params.iter_mut().filter(|p| p.name == "model") {
            p.schema = Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(names.clone()))
                    .into(),
            );
        }
    }
    axum::Json(doc)
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `/metrics` alone, for its own listener (NEXUS_METRICS_BIND).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .with_state(state)
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v2/auth/login", post(auth::login))
        .route("/api/v2/auth/refresh", post(auth::refresh))
        .route("/api/v2/auth/logout", post(auth::logout))
        .route("/api/v2/models", get(models::list))
        .route("/api/v2/models/{model}", get(models::show))
        .route("/health/detailed", get(health::detailed))
        .route("/api/v2/jobs", get(jobs::list))
        .route("/api/v2/jobs/{id}", get(jobs::show))
        .route("/api/v2/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v2/jobs/{id}/rejects", get(jobs::rejects))
        .route(
            "/api/v2/jobs/{id}/rejects/summary",
            get(jobs::reject_summary),
        )
        .route("/api/v2/records/{model}/{key}", get(records::show))
        .route("/api/v2/ws", get(ws::upgrade))
        .layer(axum::middleware::from_fn_with_state(
            middleware::Gate::bounded(&state, JSON_BODY_LIMIT),
            middleware::gate,
        ));
    // Uploads stream to storage for as long as they take, under their own
    // limit (NEXUS_MAX_UPLOAD), gzip-decoded on the way in.
    let uploads = Router::new()
        .route("/api/v2/jobs", post(jobs::create))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(tower_http::decompression::RequestDecompressionLayer::new().gzip(true))
        .layer(axum::middleware::from_fn_with_state(
            middleware::Gate::streaming(&state),
            middleware::gate,
        ));
    let api = api.merge(uploads);
    // MCP over Streamable HTTP: the API's users and limits; its streams
    // last as long as the calls they carry, so no request deadline.
    let mcp = Router::new()
        .route_service("/mcp", crate::mcp::http_service(&state))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticated,
        ))
        .layer(axum::middleware::from_fn_with_state(
            middleware::Gate::streaming(&state),
            middleware::gate,
        ));
    let api = api.merge(mcp);
    let compress_when = SizeAbove::new(1024)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE);
    let mut app = Router::new()
        .merge(api)
        .route("/api/v2/openapi.json", get(openapi_json))
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::script))
        .route("/assets/app.css", get(dashboard::style))
        .route("/health", get(health::health));
    // With NEXUS_METRICS_BIND, /metrics has its own listener (metrics_router).
    if state.config.metrics_bind.is_none() {
        app = app.route("/metrics", get(health::metrics));
    }
    // Compression outside the front layer, which reads error bodies to
    // rewrite them as problem+json.
    let mut app = app
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::front,
        ))
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .compress_when(compress_when),
        );
    if !state.config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                ])
                .expose_headers([middleware::X_REQUEST_ID, header::RETRY_AFTER])
                .max_age(Duration::from_secs(600)),
        );
    }
    app.with_state(state)
}
