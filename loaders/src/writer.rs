//! The batch writer: one PostgreSQL connection that COPYs encoded batches
//! in binary. Per batch, in one transaction: the rows (appended, or staged
//! and merged for upsert), the batch's rejects and its checkpoint row — so a
//! batch is either wholly committed and recorded, or not at all.
//!
//! A batch the database refuses because of some rows (a constraint or a
//! value it will not take) is narrowed by bisection under savepoints until
//! the offending rows are isolated; they become rejects naming the
//! constraint, the rest commits. Connection loss and PostgreSQL's transient
//! errors are retried with backoff; after a lost COMMIT the checkpoint table
//! says whether the batch made it, so a retry never loads it twice.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use nexus_pipeline::batch::EncodedRow;
use nexus_pipeline::encode::{COPY_HEADER, COPY_TRAILER};
use nexus_pipeline::types::quote_ident;
use nexus_pipeline::{EncodedBatch, Plan, Reject};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement, ToStatement, Transaction};
use uuid::Uuid;

use crate::cache::from_batch::BatchRows;
use crate::cache::{BatchCache, PendingWrite};
use crate::conflicts::{self, UniqueIndex};
use crate::gate::SeqGate;
use crate::hash_gate::HashGate;
use crate::pg::{ErrorKind, Retry, classify, describe};
use crate::server_input;
use crate::vocab::Mode;

/// What a load writes into: the SQL shared by all its writers.
#[derive(Debug, Clone)]
pub struct Target {
    pub table: String,
    pub columns: Vec<String>,
    pub key: Vec<String>,
    pub mode: Mode,
    /// How the input maps onto the columns: the server reads deferred
    /// values by their column's type.
    pub plan: Arc<Plan>,
    /// The load's zone as a session `TimeZone`, for values read by the server.
    pub timezone: String,
    /// How long transient failures (the database unreachable) are retried.
    pub retry: Duration,
}

const STAGE: &str = "nexus_stage";
const STAGE_TRUNCATE: &str = "TRUNCATE pg_temp.nexus_stage";
const ROWS_SAVEPOINT: &str = "nexus_rows";
const PROBE_SAVEPOINT: &str = "nexus_probe";
/// Batches in a row without a conflict after which an index is no longer
/// probed before the COPY.
const COLD_BATCHES: u32 = 3;
const LINE_COL: &str = "__nexus_line";

impl Target {
    fn copy_sql(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        match self.mode {
            Mode::Upsert => format!(
                "COPY pg_temp.{STAGE} ({}, {LINE_COL}) FROM STDIN (FORMAT binary)",
                cols.join(", ")
            ),
            _ => format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                self.table,
                cols.join(", ")
            ),
        }
    }

    /// The session's temporary table, for an upsert: its stage. (The
    /// probe for unique conflicts is made when first needed.)
    fn session_sql(&self) -> Option<String> {
        if self.mode != Mode::Upsert {
            return None;
        }
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        Some(format!(
            "CREATE TEMP TABLE IF NOT EXISTS {STAGE} AS SELECT {} FROM {} WITH NO DATA;
             ALTER TABLE pg_temp.{STAGE} ADD COLUMN IF NOT EXISTS {LINE_COL} bigint",
            cols.join(", "),
            self.table
        ))
    }

    /// Within a batch the last row for a key wins (`DISTINCT ON … line DESC`).
    fn merge_sql(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let key: Vec<String> = self.key.iter().map(|c| quote_ident(c)).collect();
        let updates: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.key.contains(c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
            .collect();
        let action = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        format!(
            "INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM pg_temp.{STAGE}
             ORDER BY {key}, {LINE_COL} DESC ON CONFLICT ({key}) {action}",
            table = self.table,
            cols = cols.join(", "),
            key = key.join(", "),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("the load was stopped")]
    Aborted,
}

/// The outcome of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub committed: u64,
    pub rejected: u64,
}

/// Inserts rejects with one statement (`unnest` of arrays).
pub const INSERT_REJECTS: &str = "INSERT INTO nexus.rejects (job_id, line, \"column\", reason, raw)
     SELECT $1, * FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[])";

/// Records a batch as committed; with `$7`, takes its cache version.
const INSERT_CHECKPOINT: &str = "INSERT INTO nexus.job_batches (job_id, seq, rows_read, rows_committed, rows_rejected, bytes_end,
                                  cache_version, cache_pending)
     VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7 THEN nextval('nexus.cache_version') END, $8)
     RETURNING cache_version";

