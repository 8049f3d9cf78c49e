//! The cache stage of a load. Inside each batch's transaction, before its
//! COMMIT, the batch takes its version (with its checkpoint). Without Redis
//! it also announces its keys there (NOTIFY, delivered at the COMMIT; see
//! notice.rs for their compact form), and every server drops them from
//! memory. With Redis the batch goes, after the
//! COMMIT, to the load's cache stage — workers that make the committed
//! rows' JSON from the batch itself where the table stores exactly what it
//! sent (from_batch.rs), else read them back with connections of their
//! own (reading after the COMMIT is safe, the rows are then at least as
//! new as the batch's version), write Redis, and only then announce the
//! keys, so that no server refills its memory from the Redis entry being
//! replaced. Write-through batches wait for room in the stage (the cache
//! keeps up or slows the load) and the job ends only when the stage has
//! written them all; write-behind batches never wait — a full queue drops
//! them, counts them and flushes the model in Redis instead. On a machine
//! the load keeps busy, any work beside it slows it, so a write-behind
//! stage holds its batches while the load runs: until the load ends, the
//! process's queue is nine tenths full (behind.rs), or its first batch has
//! waited [`HOLD`];
//! from then on it writes as the batches come. Cache-aside
//! leaves tombstones. The local tier is filled by reads only: bulk loads
//! would just churn its small budget. A batch stays `cache_pending` in its
//! checkpoint until its Redis write is done; [`settle`] clears those and
//! repairs what crashes and outages left.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_pipeline::batch::EncodedRow;
use nexus_pipeline::model::CacheStrategy;
use nexus_pipeline::row_json::RowJson;
use nexus_pipeline::types::ColumnType;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{GenericClient, Statement, ToStatement};
use uuid::Uuid;

use super::behind::Admitted;
use super::from_batch::{BatchRows, Entry, read_back_sql};
use super::keys::BatchKeys;
use super::notice::notices;
use super::{Cache, CacheError, CachedModel, keys};

/// How long a batch may stay pending before the repair treats it as
/// abandoned: after its COMMIT while its job runs (a write-behind stage
/// holds batches for up to [`HOLD`]), and after the later of its COMMIT and
/// its job's end once the job has ended (a write-behind stage writes what
/// it held then, for as long as a command waits for it: src/cmd/cache.rs).
const ABANDONED_RUNNING_SECS: f64 = 30.0;
const ABANDONED_ENDED_SECS: f64 = 10.0;

/// Write-through batches the stage holds before writers wait.
const THROUGH_QUEUE: usize = 4;

/// Batches a stage works on at once, each worker with its own connection.
const STAGE_WORKERS: usize = 3;

/// How long a write-behind stage holds its first batch while the load
/// runs: the longest its entries trail their COMMIT for a hold, and well
/// inside the time after which the repair takes a running job's pending
/// batch for abandoned.
const HOLD: Duration = Duration::from_secs(15);

/// One load's handle on the cache.
pub struct BatchCache {
    pub cache: Arc<Cache>,
    pub model: Arc<CachedModel>,
    /// The key's position among the COPY columns.
    key_field: usize,
    /// How the stage prints rows; `None`: it reads them back as JSON.
    printing: Option<Arc<Printing>>,
    job_id: Uuid,
    /// The stage's queue and workers; `None` without Redis.
    stage: Mutex<Option<Stage>>,
}

/// How a load's stage prints rows itself: its batches', or those it reads
/// back in their layout when a batch's were not kept.
struct Printing {
    json: RowJson,
    /// The key's position among the COPY columns.
    key_field: usize,
    /// `from_batch::read_back_sql` for the load's columns.
    read_back: String,
}

/// A running stage: its queue, its workers, and where its load stands
/// for them.
struct Stage {
    tx: mpsc::Sender<Queued>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    release: Arc<watch::Sender<Hold>>,
}

/// Where a stage's load stands for its workers (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Write-behind while the load runs: batches wait.
    Held,
    /// The load runs and batches are written as they come; write-behind
    /// prints them at the lowest priority, behind the load.
    Writing,
    /// The load has ended: nothing to stay behind.
    Ended,
}

