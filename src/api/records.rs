//! `/api/v2/records/{model}/{key}`: a loaded row, read through the cache
//! (local tier, Redis, PostgreSQL), with `X-Cache` saying which answered.

use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use nexus_loaders::cache::{CachedModel, Tier, keys};
use nexus_pipeline::model::CacheStrategy;

use super::AppState;
use super::auth::CurrentUser;
use super::problem::{Authenticated, Problem, ProblemBody};

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// One row of a model's table, by key.
#[utoipa::path(get, path = "/api/v2/records/{model}/{key}", tag = "records", security(("bearer" = [])),
    params(
        ("model" = String, Path, description = "The model name"),
        ("key" = String, Path, description = "The row's key"),
    ),
    responses(
        (status = 200, description = "The row as JSON; header X-Cache: local, redis or miss", body = Object,
            headers(("X-Cache" = String, description = "local, redis or miss"))),
        (status = 400, description = "The key is not valid for the model's key type, or the model has no single key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such model or row", body = ProblemBody, content_type = "application/problem+json"),
        Authenticated,
    ))]
pub async fn show(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path((model, key)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let m = state
        .models
        .get(&model)
        .map_err(|e| Problem::not_found(e.to_string()))?;
    let bad = |e: keys::KeyError| Problem::new(axum::http::StatusCode::BAD_REQUEST, e.to_string());
    let view = CachedModel::view(&m).map_err(bad)?;
    let key = keys::canonical(view.key_type, &key).map_err(bad)?;
    let db = state.pool.get().await?;
    let (row, tier) = if view.strategy == CacheStrategy::None {
        let row = view.fetch(&**db, std::slice::from_ref(&key)).await?.pop();
        (row.map(|(_, j)| j), Tier::Miss)
    } else {
        state
            .cache
            .read(&view, &key, &**db)
            .await
            .map_err(Problem::internal)?
    };
    let row = row.ok_or_else(|| Problem::not_found(format!("no {model} with key {key}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (X_CACHE, HeaderValue::from_static(tier.as_str())),
        ],
        row,
    )
        .into_response())
}
