//! RFC 9457 problem details: every error the service answers is
//! `application/problem+json`. Handlers return [`Problem`]; everything else
//! that ends in an error (404, 405, 413, extractor rejections) is rewritten
//! into one by [`as_problem`], in one place (the front layer,
//! `crate::api::middleware::front`).

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// A URI naming the problem type; `about:blank` for plain HTTP statuses.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: Some(detail.into()),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Problem {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn unauthorized(detail: &str) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, detail)
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
    }

    pub fn forbidden(detail: &str) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn too_many(retry_after_secs: u64, detail: &str) -> Problem {
        Problem::new(StatusCode::TOO_MANY_REQUESTS, detail)
            .with_header(header::RETRY_AFTER, &retry_after_secs.max(1).to_string())
    }

    /// 503: the service cannot answer now; try again shortly.
    pub fn unavailable(detail: &str) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail).with_header(header::RETRY_AFTER, "1")
    }

    /// An internal error: logged in full, answered without details.
    pub fn internal(e: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "request failed");
        Problem {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: None,
            headers: Vec::new(),
        }
    }
}

impl From<tokio_postgres::Error> for Problem {
    fn from(e: tokio_postgres::Error) -> Problem {
        use nexus_loaders::pg::{ErrorKind, classify, describe};
        let canceled = e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED);
        if canceled || classify(&e) == ErrorKind::Transient {
            tracing::warn!(error = %describe(&e), "the database did not answer in time");
            return Problem::unavailable("the database is busy or unreachable; try again");
        }
        Problem::internal(describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for Problem {
    fn from(e: deadpool_postgres::PoolError) -> Problem {
        tracing::warn!(error = %e, "no database connection");
        Problem::unavailable("the database is busy or unreachable; try again")
    }
}

impl From<anyhow::Error> for Problem {
    fn from(e: anyhow::Error) -> Problem {
        Problem::internal(format!("{e:#}"))
    }
}

pub fn body(status: StatusCode, detail: Option<String>) -> ProblemBody {
    ProblemBody {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let json = serde_json::to_vec(&body(self.status, self.detail)).unwrap_or_default();
        let mut r = (self.status, [(header::CONTENT_TYPE, PROBLEM_JSON)], json).into_response();
        for (name, value) in self.headers {
            r.headers_mut().insert(name, value);
        }
        r
    }
}

/// Rewrites any error response that is not already problem+json (axum's
/// 404/405, body-limit 413, extractor rejections) into one, keeping its
/// status, its headers and its text as the detail.
pub async fn as_problem(res: Response) -> Response {
    let status = res.status();
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let (mut parts, original) = res.into_parts();
    let text = match axum::body::to_bytes(original, 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let detail = (!text.is_empty()).then_some(text).or_else(|| match status {
        StatusCode::NOT_FOUND => Some("no such resource".into()),
        StatusCode::METHOD_NOT_ALLOWED => Some("method not allowed on this resource".into()),
        _ => None,
    });
    let json = serde_json::to_vec(&body(status, detail)).unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json))
}

/// OpenAPI responses of the error statuses a route can answer, each a
/// problem document. Listed per route through the marker types below.
fn problem_responses(
    statuses: &[(u16, &str)],
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>>
{
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    statuses
        .iter()
        .map(|(code, what)| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ProblemBody")))
                .build();
            let response = ResponseBuilder::new()
                .description(*what)
                .content(PROBLEM_JSON, content)
                .build();
            (code.to_string(), response.into())
        })
        .collect()
}

/// Errors of a route that needs a valid access token.
pub struct Authenticated;
impl utoipa::IntoResponses for Authenticated {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        problem_responses(&[
            (
                401,
                "Missing, invalid or expired access token, or a revoked session",
            ),
            (403, "The user's role does not allow this"),
            (429, "Rate limit exceeded (see Retry-After)"),
        ])
    }
}

/// Errors of a route about one job (`/api/v2/jobs/{id}…`).
pub struct OneJob;
impl utoipa::IntoResponses for OneJob {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        problem_responses(&[
            (400, "The id is not a UUID (or, for rejects, a bad page)"),
            (404, "No such job (or not yours)"),
        ])
    }
}

/// Errors of a route that reads a JSON body.
pub struct JsonBody;
impl utoipa::IntoResponses for JsonBody {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        problem_responses(&[
            (400, "The body is not JSON"),
            (413, "The body is too large"),
            (415, "The body is not application/json"),
            (422, "The JSON does not have the expected fields"),
            (429, "Rate limit exceeded (see Retry-After)"),
        ])
    }
}