/// A batch in the stage's queue; a write-behind batch holds its rows in
/// the process's write-behind budget until a worker is done with it.
struct Queued {
    write: PendingWrite,
    admitted: Option<Admitted>,
}

/// A committed batch's cache work.
pub struct PendingWrite {
    version: i64,
    keys: BatchKeys,
    seq: i64,
    /// The batch's rows, when the stage makes their JSON from them.
    rows: Option<BatchRows>,
}

impl BatchCache {
    /// For a load into `columns` (COPY order) of `database_url`, its rows
    /// printed by `json` when the batches say all of them
    /// (`from_batch::row_json`); `None` if the key is not among the loaded
    /// columns.
    pub fn start(
        cache: Arc<Cache>,
        model: CachedModel,
        columns: &[String],
        json: Option<RowJson>,
        job_id: Uuid,
        database_url: &str,
    ) -> Option<BatchCache> {
        let key_field = columns.iter().position(|c| *c == model.key_column)?;
        let printing = json
            .filter(|_| model.strategy != CacheStrategy::CacheAside)
            .map(|json| {
                Arc::new(Printing {
                    json,
                    key_field,
                    read_back: read_back_sql(
                        &model.table,
                        columns,
                        &model.key_column,
                        model.key_type,
                    ),
                })
            });
        let model = Arc::new(model);
        let stage = cache.redis.is_some().then(|| {
            let capacity = match model.strategy {
                // Bounded in rows by the process's write-behind budget.
                CacheStrategy::WriteBehind => 1 << 20,
                _ => THROUGH_QUEUE,
            };
            let (tx, rx) = mpsc::channel(capacity);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let hold = match model.strategy {
                CacheStrategy::WriteBehind => Hold::Held,
                _ => Hold::Writing,
            };
            let release = Arc::new(watch::Sender::new(hold));
            let tasks = (0..STAGE_WORKERS)
                .map(|_| {
                    tokio::spawn(run_stage(
                        cache.clone(),
                        model.clone(),
                        printing.clone(),
                        job_id,
                        database_url.to_string(),
                        (rx.clone(), release.clone()),
                    ))
                })
                .collect();
            Stage { tx, tasks, release }
        });
        Some(BatchCache {
            cache,
            model,
            key_field,
            printing,
            job_id,
            stage: Mutex::new(stage),
        })
    }

    /// Whether a batch's checkpoint waits for a Redis write.
    pub fn pends(&self) -> bool {
        self.cache.redis.is_some()
    }

    /// Whether the stage makes rows' JSON from the batch, which then
    /// hands its rows over.
    pub fn takes_rows(&self) -> bool {
        self.cache.redis.is_some() && self.printing.is_some()
    }

    /// The canonical keys of a batch's rows, each once. Integer keys are
    /// ordered as numbers: a batch's ids usually come in order, and an
    /// ordered run sorts in one pass.
    pub fn keys(&self, body: &[u8], rows: &[EncodedRow]) -> BatchKeys {
        let (field, ty) = (self.key_field, self.model.key_type);
        let row = |r: &EncodedRow| body.get(r.start as usize..r.end as usize);
        if matches!(
            ty,
            ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt
        ) {
            let mut numbers: Vec<i64> = rows
                .iter()
                .filter_map(|r| keys::integer_from_binary_row(row(r)?, field, ty))
                .collect();
            numbers.sort_unstable();
            numbers.dedup();
            return BatchKeys::Integers(numbers);
        }
        let mut keys: Vec<String> = rows
            .iter()
            .filter_map(|r| keys::from_binary_row(row(r)?, field, ty))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        BatchKeys::Texts(keys)
    }

    /// Inside the batch's transaction: without Redis, announces the keys
    /// with `notify` ([`NOTIFY_SQL`], prepared).
    pub async fn announce(
        &self,
        db: &impl GenericClient,
        notify: &Statement,
        keys: &BatchKeys,
    ) -> Result<(), tokio_postgres::Error> {
        if self.cache.redis.is_some() {
            return Ok(());
        }
        announce_with(db, notify, &self.model.name, Some(keys)).await
    }

