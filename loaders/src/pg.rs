//! Connections and the classification of PostgreSQL errors that every
//! retry and reject decision rests on.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

/// Opens a connection and drives it on the runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    connect_with(&url.parse()?).await
}

/// The same with a prepared configuration (application name, options).
pub async fn connect_with(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Opens a connection, retrying transient failures with backoff.
pub async fn connect_retrying(url: &str) -> Result<Client, tokio_postgres::Error> {
    connect_retrying_with(&url.parse()?).await
}

/// [`connect_retrying`] with a prepared configuration.
pub async fn connect_retrying_with(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let mut attempt = 0;
    loop {
        match connect_with(config).await {
            Ok(c) => return Ok(c),
            Err(e) if classify(&e) == ErrorKind::Transient && attempt < RETRIES => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "connecting to PostgreSQL failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How many times a transient failure is retried.
pub const RETRIES: u32 = 6;

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
        // No SQLSTATE: the connection failed or closed.
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
    match &code.code()[..2] {
        // Data exceptions and constraint violations; and program limits,
        // which a single value can hit ("stack depth limit exceeded" on a
        // deeply nested document, "index row size exceeds maximum").
        "22" | "23" | "54" => ErrorKind::Row,
        _ => ErrorKind::Fatal,
    }
}

/// A database error as a person reads it: message, detail, constraint.
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
        None => e.to_string(),
    }
}
