//! `/api/v2/auth/*` and the authenticated-user extractor every protected
//! route takes. Failed logins slow down per account and address, and per
//! address, with growing waits; refresh
//! rotates; a spent refresh token presented again revokes its session.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::client_addr::ClientAddr;
use super::problem::{Authenticated, JsonBody, Problem, ProblemBody};
use crate::auth::store::{self, Audit, Principal, Spend, Throttle};
use crate::auth::{Role, passwords, tokens};

/// Failed logins are slowed down per account from one address (someone
/// guessing elsewhere never locks the owner out) and per address (one
/// address guessing many accounts), with growing waits, not a lock.
const PER_ACCOUNT_AND_ADDRESS: Throttle = Throttle {
    free: 5,
    window: Duration::from_secs(15 * 60),
    max_wait: Duration::from_secs(15 * 60),
};
/// Throttle keys idle this long are forgotten.
pub const THROTTLE_IDLE: Duration = Duration::from_secs(60 * 60);
const PER_ADDRESS: Throttle = Throttle {
    free: 20,
    window: Duration::from_secs(15 * 60),
    max_wait: Duration::from_secs(15 * 60),
};

/// The user behind a request's bearer token, checked against a live session.
pub struct CurrentUser(pub Principal);

impl CurrentUser {
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(Problem::forbidden(&format!(
                "this needs the role {}",
                Role::either(roles)
            )))
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The gate (`super::middleware::gate`) verified it already.
        if let Some(Verified(claims)) = parts.extensions.get::<Verified>() {
            return Ok(CurrentUser(live_user(state, claims).await?));
        }
        let token = bearer(&parts.headers).ok_or_else(|| {
            Problem::unauthorized("an access token is required (Authorization: Bearer …)")
        })?;
        Ok(CurrentUser(authenticate(state, token).await?))
    }
}

/// The claims of a request's valid access token, once verified.
#[derive(Clone)]
pub struct Verified(pub tokens::AccessClaims);

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Lets through only requests with a valid access token, their user in
/// the request's extensions (for services that are not axum handlers:
/// MCP's transport).
pub async fn authenticated(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = req.into_parts();
    match CurrentUser::from_request_parts(&mut parts, &state).await {
        Ok(CurrentUser(principal)) => {
            parts.extensions.insert(principal);
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Err(problem) => problem
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
            .into_response(),
    }
}

/// The user behind an access token, if it is valid and its session live.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, Problem> {
    let claims = state
        .keys
        .verify(token.trim())
        .ok_or_else(|| Problem::unauthorized("the access token is invalid or expired"))?;
    live_user(state, &claims).await
}

/// The user of a verified token's session, if it is live.
async fn live_user(state: &AppState, claims: &tokens::AccessClaims) -> Result<Principal, Problem> {
    live_principal(state, claims.sid)
        .await?
        .filter(|p| p.user_id == claims.sub)
        .ok_or_else(|| Problem::unauthorized("the session was revoked or the user disabled"))
}

/// The user of a session while it is live: not revoked, not expired, its
/// user not disabled. Looked up in the server's cache first; a revocation
/// or a disabled user drops it from every server's cache (`crate::events`).
pub async fn live_principal(
    state: &AppState,
    session: uuid::Uuid,
) -> Result<Option<Principal>, Problem> {
    // A cached session past its expiry is not live: the database would
    // not find it either (an extension is an update, which drops it here).
    let live = state
        .caches
        .sessions
        .get_or_read(&session, || async {
            let db = state.pool.get().await?;
            Ok::<_, Problem>(store::live_session(&**db, session).await?)
        })
        .await?
        .filter(|s| s.expires_at > chrono::Utc::now());
    Ok(live.map(|s| s.principal))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

fn user_agent(h: &HeaderMap) -> Option<String> {
    h.get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(300).collect())
}

async fn issue_pair(
    state: &AppState,
    db: &tokio_postgres::Client,
    p: &Principal,
) -> Result<TokenPair, Problem> {
    let (refresh, hash) = tokens::new_refresh_token();
    store::add_refresh_token(db, p.session_id, &hash, state.config.refresh_ttl).await?;
    let access = state.keys.issue(
        p.user_id,
        p.session_id,
        &p.username,
        p.role,
        state.config.access_ttl,
    )?;
    Ok(TokenPair {
        access_token: access,
        refresh_token: refresh,
        token_type: "Bearer".into(),
        expires_in: state.config.access_ttl.as_secs(),
    })
}