    /// What is left to do for a batch once it commits. `rows` are the
    /// batch's, when the stage takes them ([`Self::takes_rows`]).
    pub fn pending(
        &self,
        seq: u64,
        version: i64,
        keys: BatchKeys,
        rows: Option<BatchRows>,
    ) -> PendingWrite {
        PendingWrite {
            version,
            keys,
            seq: seq as i64,
            rows: rows.filter(|_| self.takes_rows()),
        }
    }

    /// After the COMMIT: hands the batch to the stage.
    pub async fn after_commit(&self, w: PendingWrite) {
        let Some(tx) = self
            .stage
            .lock()
            .expect("stage")
            .as_ref()
            .map(|s| s.tx.clone())
        else {
            return;
        };
        if self.model.strategy != CacheStrategy::WriteBehind {
            let _ = tx
                .send(Queued {
                    write: w,
                    admitted: None,
                })
                .await;
            return;
        }
        let n = w.keys.len();
        let mut w = w;
        let w = match self.cache.behind.admit(n) {
            Some(mut admitted) => {
                // Beyond the byte budget the stage reads the rows back.
                if w.rows
                    .as_ref()
                    .is_some_and(|r| !admitted.keep_bytes(r.body.len()))
                {
                    w.rows = None;
                }
                match tx.try_send(Queued {
                    write: w,
                    admitted: Some(admitted),
                }) {
                    Ok(()) => return,
                    Err(e) => e.into_inner().write,
                }
            }
            None => w,
        };
        // Full: these rows are not written. Kill every older entry of the
        // model in Redis (in the background: the load goes on); if even that
        // fails, the batch stays pending and the repair flushes later.
        self.cache.stats.dropped(n as u64);
        let (cache, model, job) = (self.cache.clone(), self.model.clone(), self.job_id);
        tokio::spawn(async move {
            if let Some(redis) = &cache.redis {
                match redis.flush(&model.name, w.version).await {
                    Ok(_) => cache.cleared(job, Some(w.seq)),
                    Err(e) => redis.failed(&e),
                }
            }
        });
    }

