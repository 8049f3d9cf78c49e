//! The auth tables: users, sessions, refresh tokens and the audit log. The
//! one place that reads or writes them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use super::Role;

type Db = tokio_postgres::Error;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

/// Creates a user; `None` if the name is taken.
pub async fn add_user(
    c: &impl GenericClient,
    username: &str,
    password_hash: &str,
    role: Role,
) -> Result<Option<Uuid>, Db> {
    let id = Uuid::new_v4();
    let n = c
        .execute(
            "INSERT INTO nexus.users (id, username, password_hash, role) VALUES ($1, $2, $3, $4)
             ON CONFLICT (username) DO NOTHING",
            &[&id, &username, &password_hash, &role.as_str()],
        )
        .await?;
    Ok((n == 1).then_some(id))
}

pub async fn list_users(c: &impl GenericClient) -> Result<Vec<User>, Db> {
    Ok(c
        .query(
            "SELECT id, username, role, disabled_at IS NOT NULL, created_at FROM nexus.users ORDER BY username",
            &[],
        )
        .await?
        .iter()
        .map(|r| User {
            id: r.get(0),
            username: r.get(1),
            role: Role::parse(r.get(2)).unwrap_or(Role::Viewer),
            disabled: r.get(3),
            created_at: r.get(4),
        })
        .collect())
}

/// Disables a user and revokes their sessions; false if there is no such user.
pub async fn disable_user(c: &impl GenericClient, username: &str) -> Result<Option<Uuid>, Db> {
    let Some(row) = c
        .query_opt(
            "UPDATE nexus.users SET disabled_at = coalesce(disabled_at, now()) WHERE username = $1 RETURNING id",
            &[&username],
        )
        .await?
    else {
        return Ok(None);
    };
    let id: Uuid = row.get(0);
    c.execute(
        "UPDATE nexus.sessions SET revoked_at = now(), revoked_reason = 'user disabled'
         WHERE user_id = $1 AND revoked_at IS NULL",
        &[&id],
    )
    .await?;
    Ok(Some(id))
}

pub async fn any_admin(c: &impl GenericClient) -> Result<bool, Db> {
    Ok(c.query_one(
        "SELECT exists (SELECT 1 FROM nexus.users WHERE role = 'admin' AND disabled_at IS NULL)",
        &[],
    )
    .await?
    .get(0))
}

/// What a login needs to know about a user.
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
}

pub async fn credentials(
    c: &impl GenericClient,
    username: &str,
) -> Result<Option<Credentials>, Db> {
    Ok(c
        .query_opt(
            "SELECT id, password_hash, role, disabled_at IS NOT NULL FROM nexus.users WHERE username = $1",
            &[&username],
        )
        .await?
        .map(|r| Credentials {
            id: r.get(0),
            password_hash: r.get(1),
            role: Role::parse(r.get(2)).unwrap_or(Role::Viewer),
            disabled: r.get(3),
        }))
}

/// Who a request is, once its access token checked out.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub username: String,
    pub role: Role,
}

/// A session found live, with when it lapses unless refreshed.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub principal: Principal,
    pub expires_at: DateTime<Utc>,
}

/// A live session of an enabled user: the per-request check that makes
/// revocation and disabling take effect at once.
pub async fn live_session(
    c: &impl GenericClient,
    session_id: Uuid,
) -> Result<Option<LiveSession>, Db> {
    Ok(c
        .query_opt(
            "SELECT u.id, u.username, u.role, s.expires_at FROM nexus.sessions s JOIN nexus.users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.disabled_at IS NULL",
            &[&session_id],
        )
        .await?
        .map(|r| LiveSession {
            principal: Principal {
                user_id: r.get(0),
                session_id,
                username: r.get(1),
                role: Role::parse(r.get(2)).unwrap_or(Role::Viewer),
            },
            expires_at: r.get(3),
        }))
}

pub async fn create_session(
    c: &impl GenericClient,
    user_id: Uuid,
    ttl: Duration,
    ip: &str,
    user_agent: Option<&str>,
) -> Result<Uuid, Db> {
    let id = Uuid::new_v4();
    c.execute(
        "INSERT INTO nexus.sessions (id, user_id, expires_at, ip, user_agent)
         VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5)",
        &[&id, &user_id, &(ttl.as_secs_f64()), &ip, &user_agent],
    )
    .await?;
    Ok(id)
}

pub async fn revoke_session(
    c: &impl GenericClient,
    session_id: Uuid,
    reason: &str,
) -> Result<(), Db> {
    c.execute(
        "UPDATE nexus.sessions SET revoked_at = coalesce(revoked_at, now()), revoked_reason = coalesce(revoked_reason, $2)
         WHERE id = $1",
        &[&session_id, &reason],
    )
    .await?;
    Ok(())
}

/// Stores a new refresh token for a session and extends the session to it.
pub async fn add_refresh_token(
    c: &impl GenericClient,
    session_id: Uuid,
    hash: &[u8],
    ttl: Duration,
) -> Result<(), Db> {
    let secs = ttl.as_secs_f64();
    c.execute(
        "INSERT INTO nexus.refresh_tokens (token_hash, session_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
        &[&hash, &session_id, &secs],
    )
    .await?;
    c.execute(
        "UPDATE nexus.sessions SET expires_at = now() + make_interval(secs => $2) WHERE id = $1",
        &[&session_id, &secs],
    )
    .await?;
    Ok(())
}

/// What presenting a refresh token amounts to.
pub enum Spend {
    /// Valid: now spent; the session may continue.
    Fresh(Principal),
    /// Already spent: a replay. The session must be revoked.
    Reused { session_id: Uuid, user_id: Uuid },
    /// Unknown, expired, or its session is revoked or its user disabled.
    Invalid,
}

