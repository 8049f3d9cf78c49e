//! The cache stage of a load. Inside each batch's transaction (after its
//! rows are applied, before COMMIT): the version comes with the checkpoint,
//! the committed rows are read back as JSON when the strategy writes them,
//! and the keys are announced to other processes' local tiers. After the
//! COMMIT the strategy runs: write-through writes both tiers before the
//! batch counts as done; write-behind writes the local tier and queues Redis
//! (a full queue never blocks: it drops, counts, and flushes the model in
//! Redis); cache-aside leaves tombstones. A batch stays `cache_pending` in
//! its checkpoint until its Redis write is done; [`settle`] clears those and
//! repairs what crashes and outages left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nexus_pipeline::batch::EncodedRow;
use nexus_pipeline::model::CacheStrategy;
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{Cache, CacheError, CachedModel, keys};

/// Largest `nexus_cache` notification payload (PostgreSQL's limit is 8000).
const NOTICE_BYTES: usize = 7000;

/// How long a batch may stay pending while its job runs before the repair
/// treats it as abandoned.
const ABANDONED_AFTER_SECS: f64 = 30.0;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Notice {
    pub instance: Uuid,
    pub model: String,
    pub version: i64,
    /// `None`: the whole model.
    pub keys: Option<Vec<String>>,
}

/// The notifications announcing `keys` (or the whole model) as changed.
pub(super) fn notices(
    instance: Uuid,
    model: &str,
    version: i64,
    keys: Option<&[String]>,
) -> Vec<String> {
    let one = |keys: Option<Vec<String>>| {
        serde_json::to_string(&Notice {
            instance,
            model: model.to_string(),
            version,
            keys,
        })
        .unwrap_or_default()
    };
    let Some(keys) = keys else {
        return vec![one(None)];
    };
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0;
    for k in keys {
        // A key too long to announce is announced as a model flush.
        if k.len() + 200 > NOTICE_BYTES {
            return vec![one(None)];
        }
        if size + k.len() + 4 > NOTICE_BYTES - 200 {
            out.push(one(Some(std::mem::take(&mut chunk))));
            size = 0;
        }
        size += k.len() + 4;
        chunk.push(k.clone());
    }
    if !chunk.is_empty() {
        out.push(one(Some(chunk)));
    }
    out
}

/// One load's handle on the cache.
pub struct BatchCache {
    pub cache: Arc<Cache>,
    pub model: Arc<CachedModel>,
    /// The key's position among the COPY columns.
    key_field: usize,
    job_id: Uuid,
}

/// A committed batch's cache work.
pub struct PendingWrite {
    model: Arc<CachedModel>,
    version: i64,
    keys: Vec<String>,
    /// `(key, json)` of the committed rows, for the strategies that write.
    rows: Option<Vec<(String, String)>>,
    job_id: Uuid,
    seq: i64,
}

impl BatchCache {
    /// For a load into `columns` (COPY order); `None` if the key is not loaded.
    pub fn new(
        cache: Arc<Cache>,
        model: CachedModel,
        columns: &[String],
        job_id: Uuid,
    ) -> Option<BatchCache> {
        let key_field = columns.iter().position(|c| *c == model.key_column)?;
        Some(BatchCache {
            cache,
            model: Arc::new(model),
            key_field,
            job_id,
        })
    }

    /// Whether a batch's checkpoint waits for a Redis write.
    pub fn pends(&self) -> bool {
        self.cache.redis.is_some()
    }

    fn writes_rows(&self) -> bool {
        matches!(
            self.model.strategy,
            CacheStrategy::WriteThrough | CacheStrategy::WriteBehind
        ) && (self.cache.redis.is_some() || self.cache.local.is_some())
    }

