//! The one `Config` of the binary: the README's settings, read from an
//! optional `nexus.toml` (`NEXUS_CONFIG`, else `./nexus.toml`) and then the
//! environment, which wins. In the file a variable is written in lower case
//! without the `NEXUS_` prefix (`NEXUS_RATE_LIMIT` → `rate_limit`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_pipeline::duration::{parse_duration, split_quantity};

use crate::jobs::storage::StorageLocation;

/// (environment variable, key in nexus.toml)
const SETTINGS: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("REDIS_URL", "redis_url"),
    ("NEXUS_REDIS_PREFIX", "redis_prefix"),
    ("NEXUS_REDIS_CA", "redis_ca"),
    ("NEXUS_REDIS_TIMEOUT", "redis_timeout"),
    ("NEXUS_CACHE_MEMORY", "cache_memory"),
    ("NEXUS_CACHE_WRITE_BEHIND", "cache_write_behind"),
    (
        "NEXUS_CACHE_WRITE_BEHIND_MEMORY",
        "cache_write_behind_memory",
    ),
    ("NEXUS_CACHE_WARM_ROWS", "cache_warm_rows"),
    ("NEXUS_MODELS", "models"),
    ("NEXUS_DATA_DIR", "data_dir"),
    ("NEXUS_STORAGE", "storage"),
    ("NEXUS_BIND", "bind"),
    ("NEXUS_JWT_SECRET", "jwt_secret"),
    ("NEXUS_ACCESS_TTL", "access_ttl"),
    ("NEXUS_REFRESH_TTL", "refresh_ttl"),
    ("NEXUS_RATE_LIMIT", "rate_limit"),
    ("NEXUS_RATE_BURST", "rate_burst"),
    ("NEXUS_MAX_UPLOAD", "max_upload"),
    ("NEXUS_DB_POOL_MAX", "db_pool_max"),
    ("NEXUS_DB_POOL_RECYCLE", "db_pool_recycle"),
    ("NEXUS_COPY_CONNECTIONS", "copy_connections"),
    ("NEXUS_CORS_ORIGINS", "cors_origins"),
    ("NEXUS_ADMIN_PASSWORD", "admin_password"),
    ("NEXUS_LOG_FORMAT", "log_format"),
    ("NEXUS_WORKERS", "workers"),
    ("NEXUS_JOB_LEASE", "job_lease"),
    ("NEXUS_WS_HEARTBEAT", "ws_heartbeat"),
    ("NEXUS_WS_EVENT_BUFFER", "ws_event_buffer"),
    ("NEXUS_UPLOAD_RETENTION", "upload_retention"),
    ("NEXUS_DB_RETRY", "db_retry"),
    ("NEXUS_REQUEST_TIMEOUT", "request_timeout"),
    ("NEXUS_DB_POOL_TIMEOUT", "db_pool_timeout"),
    ("NEXUS_MCP_ROOTS", "mcp_roots"),
    ("NEXUS_TRUSTED_PROXIES", "trusted_proxies"),
    ("NEXUS_METRICS_BIND", "metrics_bind"),
    ("NEXUS_TLS_CERT", "tls_cert"),
    ("NEXUS_TLS_KEY", "tls_key"),
];

/// The certificate chain and private key files of HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// The CA certificates (PEM) a `rediss://` server's certificate is
    /// checked against, instead of the system's.
    pub redis_ca: Option<PathBuf>,
    /// Prefix of every Redis key and channel, so that installations (and
    /// tests) can share one Redis.
    pub redis_prefix: String,
    /// How long one Redis call may take before it counts as failed.
    pub redis_timeout: Duration,
    /// Memory budget of a server's local cache tier.
    pub cache_memory: u64,
    /// Rows the write-behind queue holds before it drops (and invalidates).
    pub cache_write_behind: usize,
    /// Bytes of batch rows the write-behind queue keeps to print them
    /// (beyond it rows are read back).
    pub cache_write_behind_memory: u64,
    /// Rows per model warmed at startup (models with `warm = true`).
    pub cache_warm_rows: i64,
    pub models: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Where uploads are kept: `$NEXUS_DATA_DIR/uploads` unless set.
    pub storage: StorageLocation,
    pub bind: String,
    pub jwt_secret: Option<String>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub max_upload: u64,
    /// Job workers per `serve` process.
    pub workers: usize,
    /// How long a worker's claim on a job lasts unless renewed.
    pub job_lease: Duration,
    /// How often a WebSocket client gets a heartbeat.
    pub ws_heartbeat: Duration,
    /// Job events a server buffers for its WebSocket relays; a relay that
    /// falls further behind resends the current state of what it follows.
    pub ws_event_buffer: usize,
    /// How long the upload of a finished job is kept (a failed one, for a
    /// look at what was sent).
    pub upload_retention: Duration,
    /// How long PostgreSQL may be out of reach (a failover, a restart)
    /// before a load or a connection gives up.
    pub db_retry: Duration,
    pub db_pool_max: usize,
    /// How long a request may wait for a pooled connection (or for one to
    /// be opened) before it is answered 503.
    pub db_pool_timeout: Duration,
    /// How long a request may take before it is answered 503 (uploads,
    /// which stream, excepted); also each pooled session's statement_timeout.
    pub request_timeout: Duration,
    pub db_pool_recycle: Duration,
    pub copy_connections: usize,
    pub cors_origins: Vec<String>,
    /// Directories `load_file` may read over MCP's HTTP transport.
    pub mcp_roots: Vec<PathBuf>,
    /// Proxies whose `Forwarded`/`X-Forwarded-For` name the client
    /// (src/api/client_addr.rs).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Where `/metrics` is served instead of the main listener, so that
    /// only the scraper's network reaches it.
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// `serve` speaks HTTPS with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    pub admin_password: Option<String>,
    pub log_format: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    File { path: String, message: String },
    #[error("{name}: {message}")]
    Var { name: &'static str, message: String },
}