/// One writer connection with what it needs ready from the start: its
/// statements prepared and, for an upsert, its stage table created outside
/// any transaction, so that no rollback can take it away.
struct Session {
    client: Client,
    statements: Statements,
}

/// A writer's statements, prepared once per session: each batch then
/// sends them without a round trip to parse them first.
struct Statements {
    rejects: Statement,
    checkpoint: Statement,
    /// The batch's COPY (into the table, or an upsert's stage).
    copy: Statement,
    /// Announces a batch's keys to other processes' caches.
    notify: Statement,
}

impl Session {
    /// Connects and prepares, all of it again on a transient failure while
    /// `retry`'s window lasts: a connection can close between its startup
    /// and the first statement (a failover that is still settling).
    async fn open(
        url: &str,
        target: &Target,
        retry: &mut Retry,
    ) -> Result<Session, tokio_postgres::Error> {
        loop {
            match Self::open_once(url, target).await {
                Ok(s) => return Ok(s),
                Err(e) if classify(&e) == ErrorKind::Transient && retry.again().await => {
                    tracing::warn!(error = %e, attempt = retry.attempt, "connecting a COPY writer failed; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn open_once(url: &str, target: &Target) -> Result<Session, tokio_postgres::Error> {
        let client = Self::connect(url, &target.timezone).await?;
        // The stage first: an upsert's COPY goes into it.
        if let Some(sql) = target.session_sql() {
            client.batch_execute(&sql).await?;
        }
        let copy_sql = target.copy_sql();
        // Prepared together, in one round trip.
        let (rejects, checkpoint, copy, notify) = tokio::try_join!(
            client.prepare(INSERT_REJECTS),
            client.prepare(INSERT_CHECKPOINT),
            client.prepare(&copy_sql),
            client.prepare(crate::cache::NOTIFY_SQL),
        )?;
        Ok(Session {
            client,
            statements: Statements {
                rejects,
                checkpoint,
                copy,
                notify,
            },
        })
    }

    /// A writer session commits batches without waiting for their WAL
    /// flush. That cannot break exactly-once: a batch and its checkpoint
    /// share a transaction, so a crash loses both or neither, and the job's
    /// final (synchronous) commit flushes every batch commit before it.
    /// Its `TimeZone` is the load's, for the values the server reads.
    async fn connect(url: &str, timezone: &str) -> Result<Client, tokio_postgres::Error> {
        // Session settings as startup parameters: the session never exists
        // without them, not even for a moment after it connects.
        let mut database = crate::tls::Database::parse(url)?;
        let config = &mut database.config;
        let ours = format!("-c synchronous_commit=off -c TimeZone={timezone}");
        crate::tls::add_options(config, &ours);
        config.application_name("nexus writer");
        database.connect().await
    }
}

impl Statements {
    /// Records the batch as committed, inside its transaction `db`; with
    /// `version`, takes the batch's cache version (`Some(pending)`: the
    /// batch then waits for its Redis write while `pending`).
    async fn checkpoint(
        &self,
        db: &Client,
        job_id: Uuid,
        parts: &Parts<'_>,
        done: Committed,
        version: Option<bool>,
    ) -> Result<Option<i64>, tokio_postgres::Error> {
        let row = db
            .query_one(
                &self.checkpoint,
                &[
                    &job_id,
                    &(parts.seq as i64),
                    &(parts.batch.rows_read as i64),
                    &(done.committed as i64),
                    &(done.rejected as i64),
                    &(parts.batch.raw.bytes_end as i64),
                    &version.is_some(),
                    &version.unwrap_or(false),
                ],
            )
            .await?;
        Ok(row.get(0))
    }
}

/// Writes one load's batches: a [`Session`] (replaced when its connection
/// is lost) and what narrowing has learnt about the table.
pub struct BatchWriter {
    url: String,
    job_id: Uuid,
    session: Session,
    rows: Rows,
    /// The cache stage, for a cached model.
    cache: Option<Arc<BatchCache>>,
    /// Opens once the job's file hash is recorded: nothing commits before.
    hash: HashGate,
}

/// Applies a batch's rows inside a transaction it is given, narrowing out
/// the rows the table refuses; keeps what it learns across batches.
struct Rows {
    target: Arc<Target>,
    merge_sql: String,
    probe_sql: String,
    /// Unique indexes by name, as far as conflicts on them can be probed.
    unique_indexes: std::collections::HashMap<String, Option<UniqueIndex>>,
    /// Indexes with conflicts in a recent batch, probed before each COPY.
    hot: Vec<UniqueIndex>,
    cold_batches: u32,
    /// Batches still to go in under a savepoint after one whose first,
    /// unguarded try the table refused.
    guarded_batches: u32,
    /// Per index, the bounds of its integer keys at the first probe.
    key_bounds: std::collections::HashMap<String, conflicts::KeyBounds>,
}

/// A batch taken apart for writing: the COPY body as cheap-to-slice bytes.
struct Parts<'a> {
    seq: u64,
    body: Bytes,
    batch: &'a EncodedBatch,
}

impl<'a> Parts<'a> {
    fn take(batch: &'a mut EncodedBatch) -> Parts<'a> {
        let body = Bytes::from(std::mem::take(&mut batch.copy));
        Parts {
            seq: batch.seq,
            body,
            batch,
        }
    }
}

impl BatchWriter {
    pub async fn connect(
        url: &str,
        target: Arc<Target>,
        job_id: Uuid,
    ) -> Result<BatchWriter, tokio_postgres::Error> {
        let session = Session::open(url, &target, &mut Retry::new(target.retry)).await?;
        Ok(BatchWriter {
            url: url.to_string(),
            job_id,
            session,
            rows: Rows {
                merge_sql: target.merge_sql(),
                probe_sql: conflicts::probe_table_sql(&target.table, &target.columns),
                target,
                unique_indexes: Default::default(),
                hot: Vec::new(),
                cold_batches: 0,
                guarded_batches: 0,
                key_bounds: Default::default(),
            },
            cache: None,
            hash: HashGate::recorded(),
        })
    }

    /// Commits nothing before `hash` opens.
    pub fn with_hash_gate(mut self, hash: HashGate) -> Self {
        self.hash = hash;
        self
    }

    /// Runs the cache stage around each commit.
    pub fn with_cache(mut self, cache: Option<Arc<BatchCache>>) -> Self {
        self.cache = cache;
        self
    }

    /// Connects again within what is left of `retry`'s window.
    async fn reconnect(&mut self, retry: &mut Retry) -> Result<(), tokio_postgres::Error> {
        self.session = Session::open(&self.url, &self.rows.target, retry).await?;
        Ok(())
    }

    /// Commits one batch in its own transaction, retrying transient failures.
    pub async fn write_batch(
        &mut self,
        batch: EncodedBatch,
        gate: Option<&SeqGate>,
    ) -> Result<Committed, WriteError> {
        let started = Instant::now();
        let mut batch = batch;
        self.settle_values(&mut batch).await?;
        let parts = Parts::take(&mut batch);
        let mut retry = Retry::new(self.rows.target.retry);
        loop {
            // A failed attempt's transaction was rolled back when dropped.
            match self.try_batch_fast_first(&parts, gate).await {
                Ok(c) => {
                    metrics::histogram!("nexus_batch_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(c);
                }
                Err(WriteError::Db(e))
                    if classify(&e) == ErrorKind::Transient && retry.again().await =>
                {
                    metrics::counter!("nexus_batch_retries_total").increment(1);
                    tracing::warn!(error = %e, seq = parts.seq, attempt = retry.attempt, "batch failed transiently; retrying");
                    if self.session.client.is_closed() {
                        self.reconnect(&mut retry).await?;
                    }
                    if let Some(c) = self.already_committed(parts.seq).await? {
                        return Ok(c);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Has the server read the values the encoder deferred, retrying
    /// transient failures like a batch.
    async fn settle_values(&mut self, batch: &mut EncodedBatch) -> Result<(), WriteError> {
        let mut retry = Retry::new(self.rows.target.retry);
        loop {
            match server_input::settle(&self.session.client, &self.rows.target.plan, batch).await {
                Ok(()) => return Ok(()),
                Err(e) if classify(&e) == ErrorKind::Transient && retry.again().await => {
                    tracing::warn!(error = %e, seq = batch.seq, attempt = retry.attempt, "reading deferred values failed transiently; retrying");
                    if self.session.client.is_closed() {
                        self.reconnect(&mut retry).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn already_committed(
        &self,
        seq: u64,
    ) -> Result<Option<Committed>, tokio_postgres::Error> {
        Ok(self
            .session
            .client
            .query_opt(
                "SELECT rows_committed, rows_rejected FROM nexus.job_batches WHERE job_id = $1 AND seq = $2",
                &[&self.job_id, &(seq as i64)],
            )
            .await?
            .map(|r| Committed {
                committed: r.get::<_, i64>(0) as u64,
                rejected: r.get::<_, i64>(1) as u64,
            }))
    }

    /// [`Self::try_batch`], first without a savepoint around the rows
    /// when nothing suggests the table will refuse some: a batch then costs
    /// two statements (and a subtransaction) less. If it does refuse rows,
    /// the transaction is lost, so the batch starts over guarded and is
    /// narrowed as usual.
    async fn try_batch_fast_first(
        &mut self,
        parts: &Parts<'_>,
        gate: Option<&SeqGate>,
    ) -> Result<Committed, WriteError> {
        if !self.rows.expects_clean(parts) {
            self.rows.guarded_batches = self.rows.guarded_batches.saturating_sub(1);
            return self.try_batch(parts, gate, Guard::Savepoint).await;
        }
        match self.try_batch(parts, gate, Guard::None).await {
            Err(WriteError::Db(e)) if classify(&e) == ErrorKind::Row => {
                // Refused rows tend to come in runs (a missing parent, a
                // rule the feed breaks): the next batches go guarded
                // rather than each paying for a failed first try.
                self.rows.guarded_batches = COLD_BATCHES;
                self.try_batch(parts, gate, Guard::Savepoint).await
            }
            other => other,
        }
    }

    /// The batch, its rejects and its checkpoint in one transaction.
    async fn try_batch(
        &mut self,
        parts: &Parts<'_>,
        gate: Option<&SeqGate>,
        guard: Guard,
    ) -> Result<Committed, WriteError> {
        let Session { client, statements } = &mut self.session;
        let mut tx = client.transaction().await?;
        let cache = self.cache.as_deref();
        let staged = Staging {
            statements,
            job_id: self.job_id,
            cache,
        }
        .stage(&mut tx, &mut self.rows, parts, gate, guard)
        .await?;
        self.hash.wait().await.map_err(|_| WriteError::Aborted)?;
        tx.commit().await?;
        if let Some(g) = gate {
            g.done(parts.seq);
        }
        Ok(staged.committed(cache).await)
    }

    /// Opens a transaction that holds batches uncommitted, for the time
    /// before the job's file hash is recorded.
    pub async fn hold(&mut self) -> Result<HeldBatches<'_>, tokio_postgres::Error> {
        let Session { client, statements } = &mut self.session;
        let tx = client.transaction().await?;
        Ok(HeldBatches {
            tx,
            staging: Staging {
                statements,
                job_id: self.job_id,
                cache: self.cache.as_deref(),
            },
            rows: &mut self.rows,
            hash: &self.hash,
            staged: Vec::new(),
        })
    }

    /// Opens the one transaction of an atomic or replace load; `replace`
    /// empties the table first.
    pub async fn begin_whole(
        &mut self,
        replace: bool,
    ) -> Result<WholeLoad<'_>, tokio_postgres::Error> {
        let Session { client, statements } = &mut self.session;
        let tx = client.transaction().await?;
        if replace {
            // DELETE, not TRUNCATE: readers keep seeing the old rows until COMMIT.
            tx.batch_execute(&format!("DELETE FROM {}", self.rows.target.table))
                .await?;
        }
        Ok(WholeLoad {
            tx,
            statements,
            rows: &mut self.rows,
            job_id: self.job_id,
            cache: self.cache.as_deref(),
            hash: &self.hash,
        })
    }
}

/// What staging a batch in a transaction needs besides its rows.
struct Staging<'w> {
    statements: &'w Statements,
    job_id: Uuid,
    cache: Option<&'w BatchCache>,
}

/// A batch applied in an open transaction, with what is left to do once
/// the transaction commits.
struct Staged {
    done: Committed,
    pending: Option<PendingWrite>,
}

impl Staged {
    /// Finishes a batch whose transaction committed: hands its rows to the
    /// cache.
    async fn committed(self, cache: Option<&BatchCache>) -> Committed {
        if let (Some(c), Some(w)) = (cache, self.pending) {
            c.after_commit(w).await;
        }
        self.done
    }
}

impl Staging<'_> {
    /// The batch's rows (narrowed under `guard`), its rejects, its
    /// checkpoint and its cache version in transaction `tx`.
    async fn stage(
        &self,
        tx: &mut Transaction<'_>,
        rows: &mut Rows,
        parts: &Parts<'_>,
        gate: Option<&SeqGate>,
        guard: Guard,
    ) -> Result<Staged, WriteError> {
        let mut rejects = parts.batch.rejects.clone();
        let mut refused = Vec::new();
        // Unguarded, the rows go in whole or not at all: what the batch
        // commits is known before its COPY, which then goes with the rest.
        let (committed, copy_now) = match guard {
            Guard::None => (parts.batch.rows.len() as u64, true),
            Guard::Savepoint => {
                let copy = &self.statements.copy;
                let n = rows
                    .apply(tx, copy, parts, gate, &mut rejects, &mut refused)
                    .await?;
                (n, false)
            }
        };
        let done = Committed {
            committed,
            rejected: rejects.len() as u64,
        };
        let db = tx.client();
        let keys = self.cache.map(|c| c.keys(&parts.body, &parts.batch.rows));
        // The COPY, the rejects, the checkpoint and the keys' announcement
        // in one round trip. Polled in this order (`biased`), each sends
        // its statement in it, and the server runs them so; an error in
        // one fails the rest: each is awaited, so that the first error is
        // the one reported (the COPY's, which narrowing classifies, not
        // the "transaction is aborted" that follows it).
        let (copied, rejected, version, announced) = tokio::join!(
            biased;
            async {
                if !copy_now {
                    return Ok(());
                }
                copy(db, &self.statements.copy, parts.body.clone()).await
            },
            async {
                if rejects.is_empty() {
                    return Ok(());
                }
                insert_rejects(db, &self.statements.rejects, self.job_id, &rejects).await
            },
            self.statements.checkpoint(
                db,
                self.job_id,
                parts,
                done,
                self.cache.map(BatchCache::pends)
            ),
            async {
                match (self.cache, &keys) {
                    (Some(c), Some(keys)) => c.announce(db, &self.statements.notify, keys).await,
                    _ => Ok(()),
                }
            },
        );
        copied?;
        rejected?;
        let version = version?;
        announced?;
        let pending = match (self.cache, version, keys) {
            (Some(c), Some(v), Some(keys)) => {
                let rows = c.takes_rows().then(|| {
                    refused.sort_unstable();
                    BatchRows {
                        body: parts.body.clone(),
                        rows: parts.batch.rows.clone(),
                        refused,
                    }
                });
                Some(c.pending(parts.seq, v, keys, rows))
            }
            _ => None,
        };
        Ok(Staged { done, pending })
    }
}

/// Batches applied in one open transaction and committed together: a
/// writer's first batches while the job's file hash is being recorded, so
/// that the server loads rows meanwhile instead of waiting. Each batch has
/// its own checkpoint, so what commits resumes batch by batch as usual.
/// Dropped, it rolls back.
pub struct HeldBatches<'w> {
    tx: Transaction<'w>,
    staging: Staging<'w>,
    rows: &'w mut Rows,
    hash: &'w HashGate,
    staged: Vec<Staged>,
}

impl HeldBatches<'_> {
    /// Applies a batch under a savepoint (rows the table refuses are
    /// narrowed out, as ever) without committing it.
    pub async fn apply(&mut self, batch: &mut EncodedBatch) -> Result<Committed, WriteError> {
        server_input::settle(self.tx.client(), &self.rows.target.plan, batch).await?;
        let body = Bytes::from(std::mem::take(&mut batch.copy));
        let staged = {
            let parts = Parts {
                seq: batch.seq,
                body: body.clone(),
                batch,
            };
            self.staging
                .stage(&mut self.tx, self.rows, &parts, None, Guard::Savepoint)
                .await
        };
        // Kept for a retry one by one; the body's one owner again (unless
        // the cache holds the rows), so it goes back without a copy.
        batch.copy = Vec::from(body);
        let staged = staged?;
        let done = staged.done;
        self.staged.push(staged);
        Ok(done)
    }

    /// Commits the batches once the hash is recorded (`Aborted` if it will
    /// not be: nothing is kept); says what each committed, in order.
    pub async fn commit(self) -> Result<Vec<Committed>, WriteError> {
        self.hash.wait().await.map_err(|_| WriteError::Aborted)?;
        self.tx.commit().await?;
        let mut done = Vec::with_capacity(self.staged.len());
        for s in self.staged {
            done.push(s.committed(self.staging.cache).await);
        }
        Ok(done)
    }
}

/// The open transaction of a whole load. It ends by [`WholeLoad::commit`]
/// or [`WholeLoad::rollback`]; dropped, it rolls back.
#[must_use = "a whole load ends by commit or rollback"]
pub struct WholeLoad<'w> {
    tx: Transaction<'w>,
    statements: &'w Statements,
    rows: &'w mut Rows,
    job_id: Uuid,
    cache: Option<&'w BatchCache>,
    hash: &'w HashGate,
}

impl WholeLoad<'_> {
    /// Applies a batch (and its checkpoint) inside the transaction; returns
    /// its rejects for the caller to record outside it, so that they
    /// survive a rollback and explain it.
    pub async fn apply(
        &mut self,
        batch: EncodedBatch,
    ) -> Result<(Committed, Vec<Reject>), WriteError> {
        let mut batch = batch;
        server_input::settle(self.tx.client(), &self.rows.target.plan, &mut batch).await?;
        let parts = Parts::take(&mut batch);
        let mut rejects = parts.batch.rejects.clone();
        let committed = self
            .rows
            .apply(
                &mut self.tx,
                &self.statements.copy,
                &parts,
                None,
                &mut rejects,
                &mut Vec::new(),
            )
            .await?;
        let done = Committed {
            committed,
            rejected: rejects.len() as u64,
        };
        self.statements
            .checkpoint(self.tx.client(), self.job_id, &parts, done, None)
            .await?;
        Ok((done, rejects))
    }

    /// Commits the load. Its rows are not kept for the cache: the
    /// transaction takes one version and the model is flushed, then
    /// announced through `announce_on` (this writer's session is the
    /// transaction's until it ends).
    pub async fn commit(self, announce_on: &Client) -> Result<(), WriteError> {
        self.hash.wait().await.map_err(|_| WriteError::Aborted)?;
        let tx = self.tx;
        let version = match self.cache {
            Some(c) => {
                let v: i64 = tx
                    .query_one("SELECT nextval('nexus.cache_version')", &[])
                    .await?
                    .get(0);
                tx.execute(
                    "UPDATE nexus.job_batches SET cache_version = $2, cache_pending = $3 WHERE job_id = $1",
                    &[&self.job_id, &v, &c.pends()],
                )
                .await?;
                c.before_whole_commit(tx.client()).await?;
                Some(v)
            }
            None => None,
        };
        tx.commit().await?;
        if let (Some(c), Some(v)) = (self.cache, version) {
            c.after_whole_commit(announce_on, v).await;
        }
        Ok(())
    }

    /// Keeps nothing of the load.
    pub async fn rollback(self) -> Result<(), tokio_postgres::Error> {
        self.tx.rollback().await
    }
}

/// Whether a batch's rows go in under a savepoint, so that rows the
/// table refuses can be narrowed out within the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    None,
    Savepoint,
}

impl Rows {
    /// Whether the batch's rows are expected to go in as they are: an
    /// append with rows, no recent conflict on the table's indexes and no
    /// recent batch refused.
    fn expects_clean(&self, parts: &Parts<'_>) -> bool {
        self.target.mode != Mode::Upsert
            && self.hot.is_empty()
            && self.guarded_batches == 0
            && !parts.batch.rows.is_empty()
    }

    /// Loads the batch's rows with the session's prepared `copy`; rows the
    /// database refuses are narrowed out into `rejects` (and their indices
    /// into `refused`). Returns how many rows were applied.
    async fn apply(
        &mut self,
        tx: &mut Transaction<'_>,
        copy_rows: &Statement,
        parts: &Parts<'_>,
        gate: Option<&SeqGate>,
        rejects: &mut Vec<Reject>,
        refused: &mut Vec<u32>,
    ) -> Result<u64, WriteError> {
        let rows = &parts.batch.rows;
        if rows.is_empty() {
            if let Some(g) = gate
                && !g.wait_turn(parts.seq).await
            {
                return Err(WriteError::Aborted);
            }
            return Ok(0);
        }
        let upsert = self.target.mode == Mode::Upsert;
        // The whole batch goes in one statement first; rows it refuses are
        // narrowed out below.
        let mut first = true;
        if upsert {
            // Stage in parallel with other writers; merge in sequence order.
            // The stage refuses what the table's column types refuse: then
            // the batch is narrowed from the start, staging each part again.
            tx.batch_execute(STAGE_TRUNCATE).await?;
            let rows_sp = tx.savepoint(ROWS_SAVEPOINT).await?;
            match copy(rows_sp.client(), copy_rows, parts.body.clone()).await {
                Ok(()) => rows_sp.commit().await?,
                Err(e) if classify(&e) == ErrorKind::Row => {
                    rows_sp.rollback().await?;
                    first = false;
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(g) = gate
                && !g.wait_turn(parts.seq).await
            {
                return Err(WriteError::Aborted);
            }
        }
        let mut applied = 0u64;
        // Lists of row indices still to apply; the first is the whole batch.
        let mut work: Vec<Vec<u32>> = vec![(0..rows.len() as u32).collect()];
        // Unique indexes already probed for this batch.
        let mut probed: Vec<String> = Vec::new();
        if !upsert && !self.hot.is_empty() {
            // An index that had conflicts in a recent batch is probed before
            // the COPY, which then cannot fail on it halfway through.
            let mut rest = work.pop().unwrap_or_default();
            let mut found = 0;
            for index in self.hot.clone() {
                let (keep, n) = self
                    .probe(tx, parts, rest, &index, true, rejects, refused)
                    .await?;
                rest = keep;
                found += n;
                probed.push(index.name);
            }
            if found == 0 {
                self.cold_batches += 1;
                if self.cold_batches >= COLD_BATCHES {
                    self.hot.clear();
                }
            } else {
                self.cold_batches = 0;
            }
            // Nothing taken out: the whole body goes as it is.
            first = rest.len() == rows.len();
            work.push(rest);
        }
        while let Some(list) = work.pop() {
            if list.is_empty() {
                continue;
            }
            let rows_sp = tx.savepoint(ROWS_SAVEPOINT).await?;
            let db = rows_sp.client();
            let result = if first && upsert {
                db.batch_execute(&self.merge_sql).await
            } else if first {
                copy(db, copy_rows, parts.body.clone()).await
            } else {
                let body = Bytes::from(copy_subset(
                    &parts.body,
                    list.iter().map(|&i| &rows[i as usize]),
                ));
                if upsert {
                    self.stage_and_merge(db, copy_rows, body).await
                } else {
                    copy(db, copy_rows, body).await
                }
            };
            first = false;
            match result {
                Ok(()) => {
                    rows_sp.commit().await?;
                    applied += list.len() as u64;
                }
                Err(e) if classify(&e) == ErrorKind::Row => {
                    rows_sp.rollback().await?;
                    if !upsert
                        && list.len() > 1
                        && let Some(index) =
                            self.conflicting_index(tx.client(), &e, &probed).await?
                    {
                        probed.push(index.name.clone());
                        if !self.hot.contains(&index) {
                            self.hot.push(index.clone());
                        }
                        self.cold_batches = 0;
                        let (keep, _) = self
                            .probe(tx, parts, list, &index, false, rejects, refused)
                            .await?;
                        work.push(keep);
                    } else if list.len() == 1 {
                        refused.push(list[0]);
                        let column = e.as_db_error().and_then(|d| d.column()).map(str::to_string);
                        rejects.push(parts.batch.reject_row(
                            list[0] as usize,
                            column,
                            describe(&e),
                        ));
                    } else {
                        let mut lower = list;
                        let upper = lower.split_off(lower.len() / 2);
                        work.push(upper);
                        work.push(lower);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        rejects.sort_by_key(|r| r.line);
        Ok(applied)
    }

    /// The plain unique index a unique violation names, unless this batch
    /// probed it twice already.
    async fn conflicting_index(
        &mut self,
        db: &Client,
        e: &tokio_postgres::Error,
        probed: &[String],
    ) -> Result<Option<UniqueIndex>, tokio_postgres::Error> {
        let Some(err) = e.as_db_error() else {
            return Ok(None);
        };
        let Some(name) = err.constraint() else {
            return Ok(None);
        };
        // A second conflict on a probed index is a race with another
        // writer's rows, committed since: probe once more, then bisect.
        if err.code() != &SqlState::UNIQUE_VIOLATION
            || probed.iter().filter(|p| *p == name).count() >= 2
        {
            return Ok(None);
        }
        if !self.unique_indexes.contains_key(name) {
            let found = conflicts::lookup(
                db,
                &self.target.table,
                name,
                &self.target.columns,
                &self.target.plan.column_types(),
            )
            .await?;
            self.unique_indexes.insert(name.to_string(), found);
        }
        Ok(self.unique_indexes[name].clone())
    }

    /// Finds the rows of `list` that conflict on `index` with the table or
    /// with an earlier row, rejects them, and returns the others with how
    /// many were rejected. A probe that fails leaves `list` whole. Before
    /// the COPY (`ahead`), integer keys beyond the bounds the table had at
    /// this writer's first such probe are not looked up: one that collides
    /// all the same fails the COPY, and the probe after it looks up all.
    #[allow(clippy::too_many_arguments)]
    async fn probe(
        &mut self,
        tx: &mut Transaction<'_>,
        parts: &Parts<'_>,
        list: Vec<u32>,
        index: &UniqueIndex,
        ahead: bool,
        rejects: &mut Vec<Reject>,
        refused: &mut Vec<u32>,
    ) -> Result<(Vec<u32>, usize), tokio_postgres::Error> {
        let bounds = match self.key_bounds.get(&index.name) {
            Some(b) if ahead => *b,
            _ => {
                let b = conflicts::key_bounds(tx.client(), &self.target.table, index).await?;
                self.key_bounds.insert(index.name.clone(), b);
                b
            }
        };
        let probe_sp = tx.savepoint(PROBE_SAVEPOINT).await?;
        let db = probe_sp.client();
        let found = async {
            if index.by_key.is_some() {
                return conflicts::probe_keys(
                    db,
                    &self.target.table,
                    index,
                    bounds,
                    &parts.body,
                    &parts.batch.rows,
                    &list,
                )
                .await;
            }
            db.batch_execute(&self.probe_sql).await?;
            let body = Bytes::from(conflicts::probe_body(&parts.body, &parts.batch.rows, &list));
            copy(db, &conflicts::probe_copy_sql(&self.target.columns), body).await?;
            Ok(db
                .query(
                    &conflicts::conflicts_sql(&self.target.table, index),
                    &[&index.name, &conflicts::key_list(index)],
                )
                .await?
                .iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
                .collect())
        }
        .await;
        let found: Vec<(u32, String)> = match found {
            Ok(rows) => {
                probe_sp.commit().await?;
                rows
            }
            Err(e) if classify(&e) != ErrorKind::Transient => {
                tracing::debug!(error = %e, index = %index.name, "probing unique conflicts failed; bisecting instead");
                probe_sp.rollback().await?;
                return Ok((list, 0));
            }
            Err(e) => return Err(e),
        };
        let mut conflicting: Vec<u32> = Vec::with_capacity(found.len());
        for (i, reason) in &found {
            conflicting.push(*i);
            refused.push(*i);
            rejects.push(parts.batch.reject_row(*i as usize, None, reason.clone()));
        }
        conflicting.sort_unstable();
        let keep = list
            .into_iter()
            .filter(|i| conflicting.binary_search(i).is_err())
            .collect();
        metrics::counter!("nexus_unique_conflicts_total").increment(found.len() as u64);
        Ok((keep, found.len()))
    }

    async fn stage_and_merge(
        &self,
        db: &Client,
        copy_rows: &Statement,
        body: Bytes,
    ) -> Result<(), tokio_postgres::Error> {
        db.batch_execute(STAGE_TRUNCATE).await?;
        copy(db, copy_rows, body).await?;
        db.batch_execute(&self.merge_sql).await
    }
}

/// COPYs `body` with `statement` (a COPY … FROM STDIN).
async fn copy<T: ToStatement + ?Sized>(
    db: &Client,
    statement: &T,
    body: Bytes,
) -> Result<(), tokio_postgres::Error> {
    let sink = db.copy_in::<_, Bytes>(statement).await?;
    let mut sink = pin!(sink);
    sink.send(body).await?;
    sink.as_mut().finish().await?;
    Ok(())
}

/// Writes rejects with one statement (`unnest` of arrays), `statement`
/// being [`INSERT_REJECTS`] or its prepared form; NUL characters, which
/// PostgreSQL text cannot hold, are shown as U+FFFD.
pub async fn insert_rejects<T: ToStatement + ?Sized>(
    client: &Client,
    statement: &T,
    job_id: Uuid,
    rejects: &[Reject],
) -> Result<(), tokio_postgres::Error> {
    let clean = |s: &str| s.replace('\0', "\u{FFFD}");
    let lines: Vec<i64> = rejects.iter().map(|r| r.line as i64).collect();
    let cols: Vec<Option<String>> = rejects
        .iter()
        .map(|r| r.column.as_deref().map(clean))
        .collect();
    let reasons: Vec<String> = rejects.iter().map(|r| clean(&r.reason)).collect();
    let raws: Vec<String> = rejects.iter().map(|r| clean(&r.raw)).collect();
    client
        .execute(statement, &[&job_id, &lines, &cols, &reasons, &raws])
        .await?;
    Ok(())
}

/// A COPY body holding only `rows` of `body`.
fn copy_subset<'a>(body: &[u8], rows: impl Iterator<Item = &'a EncodedRow> + Clone) -> Vec<u8> {
    let size: usize = rows.clone().map(|r| (r.end - r.start) as usize).sum();
    let mut out = Vec::with_capacity(COPY_HEADER.len() + size + COPY_TRAILER.len());
    out.extend_from_slice(COPY_HEADER);
    for r in rows {
        out.extend_from_slice(&body[r.start as usize..r.end as usize]);
    }
    out.extend_from_slice(COPY_TRAILER);
    out
}
