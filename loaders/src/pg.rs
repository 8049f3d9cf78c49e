//! Connections and the classification of PostgreSQL errors that every
//! retry and reject decision rests on.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::tls::Database;

/// Opens a connection and drives it on the runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    Database::parse(url)?.connect().await
}

/// Opens a connection, retrying transient failures with backoff for up to
/// `window`.
pub async fn connect_retrying(
    url: &str,
    window: Duration,
) -> Result<Client, tokio_postgres::Error> {
    connect_retrying_with(&Database::parse(url)?, window).await
}

/// [`connect_retrying`] with a prepared configuration.
pub async fn connect_retrying_with(
    database: &Database,
    window: Duration,
) -> Result<Client, tokio_postgres::Error> {
    let mut retry = Retry::new(window);
    loop {
        match database.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if classify(&e) == ErrorKind::Transient && retry.again().await => {
                tracing::warn!(error = %e, attempt = retry.attempt, "connecting to PostgreSQL failed; retrying");
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long transient failures are retried by default: long enough to
/// ride out a typical failover (`NEXUS_DB_RETRY`).
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(60);

/// Retries of one operation within a window of time from its first failure,
/// with growing waits (100 ms doubling, capped at 5 s).
#[derive(Debug)]
pub struct Retry {
    window: Duration,
    first_failure: Option<tokio::time::Instant>,
    pub attempt: u32,
}

impl Retry {
    pub fn new(window: Duration) -> Retry {
        Retry {
            window,
            first_failure: None,
            attempt: 0,
        }
    }

    /// After a failure: waits before the next attempt and returns true, or
    /// returns false at once when the window is spent. The last wait is cut
    /// to end with the window, so that the last attempt comes at its end.
    pub async fn again(&mut self) -> bool {
        let first = *self
            .first_failure
            .get_or_insert_with(tokio::time::Instant::now);
        let left = self.window.saturating_sub(first.elapsed());
        if left.is_zero() {
            return false;
        }
        self.attempt += 1;
        tokio::time::sleep(backoff(self.attempt).min(left)).await;
        true
    }
}

/// 100 ms doubling, capped at 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5000))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connection loss and the server's "try again" states.
    Transient,
    /// Bad data, a violated constraint or a limit one row hit: some row
    /// is at fault.
    Row,
    /// Anything else: retrying cannot help.
    Fatal,
}

pub fn classify(e: &tokio_postgres::Error) -> ErrorKind {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed or closed, unless TLS refused
        // the server, which trying again does not change.
        if crate::tls::refused(e) {
            return ErrorKind::Fatal;
        }
        return ErrorKind::Transient;
    };
    if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ]
    .contains(code)
        || code.code().starts_with("08")
    {
        return ErrorKind::Transient;
    }
    match class(code) {
        // Data exceptions and constraint violations; and program limits,
        // which a single value can hit ("stack depth limit exceeded" on a
        // deeply nested document, "index row size exceeds maximum").
        "22" | "23" | "54" => ErrorKind::Row,
        _ => ErrorKind::Fatal,
    }
}

/// An SQLSTATE's class: its first two characters.
fn class(code: &SqlState) -> &str {
    code.code().get(..2).unwrap_or("")
}

/// A database error as a person reads it: the server's message and
/// detail, or the driver's words followed by their causes (the driver's
/// own text alone, "error connecting to server", hides what went wrong).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(": ");
                s.push_str(d);
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(": ");
                s.push_str(&plain(&c.to_string()));
                cause = c.source();
            }
            s
        }
    }
}

/// An operating system's error text without its code: `connection refused`.
fn plain(text: &str) -> String {
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if chars.clone().next().is_some_and(char::is_lowercase) => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text.to_string(),
    }
}

/// Why the first connection of a command failed.
#[derive(Debug, thiserror::Error)]
pub enum FirstContact {
    /// The settings are wrong (the URL, a missing password, the password,
    /// the database's or user's name): retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// The server is not there (no such host, nothing listening, no route):
    /// not retried at a first connection, where it is nearly always a typo.
    #[error("{0}")]
    Unreachable(String),
}

/// Connects once to check `url` before a command relies on it: a server
/// that is starting up is waited for (within `window`); anything retrying
/// cannot cure fails at once, saying what failed and where.
pub async fn first_contact(url: &str, window: Duration) -> Result<Client, FirstContact> {
    let database = Database::parse(url)
        .map_err(|e: tokio_postgres::Error| FirstContact::Config(describe(&e)))?;
    let config = &database.config;
    let place = {
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    };
    let user = config.get_user().unwrap_or("?").to_string();
    let mut retry = Retry::new(window);
    loop {
        let e = match database.connect().await {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        if crate::tls::refused(&e) {
            let what = describe(&e);
            let hint = if what.contains("UnknownIssuer") {
                ": the server's certificate is not signed by a CA of sslrootcert"
            } else {
                ""
            };
            return Err(FirstContact::Config(format!(
                "PostgreSQL at {place}: {what}{hint} (sslmode={})",
                database.mode
            )));
        }
        if let Some(code) = e.code() {
            if classify(&e) == ErrorKind::Transient && retry.again().await {
                tracing::warn!(error = %describe(&e), attempt = retry.attempt, "PostgreSQL is not ready; waiting");
                continue;
            }
            let what = describe(&e);
            return Err(match class(code) {
                // Authorization, or a database or user that does not exist.
                "28" | "3D" => {
                    FirstContact::Config(format!("{what} (connecting to {place} as {user})"))
                }
                _ => FirstContact::Unreachable(format!(
                    "PostgreSQL at {place} refused the connection: {what}"
                )),
            });
        }
        let what = describe(&e);
        return Err(match e.to_string().as_str() {
            "invalid configuration" | "invalid connection string" | "authentication error" => {
                FirstContact::Config(format!("{what} (connecting to {place} as {user})"))
            }
            _ => FirstContact::Unreachable(format!(
                "could not connect to {place}: {}",
                what.strip_prefix("error connecting to server: ")
                    .unwrap_or(&what)
            )),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_last_as_long_as_the_window_and_no_longer() {
        let started = tokio::time::Instant::now();
        let mut retry = Retry::new(Duration::from_secs(60));
        while retry.again().await {}
        let spent = started.elapsed();
        assert!(spent >= Duration::from_secs(60), "{spent:?}");
        assert!(spent < Duration::from_secs(61), "{spent:?}");
        assert!(retry.attempt >= 12, "{}", retry.attempt);
        let mut none = Retry::new(Duration::ZERO);
        assert!(!none.again().await);
    }
}
