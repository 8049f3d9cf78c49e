//! `nexus cache warm|stats|invalidate`, and the one place that opens a
//! process's cache from the configuration (for `serve`, `load` and these).

use std::io::Write;
use std::sync::Arc;

use clap::Subcommand;
use nexus_loaders::cache::{Cache, CacheConfig, CachedModel, Listening, ModelStats, keys};
use nexus_pipeline::model::CacheStrategy;
use serde::Serialize;

use crate::config::Config;
use crate::db::{self, Database};
use crate::exit;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Put models' most recent rows into Redis (those with `warm = true`,
    /// or the one named), where absent.
    Warm {
        #[arg(long)]
        model: Option<String>,
    },
    /// Hits, misses and hit ratio per model (from the servers), sizes,
    /// write-behind drops and Redis's state.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Drop one key, or a whole model, from Redis and every server's memory.
    Invalidate {
        #[arg(long)]
        model: String,
        #[arg(long)]
        key: Option<String>,
    },
}

/// The process's cache: Redis when configured; a local tier only for a
/// long-lived process (a server), whose `listening` says when it is safe.
pub fn open(config: &Config, local: bool, listening: Listening) -> anyhow::Result<Arc<Cache>> {
    Cache::new(
        CacheConfig {
            redis_url: config.redis_url.clone(),
            redis_ca: config.redis_ca.clone(),
            prefix: config.redis_prefix.clone(),
            local_bytes: local.then_some(config.cache_memory),
            write_behind_capacity: config.cache_write_behind,
            write_behind_bytes: usize::try_from(config.cache_write_behind_memory)
                .unwrap_or(usize::MAX),
            redis_timeout: config.redis_timeout,
        },
        listening,
    )
    .map_err(|e| exit::usage(e.to_string()))
}

/// How long a finished process waits for its write-behind rows.
const WRITE_BEHIND_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Before a short-lived process (a load, `nexus mcp`) ends: write-behind
/// rows still queued are written; what cannot be written stays pending and
/// is repaired later.
pub async fn finish(cache: &Cache, database: &Database) -> anyhow::Result<()> {
    if !cache.has_redis() {
        return Ok(());
    }
    if !cache.drain(WRITE_BEHIND_GRACE).await {
        tracing::warn!("the write-behind queue did not drain; its batches stay pending for repair");
    }
    let client = database.connect().await?;
    if let Err(e) = cache.settle(&client).await {
        tracing::warn!(error = %e, "the cache's pending writes are repaired later");
    }
    Ok(())
}

/// A model the cache can hold, or a usage error saying why not.
pub fn cached_model(models: &nexus_pipeline::ModelSet, name: &str) -> anyhow::Result<CachedModel> {
    let model = models.get(name).map_err(|e| exit::usage(e.to_string()))?;
    let view = CachedModel::view(&model).map_err(|e| exit::usage(e.to_string()))?;
    if view.strategy == CacheStrategy::None {
        return Err(exit::usage(format!(
            "model `{name}` is not cached (cache strategy none)"
        )));
    }
    Ok(view)
}

/// One cached model's figures.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ModelLine {
    pub model: String,
    /// none, write_through or write_behind.
    pub strategy: String,
    pub ttl_seconds: u64,
    /// Reads answered from a server's memory.
    pub hits_local: i64,
    /// Reads answered from Redis.
    pub hits_redis: i64,
    /// Reads that went to PostgreSQL.
    pub misses: i64,
    /// Hits over reads; null before any read.
    pub hit_ratio: Option<f64>,
    /// Records of the model in Redis; null without Redis.
    pub redis_entries: Option<u64>,
}

/// The cache across servers: Redis's state and each cached model's figures.
#[derive(Serialize, schemars::JsonSchema)]
pub struct StatsReport {
    /// `up`, `down (why)` or `not configured`.
    pub redis: String,
    pub redis_used_memory: Option<u64>,
    /// Committed batches whose Redis write is still owed (repaired when
    /// Redis answers).
    pub pending_batches: i64,
    pub models: Vec<ModelLine>,
}