    /// The load is over: waits for the stage's write-through work; starts
    /// write-behind work and leaves it running on its own.
    pub async fn finish(&self) {
        let stage = self.stage.lock().expect("stage").take();
        if let Some(Stage { tx, tasks, release }) = stage {
            release.send_replace(Hold::Ended);
            drop(tx);
            if self.model.strategy != CacheStrategy::WriteBehind {
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
    }

    /// Inside a whole-transaction load (atomic, replace), before its
    /// COMMIT: its rows are not kept for the cache, so the model is flushed;
    /// without Redis, announced here.
    pub async fn before_whole_commit(
        &self,
        db: &impl GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        if self.cache.redis.is_none() {
            announce(db, &self.model.name, None).await?;
        }
        Ok(())
    }

    /// After that COMMIT: the flush in Redis, then the announcement.
    pub async fn after_whole_commit(&self, db: &impl GenericClient, version: i64) {
        let cache = &self.cache;
        let Some(redis) = &cache.redis else { return };
        match redis.flush(&self.model.name, version).await {
            Ok(_) => cache.cleared(self.job_id, None),
            Err(e) => redis.failed(&e),
        }
        if let Err(e) = announce(db, &self.model.name, None).await {
            tracing::warn!(error = %e, "announcing a cache flush failed; servers' memory keeps entries until their TTL");
        }
    }
}

/// One worker of the stage: makes the committed rows' JSON (or reads it
/// back) and writes the tiers, batch by batch. Workers may finish batches
/// out of order; the versions keep the later commit of a key in both tiers.
async fn run_stage(
    cache: Arc<Cache>,
    model: Arc<CachedModel>,
    printing: Option<Arc<Printing>>,
    job: Uuid,
    url: String,
    (rx, release): (
        Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
        Arc<watch::Sender<Hold>>,
    ),
) {
    let writes_rows = model.strategy != CacheStrategy::CacheAside;
    let mut db: Option<tokio_postgres::Client> = None;
    let mut released = release.subscribe();
    loop {
        let Some(Queued {
            write: mut w,
            admitted,
        }) = rx.lock().await.recv().await
        else {
            break;
        };
        if *released.borrow() == Hold::Held {
            // Held: the first batch waits at most HOLD, then all go.
            let mut pressed = cache.behind.pressed();
            tokio::select! {
                _ = released.wait_for(|h| *h != Hold::Held) => {}
                _ = pressed.wait_for(|p| *p) => {}
                _ = tokio::time::sleep(HOLD) => {}
            }
            release.send_if_modified(|h| {
                *h == Hold::Held && {
                    *h = Hold::Writing;
                    true
                }
            });
        }
        let behind =
            model.strategy == CacheStrategy::WriteBehind && *released.borrow() != Hold::Ended;
        let head = super::redis_tier::head(w.version, model.ttl).into_bytes();
        let entries = match (w.rows.take(), &printing) {
            (Some(rows), Some(p)) => print(p, &model, rows, &head, behind).await,
            (None, Some(p)) if writes_rows && !w.keys.is_empty() => {
                let texts = w.keys.texts();
                match read_back(&mut db, &url, p, &model, &texts).await {
                    Some(rows) => print(p, &model, rows, &head, behind)
                        .await
                        .map(|e| with_tombstones(&texts, e, &head)),
                    None => None,
                }
            }
            _ => None,
        };
        let entries = match entries {
            Some(e) => e,
            None => {
                let texts = w.keys.texts();
                let rows = if writes_rows && !texts.is_empty() {
                    fetch(&mut db, &url, &model, &texts).await
                } else {
                    None
                };
                let rows = rows.unwrap_or_default().into_iter();
                let entries = rows.map(|(k, json)| (k, [&head, json.as_bytes()].concat()));
                with_tombstones(&texts, entries.collect(), &head)
            }
        };
        write_redis(&cache, &model, job, &w, &entries).await;
        // Whether Redis took the rows or not, servers drop the keys now.
        let announced = match connected(&mut db, &url).await {
            Some(c) => announce(c, &model.name, Some(&w.keys)).await.is_ok(),
            None => false,
        };
        if !announced {
            tracing::warn!(model = %model.name, "announcing changed keys failed; servers' memory keeps them until their TTL");
        }
        drop(admitted);
    }
}

/// Prints a batch's rows (or rows read back in its layout) as entries,
/// each value after `head`. Printing is CPU work: off the runtime's
/// threads, and `behind` a running load at the lowest priority. `None` if
/// the printing thread was lost.
async fn print(
    p: &Arc<Printing>,
    model: &CachedModel,
    rows: BatchRows,
    head: &[u8],
    behind: bool,
) -> Option<Vec<Entry>> {
    let (p, key_type, head) = (p.clone(), model.key_type, head.to_vec());
    let print = move || rows.entries(&p.json, p.key_field, key_type, &head);
    if behind {
        super::idle_thread::run(print).await
    } else {
        tokio::task::spawn_blocking(print).await.ok()
    }
}

/// `entries` of the rows read back for `keys`, and a tombstone for each
/// key without a committed row (refused by the database, or unreadable
/// when the rows could not be read): it holds nothing new, and the
/// tombstone keeps it from serving an old value.
fn with_tombstones(keys: &[String], mut entries: Vec<Entry>, head: &[u8]) -> Vec<Entry> {
    let found: HashSet<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let gone: Vec<Entry> = keys
        .iter()
        .filter(|k| !found.contains(k.as_str()))
        .map(|k| (k.clone(), head.to_vec()))
        .collect();
    entries.extend(gone);
    entries
}

/// How long the stage worker retries connecting before it carries on
/// without announcing (servers then keep keys until their TTL).
const CONNECT_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The stage worker's connection, opened (again) when needed.
async fn connected<'a>(
    db: &'a mut Option<tokio_postgres::Client>,
    url: &str,
) -> Option<&'a tokio_postgres::Client> {
    if db.as_ref().is_none_or(|c| c.is_closed()) {
        *db = match crate::pg::connect_retrying(url, CONNECT_WINDOW).await {
            // The stage looks up a batch's keys: on a table just loaded,
            // without statistics, the planner picks parallel workers for
            // that, whose start costs more than the lookup (a load's
            // read-back took 2.5x as long).
            Ok(c) => c
                .batch_execute("SET max_parallel_workers_per_gather = 0")
                .await
                .is_ok()
                .then_some(c),
            Err(_) => None,
        };
    }
    db.as_ref()
}