/// Where settings come from: the environment over the file.
struct Sources {
    file: toml::Table,
}

impl Sources {
    fn get(&self, var: &'static str) -> Option<String> {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
            return Some(v);
        }
        let key = SETTINGS.iter().find(|(v, _)| *v == var)?.1;
        match self.file.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Array(a) => Some(
                a.iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            other => Some(other.to_string()),
        }
    }

    fn parse<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse(&v).map_err(|message| ConfigError::Var { name: var, message }),
        }
    }
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    min: T,
    max: T,
) -> impl Fn(&str) -> Result<T, String> {
    move |v| {
        v.trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= min && *n <= max)
            .ok_or_else(|| format!("`{v}` is not a number from {min} to {max}"))
    }
}

/// A duration of at least `min`.
fn at_least(min: Duration) -> impl Fn(&str) -> Result<Duration, String> {
    move |v| {
        parse_duration(v).and_then(|d| {
            if d >= min {
                Ok(d)
            } else {
                Err(format!("`{v}` is shorter than the least allowed, {min:?}"))
            }
        })
    }
}

/// `10GiB`, `512MiB`, `100MB`, `1024` (bytes).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let (n, unit) = split_quantity(v).ok_or_else(|| format!("`{v}` is not a size (try 10GiB)"))?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("`{v}`: unknown size unit `{u}`")),
    };
    Ok((n * mult) as u64)
}