/// Spends a refresh token atomically: of two concurrent presentations of
/// the same token, exactly one is `Fresh`.
pub async fn spend_refresh_token(c: &impl GenericClient, hash: &[u8]) -> Result<Spend, Db> {
    let spent = c
        .query_opt(
            "UPDATE nexus.refresh_tokens SET spent_at = now()
             WHERE token_hash = $1 AND spent_at IS NULL AND expires_at > now()
             RETURNING session_id",
            &[&hash],
        )
        .await?;
    if let Some(row) = spent {
        let session_id: Uuid = row.get(0);
        return Ok(match live_session(c, session_id).await? {
            Some(s) => Spend::Fresh(s.principal),
            None => Spend::Invalid,
        });
    }
    let known = c
        .query_opt(
            "SELECT t.session_id, s.user_id FROM nexus.refresh_tokens t JOIN nexus.sessions s ON s.id = t.session_id
             WHERE t.token_hash = $1 AND t.spent_at IS NOT NULL",
            &[&hash],
        )
        .await?;
    Ok(match known {
        Some(r) => Spend::Reused {
            session_id: r.get(0),
            user_id: r.get(1),
        },
        None => Spend::Invalid,
    })
}

/// Deletes expired and revoked sessions (with their refresh tokens).
pub async fn cleanup_sessions(c: &impl GenericClient) -> Result<u64, Db> {
    c.execute(
        "DELETE FROM nexus.sessions WHERE revoked_at IS NOT NULL OR expires_at <= now()",
        &[],
    )
    .await
}

/// One audit event.
#[derive(Debug, Default)]
pub struct Audit<'a> {
    pub event: &'a str,
    pub username: Option<&'a str>,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub detail: Option<&'a str>,
}

pub async fn audit(c: &impl GenericClient, a: Audit<'_>) -> Result<(), Db> {
    c.execute(
        "INSERT INTO nexus.audit_log (event, username, user_id, session_id, ip, user_agent, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &a.event,
            &a.username,
            &a.user_id,
            &a.session_id,
            &a.ip,
            &a.user_agent,
            &a.detail,
        ],
    )
    .await?;
    Ok(())
}

/// How failed logins are slowed down: per key, the first `free` failures
/// within `window` cost nothing; each one after that makes the next
/// attempt wait twice as long as the last (1 s, 2 s, 4 s … up to `max_wait`).
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    pub free: i32,
    pub window: Duration,
    pub max_wait: Duration,
}

/// The throttle keys of a login attempt: the account from this address,
/// and the address.
pub fn throttle_keys(username: &str, ip: &str) -> [String; 2] {
    [format!("acct:{username}\n{ip}"), format!("addr:{ip}")]
}

/// Takes an attempt on every key at once, counting it as a failure until
/// [`login_succeeded`] says otherwise: either all keys allow it (and all
/// count it), or none does and the seconds to wait are returned. One
/// transaction, so that parallel guesses are counted one by one.
pub async fn take_login_attempt(
    c: &mut Client,
    keys: &[(&str, Throttle)],
) -> Result<Result<(), f64>, Db> {
    let tx = c.transaction().await?;
    for (key, t) in keys {
        let taken = tx
            .query_opt(
                "INSERT INTO nexus.login_throttle AS t (key, failures, last_at)
                 VALUES ($1, 1, now())
                 ON CONFLICT (key) DO UPDATE SET
                     failures = CASE WHEN t.last_at < now() - make_interval(secs => $2) THEN 1
                                     ELSE t.failures + 1 END,
                     last_at = now(),
                     blocked_until = CASE
                         WHEN t.last_at < now() - make_interval(secs => $2) THEN NULL
                         WHEN t.failures + 1 > $3 THEN now() + make_interval(secs =>
                             least(power(2, least(t.failures + 1 - $3 - 1, 30)), $4))
                         ELSE NULL END
                 WHERE t.blocked_until IS NULL OR t.blocked_until <= now()
                 RETURNING failures",
                &[
                    key,
                    &t.window.as_secs_f64(),
                    &t.free,
                    &t.max_wait.as_secs_f64(),
                ],
            )
            .await?;
        if taken.is_none() {
            let wait: f64 = tx
                .query_one(
                    "SELECT greatest(extract(epoch FROM blocked_until - now()), 0)::float8
                     FROM nexus.login_throttle WHERE key = $1",
                    &[key],
                )
                .await?
                .get(0);
            tx.rollback().await?;
            return Ok(Err(wait));
        }
    }
    tx.commit().await?;
    Ok(Ok(()))
}

/// Forgets throttle keys idle longer than any window, so that the table
/// holds only recent guessers.
pub async fn prune_login_throttle(c: &impl GenericClient, idle: Duration) -> Result<u64, Db> {
    c.execute(
        "DELETE FROM nexus.login_throttle WHERE last_at < now() - make_interval(secs => $1)
           AND (blocked_until IS NULL OR blocked_until < now())",
        &[&idle.as_secs_f64()],
    )
    .await
}

/// The attempt taken on `keys` was a success: the account from this address
/// starts afresh, and the address gets its attempt back.
pub async fn login_succeeded(c: &impl GenericClient, keys: &[String; 2]) -> Result<(), Db> {
    c.execute(
        "DELETE FROM nexus.login_throttle WHERE key = $1",
        &[&keys[0]],
    )
    .await?;
    c.execute(
        "UPDATE nexus.login_throttle SET failures = greatest(failures - 1, 0) WHERE key = $1",
        &[&keys[1]],
    )
    .await?;
    Ok(())
}