/// Log in with a username and password.
#[utoipa::path(post, path = "/api/v2/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 401, description = "Wrong username or password", body = ProblemBody, content_type = "application/problem+json"),
        JsonBody,
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(peer): ClientAddr,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> Result<Json<TokenPair>, Problem> {
    let ip = peer.to_string();
    let ua = user_agent(&headers);
    // No user name holds a NUL (PostgreSQL text cannot); keep it loggable.
    let req = LoginRequest {
        username: req.username.replace('\0', "\u{FFFD}"),
        password: req.password,
    };
    let mut db = state.pool.get().await?;
    let keys = store::throttle_keys(&req.username, &ip);
    let taken = store::take_login_attempt(
        &mut db,
        &[(&keys[0], PER_ACCOUNT_AND_ADDRESS), (&keys[1], PER_ADDRESS)],
    )
    .await?;
    if let Err(wait) = taken {
        metrics::counter!("nexus_logins_total", "result" => "throttled").increment(1);
        store::audit(
            &**db,
            Audit {
                event: "login_throttled",
                username: Some(&req.username),
                ip: Some(&ip),
                user_agent: ua.as_deref(),
                ..Default::default()
            },
        )
        .await?;
        return Err(Problem::too_many(
            wait.ceil() as u64,
            "too many failed logins from this address; try again after the time in Retry-After",
        ));
    }
    let creds = store::credentials(&**db, &req.username).await?;
    let hash = creds
        .as_ref()
        .map(|c| c.password_hash.clone())
        .unwrap_or_else(|| passwords::decoy().to_string());
    let password_ok = passwords::verify(req.password.clone(), hash).await;
    let creds = match creds {
        Some(c) if password_ok && !c.disabled => c,
        other => {
            metrics::counter!("nexus_logins_total", "result" => "failed").increment(1);
            let detail = match other {
                Some(c) if c.disabled => "user disabled",
                Some(_) => "wrong password",
                None => "unknown user",
            };
            store::audit(
                &**db,
                Audit {
                    event: "login_failed",
                    username: Some(&req.username),
                    ip: Some(&ip),
                    user_agent: ua.as_deref(),
                    detail: Some(detail),
                    ..Default::default()
                },
            )
            .await?;
            return Err(Problem::unauthorized("wrong username or password"));
        }
    };
    store::login_succeeded(&**db, &keys).await?;
    let session_id = store::create_session(
        &**db,
        creds.id,
        state.config.refresh_ttl,
        &ip,
        ua.as_deref(),
    )
    .await?;
    let principal = Principal {
        user_id: creds.id,
        session_id,
        username: req.username.clone(),
        role: creds.role,
    };
    let pair = issue_pair(&state, &db, &principal).await?;
    store::audit(
        &**db,
        Audit {
            event: "login_ok",
            username: Some(&req.username),
            user_id: Some(creds.id),
            session_id: Some(session_id),
            ip: Some(&ip),
            user_agent: ua.as_deref(),
            ..Default::default()
        },
    )
    .await?;
    metrics::counter!("nexus_logins_total", "result" => "ok").increment(1);
    Ok(Json(pair))
}

/// Exchange a refresh token for a new pair; the old refresh token is spent.
#[utoipa::path(post, path = "/api/v2/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenPair),
        (status = 401, description = "Invalid, expired or reused refresh token (reuse revokes the session)", body = ProblemBody, content_type = "application/problem+json"),
        JsonBody,
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    ClientAddr(peer): ClientAddr,
    headers: HeaderMap,
    Json(req): Json<RefreshRequest>,
) -> Result<Json<TokenPair>, Problem> {
    let ip = peer.to_string();
    let ua = user_agent(&headers);
    let db = state.pool.get().await?;
    let hash = tokens::hash_refresh_token(req.refresh_token.trim());
    match store::spend_refresh_token(&**db, &hash).await? {
        Spend::Fresh(p) => {
            let pair = issue_pair(&state, &db, &p).await?;
            store::audit(
                &**db,
                Audit {
                    event: "refresh",
                    username: Some(&p.username),
                    user_id: Some(p.user_id),
                    session_id: Some(p.session_id),
                    ip: Some(&ip),
                    user_agent: ua.as_deref(),
                    ..Default::default()
                },
            )
            .await?;
            Ok(Json(pair))
        }
        Spend::Reused {
            session_id,
            user_id,
        } => {
            store::revoke_session(&**db, session_id, "refresh token reuse").await?;
            // Here at once; other servers when the notification reaches them.
            state.caches.sessions.invalidate(&session_id);
            store::audit(
                &**db,
                Audit {
                    event: "refresh_reuse_detected",
                    user_id: Some(user_id),
                    session_id: Some(session_id),
                    ip: Some(&ip),
                    user_agent: ua.as_deref(),
                    detail: Some("a spent refresh token was presented again; session revoked"),
                    ..Default::default()
                },
            )
            .await?;
            tracing::warn!(%session_id, %ip, "refresh token reuse: session revoked");
            Err(Problem::unauthorized(
                "this refresh token was already used; the session is revoked",
            ))
        }
        Spend::Invalid => Err(Problem::unauthorized(
            "the refresh token is invalid or expired",
        )),
    }
}

/// Revoke the current session.
#[utoipa::path(post, path = "/api/v2/auth/logout", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        Authenticated,
    ))]
pub async fn logout(
    State(state): State<AppState>,
    ClientAddr(peer): ClientAddr,
    headers: HeaderMap,
    user: CurrentUser,
) -> Result<StatusCode, Problem> {
    let db = state.pool.get().await?;
    store::revoke_session(&**db, user.0.session_id, "logout").await?;
    state
        .caches
        .session_changed(crate::read_cache::AuthChange::Session(user.0.session_id));
    let ip = peer.to_string();
    store::audit(
        &**db,
        Audit {
            event: "logout",
            username: Some(&user.0.username),
            user_id: Some(user.0.user_id),
            session_id: Some(user.0.session_id),
            ip: Some(&ip),
            user_agent: user_agent(&headers).as_deref(),
            ..Default::default()
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
