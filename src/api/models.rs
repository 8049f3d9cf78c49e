//! `/api/v2/models`: the model definitions in force.

use axum::Json;
use axum::extract::{Path, State};
use nexus_pipeline::Model;
use serde::Serialize;

use super::AppState;
use super::auth::CurrentUser;
use super::problem::{Authenticated, Problem, ProblemBody};

#[derive(Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ColumnView {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    /// The input header the column is read from.
    pub source: String,
    /// The column's rules as written in the model file.
    #[schema(value_type = Object)]
    pub rules: serde_json::Value,
}

#[derive(Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct CacheView {
    pub strategy: String,
    pub ttl_seconds: u64,
}

#[derive(Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ModelView {
    pub name: String,
    pub table: String,
    pub key: Vec<String>,
    pub batch_size: usize,
    pub cache: CacheView,
    pub columns: Vec<ColumnView>,
}

impl From<&Model> for ModelView {
    fn from(m: &Model) -> ModelView {
        ModelView {
            name: m.name.clone(),
            table: m.def.table.clone(),
            key: m.key.clone(),
            batch_size: m.batch_size,
            cache: CacheView {
                strategy: m.cache.strategy.as_str().to_string(),
                ttl_seconds: m.cache.ttl.as_secs(),
            },
            columns: m
                .columns
                .iter()
                .zip(&m.def.columns)
                .map(|(c, def)| {
                    let mut rules = serde_json::to_value(def).unwrap_or_default();
                    if let Some(o) = rules.as_object_mut() {
                        for k in ["name", "type", "required", "source"] {
                            o.remove(k);
                        }
                    }
                    ColumnView {
                        name: c.name.clone(),
                        ty: c.ty.to_string(),
                        required: c.required,
                        source: c.header().to_string(),
                        rules,
                    }
                })
                .collect(),
        }
    }
}

/// Every model.
#[utoipa::path(get, path = "/api/v2/models", tag = "models", security(("bearer" = [])),
    responses(
        (status = 200, description = "The models", body = [ModelView]),
        Authenticated,
    ))]
pub async fn list(State(state): State<AppState>, _user: CurrentUser) -> Json<Vec<ModelView>> {
    Json(
        state
            .models
            .iter()
            .map(|m| ModelView::from(m.as_ref()))
            .collect(),
    )
}

/// One model.
#[utoipa::path(get, path = "/api/v2/models/{model}", tag = "models", security(("bearer" = [])),
    params(("model" = String, Path, description = "The model name")),
    responses(
        (status = 200, description = "The model", body = ModelView),
        (status = 404, description = "No such model", body = ProblemBody, content_type = "application/problem+json"),
        Authenticated,
    ))]
pub async fn show(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(model): Path<String>,
) -> Result<Json<ModelView>, Problem> {
    let m = state
        .models
        .get(&model)
        .map_err(|e| Problem::not_found(e.to_string()))?;
    Ok(Json(ModelView::from(m.as_ref())))
}
