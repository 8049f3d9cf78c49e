//! The one `Config` of the binary: SPEC §2's variables, read from an
//! optional `nexus.toml` (`NEXUS_CONFIG`, else `./nexus.toml`) and then the
//! environment, which wins.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Settings as `nexus.toml` spells them: the variable names in lower case,
/// without the `NEXUS_` prefix.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    models: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    copy_connections: Option<usize>,
    log_format: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Option<String>,
    pub models: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub copy_connections: usize,
    pub log_format: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    File { path: String, message: String },
    #[error("{name}: {message}")]
    Var { name: &'static str, message: String },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    pub fn load() -> Result<Config, ConfigError> {
        let file = match env("NEXUS_CONFIG") {
            Some(p) => read_file(Path::new(&p))?,
            None if Path::new("nexus.toml").exists() => read_file(Path::new("nexus.toml"))?,
            None => FileConfig::default(),
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let copy_connections = match env("NEXUS_COPY_CONNECTIONS") {
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or(ConfigError::Var {
                    name: "NEXUS_COPY_CONNECTIONS",
                    message: format!("`{v}` is not a number from 1 to 64"),
                })?,
            None => file.copy_connections.unwrap_or(cores),
        };
        Ok(Config {
            database_url: env("DATABASE_URL").or(file.database_url),
            models: env("NEXUS_MODELS").map(PathBuf::from).or(file.models),
            data_dir: env("NEXUS_DATA_DIR")
                .map(PathBuf::from)
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(".nexus")),
            copy_connections,
            log_format: env("NEXUS_LOG_FORMAT").or(file.log_format),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let err = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    toml::from_str(&text).map_err(|e| err(e.to_string()))
}