    /// The canonical keys of a batch's rows.
    pub fn keys(&self, body: &[u8], rows: &[EncodedRow]) -> Vec<String> {
        let mut keys: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                keys::from_binary_row(
                    body.get(r.start as usize..r.end as usize)?,
                    self.key_field,
                    self.model.key_type,
                )
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Inside the batch's transaction: reads the committed rows back (when
    /// the strategy writes them) and announces the keys.
    pub async fn before_commit(
        &self,
        db: &impl GenericClient,
        seq: u64,
        version: i64,
        keys: Vec<String>,
    ) -> Result<PendingWrite, tokio_postgres::Error> {
        let rows = if self.writes_rows() && !keys.is_empty() {
            Some(self.model.fetch(db, &keys).await?)
        } else {
            None
        };
        self.announce(db, version, Some(&keys)).await?;
        Ok(PendingWrite {
            model: self.model.clone(),
            version,
            keys,
            rows,
            job_id: self.job_id,
            seq: seq as i64,
        })
    }

    /// NOTIFY (delivered at COMMIT) for other processes' local tiers.
    pub async fn announce(
        &self,
        db: &impl GenericClient,
        version: i64,
        keys: Option<&[String]>,
    ) -> Result<(), tokio_postgres::Error> {
        if keys.is_some_and(|k| k.is_empty()) {
            return Ok(());
        }
        let n = notices(self.cache.config.instance, &self.model.name, version, keys);
        db.execute(
            "SELECT pg_notify('nexus_cache', n) FROM unnest($1::text[]) n",
            &[&n],
        )
        .await?;
        Ok(())
    }

    /// After the COMMIT: the strategy's writes.
    pub async fn after_commit(&self, w: PendingWrite) {
        let cache = &self.cache;
        if let Some(local) = &cache.local {
            match &w.rows {
                Some(rows) => {
                    for (k, json) in rows {
                        local.write(&w.model, k.clone(), w.version, json.clone());
                    }
                }
                None => w
                    .keys
                    .iter()
                    .for_each(|k| local.invalidate(&w.model.name, k)),
            }
        }
        let Some(behind) = &cache.behind else { return };
        if w.model.strategy == CacheStrategy::WriteBehind {
            behind.push(w);
        } else {
            write_redis(cache, w).await;
        }
    }

    /// After the COMMIT of a whole-transaction load (atomic, replace): its
    /// rows are not kept in memory, so the model is flushed instead.
    pub async fn after_whole_commit(&self, version: i64) {
        let cache = &self.cache;
        if let Some(local) = &cache.local {
            local.flush(&self.model.name);
        }
        if let Some(redis) = &cache.redis {
            match redis.flush(&self.model, version).await {
                Ok(_) => cache.cleared(self.job_id, None),
                Err(e) => redis.failed(&e),
            }
        }
    }
}

async fn write_redis(cache: &Cache, w: PendingWrite) {
    let Some(redis) = &cache.redis else { return };
    let result = match &w.rows {
        Some(rows) => {
            let mut rows = rows.clone();
            rows.sort_unstable();
            let (keys, json): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
            // Keys without a committed row (refused by the database) hold
            // nothing new: a tombstone keeps them from serving an old value.
            let gone: Vec<String> = w
                .keys
                .iter()
                .filter(|k| keys.binary_search(k).is_err())
                .cloned()
                .collect();
            let written = redis.write(&w.model, w.version, &keys, Some(&json)).await;
            match written {
                Ok(_) if !gone.is_empty() => redis.write(&w.model, w.version, &gone, None).await,
                other => other,
            }
        }
        None => redis.write(&w.model, w.version, &w.keys, None).await,
    };
    match result {
        Ok(_) => cache.cleared(w.job_id, Some(w.seq)),
        Err(e) => redis.failed(&e),
    }
}

impl Cache {
    fn cleared(&self, job: Uuid, seq: Option<i64>) {
        self.done.lock().expect("cache").push((job, seq));
    }
}

/// The write-behind queue: bounded in rows, drained by one task.
pub(super) struct WriteBehind {
    tx: tokio::sync::mpsc::UnboundedSender<PendingWrite>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    cache: Weak<Cache>,
    empty: Arc<tokio::sync::Notify>,
}

impl WriteBehind {
    pub(super) fn start(cache: Weak<Cache>, capacity: usize) -> WriteBehind {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PendingWrite>();
        let depth = Arc::new(AtomicUsize::new(0));
        let empty = Arc::new(tokio::sync::Notify::new());
        let (d, e, c) = (depth.clone(), empty.clone(), cache.clone());
        tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                let n = w.keys.len();
                if let Some(cache) = c.upgrade() {
                    write_redis(&cache, w).await;
                }
                if d.fetch_sub(n, Ordering::SeqCst) == n {
                    e.notify_waiters();
                }
            }
        });
        WriteBehind {
            tx,
            depth,
            capacity,
            cache,
            empty,
        }
    }

    pub(super) fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    fn push(&self, w: PendingWrite) {
        let n = w.keys.len();
        let depth = self.depth.fetch_add(n, Ordering::SeqCst);
        let w = if depth + n <= self.capacity {
            match self.tx.send(w) {
                Ok(()) => return,
                Err(e) => e.0,
            }
        } else {
            w
        };
        self.depth.fetch_sub(n, Ordering::SeqCst);
        // Full: these rows are not written. Kill every older entry of the
        // model in Redis (in the background: the load goes on); if even that
        // fails, the batch stays pending and the repair flushes later.
        let Some(cache) = self.cache.upgrade() else {
            return;
        };
        cache.stats.dropped(n as u64);
        tokio::spawn(async move {
            if let Some(redis) = &cache.redis {
                match redis.flush(&w.model, w.version).await {
                    Ok(_) => cache.cleared(w.job_id, Some(w.seq)),
                    Err(e) => redis.failed(&e),
                }
            }
        });
    }

    pub(super) async fn drain(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.empty.notified();
                if self.depth() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }
}

