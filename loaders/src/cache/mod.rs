//! The last stage of a load and the read side that uses it: rows as JSON
//! by model and key in two tiers — a local in-process tier
//! (servers only; a CLI load has nobody to serve from it) and Redis when
//! `REDIS_URL` is set.
//!
//! Never older than what is committed:
//! - every batch of a cached model takes a version (`nexus.cache_version`)
//!   just before its COMMIT, after its row locks: of two transactions that
//!   write one key, the later commit has the higher version. Redis holds
//!   `version|expires|json` (a tombstone has no json; layout in
//!   redis_tier.rs) and a write only replaces an older version; a model flush is a marker below which entries are dead.
//! - fills from PostgreSQL (reads, warming) replace only what they observed
//!   (compare-and-set in a script), so a fill that raced a load loses.
//! - the batch NOTIFYs its keys (`nexus_cache`) inside its transaction, so
//!   every server drops them from its local tier exactly when they commit.
//! - a batch is marked `cache_pending` in its checkpoint until its Redis
//!   write is done; what a crash or a Redis outage leaves pending is repaired
//!   by flushing the model when Redis answers again.

mod behind;
pub mod from_batch;
mod idle_thread;
pub mod invalidated;
pub mod keys;
mod local;
pub mod notice;
mod redis_tier;
pub use redis_tier::{Layout, Stored, place};
mod stats;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use nexus_pipeline::Model;
use nexus_pipeline::model::CacheStrategy;
use nexus_pipeline::types::{ColumnType, quote_ident};
use tokio_postgres::GenericClient;

use local::LocalTier;
use redis_tier::RedisTier;

pub use invalidated::Listening;
pub use keys::KeyError;
pub use stats::{ModelStats, StatsSnapshot};
pub use writes::{BatchCache, NOTIFY_SQL, PendingWrite, pending_batches};

/// Where a read was answered from (`X-Cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Local,
    Redis,
    Miss,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Redis => "redis",
            Tier::Miss => "miss",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub redis_url: Option<String>,
    /// CA certificates (PEM) for a `rediss://` server, instead of the
    /// system's.
    pub redis_ca: Option<std::path::PathBuf>,
    pub prefix: String,
    /// Memory budget of the local tier; `None`: no local tier.
    pub local_bytes: Option<u64>,
    /// Rows the write-behind queue holds before it drops (and invalidates).
    pub write_behind_capacity: usize,
    /// Bytes of batch rows it keeps to print them; the rest are read back.
    pub write_behind_bytes: usize,
    /// How long one Redis call may take before it counts as failed.
    pub redis_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("REDIS_URL: {0}")]
    RedisUrl(redis::RedisError),
    #[error("NEXUS_REDIS_CA: {0}")]
    RedisCa(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("Redis is not configured")]
    NoRedis,
}

/// What the cache needs to know of a model.
#[derive(Debug, Clone)]
pub struct CachedModel {
    pub name: String,
    pub strategy: CacheStrategy,
    pub ttl: Duration,
    pub table: String,
    pub key_column: String,
    pub key_type: ColumnType,
}

impl CachedModel {
    /// The model's cache view; `None` if it is not cached.
    pub fn of(model: &Model) -> Option<CachedModel> {
        if model.cache.strategy == CacheStrategy::None {
            return None;
        }
        Self::view(model).ok()
    }

    /// The view of any model with a single cacheable key, cached or not.
    pub fn view(model: &Model) -> Result<CachedModel, KeyError> {
        let key = keys::key_column(model)?;
        Ok(CachedModel {
            name: model.name.clone(),
            strategy: model.cache.strategy,
            ttl: model.cache.ttl,
            table: model.qualified_table(),
            key_column: model.columns[key].name.clone(),
            key_type: model.columns[key].ty,
        })
    }

    /// The rows with these keys, as `(key, json)` from PostgreSQL.
    pub async fn fetch(
        &self,
        db: &impl GenericClient,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
        let filter = format!(
            "WHERE t.{} = ANY($1::text[]::{}[])",
            quote_ident(&self.key_column),
            self.key_type
        );
        self.rows(db, &filter, &[&keys]).await
    }