impl Config {
    pub fn load() -> Result<Config, ConfigError> {
        let file = match std::env::var("NEXUS_CONFIG").ok().filter(|v| !v.is_empty()) {
            Some(p) => read_file(Path::new(&p))?,
            None if Path::new("nexus.toml").exists() => read_file(Path::new("nexus.toml"))?,
            None => toml::Table::new(),
        };
        let s = Sources { file };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let duration = |v: &str| parse_duration(v);
        let data_dir = s
            .get("NEXUS_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".nexus"));
        Ok(Config {
            database_url: s.get("DATABASE_URL"),
            redis_url: s.get("REDIS_URL"),
            redis_ca: s.get("NEXUS_REDIS_CA").map(PathBuf::from),
            redis_prefix: s.parse("NEXUS_REDIS_PREFIX", "nexus".to_string(), |v| {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_graphic() && b != b'*');
                ok.then(|| v.to_string())
                    .ok_or_else(|| format!("`{v}`: use 1 to 64 visible characters, no `*`"))
            })?,
            redis_timeout: s.parse(
                "NEXUS_REDIS_TIMEOUT",
                Duration::from_millis(500),
                at_least(Duration::from_millis(10)),
            )?,
            cache_memory: s.parse("NEXUS_CACHE_MEMORY", 128 << 20, parse_size)?,
            cache_write_behind: s.parse(
                "NEXUS_CACHE_WRITE_BEHIND",
                1_000_000,
                number(0, 100_000_000),
            )?,
            cache_write_behind_memory: s.parse(
                "NEXUS_CACHE_WRITE_BEHIND_MEMORY",
                64 << 20,
                parse_size,
            )?,
            cache_warm_rows: s.parse("NEXUS_CACHE_WARM_ROWS", 10_000, number(0, 10_000_000))?,
            models: s.get("NEXUS_MODELS").map(PathBuf::from),
            storage: s.parse(
                "NEXUS_STORAGE",
                StorageLocation::Directory(data_dir.join("uploads")),
                StorageLocation::parse,
            )?,
            data_dir,
            bind: s
                .get("NEXUS_BIND")
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            jwt_secret: s.get("NEXUS_JWT_SECRET"),
            access_ttl: s.parse("NEXUS_ACCESS_TTL", Duration::from_secs(15 * 60), duration)?,
            refresh_ttl: s.parse(
                "NEXUS_REFRESH_TTL",
                Duration::from_secs(7 * 86400),
                duration,
            )?,
            rate_limit: s.parse("NEXUS_RATE_LIMIT", 300, number(1, 1_000_000_000))?,
            rate_burst: s.parse("NEXUS_RATE_BURST", 50, number(1, 1_000_000_000))?,
            max_upload: s.parse("NEXUS_MAX_UPLOAD", 10 << 30, parse_size)?,
            workers: s.parse("NEXUS_WORKERS", 1, number(0, 64))?,
            job_lease: s.parse(
                "NEXUS_JOB_LEASE",
                Duration::from_secs(30),
                at_least(Duration::from_secs(1)),
            )?,
            ws_heartbeat: s.parse(
                "NEXUS_WS_HEARTBEAT",
                Duration::from_secs(15),
                at_least(Duration::from_millis(100)),
            )?,
            ws_event_buffer: s.parse("NEXUS_WS_EVENT_BUFFER", 4096, number(1, 1 << 20))?,
            upload_retention: s.parse(
                "NEXUS_UPLOAD_RETENTION",
                Duration::from_secs(7 * 86400),
                at_least(Duration::from_secs(1)),
            )?,
            db_retry: s.parse(
                "NEXUS_DB_RETRY",
                nexus_loaders::pg::DEFAULT_RETRY_WINDOW,
                duration,
            )?,
            db_pool_max: s.parse("NEXUS_DB_POOL_MAX", 16, number(1, 1000))?,
            db_pool_timeout: s.parse(
                "NEXUS_DB_POOL_TIMEOUT",
                Duration::from_secs(5),
                at_least(Duration::from_millis(10)),
            )?,
            request_timeout: s.parse(
                "NEXUS_REQUEST_TIMEOUT",
                Duration::from_secs(30),
                at_least(Duration::from_millis(100)),
            )?,
            db_pool_recycle: s.parse(
                "NEXUS_DB_POOL_RECYCLE",
                Duration::from_secs(20 * 60),
                duration,
            )?,
            copy_connections: s.parse("NEXUS_COPY_CONNECTIONS", cores, number(1, 64))?,
            cors_origins: s
                .get("NEXUS_CORS_ORIGINS")
                .map(|v| list(&v).map(str::to_string).collect())
                .unwrap_or_default(),
            mcp_roots: s
                .get("NEXUS_MCP_ROOTS")
                .map(|v| list(&v).map(PathBuf::from).collect())
                .unwrap_or_default(),
            trusted_proxies: s.parse("NEXUS_TRUSTED_PROXIES", Vec::new(), parse_trusted)?,
            metrics_bind: s.parse("NEXUS_METRICS_BIND", None, |v| {
                v.trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("`{v}` is not host:port (e.g. 127.0.0.1:9464)"))
            })?,
            tls: match (s.get("NEXUS_TLS_CERT"), s.get("NEXUS_TLS_KEY")) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.into(),
                    key: key.into(),
                }),
                (None, None) => None,
                (cert, _) => {
                    let (name, other) = if cert.is_some() {
                        ("NEXUS_TLS_CERT", "NEXUS_TLS_KEY")
                    } else {
                        ("NEXUS_TLS_KEY", "NEXUS_TLS_CERT")
                    };
                    return Err(ConfigError::Var {
                        name,
                        message: format!("set without {other}: HTTPS needs both"),
                    });
                }
            },
            admin_password: s.get("NEXUS_ADMIN_PASSWORD"),
            log_format: s.get("NEXUS_LOG_FORMAT"),
        })
    }
}

/// `NEXUS_TRUSTED_PROXIES`: CIDRs or single addresses, comma separated.
pub fn parse_trusted(v: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list(v)
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("`{s}` is not an address or CIDR (e.g. 10.0.0.0/8)"))
        })
        .collect()
}

/// The items of a comma-separated setting (a list in nexus.toml arrives
/// joined by commas).
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|o| !o.is_empty())
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let err = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    for key in table.keys() {
        if !SETTINGS.iter().any(|(_, k)| k == key) {
            return Err(err(format!(
                "unknown setting `{key}` (known: {})",
                SETTINGS
                    .iter()
                    .map(|(_, k)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1kb").unwrap(), 1000);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("lots").is_err());
    }
}