/// Clears the pending marks of finished cache writes, then repairs models
/// whose batches were left pending (a crash, an outage): their Redis
/// entries older than the last such batch are flushed. Returns how many
/// models were repaired.
pub(super) async fn settle(cache: &Cache, db: &impl GenericClient) -> Result<u64, CacheError> {
    let done = std::mem::take(&mut *cache.done.lock().expect("cache"));
    if !done.is_empty() {
        let jobs: Vec<Uuid> = done.iter().map(|d| d.0).collect();
        let seqs: Vec<Option<i64>> = done.iter().map(|d| d.1).collect();
        db.execute(
            "UPDATE nexus.job_batches b SET cache_pending = false
             FROM unnest($1::uuid[], $2::int8[]) d(job_id, seq)
             WHERE b.cache_pending AND b.job_id = d.job_id AND (d.seq IS NULL OR b.seq = d.seq)",
            &[&jobs, &seqs],
        )
        .await?;
    }
    let Some(redis) = &cache.redis else {
        return Ok(0);
    };
    let abandoned = db
        .query(
            "SELECT j.model, max(b.cache_version) FROM nexus.job_batches b JOIN nexus.jobs j ON j.id = b.job_id
             WHERE b.cache_pending AND b.cache_version IS NOT NULL
               AND (j.status <> 'running' OR b.committed_at < now() - make_interval(secs => $1))
             GROUP BY j.model",
            &[&ABANDONED_AFTER_SECS],
        )
        .await?;
    let mut repaired = 0;
    for row in abandoned {
        let (model, version): (String, i64) = (row.get(0), row.get(1));
        redis.flush_name(&model, version).await?;
        db.execute(
            "UPDATE nexus.job_batches b SET cache_pending = false FROM nexus.jobs j
             WHERE j.id = b.job_id AND j.model = $1 AND b.cache_pending AND b.cache_version <= $2",
            &[&model, &version],
        )
        .await?;
        tracing::info!(%model, version, "cache repaired: Redis entries older than the last unconfirmed write flushed");
        repaired += 1;
    }
    Ok(repaired)
}

/// Pending marks written for a job's batches, for tests and `cache stats`.
pub async fn pending_batches(db: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(db
        .query_one(
            "SELECT count(*) FROM nexus.job_batches WHERE cache_pending",
            &[],
        )
        .await?
        .get(0))
}

impl std::fmt::Debug for BatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchCache")
            .field("model", &self.model.name)
            .finish()
    }
}

pub(super) type Done = Mutex<Vec<(Uuid, Option<i64>)>>;