    /// The most recent rows (highest keys first), for warming.
    pub async fn recent(
        &self,
        db: &impl GenericClient,
        limit: i64,
    ) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
        let order = format!("ORDER BY t.{} DESC LIMIT $1", quote_ident(&self.key_column));
        self.rows(db, &order, &[&limit]).await
    }

    /// `(key, row as JSON)` of the table's rows that `tail` selects.
    async fn rows(
        &self,
        db: &impl GenericClient,
        tail: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
        let sql = format!(
            "SELECT t.{}::text, row_to_json(t)::text FROM {} t {tail}",
            quote_ident(&self.key_column),
            self.table
        );
        Ok(db
            .query(&sql, params)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}

/// The cache of one process: its tiers, figures and write-behind queue.
pub struct Cache {
    redis: Option<RedisTier>,
    local: Option<LocalTier>,
    stats: Arc<stats::Stats>,
    behind: Arc<behind::WriteBehindQueue>,
    /// Batches whose cache writes are done, to clear in `settle`.
    done: writes::Done,
}

impl Cache {
    /// Builds the tiers; connects to Redis lazily (a load never waits for it).
    pub fn new(config: CacheConfig, listening: Listening) -> Result<Arc<Cache>, CacheError> {
        let stats = Arc::new(stats::Stats::default());
        let redis = match &config.redis_url {
            Some(url) => Some(RedisTier::new(
                url,
                config.redis_ca.as_deref(),
                &config.prefix,
                config.redis_timeout,
                stats.clone(),
            )?),
            None => None,
        };
        let local = config
            .local_bytes
            .map(|b| LocalTier::new(b, listening, stats.clone()));
        Ok(Arc::new(Cache {
            behind: behind::WriteBehindQueue::new(
                config.write_behind_capacity,
                config.write_behind_bytes,
            ),
            redis,
            local,
            stats,
            done: Default::default(),
        }))
    }

    /// Reads a row: local tier, Redis, then PostgreSQL, filling the tiers
    /// on the way back. `key` must be canonical (`keys::canonical`).
    pub async fn read(
        &self,
        model: &CachedModel,
        key: &str,
        db: &impl GenericClient,
    ) -> Result<(Option<String>, Tier), CacheError> {
        if let Some(local) = &self.local
            && let Some(json) = local.get(&model.name, key)
        {
            self.stats.hit(&model.name, Tier::Local);
            return Ok((Some(json), Tier::Local));
        }
        let local_ticket = self.local.as_ref().map(|l| l.ticket());
        let mut observed = None;
        if let Some(redis) = &self.redis {
            match redis.read(model, key).await {
                Ok(seen) => {
                    if let Some(json) = seen.live() {
                        self.stats.hit(&model.name, Tier::Redis);
                        if let (Some(local), Some(t)) = (&self.local, local_ticket) {
                            local.fill(model, key, json.clone(), t);
                        }
                        return Ok((Some(json), Tier::Redis));
                    }
                    observed = Some(seen);
                }
                Err(e) => redis.failed(&e),
            }
        }
        self.stats.hit(&model.name, Tier::Miss);
        let row = model.fetch(db, &[key.to_string()]).await?.pop();
        if let Some((_, json)) = &row {
            if let (Some(redis), Some(seen)) = (&self.redis, &observed)
                && let Err(e) = redis.fill(model, key, seen, json).await
            {
                redis.failed(&e);
            }
            if let (Some(local), Some(t)) = (&self.local, local_ticket) {
                local.fill(model, key, json.clone(), t);
            }
        }
        Ok((row.map(|(_, j)| j), Tier::Miss))
    }

    /// Loads a model's most recent rows into the tiers (only where absent).
    pub async fn warm(
        &self,
        model: &CachedModel,
        db: &impl GenericClient,
        limit: i64,
    ) -> Result<usize, CacheError> {
        let local_ticket = self.local.as_ref().map(|l| l.ticket());
        let rows = model.recent(db, limit).await?;
        if let Some(redis) = &self.redis {
            redis.warm(model, &rows).await?;
        }
        if let (Some(local), Some(t)) = (&self.local, local_ticket) {
            for (k, json) in &rows {
                local.fill(model, k, json.clone(), t);
            }
        }
        Ok(rows.len())
    }

    /// Drops keys (or the whole model) everywhere: a new version, Redis
    /// tombstones or flush marker, and a notification for local tiers.
    pub async fn invalidate(
        &self,
        db: &impl GenericClient,
        model: &CachedModel,
        keys: Option<&[String]>,
    ) -> Result<(), CacheError> {
        let version: i64 = db
            .query_one("SELECT nextval('nexus.cache_version')", &[])
            .await?
            .get(0);
        if let Some(local) = &self.local {
            match keys {
                Some(k) => k.iter().for_each(|k| local.invalidate(&model.name, k)),
                None => local.flush(&model.name),
            }
        }
        if let Some(redis) = &self.redis {
            match keys {
                Some(k) => {
                    let head = redis_tier::head(version, model.ttl).into_bytes();
                    let tombstones: Vec<from_batch::Entry> =
                        k.iter().map(|k| (k.clone(), head.clone())).collect();
                    redis.write(model, version, &tombstones).await?
                }
                None => redis.flush(&model.name, version).await?,
            };
        }
        // After Redis: no server refills its memory from the old entry.
        let keys = keys.map(|k| keys::BatchKeys::Texts(k.to_vec()));
        writes::announce(db, &model.name, keys.as_ref()).await?;
        Ok(())
    }

    /// Applies a `nexus_cache` notification, this process's own included.
    pub fn apply_notice(&self, payload: &str) {
        let Some(local) = &self.local else { return };
        let Ok(n) = serde_json::from_str::<notice::Notice>(payload) else {
            return;
        };
        let model = n.model.clone();
        match n.change() {
            notice::Change::Keys(keys) => keys.iter().for_each(|k| local.invalidate(&model, k)),
            notice::Change::Model => local.flush(&model),
        }
    }

    /// Marks done the batches whose cache writes finished, and repairs what
    /// crashes or Redis outages left pending (by flushing those models in
    /// Redis) once Redis answers. Run after loads and periodically.
    pub async fn settle(&self, db: &impl GenericClient) -> Result<u64, CacheError> {
        writes::settle(self, db).await
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot(self)
    }

    /// Whether the cache has a Redis tier.
    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// How long Redis takes to answer a PING; `None` without Redis.
    pub async fn ping_redis(&self) -> Option<Result<Duration, CacheError>> {
        let redis = self.redis.as_ref()?;
        let started = std::time::Instant::now();
        Some(redis.ping().await.map(|()| started.elapsed()))
    }

    /// Redis's own memory figure (`used_memory`); `None` without Redis.
    pub async fn redis_used_memory(&self) -> Option<Result<u64, CacheError>> {
        Some(self.redis.as_ref()?.used_memory().await)
    }

    /// Entries of a model now in Redis (live or not); `None` without Redis.
    pub async fn redis_entries(&self, model: &str) -> Option<Result<u64, CacheError>> {
        Some(self.redis.as_ref()?.count(model).await)
    }

    /// Publishes on the installation's pub/sub channel `name` in Redis,
    /// counting a failure like any Redis call's.
    pub async fn publish(&self, name: &str, payload: &str) -> Result<(), CacheError> {
        let redis = self.redis.as_ref().ok_or(CacheError::NoRedis)?;
        let sent = redis.publish(&redis.channel(name), payload).await;
        if let Err(e) = &sent {
            redis.failed(e);
        }
        sent
    }

    /// A Redis connection of its own, subscribed to the installation's
    /// channel `name`.
    pub async fn subscribe(&self, name: &str) -> Result<redis::aio::PubSub, CacheError> {
        let redis = self.redis.as_ref().ok_or(CacheError::NoRedis)?;
        let mut pubsub = redis.subscriber().await?;
        pubsub.subscribe(redis.channel(name)).await?;
        Ok(pubsub)
    }

    /// Forgets every row of the local tier (it may have missed a change).
    pub fn clear_local(&self) {
        if let Some(local) = &self.local {
            local.clear();
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("redis", &self.redis.is_some())
            .field("local", &self.local.is_some())
            .finish()
    }
}