/// NOTIFY for every server's memory (delivered at COMMIT inside a transaction).
pub(super) async fn announce(
    db: &impl GenericClient,
    model: &str,
    keys: Option<&BatchKeys>,
) -> Result<(), tokio_postgres::Error> {
    announce_with(db, NOTIFY_SQL, model, keys).await
}

/// Sends a model's cache notices (all its keys, or `keys`).
pub const NOTIFY_SQL: &str = "SELECT pg_notify('nexus_cache', n) FROM unnest($1::text[]) n";

/// [`announce`] with [`NOTIFY_SQL`] as given: its text, or prepared.
async fn announce_with<T: ToStatement + ?Sized + Sync + Send>(
    db: &impl GenericClient,
    notify: &T,
    model: &str,
    keys: Option<&BatchKeys>,
) -> Result<(), tokio_postgres::Error> {
    if keys.is_some_and(|k| k.is_empty()) {
        return Ok(());
    }
    let n = notices(model, keys);
    db.execute(notify, &[&n]).await?;
    Ok(())
}

/// The committed rows of `keys` in binary, for the stage to print; `None`
/// (they are then read as JSON) if PostgreSQL cannot be read.
async fn read_back(
    db: &mut Option<tokio_postgres::Client>,
    url: &str,
    p: &Printing,
    model: &CachedModel,
    keys: &[String],
) -> Option<BatchRows> {
    match BatchRows::read_back(connected(db, url).await?, &p.read_back, keys).await {
        Ok(rows) => Some(rows),
        Err(e) => {
            tracing::warn!(error = %e, model = %model.name, "reading rows back for the cache failed");
            None
        }
    }
}

/// The committed rows of `keys` as JSON; `None` (the keys are then
/// invalidated instead) if PostgreSQL cannot be read.
async fn fetch(
    db: &mut Option<tokio_postgres::Client>,
    url: &str,
    model: &CachedModel,
    keys: &[String],
) -> Option<Vec<(String, String)>> {
    match model.fetch(connected(db, url).await?, keys).await {
        Ok(rows) => Some(rows),
        Err(e) => {
            tracing::warn!(error = %e, model = %model.name, "reading rows back for the cache failed; invalidating them instead");
            None
        }
    }
}

async fn write_redis(
    cache: &Cache,
    model: &CachedModel,
    job: Uuid,
    w: &PendingWrite,
    entries: &[Entry],
) {
    let Some(redis) = &cache.redis else { return };
    match redis.write(model, w.version, entries).await {
        Ok(_) => cache.cleared(job, Some(w.seq)),
        Err(e) => redis.failed(&e),
    }
}

impl Cache {
    fn cleared(&self, job: Uuid, seq: Option<i64>) {
        self.done.lock().expect("cache").push((job, seq));
    }

    /// Waits (up to `deadline`) until the write-behind queue is empty.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.behind.drain(deadline).await
    }

    /// How many rows wait in the write-behind queue.
    pub fn write_behind_depth(&self) -> usize {
        self.behind.depth()
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
            crate::status_sql!("SELECT j.model, max(b.cache_version) FROM nexus.job_batches b JOIN nexus.jobs j ON j.id = b.job_id
             WHERE b.cache_pending AND b.cache_version IS NOT NULL
               AND CASE WHEN j.status = {running} THEN b.committed_at < now() - make_interval(secs => $1::float8)
                        ELSE greatest(b.committed_at, j.finished_at) < now() - make_interval(secs => $2::float8) END
             GROUP BY j.model"),
            &[&ABANDONED_RUNNING_SECS, &ABANDONED_ENDED_SECS],
        )
        .await?;
    let mut repaired = 0;
    for row in abandoned {
        let (model, version): (String, i64) = (row.get(0), row.get(1));
        redis.flush(&model, version).await?;
        announce(db, &model, None).await?;
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