pub async fn run(config: &Config, command: CacheCommand) -> anyhow::Result<u8> {
    let models = db::models(config)?;
    let database = Database::open(config).await?;
    let result = async {
        let mut client = database.connect().await?;
        nexus_loaders::migrate::migrate(&mut client).await?;
        let cache = open(config, false, Listening::default())?;
        let mut out = std::io::stdout().lock();
        match command {
            CacheCommand::Warm { model } => {
                if !cache.has_redis() {
                    return Err(exit::usage(
                        "cache warm fills Redis: set REDIS_URL (servers warm their own memory at startup)",
                    ));
                }
                let names: Vec<String> = match model {
                    Some(m) => vec![m],
                    None => models.iter().filter(|m| m.warm).map(|m| m.name.clone()).collect(),
                };
                for name in names {
                    let m = cached_model(&models, &name)?;
                    let n = cache
                        .warm(&m, &client, config.cache_warm_rows)
                        .await
                        .map_err(|e| exit::failed(format!("warming {name}: {e}")))?;
                    writeln!(out, "{name}: {n} rows warmed")?;
                }
                Ok(0)
            }
            CacheCommand::Invalidate { model, key } => {
                let m = cached_model(&models, &model)?;
                let key = key
                    .map(|k| keys::canonical(m.key_type, &k))
                    .transpose()
                    .map_err(|e| exit::usage(e.to_string()))?;
                let keys = key.map(|k| vec![k]);
                cache
                    .invalidate(&client, &m, keys.as_deref())
                    .await
                    .map_err(|e| exit::failed(format!("invalidating: {e}")))?;
                match keys {
                    Some(k) => writeln!(out, "{model}: key {} invalidated", k[0])?,
                    None => writeln!(out, "{model}: every entry invalidated")?,
                }
                Ok(0)
            }
            CacheCommand::Stats { json } => {
                let report = stats(&cache, &client, &models).await?;
                if json {
                    writeln!(out, "{}", serde_json::to_string(&report)?)?;
                } else {
                    print_stats(&mut out, &report)?;
                }
                Ok(0)
            }
        }
    }
    .await;
    database.close().await;
    result
}

pub async fn stats(
    cache: &Cache,
    client: &tokio_postgres::Client,
    models: &nexus_pipeline::ModelSet,
) -> anyhow::Result<StatsReport> {
    let rows = client
        .query(
            "SELECT model, sum(hits_local)::bigint, sum(hits_redis)::bigint, sum(misses)::bigint
             FROM nexus.cache_stats GROUP BY model",
            &[],
        )
        .await?;
    let (redis, used) = match cache.redis_used_memory().await {
        None => ("not configured".to_string(), None),
        Some(Ok(m)) => ("up".to_string(), Some(m)),
        Some(Err(e)) => (format!("down ({e})"), None),
    };
    let mut lines = Vec::new();
    for m in models.iter() {
        let Some(c) = CachedModel::of(m) else {
            continue;
        };
        let found = rows.iter().find(|r| r.get::<_, String>(0) == m.name);
        let get = |i| found.map_or(0, |r| r.get::<_, i64>(i));
        let (local, redis_hits, misses) = (get(1), get(2), get(3));
        let counts = ModelStats {
            model: m.name.clone(),
            hits_local: local as u64,
            hits_redis: redis_hits as u64,
            misses: misses as u64,
        };
        let entries = match used {
            Some(_) => cache.redis_entries(&m.name).await.and_then(Result::ok),
            None => None,
        };
        lines.push(ModelLine {
            model: m.name.clone(),
            strategy: c.strategy.as_str().to_string(),
            ttl_seconds: c.ttl.as_secs(),
            hits_local: local,
            hits_redis: redis_hits,
            misses,
            hit_ratio: counts.hit_ratio(),
            redis_entries: entries,
        });
    }
    Ok(StatsReport {
        redis,
        redis_used_memory: used,
        pending_batches: nexus_loaders::cache::pending_batches(client).await?,
        models: lines,
    })
}

fn print_stats(out: &mut impl Write, r: &StatsReport) -> std::io::Result<()> {
    writeln!(
        out,
        "redis: {}{}",
        r.redis,
        r.redis_used_memory
            .map(|m| format!(", {:.1} MiB used", m as f64 / 1048576.0))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "batches with a pending Redis write: {}",
        r.pending_batches
    )?;
    writeln!(
        out,
        "{:<24} {:<14} {:>8} {:>10} {:>10} {:>10} {:>7} {:>12}",
        "model", "strategy", "ttl", "local", "redis", "miss", "ratio", "in redis"
    )?;
    for m in &r.models {
        writeln!(
            out,
            "{:<24} {:<14} {:>7}s {:>10} {:>10} {:>10} {:>7} {:>12}",
            m.model,
            m.strategy,
            m.ttl_seconds,
            m.hits_local,
            m.hits_redis,
            m.misses,
            m.hit_ratio
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            m.redis_entries
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
        )?;
    }
    Ok(())
}
