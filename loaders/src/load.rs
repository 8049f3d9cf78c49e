//! One load, end to end, as a [`Load`] in phases: `prepare` (claim, resume,
//! skip or adopt the job), `run` (the pipeline stages and the writers of its
//! [`WriterPlan`], reject limits, cancel and interrupt at batch boundaries),
//! the [`verdict`] (a pure function of counts and limits) and `close` (the
//! job's end with counters derived from what committed). `nexus load` and
//! the service's job workers both call [`run_load`]; there is no second copy
//! of this path.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_pipeline::progress::Progress;
use nexus_pipeline::row_json::RowJson;
use nexus_pipeline::runner::{self, RunOptions};
use nexus_pipeline::{EncodedBatch, Model, source};
use serde::Serialize;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache::{BatchCache, Cache, CachedModel, from_batch};
use crate::catalog;
use crate::gate::SeqGate;
use crate::hash_gate::{FileHash, HashGate};
use crate::jobs::{self, JobRecord, NewJob, Superseded};
use crate::migrate::migrate;
use crate::pg::{self, describe};
use crate::queue::{BatchReceiver, QUEUE_BYTES, batch_queue};
use crate::server_input;
use crate::vocab::{JobStatus, Mode};
use crate::writer::{BatchWriter, Committed, INSERT_REJECTS, Target, WriteError, insert_rejects};

/// A batch is also cut at this many bytes of input, bounding memory for
/// files of very long rows. Stored with the job: resume must cut alike.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// Everything one load needs.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub model: Arc<Model>,
    /// The name jobs and the loaded-file ledger know this target by.
    pub model_key: String,
    pub path: PathBuf,
    pub file_name: Option<String>,
    /// The file's SHA-256 (hex), when known (an upload is hashed as it is
    /// stored); `None`: the load hashes the file while it connects and
    /// claims, beside reading its first batches.
    pub file_hash: Option<String>,
    pub bytes_total: Option<u64>,
    pub mode: Mode,
    pub atomic: bool,
    pub force: bool,
    pub has_header: bool,
    pub copy_connections: usize,
    pub workers: usize,
    /// Create the model's table if missing (`--model`; not `--table`).
    pub create_table: bool,
    pub owner: Option<String>,
    /// Cancelled by a signal, a server's shutdown or a lost lease: stop at
    /// the next batch boundary, resumable. (A user's cancel is the job's
    /// own flag in the database.)
    pub interrupt: CancellationToken,
    /// A job already claimed from the queue: run it rather than finding or
    /// creating one by file. Interrupted, it goes back to the queue.
    pub job: Option<Uuid>,
    /// The process's cache; the model's strategy decides what it gets.
    pub cache: Option<Arc<Cache>>,
    /// How long the database may be out of reach before the load gives up
    /// (resumable).
    pub retry: Duration,
}

impl LoadRequest {
    /// The request reading its file as the format the file's magic bytes
    /// prove (Parquet, Arrow), whatever the name or the model said: a text
    /// reader could make nothing of it.
    fn in_proven_format(mut self) -> Result<LoadRequest, LoadError> {
        let path = self.path.clone();
        let Some(format) = nexus_pipeline::model::InputFormat::sniff_file(&path) else {
            return Ok(self);
        };
        if format != self.model.input.format {
            let input = nexus_pipeline::model::InputDef {
                format: Some(format),
                ..Default::default()
            };
            let model = self.model.with_input(&input);
            self.model = Arc::new(model.map_err(|e| LoadError::Read(e.to_string()))?);
        }
        Ok(self)
    }
}

#[derive(Debug)]
pub struct LoadOutcome {
    pub job: JobRecord,
    /// The job failed because its rejects passed `max_rejects` or the ratio.
    pub rejects_exceeded: bool,
    pub resumed: bool,
    /// The unfinished job of this file that this one replaced.
    pub superseded: Option<Superseded>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("database: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("this file is being loaded by another process right now (job {0})")]
    Busy(Uuid),
    #[error(
        "this file is being loaded into `{0}` by another job right now; run again when it is done"
    )]
    FileBusy(String),
    #[error(
        "job {0} cannot be resumed: its stored options do not read back ({1}), and a resume must cut the file's batches as its first run did"
    )]
    BadOptions(Uuid, String),
    /// A queued job whose file another job is loading: back in the queue
    /// for a little while.
    #[error("job {0} waits: another job is loading the same file into the same model")]
    Deferred(Uuid),
    #[error("{0}")]
    Catalog(#[from] catalog::CatalogError),
    #[error("job {0} disappeared while it ran")]
    Vanished(Uuid),
    /// The file could not be read as the model says (a dry run's failure;
    /// a load records it in its job instead).
    #[error("{0}")]
    Read(String),
}

enum Claim {
    Skipped(Uuid),
    Run {
        id: Uuid,
        resumed: bool,
        options: Box<JobOptions>,
        /// The unfinished job of the file this one replaces.
        superseded: Option<Superseded>,
    },
}

/// What fixes a job's batch bounds and how its file is read; kept with the
/// job for resume.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct JobOptions {
    batch_size: usize,
    max_batch_bytes: usize,
    has_header: bool,
    /// Absent in jobs made before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reading: Option<Reading>,
    /// What an upload asked for beyond its model (queued jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload: Option<UploadOptions>,
}

/// What an upload asks for beyond its model, kept with its queued job for
/// the worker that runs it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UploadOptions {
    /// Overrides of the model's input options (encoding, delimiter …).
    #[serde(default)]
    pub input: nexus_pipeline::model::InputDef,
    pub has_header: bool,
    #[serde(default)]
    pub force: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            input: Default::default(),
            has_header: true,
            force: false,
        }
    }
}

impl UploadOptions {
    /// The options a queued job was created with: the defaults for jobs
    /// queued before they were kept; options that do not read back fail the
    /// job rather than being guessed.
    pub fn of_job(id: Uuid, options: &serde_json::Value) -> Result<UploadOptions, LoadError> {
        match options.get("upload") {
            None => Ok(UploadOptions::default()),
            Some(u) => serde_json::from_value(u.clone())
                .map_err(|e| LoadError::BadOptions(id, e.to_string())),
        }
    }
}

/// How a file is read into rows, canonically: a run that reads it another
/// way is a new job, not a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
struct Reading {
    /// Absent in jobs made before NDJSON: CSV.
    #[serde(default)]
    format: nexus_pipeline::model::InputFormat,
    encoding: String,
    delimiter: u8,
    quote: u8,
    null: Vec<String>,
    timezone: String,
    max_record_bytes: usize,
}

impl JobOptions {
    fn new(model: &Model, has_header: bool) -> JobOptions {
        let input = &model.input;
        JobOptions {
            batch_size: model.batch_size,
            max_batch_bytes: MAX_BATCH_BYTES,
            has_header,
            upload: None,
            reading: Some(Reading {
                format: input.format,
                encoding: input.encoding.name().to_string(),
                delimiter: input.delimiter,
                quote: input.quote,
                null: input
                    .null
                    .iter()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect(),
                timezone: input.timezone.session_setting(),
                max_record_bytes: input.max_record_bytes,
            }),
        }
    }

    /// How the stages of a run of `req` with these options read its file,
    /// past the batches in `skip`.
    fn run_options(&self, req: &LoadRequest, skip: HashSet<u64>) -> RunOptions {
        RunOptions {
            batch_size: self.batch_size,
            max_batch_bytes: self.max_batch_bytes,
            workers: req.workers.max(1),
            has_header: self.has_header,
            line_column: req.mode == Mode::Upsert,
            require_key: req.mode == Mode::Upsert,
            skip: Arc::new(skip),
        }
    }

    /// Whether runs with `self` and with `other` cut a file into the same
    /// batches.
    fn cuts_like(&self, other: &JobOptions) -> bool {
        (self.batch_size, self.max_batch_bytes, self.has_header)
            == (other.batch_size, other.max_batch_bytes, other.has_header)
    }

    /// Whether a run with `self` reads the file as a job with `stored` did
    /// (a job that did not keep its reading is taken to).
    fn reads_like(&self, stored: &JobOptions) -> bool {
        self.has_header == stored.has_header
            && match (&self.reading, &stored.reading) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The options a job was created with (its batch bounds). A resume
    /// must cut batches exactly as the first run did: options that do not
    /// read back fail the job rather than being guessed.
    fn stored(id: Uuid, value: serde_json::Value) -> Result<JobOptions, LoadError> {
        serde_json::from_value(value).map_err(|e| LoadError::BadOptions(id, e.to_string()))
    }
}

/// Takes the lock that lets one load at a time read a file into a model,
/// for as long as this session lasts: two jobs of one file (an upload sent
/// twice, a command-line run beside a queued job) never run together, so
/// the second finds the first's work — and the ledger — when it starts.
async fn lock_file(
    c: &impl tokio_postgres::GenericClient,
    file: &FileKey<'_>,
) -> Result<bool, tokio_postgres::Error> {
    try_lock(c, &file.ledger_key(), LockSpace::File).await
}

/// The kinds of advisory locks a load takes by a text key, each hashed in
/// a space of its own.
#[derive(Debug, Clone, Copy)]
enum LockSpace {
    /// A claim of a file, for its transaction.
    Claim = 0,
    /// A load of a file, for its session.
    File = 2,
    /// Claims of a model's files of one size ([`SizeKey`]).
    Size = 3,
}

/// Takes session advisory lock `key` of `space` when it is free.
async fn try_lock(
    c: &impl tokio_postgres::GenericClient,
    key: &str,
    space: LockSpace,
) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT pg_try_advisory_lock(hashtextextended($1, $2))",
        &[&key, &(space as i64)],
    )
    .await?
    .get(0))
}

/// A file as the ledger and the locks know it: its content hash within a
/// model.
struct FileKey<'a> {
    model: &'a str,
    hash: &'a str,
}

impl FileKey<'_> {
    fn ledger_key(&self) -> String {
        format!("{}\n{}", self.model, self.hash)
    }
}

/// The files of one size within a model, as the lock knows them that a
/// load holds from claiming a file before its hash is known until it
/// records the hash ([`claim_unhashed`]). Every other claim of a file of
/// that size takes it too, and so waits for the hash (no longer than
/// hashing the file takes) and then finds the job by it.
struct SizeKey<'a> {
    model: &'a str,
    size: i64,
}

impl SizeKey<'_> {
    fn lock_key(&self) -> String {
        format!("{}\n{}", self.model, self.size)
    }

    async fn try_lock(
        &self,
        c: &impl tokio_postgres::GenericClient,
    ) -> Result<bool, tokio_postgres::Error> {
        try_lock(c, &self.lock_key(), LockSpace::Size).await
    }

    async fn unlock(
        &self,
        c: &impl tokio_postgres::GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        c.execute(
            "SELECT pg_advisory_unlock(hashtextextended($1, $2))",
            &[&self.lock_key(), &(LockSpace::Size as i64)],
        )
        .await?;
        Ok(())
    }

    /// Waits for the lock until the transaction `tx` ends, then fails the
    /// jobs that claimed a file of this size and never recorded its hash
    /// (their loads are gone: they would hold the lock).
    async fn settle(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
            &[&self.lock_key(), &(LockSpace::Size as i64)],
        )
        .await?;
        jobs::fail_unhashed(tx, self.model, self.size).await?;
        Ok(())
    }
}

/// The record of a new job of `req`'s file.
fn new_job<'a>(
    req: &'a LoadRequest,
    target: &'a str,
    status: JobStatus,
    file_hash: Option<&'a str>,
    bytes_total: Option<i64>,
    options: &JobOptions,
) -> NewJob<'a> {
    NewJob {
        model: &req.model_key,
        target,
        mode: req.mode,
        atomic: req.atomic,
        status,
        file_name: req.file_name.as_deref(),
        file_hash,
        bytes_total,
        options: serde_json::to_value(options).unwrap_or_default(),
        owner: req.owner.as_deref(),
        storage_key: None,
    }
}

/// Claims a new job for a file whose hash is not known yet, when no job of
/// the model has had a file of its size (so it is neither a file loaded
/// before nor one to resume), holding the files of that size until the
/// hash is recorded ([`record_hash_later`]). `None`: the file needs its
/// hash to be claimed.
async fn claim_unhashed(
    control: &mut Client,
    req: &LoadRequest,
    size: &SizeKey<'_>,
) -> Result<Option<Claim>, LoadError> {
    if !size.try_lock(control).await? {
        return Ok(None);
    }
    let tx = control.transaction().await?;
    jobs::fail_unhashed(&tx, size.model, size.size).await?;
    if jobs::has_file_of_size(&tx, size.model, size.size).await? {
        tx.commit().await?;
        size.unlock(control).await?;
        return Ok(None);
    }
    let options = JobOptions::new(&req.model, req.has_header);
    let target = req.model.def.table.clone();
    let new = new_job(
        req,
        &target,
        JobStatus::Running,
        None,
        Some(size.size),
        &options,
    );
    let id = jobs::create(&tx, &new).await?;
    // A job made in this transaction: nobody else can hold its lock.
    lock_job(&tx, id).await?;
    tx.commit().await?;
    Ok(Some(Claim::Run {
        id,
        resumed: false,
        options: Box::new(options),
        superseded: None,
    }))
}

/// Hashes the file of a job claimed without its hash, records the hash
/// with the job, takes the file's lock and lets go of its size's: the gate
/// the writers wait on before committing opens then. A failure fails the
/// load (nothing of it has committed).
fn record_hash_later(
    control: Arc<Client>,
    job_id: Uuid,
    size: i64,
    hashing: Hashing,
    shared: Arc<Shared>,
) -> HashGate {
    let (tx, gate) = HashGate::pending();
    let model = shared.model.clone();
    tokio::spawn(async move {
        let state = match hashing.await {
            Err(e) => FileHash::Failed(e.to_string()),
            Ok(hash) => {
                let file = FileKey {
                    model: &model,
                    hash: &hash,
                };
                let size = SizeKey {
                    model: &model,
                    size,
                };
                let recorded = async {
                    jobs::record_hash(&*control, job_id, &hash).await?;
                    let locked = lock_file(&*control, &file).await?;
                    size.unlock(&*control).await?;
                    Ok::<_, tokio_postgres::Error>(locked)
                };
                match recorded.await {
                    Ok(true) => FileHash::Recorded,
                    Ok(false) => FileHash::Failed(LoadError::FileBusy(model.clone()).to_string()),
                    Err(e) => FileHash::Failed(LoadError::Db(e).to_string()),
                }
            }
        };
        if let FileHash::Failed(reason) = &state {
            shared.fail(reason.clone());
        }
        let _ = tx.send(state);
    });
    gate
}

/// The file's hash, being computed.
type Hashing = std::pin::Pin<Box<dyn Future<Output = Result<String, LoadError>> + Send>>;

/// Takes the lock that lets one process at a time run a job, for as long
/// as this session lasts.
async fn lock_job(
    c: &impl tokio_postgres::GenericClient,
    id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT pg_try_advisory_lock(nexus.job_lock_key($1))",
        &[&id],
    )
    .await?
    .get(0))
}

async fn claim(
    control: &mut Client,
    req: &LoadRequest,
    file: &FileKey<'_>,
    size: Option<&SizeKey<'_>>,
) -> Result<Claim, LoadError> {
    let tx = control.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
        &[&file.ledger_key(), &(LockSpace::Claim as i64)],
    )
    .await?;
    if let Some(size) = size {
        size.settle(&tx).await?;
    }
    let options = JobOptions::new(&req.model, req.has_header);
    // A loaded file is skipped unless forced. Else an unfinished job of it
    // resumes when this run reads the file as it did; `--force` or other
    // options start a new job instead.
    let already = if req.force {
        None
    } else {
        jobs::loaded_by(&tx, file.model, file.hash).await?
    };
    let resumable = match already {
        Some(_) => None,
        None => jobs::find_resumable(&tx, file.model, file.hash, req.mode, req.atomic).await?,
    };
    let mut superseded = None;
    if let Some((id, opts)) = resumable {
        if !lock_job(&tx, id).await? {
            return Err(LoadError::Busy(id));
        }
        if !lock_file(&tx, file).await? {
            return Err(LoadError::FileBusy(req.model_key.clone()));
        }
        let stored = JobOptions::stored(id, opts)?;
        if !req.force && options.reads_like(&stored) {
            jobs::mark_running(&tx, id, jobs::Resume::Fresh).await?;
            jobs::rename_file(&tx, id, req.file_name.as_deref()).await?;
            tx.commit().await?;
            return Ok(Claim::Run {
                id,
                resumed: true,
                options: Box::new(stored),
                superseded: None,
            });
        }
        superseded = Some(id);
    } else if !lock_file(&tx, file).await? {
        return Err(LoadError::FileBusy(req.model_key.clone()));
    }
    let target = req.model.def.table.clone();
    let status = if already.is_some() {
        JobStatus::Skipped
    } else {
        JobStatus::Running
    };
    let bytes_total = req.bytes_total.map(|b| b as i64);
    let new = new_job(req, &target, status, Some(file.hash), bytes_total, &options);
    let id = jobs::create(&tx, &new).await?;
    let superseded = match superseded {
        Some(old) => Some(jobs::supersede(&tx, old, id).await?),
        None => None,
    };
    if already.is_some() {
        tx.commit().await?;
        return Ok(Claim::Skipped(id));
    }
    // A job made in this transaction: nobody else can hold its lock.
    lock_job(&tx, id).await?;
    tx.commit().await?;
    Ok(Claim::Run {
        id,
        resumed: false,
        options: Box::new(options),
        superseded,
    })
}

/// Takes on a job the queue handed us: lock it, apply the loaded-file
/// ledger, and read the batch bounds it was created with.
async fn adopt(
    control: &mut Client,
    req: &LoadRequest,
    file: &FileKey<'_>,
    size: Option<&SizeKey<'_>>,
    id: Uuid,
) -> Result<Claim, LoadError> {
    let tx = control.transaction().await?;
    if let Some(size) = size {
        size.settle(&tx).await?;
    }
    if !lock_job(&tx, id).await? {
        return Err(LoadError::Busy(id));
    }
    if !lock_file(&tx, file).await? {
        jobs::defer(&tx, id, DEFER).await?;
        tx.commit().await?;
        return Err(LoadError::Deferred(id));
    }
    if !req.force
        && let Some(prev) = jobs::loaded_by(&tx, file.model, file.hash).await?
        && prev != id
    {
        jobs::mark_skipped(&tx, id).await?;
        tx.commit().await?;
        return Ok(Claim::Skipped(id));
    }
    let stored: serde_json::Value = tx
        .query_opt("SELECT options FROM nexus.jobs WHERE id = $1", &[&id])
        .await?
        .ok_or(LoadError::Vanished(id))?
        .get(0);
    let resumed = !jobs::committed_seqs(&tx, id).await?.is_empty();
    let options = JobOptions::stored(id, stored)?;
    jobs::mark_running(&tx, id, jobs::Resume::KeepCancel).await?;
    tx.commit().await?;
    Ok(Claim::Run {
        id,
        resumed,
        options: Box::new(options),
        superseded: None,
    })
}

/// How long a queued job whose file is being loaded by another waits
/// before it is tried again.
const DEFER: Duration = Duration::from_secs(2);

/// The options a queued job is created with, fixing its batch bounds:
/// `model` with the upload's overrides applied, and the upload's options.
pub fn queued_job_options(model: &Model, upload: &UploadOptions) -> serde_json::Value {
    let options = JobOptions {
        upload: Some(upload.clone()),
        ..JobOptions::new(model, upload.has_header)
    };
    serde_json::to_value(options).unwrap_or_default()
}

/// State the writers share.
struct Shared {
    /// Stops the load at the next batch boundary: a child of the request's
    /// interrupt, also cancelled by an error, the reject limit or the job's
    /// cancel.
    stop: CancellationToken,
    /// Why `stop` was cancelled, when this load cancelled it.
    reason: Mutex<Option<Stop>>,
    progress: Arc<Progress>,
    max_rejects: Option<u64>,
    max_reject_ratio: Option<f64>,
    /// Cancelled by a signal, a shutdown or a lost lease.
    interrupt: CancellationToken,
    model: String,
}

impl Shared {
    fn new(req: &LoadRequest, progress: Arc<Progress>) -> Shared {
        Shared {
            stop: req.interrupt.child_token(),
            reason: Mutex::new(None),
            progress,
            max_rejects: req.model.input.max_rejects,
            max_reject_ratio: req.model.input.max_reject_ratio,
            interrupt: req.interrupt.clone(),
            model: req.model_key.clone(),
        }
    }

    /// How the run stands now, from what this process saw (`close` then
    /// counts what the database holds).
    fn run_end(&self) -> RunEnd {
        let snapshot = self.progress.snapshot();
        let reason = self.reason().clone();
        RunEnd {
            stop: reason.or_else(|| self.interrupt.is_cancelled().then_some(Stop::Interrupted)),
            rows_read: snapshot.rows_read as i64,
            rows_committed: snapshot.rows_committed as i64,
            rows_rejected: snapshot.rows_rejected as i64,
            top_reject: None,
            max_rejects: self.max_rejects,
            max_reject_ratio: self.max_reject_ratio,
        }
    }

    /// The stop reason's slot (no code panics while holding it; a poisoned
    /// lock is taken as it is).
    fn reason(&self) -> std::sync::MutexGuard<'_, Option<Stop>> {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops the load for `reason`, unless it stopped for a weightier one.
    fn stop_for(&self, reason: Stop) {
        Stop::record(&mut self.reason(), reason);
        self.stop.cancel();
    }

    fn fail(&self, message: String) {
        self.stop_for(Stop::Error {
            message,
            outage: false,
        });
    }

    /// Fails the load with a database error, noting an outage.
    fn fail_db(&self, context: &str, e: &tokio_postgres::Error) {
        self.stop_for(Stop::Error {
            message: format!("{context}{}", describe(e)),
            outage: pg::classify(e) == pg::ErrorKind::Transient,
        });
    }

    fn fail_write(&self, e: WriteError) {
        match &e {
            WriteError::Db(db) => self.fail_db("", db),
            WriteError::Aborted => self.fail(e.to_string()),
        }
    }

    /// Counts a committed batch, which read the input up to `bytes_end`.
    fn count(&self, c: Committed, rows_read: u64, bytes_end: u64) {
        self.progress.add_batch(c.committed, c.rejected);
        self.progress
            .bytes_committed
            .fetch_max(bytes_end, Ordering::Relaxed);
        let model = self.model.clone();
        metrics::counter!("nexus_rows_read_total", "model" => model.clone()).increment(rows_read);
        metrics::counter!("nexus_rows_committed_total", "model" => model.clone())
            .increment(c.committed);
        metrics::counter!("nexus_rows_rejected_total", "model" => model).increment(c.rejected);
        if let Some(max) = self.max_rejects
            && self.progress.rows_rejected.load(Ordering::Relaxed) > max
        {
            self.stop_for(Stop::RejectLimit);
        }
    }
}

/// Opens the file and starts the pipeline's stages on it (the header is
/// read and checked here), handing encoded batches to `sink`.
async fn start_reading(
    path: std::path::PathBuf,
    model: Arc<Model>,
    opts: RunOptions,
    bytes: Arc<std::sync::atomic::AtomicU64>,
    sink: impl FnMut(EncodedBatch) -> bool + Send + 'static,
) -> Result<runner::Stages, runner::PipelineError> {
    let encoding = model.input.encoding;
    tokio::task::spawn_blocking(move || {
        if model.input.format.is_columnar() {
            return runner::start_columnar(&path, model, opts, bytes, sink);
        }
        let input = source::open(&path, encoding, bytes.clone())?;
        runner::start(input, model, opts, bytes, sink)
    })
    .await
    .map_err(|e| runner::PipelineError::Panic(e.to_string()))
    .and_then(|r| r)
}

/// Waits for the stages to end; the reader's figures, or what stopped it.
async fn finish_reading(
    stages: runner::Stages,
) -> Result<runner::SourceStats, runner::PipelineError> {
    tokio::task::spawn_blocking(move || stages.finish())
        .await
        .map_err(|e| runner::PipelineError::Panic(e.to_string()))
        .and_then(|r| r)
}

/// What a dry run found.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub rows_read: u64,
    /// Rows that passed the model's rules and PostgreSQL's input functions.
    pub rows_valid: u64,
    pub rows_rejected: u64,
    /// The first rejects, by line.
    pub rejects: Vec<nexus_pipeline::Reject>,
}

/// Rejects a dry run lists.
const DRY_RUN_REJECTS: usize = 20;

/// Reads and checks the file as a load of `req` would — the header, the
/// model's rules, every value by the fast path or PostgreSQL's own input
/// functions — and writes nothing: no job, no row. What only the table can
/// say (keys, foreign keys, checks) is not known until a load.
pub async fn dry_run(url: &str, req: LoadRequest) -> Result<DryRun, LoadError> {
    let mut client = pg::connect_retrying(url, req.retry).await?;
    migrate(&mut client).await?;
    let timezone = req.model.input.timezone.session_setting();
    client
        .execute("SELECT set_config('TimeZone', $1, false)", &[&timezone])
        .await?;
    let (tx, mut rx) = batch_queue(QUEUE_BYTES);
    let options = JobOptions::new(&req.model, req.has_header);
    let opts = RunOptions {
        batch_size: options.batch_size,
        max_batch_bytes: options.max_batch_bytes,
        workers: req.workers.max(1),
        has_header: req.has_header,
        line_column: false,
        require_key: req.mode == Mode::Upsert,
        skip: Default::default(),
    };
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = move |batch: EncodedBatch| tx.blocking_send(batch);
    let stages = start_reading(req.path.clone(), req.model.clone(), opts, bytes, sink)
        .await
        .map_err(|e| LoadError::Read(e.to_string()))?;
    let plan = stages.plan.clone();
    let mut found = DryRun {
        rows_read: 0,
        rows_valid: 0,
        rows_rejected: 0,
        rejects: Vec::new(),
    };
    let mut failed = None;
    while let Some(mut batch) = rx.recv().await {
        if failed.is_some() {
            continue;
        }
        if let Err(e) = server_input::settle(&client, &plan, &mut batch).await {
            failed = Some(e);
            continue;
        }
        found.rows_read += batch.rows_read;
        found.rows_valid += batch.rows.len() as u64;
        found.rows_rejected += batch.rejects.len() as u64;
        let room = DRY_RUN_REJECTS.saturating_sub(found.rejects.len());
        found.rejects.extend(batch.rejects.into_iter().take(room));
    }
    finish_reading(stages)
        .await
        .map_err(|e| LoadError::Read(e.to_string()))?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(found)
}

/// Runs one load to its end and returns the closed job: [`Load::prepare`],
/// then [`Load::run`] and [`Load::close`].
pub async fn run_load(
    url: &str,
    req: LoadRequest,
    progress: Arc<Progress>,
) -> Result<LoadOutcome, LoadError> {
    match Load::prepare(url, req, progress).await? {
        Prepared::Skipped(outcome) => Ok(*outcome),
        Prepared::Ready(mut load) => {
            let end = load.run().await;
            load.close(end).await
        }
    }
}

/// One job's run, owned from its claim to its close.
pub struct Load {
    url: String,
    req: LoadRequest,
    progress: Arc<Progress>,
    started: Instant,
    control: Arc<Client>,
    job_id: Uuid,
    resumed: bool,
    superseded: Option<Superseded>,
    options: Box<JobOptions>,
    plan: WriterPlan,
    /// Batches already committed by earlier runs (none for a whole load).
    committed: HashSet<u64>,
    /// The job as it started, for a summary when it cannot be closed.
    base: JobRecord,
    /// What the stages and the writers share.
    shared: Arc<Shared>,
    /// The file's stages, started while the job was claimed, when they cut
    /// its batches as the job does.
    ahead: Option<Ahead>,
    /// Open once the job's file hash is recorded; nothing commits before.
    hash: HashGate,
}

/// What preparing a load came to.
pub enum Prepared {
    /// The file was loaded already: the job is closed as `skipped`.
    Skipped(Box<LoadOutcome>),
    Ready(Box<Load>),
}

/// The file's stages started before its job is claimed, as a new job of
/// the file would read it: the file's hash, the claim's round trips and the
/// decoding of the first batches (tens of milliseconds for a columnar
/// file's first pages) then overlap instead of following one another. The
/// batches wait in the channel for the writers; a claim that resumes a
/// job, or reads the file with other batch bounds, stops them and starts
/// over.
struct Ahead {
    /// The batch bounds they cut by.
    options: JobOptions,
    stages: tokio::task::JoinHandle<Result<runner::Stages, runner::PipelineError>>,
    batches: BatchReceiver,
}

impl Ahead {
    fn start(
        req: &LoadRequest,
        shared: &Arc<Shared>,
        options: &JobOptions,
        skip: HashSet<u64>,
    ) -> Ahead {
        let (tx, batches) = batch_queue(QUEUE_BYTES);
        let stop = shared.stop.clone();
        let sink = move |batch: EncodedBatch| !stop.is_cancelled() && tx.blocking_send(batch);
        let stages = tokio::spawn(start_reading(
            req.path.clone(),
            req.model.clone(),
            options.run_options(req, skip),
            shared.progress.bytes_read.clone(),
            sink,
        ));
        Ahead {
            options: options.clone(),
            stages,
            batches,
        }
    }

    /// Stops the stages, their batches unused, and waits for them to end.
    async fn stop(self) {
        drop(self.batches);
        if let Ok(Ok(stages)) = self.stages.await {
            let _ = finish_reading(stages).await;
        }
    }
}

impl Load {
    /// Connects, migrates, makes the table if asked, claims (or resumes, or
    /// skips, or adopts from the queue) the job and seeds the counters with
    /// what it committed before; the file is hashed (when its hash is not
    /// given) and its first batches read meanwhile.
    pub async fn prepare(
        url: &str,
        req: LoadRequest,
        progress: Arc<Progress>,
    ) -> Result<Prepared, LoadError> {
        let started = Instant::now();
        let req = req.in_proven_format()?;
        let shared = Arc::new(Shared::new(&req, progress.clone()));
        let plan = WriterPlan::of(&req);
        let as_new = JobOptions::new(&req.model, req.has_header);
        let ahead = Ahead::start(&req, &shared, &as_new, HashSet::new());
        match Self::claimed(url, req, progress, started, shared, plan).await {
            Ok(Prepared::Ready(mut load)) => {
                if load.committed.is_empty() && load.options.cuts_like(&ahead.options) {
                    load.ahead = Some(ahead);
                } else {
                    ahead.stop().await;
                    load.progress.bytes_read.store(0, Ordering::Relaxed);
                }
                Ok(Prepared::Ready(load))
            }
            other => {
                ahead.stop().await;
                other
            }
        }
    }

    /// The claim half of [`Load::prepare`]: all of it but the early stages.
    async fn claimed(
        url: &str,
        req: LoadRequest,
        progress: Arc<Progress>,
        started: Instant,
        shared: Arc<Shared>,
        plan: WriterPlan,
    ) -> Result<Prepared, LoadError> {
        // Started now, awaited at the claim (or after it).
        let hashing: Hashing = match req.file_hash.clone() {
            Some(known) => Box::pin(std::future::ready(Ok(known))),
            None => {
                let path = req.path.clone();
                let task = tokio::task::spawn_blocking(move || source::hash_file(&path));
                let path = req.path.clone();
                Box::pin(async move {
                    task.await
                        .map_err(|e| LoadError::Read(e.to_string()))?
                        .map_err(|e| LoadError::Read(format!("{}: {e}", path.display())))
                })
            }
        };
        let mut control = pg::connect_retrying(url, req.retry).await?;
        migrate(&mut control).await?;
        if req.create_table && !catalog::table_exists(&control, &req.model).await? {
            catalog::ensure_table(&mut control, &req.model).await?;
        }
        let size = std::fs::metadata(&req.path).ok().map(|m| SizeKey {
            model: &req.model_key,
            size: m.len() as i64,
        });
        let early = match (&req.file_hash, req.job, &size) {
            (None, None, Some(size)) => claim_unhashed(&mut control, &req, size)
                .await?
                .map(|claimed| (claimed, size.size)),
            _ => None,
        };
        // The hash still to record, with the size the file was claimed by.
        let (claimed, unhashed) = match early {
            Some((claimed, size)) => (claimed, Some((hashing, size))),
            None => {
                let hash = hashing.await?;
                let file = FileKey {
                    model: &req.model_key,
                    hash: &hash,
                };
                let claimed = match req.job {
                    Some(id) => adopt(&mut control, &req, &file, size.as_ref(), id).await?,
                    None => claim(&mut control, &req, &file, size.as_ref()).await?,
                };
                (claimed, None)
            }
        };
        let (job_id, resumed, options, superseded) = match claimed {
            Claim::Skipped(id) => {
                let job = jobs::get(&control, id)
                    .await?
                    .ok_or(LoadError::Vanished(id))?;
                release_locks(&control).await;
                return Ok(Prepared::Skipped(Box::new(LoadOutcome {
                    job,
                    rejects_exceeded: false,
                    resumed: false,
                    superseded: None,
                })));
            }
            Claim::Run {
                id,
                resumed,
                options,
                superseded,
            } => (id, resumed, options, superseded),
        };
        let control = Arc::new(control);
        let base = jobs::get(&*control, job_id)
            .await?
            .ok_or(LoadError::Vanished(job_id))?;
        let mut committed: HashSet<u64> = jobs::committed_seqs(&*control, job_id)
            .await?
            .into_iter()
            .collect();
        if let WriterPlan::Whole { .. } = plan {
            // An atomic run commits all or nothing: a re-run starts over.
            control
                .execute("DELETE FROM nexus.rejects WHERE job_id = $1", &[&job_id])
                .await?;
            committed.clear();
        }
        let (done_rows, done_rejects) = jobs::committed_counts(&*control, job_id).await?;
        progress
            .earlier_rows
            .store((done_rows + done_rejects) as u64, Ordering::Relaxed);
        progress
            .rows_committed
            .store(done_rows as u64, Ordering::Relaxed);
        progress
            .rows_rejected
            .store(done_rejects as u64, Ordering::Relaxed);
        progress
            .rows_read
            .store((done_rows + done_rejects) as u64, Ordering::Relaxed);
        // Last on the control connection: what records the hash may wait
        // there (for a lock on the job's row), and the load's setup need not.
        let hash = match unhashed {
            Some((hashing, size)) => {
                record_hash_later(control.clone(), job_id, size, hashing, shared.clone())
            }
            None => HashGate::recorded(),
        };
        Ok(Prepared::Ready(Box::new(Load {
            url: url.to_string(),
            req,
            progress,
            started,
            control,
            job_id,
            hash,
            resumed,
            superseded,
            options,
            plan,
            committed,
            base,
            shared,
            ahead: None,
        })))
    }

    /// The job this load runs.
    pub fn job_id(&self) -> Uuid {
        self.job_id
    }

    /// Reads, encodes and writes the file's batches until they end, a limit
    /// or an error stops them, or the job is cancelled or interrupted; says
    /// how the run ended.
    pub async fn run(&mut self) -> RunEnd {
        let shared = self.shared.clone();
        let watching = shared.stop.child_token();
        let watcher = spawn_stop_watcher(
            self.control.clone(),
            self.job_id,
            shared.clone(),
            watching.clone(),
        );
        let ahead = match self.ahead.take() {
            Some(a) => a,
            None => Ahead::start(&self.req, &shared, &self.options, self.committed.clone()),
        };
        let stages = match ahead.stages.await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                shared.fail(e.to_string());
                None
            }
            Err(e) => {
                shared.fail(runner::PipelineError::Panic(e.to_string()).to_string());
                None
            }
        };
        if let Some(stages) = &stages {
            self.write(stages, ahead.batches, &shared).await;
        } else {
            drop(ahead.batches);
        }
        let read_result = match stages {
            Some(s) => finish_reading(s).await,
            None => Ok(Default::default()),
        };
        watching.cancel();
        let _ = watcher.await;
        // A job is not closed before its file's hash is recorded (one that
        // committed nothing may get here first); a failure to record it
        // failed the load already.
        let _ = self.hash.wait().await;
        let req = &self.req;
        let mut end = shared.run_end();
        match (&mut end.stop, read_result) {
            (Some(Stop::Error { message, outage }), _) => {
                if *outage {
                    *message = format!(
                        "gave up after {}s of database errors ({message}); the job is resumable: run the same command again",
                        req.retry.as_secs()
                    );
                }
            }
            (stop, Err(e)) => {
                *stop = Some(Stop::Error {
                    message: e.to_string(),
                    outage: false,
                })
            }
            (_, Ok(_)) => {}
        }
        end
    }

    /// The writers of the plan, and the cache stage behind them.
    async fn write(&self, stages: &runner::Stages, rx: BatchReceiver, shared: &Arc<Shared>) {
        let req = &self.req;
        let target = Arc::new(Target {
            table: req.model.qualified_table(),
            columns: stages
                .plan
                .column_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            key: req.model.key.clone(),
            mode: req.mode,
            plan: stages.plan.clone(),
            timezone: req.model.input.timezone.session_setting(),
            retry: req.retry,
        });
        let cache = match req.cache.as_ref().zip(CachedModel::of(&req.model)) {
            Some((c, model)) => {
                let json = self.row_json(c, &target).await;
                BatchCache::start(
                    c.clone(),
                    model,
                    &target.columns,
                    json,
                    self.job_id,
                    &self.url,
                )
                .map(Arc::new)
            }
            None => None,
        };
        let writers = Writers {
            url: &self.url,
            target,
            cache: cache.clone(),
            job_id: self.job_id,
            hash: &self.hash,
            shared,
        };
        match self.plan {
            WriterPlan::Whole { replace } => writers.whole(rx, replace, &self.control).await,
            WriterPlan::Parallel { connections } => {
                writers.parallel(rx, connections, &self.committed).await
            }
        }
        // Write-through work is part of the load; write-behind goes on.
        if let Some(c) = &cache {
            c.finish().await;
        }
    }

    /// How the cache prints this load's rows from its batches, when Redis
    /// takes them and the table stores what the batches send; a catalog
    /// that cannot be read leaves the stage reading rows back.
    async fn row_json(&self, cache: &Cache, target: &Target) -> Option<RowJson> {
        if !cache.has_redis() || matches!(self.plan, WriterPlan::Whole { .. }) {
            return None;
        }
        let types = target.plan.column_types();
        let upsert = target.mode == Mode::Upsert;
        from_batch::row_json(&*self.control, &target.table, &target.columns, &types, upsert)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "reading the table's shape failed; the cache reads rows back");
                None
            })
    }

    /// Gives the job its verdict and closes it. When the database cannot be
    /// reached to close it, the job stays open there (and so resumable) and
    /// the caller still gets a summary of how far it got.
    pub async fn close(self, end: RunEnd) -> Result<LoadOutcome, LoadError> {
        let closed = self.close_job(end).await;
        release_locks(&self.control).await;
        closed
    }

    async fn close_job(&self, end: RunEnd) -> Result<LoadOutcome, LoadError> {
        let closing = Closing {
            job_id: self.job_id,
            whole: matches!(self.plan, WriterPlan::Whole { .. }),
            queued: self.req.job.is_some(),
            bytes_read: self.progress.bytes_read.load(Ordering::Relaxed) as i64,
            duration_ms: self.started.elapsed().as_millis() as i64,
            resumed: self.resumed,
            superseded: self.superseded,
        };
        let cache = self.req.cache.as_deref();
        let closed = match close(self.control.as_ref(), &closing, end.clone(), cache).await {
            Err(LoadError::Db(e)) if pg::classify(&e) == pg::ErrorKind::Transient => {
                // The control connection may be the casualty of an outage the
                // writers rode out: once more on a new one.
                match pg::connect_retrying(&self.url, CLOSE_RETRY).await {
                    Ok(c) => close(&c, &closing, end.clone(), cache).await,
                    Err(e) => Err(e.into()),
                }
            }
            other => other,
        };
        match closed {
            Err(LoadError::Db(e)) if pg::classify(&e) == pg::ErrorKind::Transient => {
                let mut job = self.base.clone();
                let v = verdict(&end);
                job.status = JobStatus::Failed;
                job.error = Some(format!(
                    "{}; and the job could not be closed ({}): it is resumable",
                    v.error.as_deref().unwrap_or("stopped"),
                    describe(&e)
                ));
                let s = self.progress.snapshot();
                job.rows_read = s.rows_read as i64;
                job.rows_committed = s.rows_committed as i64;
                job.rows_rejected = s.rows_rejected as i64;
                job.bytes_read = closing.bytes_read;
                job.duration_ms = closing.duration_ms;
                Ok(LoadOutcome {
                    job,
                    rejects_exceeded: false,
                    resumed: self.resumed,
                    superseded: self.superseded,
                })
            }
            other => other,
        }
    }
}

/// Lets go of the job's and the file's locks as soon as the load is over,
/// so that a run started right after this one (a cron re-run, the next
/// command of a script) never finds them held by a session still closing.
async fn release_locks(control: &Client) {
    if let Err(e) = control
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .await
    {
        tracing::debug!(error = %e, "releasing the load's locks failed; they go with its session");
    }
}

/// How long closing a job retries on a new connection after the control
/// connection failed.
const CLOSE_RETRY: Duration = Duration::from_secs(5);

/// What closing a run needs besides the database.
struct Closing {
    job_id: Uuid,
    whole: bool,
    /// A job from the queue: an interrupted run goes back to it.
    queued: bool,
    bytes_read: i64,
    duration_ms: i64,
    resumed: bool,
    superseded: Option<Superseded>,
}

/// Decides the job's status and closes it: the verdict counts every
/// committed batch and reject of the job, from earlier runs too (a whole
/// load that rolled back has only this run's reads to go by).
async fn close(
    c: &Client,
    closing: &Closing,
    mut end: RunEnd,
    cache: Option<&Cache>,
) -> Result<LoadOutcome, LoadError> {
    let id = closing.job_id;
    let (committed, rejected) = jobs::committed_counts(c, id).await?;
    if !closing.whole {
        end.rows_read = committed + rejected;
    }
    end.rows_committed = committed;
    end.rows_rejected = rejected;
    if committed == 0 && rejected > 0 {
        end.top_reject = jobs::reject_groups(c, id, 1)
            .await?
            .into_iter()
            .next()
            .and_then(|g| Some((g.examples.first()?.example(), g.count)));
    }
    let v = verdict(&end);
    let status = jobs::finish(
        c,
        id,
        v.status,
        v.error.as_deref(),
        closing.bytes_read,
        closing.duration_ms,
    )
    .await?;
    if closing.queued && v.interrupted {
        jobs::requeue(c, id).await?;
    }
    if let Some(cache) = cache
        && let Err(e) = cache.settle(c).await
    {
        tracing::warn!(error = %e, "settling the cache's pending writes failed; they are repaired later");
    }
    let job = jobs::get(c, id).await?.ok_or(LoadError::Vanished(id))?;
    Ok(LoadOutcome {
        job,
        rejects_exceeded: v.rejects_exceeded && status == JobStatus::Failed,
        resumed: closing.resumed,
        superseded: closing.superseded,
    })
}

/// Why a run stopped before the end of its input.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// A writer's or the reader's error; `outage`: the database was out of
    /// reach for the whole retry window (the job is resumable).
    Error { message: String, outage: bool },
    /// The job's cancel request was seen.
    Cancelled,
    /// The rejects went over `max_rejects`.
    RejectLimit,
    /// A signal, a shutdown or a lost lease: resumable.
    Interrupted,
}

impl Stop {
    /// Which reason a run keeps when it has more than one: an error, then a
    /// cancel, then the reject limit, then an interruption.
    fn weight(&self) -> u8 {
        match self {
            Stop::Error { .. } => 3,
            Stop::Cancelled => 2,
            Stop::RejectLimit => 1,
            Stop::Interrupted => 0,
        }
    }

    /// Keeps the weightier of `slot` and `reason` (the first of equals).
    fn record(slot: &mut Option<Stop>, reason: Stop) {
        if slot.as_ref().is_none_or(|s| reason.weight() > s.weight()) {
            *slot = Some(reason);
        }
    }
}

/// How a run ended, as far as its verdict goes.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    /// Why it stopped; `None`: it read its input to the end.
    pub stop: Option<Stop>,
    /// Rows read, committed and rejected by the job in all, over all its runs.
    pub rows_read: i64,
    pub rows_committed: i64,
    pub rows_rejected: i64,
    /// An example of the most common kind of reject (`line N: [column C: ]
    /// reason`) and how many rows it hit, when no row was committed.
    pub top_reject: Option<(String, i64)>,
    pub max_rejects: Option<u64>,
    pub max_reject_ratio: Option<f64>,
}

/// A job's status after a run, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: JobStatus,
    pub error: Option<String>,
    /// Failed for its rejects (exit 3).
    pub rejects_exceeded: bool,
    /// Stopped before its end and worth resuming.
    pub interrupted: bool,
}

/// The status a run gives its job: an error fails it; a cancel wins over
/// everything else; then the reject limits, judged on all the job's rows so
/// that a re-run cannot turn a job that broke them into a success; then an
/// interruption; else success.
pub fn verdict(end: &RunEnd) -> Verdict {
    let failed = |error: String, rejects_exceeded: bool| Verdict {
        status: JobStatus::Failed,
        error: Some(error),
        rejects_exceeded,
        interrupted: false,
    };
    if let Some(Stop::Error { message, outage }) = &end.stop {
        return Verdict {
            interrupted: *outage,
            ..failed(message.clone(), false)
        };
    }
    if end.stop == Some(Stop::Cancelled) {
        return Verdict {
            status: JobStatus::Cancelled,
            error: None,
            rejects_exceeded: false,
            interrupted: false,
        };
    }
    if let Some(max) = end.max_rejects
        && end.rows_rejected > max as i64
    {
        return failed(
            format!(
                "stopped: {} rejects, more than {max} (--max-rejects {max})",
                end.rows_rejected
            ),
            true,
        );
    }
    if let Some(r) = end.max_reject_ratio
        && end.rows_read > 0
        && end.rows_rejected as f64 / end.rows_read as f64 > r
    {
        return failed(
            format!(
                "{} of {} rows rejected, over the allowed ratio {r}",
                end.rows_rejected, end.rows_read
            ),
            true,
        );
    }
    if end.stop == Some(Stop::Interrupted) {
        return Verdict {
            status: JobStatus::Failed,
            error: Some("interrupted; run the same command again to resume".into()),
            rejects_exceeded: false,
            interrupted: true,
        };
    }
    if end.rows_committed == 0 && end.rows_rejected > 0 {
        let why = match &end.top_reject {
            Some((example, n)) if *n == end.rows_rejected => format!(", for example {example}"),
            Some((example, n)) => {
                format!("; most for one reason ({n} rows), for example {example}")
            }
            None => String::new(),
        };
        return failed(
            format!(
                "no row was loaded: all {} rows were rejected{why}",
                end.rows_rejected
            ),
            false,
        );
    }
    Verdict {
        status: JobStatus::Succeeded,
        error: None,
        rejects_exceeded: false,
        interrupted: false,
    }
}

/// Stops the load at the next batch boundary when its job's cancel flag is
/// set (polled: another process sets it). An interrupt needs no watching:
/// the load's stop is its child. It ends when `watching` is cancelled.
fn spawn_stop_watcher(
    control: Arc<Client>,
    job_id: Uuid,
    shared: Arc<Shared>,
    watching: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(CANCEL_POLL);
        poll.tick().await;
        loop {
            tokio::select! {
                _ = watching.cancelled() => return,
                _ = poll.tick() => {
                    if let Ok(true) = jobs::cancel_requested(&control, job_id).await {
                        shared.stop_for(Stop::Cancelled);
                        return;
                    }
                }
            }
        }
    })
}

/// How often a running load looks for its job's cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(600);

/// How a load's batches are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterPlan {
    /// `connections` writers, each batch in its own transaction.
    Parallel { connections: usize },
    /// One writer, one transaction for the whole load (`--atomic`, or
    /// `replace`, which empties the table first).
    Whole { replace: bool },
}

impl WriterPlan {
    fn of(req: &LoadRequest) -> WriterPlan {
        if req.atomic || req.mode == Mode::Replace {
            WriterPlan::Whole {
                replace: req.mode == Mode::Replace,
            }
        } else {
            WriterPlan::Parallel {
                connections: req.copy_connections.max(1),
            }
        }
    }
}

/// What the writers of one load share.
struct Writers<'a> {
    url: &'a str,
    target: Arc<Target>,
    cache: Option<Arc<BatchCache>>,
    job_id: Uuid,
    hash: &'a HashGate,
    shared: &'a Arc<Shared>,
}

/// A writer's first batches, while the job's file hash is being recorded:
/// applied in one transaction that commits once the hash is, so that the
/// server loads rows meanwhile rather than waits; up to [`HOLD_BYTES`] of
/// them, as they are kept until then. If the transaction fails, its
/// batches go again one by one, as any batch does after an error.
async fn hold_while_hashing(
    writer: &mut BatchWriter,
    rx: &tokio::sync::Mutex<BatchReceiver>,
    hash: &HashGate,
    shared: &Shared,
) -> Result<(), WriteError> {
    if !hash.is_pending() {
        return Ok(());
    }
    let mut batches: Vec<EncodedBatch> = Vec::new();
    let mut held_bytes = 0;
    let failed = match writer.hold().await {
        Err(e) => Some(WriteError::Db(e)),
        Ok(mut held) => {
            let mut failed = None;
            while !shared.stop.is_cancelled() && held_bytes < HOLD_BYTES {
                let mut batch = tokio::select! {
                    biased;
                    _ = hash.wait() => break,
                    b = async { rx.lock().await.recv().await } => match b {
                        Some(b) => b,
                        None => break,
                    },
                };
                let applied = held.apply(&mut batch).await;
                held_bytes += batch.copy.len();
                batches.push(batch);
                if let Err(e) = applied {
                    failed = Some(e);
                    break;
                }
            }
            if shared.stop.is_cancelled() {
                // Stopped: nothing of it commits (dropped, it rolls back).
                return Ok(());
            }
            match failed {
                Some(e) => Some(e),
                None => match held.commit().await {
                    Ok(done) => {
                        for (c, b) in done.into_iter().zip(&batches) {
                            shared.count(c, b.rows_read, b.raw.bytes_end);
                        }
                        return Ok(());
                    }
                    Err(e) => Some(e),
                },
            }
        }
    };
    match failed {
        Some(WriteError::Aborted) => return Err(WriteError::Aborted),
        Some(e) => {
            tracing::debug!(error = %e, "holding batches until the hash failed; writing them one by one")
        }
        None => {}
    }
    for batch in batches {
        let (rows_read, bytes_end) = (batch.rows_read, batch.raw.bytes_end);
        let c = writer.write_batch(batch, None).await?;
        shared.count(c, rows_read, bytes_end);
    }
    Ok(())
}

/// How much of its batches a writer holds while the file's hash is
/// recorded (a large file takes long to hash): it then waits for the hash.
const HOLD_BYTES: usize = 16 << 20;

/// A COPY writer for the load, or none (the load failed, saying why).
async fn open_writer(
    url: &str,
    target: Arc<Target>,
    job_id: Uuid,
    cache: Option<Arc<BatchCache>>,
    hash: &HashGate,
    shared: &Shared,
) -> Option<BatchWriter> {
    match BatchWriter::connect(url, target, job_id).await {
        Ok(w) => Some(w.with_cache(cache).with_hash_gate(hash.clone())),
        Err(e) => {
            shared.fail_db("cannot connect a COPY writer: ", &e);
            None
        }
    }
}

impl Writers<'_> {
    /// `connections` writers, each committing whole batches in their own
    /// transactions; upserts merge in batch order (`SeqGate`).
    async fn parallel(&self, rx: BatchReceiver, connections: usize, committed: &HashSet<u64>) {
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let gate = (self.target.mode == Mode::Upsert)
            .then(|| Arc::new(SeqGate::new(committed.iter().copied())));
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (rx, shared, gate) = (rx.clone(), self.shared.clone(), gate.clone());
            let (url, target, cache) = (
                self.url.to_string(),
                self.target.clone(),
                self.cache.clone(),
            );
            let (job_id, hash) = (self.job_id, self.hash.clone());
            tasks.push(tokio::spawn(async move {
                // Writers connect at once, each retrying on its own.
                let writer = open_writer(&url, target, job_id, cache, &hash, &shared).await;
                let Some(mut writer) = writer else {
                    if let Some(g) = &gate {
                        g.abort();
                    }
                    return;
                };
                // Upserts merge in batch order, so they cannot hold batches
                // back: theirs wait for the hash one at a time.
                if gate.is_none() {
                    match hold_while_hashing(&mut writer, &rx, &hash, &shared).await {
                        Ok(()) => {}
                        Err(WriteError::Aborted) => return,
                        Err(e) => return shared.fail_write(e),
                    }
                }
                loop {
                    if shared.stop.is_cancelled() {
                        break;
                    }
                    let Some(batch) = rx.lock().await.recv().await else {
                        break;
                    };
                    let (rows_read, bytes_end) = (batch.rows_read, batch.raw.bytes_end);
                    match writer.write_batch(batch, gate.as_deref()).await {
                        Ok(c) => shared.count(c, rows_read, bytes_end),
                        Err(WriteError::Aborted) => break,
                        Err(e) => {
                            shared.fail_write(e);
                            if let Some(g) = &gate {
                                g.abort();
                            }
                            break;
                        }
                    }
                }
                // A stopped writer lets waiting upserts go: they will see `stop`.
                if shared.stop.is_cancelled()
                    && let Some(g) = &gate
                {
                    g.abort();
                }
            }));
        }
        drop(rx);
        for t in tasks {
            if let Err(e) = t.await {
                self.shared.fail(format!("a COPY writer panicked: {e}"));
            }
        }
    }

    /// One writer, one transaction for the whole load. Rejects go through
    /// the control connection so they outlive a rollback. It commits only
    /// what the verdict would call a success.
    async fn whole(&self, mut rx: BatchReceiver, replace: bool, control: &Client) {
        let shared = self.shared;
        let writer = open_writer(
            self.url,
            self.target.clone(),
            self.job_id,
            self.cache.clone(),
            self.hash,
            shared,
        )
        .await;
        let Some(mut writer) = writer else {
            return;
        };
        let mut whole = match writer.begin_whole(replace).await {
            Ok(w) => w,
            Err(e) => {
                shared.fail_db("", &e);
                return;
            }
        };
        while !shared.stop.is_cancelled() {
            let Some(batch) = rx.recv().await else { break };
            let (rows_read, bytes_end) = (batch.rows_read, batch.raw.bytes_end);
            match whole.apply(batch).await {
                Ok((c, rejects)) => {
                    if !rejects.is_empty()
                        && let Err(e) =
                            insert_rejects(control, INSERT_REJECTS, self.job_id, &rejects).await
                    {
                        shared.fail_db("", &e);
                        break;
                    }
                    shared.count(c, rows_read, bytes_end);
                }
                Err(e) => {
                    shared.fail_write(e);
                    break;
                }
            }
        }
        drop(rx);
        let commit = !shared.stop.is_cancelled()
            && verdict(&shared.run_end()).status == JobStatus::Succeeded;
        let ended = if commit {
            whole.commit(control).await
        } else {
            whole.rollback().await.map_err(WriteError::from)
        };
        match ended {
            // The hash was not recorded: the load failed, saying why.
            Ok(()) | Err(WriteError::Aborted) => {}
            Err(e) => shared.fail_write(e),
        }
        if !commit {
            // Nothing of this run is kept but its rejects.
            shared.progress.rows_committed.store(0, Ordering::Relaxed);
        }
    }
}

/// Describes the load metrics and registers them at zero for each model, so
/// that an exporter shows them before the first load.
pub fn register_metrics<'a>(models: impl IntoIterator<Item = &'a str>) {
    metrics::describe_counter!("nexus_rows_read_total", "Rows read by loads, per model");
    metrics::describe_counter!(
        "nexus_rows_committed_total",
        "Rows committed by loads, per model"
    );
    metrics::describe_counter!(
        "nexus_rows_rejected_total",
        "Rows rejected by loads, per model"
    );
    metrics::describe_histogram!(
        "nexus_batch_commit_seconds",
        metrics::Unit::Seconds,
        "Time to commit one batch"
    );
    metrics::describe_counter!(
        "nexus_batch_retries_total",
        "Batch attempts retried after a transient error"
    );
    for m in models {
        let model = m.to_string();
        metrics::counter!("nexus_rows_read_total", "model" => model.clone()).increment(0);
        metrics::counter!("nexus_rows_committed_total", "model" => model.clone()).increment(0);
        metrics::counter!("nexus_rows_rejected_total", "model" => model).increment(0);
    }
    metrics::counter!("nexus_batch_retries_total").increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end() -> RunEnd {
        RunEnd {
            rows_read: 100,
            rows_committed: 98,
            rows_rejected: 2,
            max_rejects: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn rejects_over_the_limit_fail_whatever_this_run_committed() {
        let v = verdict(&end());
        assert_eq!((v.status, v.rejects_exceeded), (JobStatus::Failed, true));
        let v = verdict(&RunEnd {
            max_rejects: Some(2),
            ..end()
        });
        assert_eq!(v.status, JobStatus::Succeeded);
        let v = verdict(&RunEnd {
            max_rejects: None,
            max_reject_ratio: Some(0.01),
            ..end()
        });
        assert_eq!((v.status, v.rejects_exceeded), (JobStatus::Failed, true));
        let v = verdict(&RunEnd {
            max_rejects: None,
            max_reject_ratio: Some(0.02),
            ..end()
        });
        assert_eq!(v.status, JobStatus::Succeeded);
    }

    fn stopped(reasons: &[Stop]) -> Option<Stop> {
        let mut slot = None;
        for r in reasons {
            Stop::record(&mut slot, r.clone());
        }
        slot
    }

    #[test]
    fn an_error_fails_and_a_cancel_wins_over_the_rest() {
        let boom = Stop::Error {
            message: "boom".into(),
            outage: false,
        };
        for reasons in [
            [Stop::Cancelled, boom.clone()],
            [boom.clone(), Stop::Cancelled],
        ] {
            let v = verdict(&RunEnd {
                stop: stopped(&reasons),
                ..end()
            });
            assert_eq!(
                (v.status, v.error.as_deref()),
                (JobStatus::Failed, Some("boom"))
            );
        }
        for reasons in [
            [Stop::Interrupted, Stop::Cancelled],
            [Stop::Cancelled, Stop::Interrupted],
            [Stop::RejectLimit, Stop::Cancelled],
        ] {
            let v = verdict(&RunEnd {
                stop: stopped(&reasons),
                ..end()
            });
            assert_eq!((v.status, v.interrupted), (JobStatus::Cancelled, false));
        }
    }

    #[test]
    fn upload_options_that_do_not_read_back_fail_the_job() {
        let id = Uuid::nil();
        let old = UploadOptions::of_job(id, &serde_json::json!({"batch_size": 10})).unwrap();
        assert!(
            old.has_header && !old.force,
            "jobs queued before: the defaults"
        );
        let bad = serde_json::json!({"upload": {"has_header": "yes"}});
        assert!(matches!(
            UploadOptions::of_job(id, &bad),
            Err(LoadError::BadOptions(..))
        ));
    }

    #[test]
    fn a_run_that_loaded_nothing_but_rejects_fails_naming_why() {
        let all = RunEnd {
            rows_read: 40,
            rows_committed: 0,
            rows_rejected: 40,
            top_reject: Some(("line 3: column score: not an integer".into(), 30)),
            ..Default::default()
        };
        let v = verdict(&all);
        assert_eq!((v.status, v.rejects_exceeded), (JobStatus::Failed, false));
        assert_eq!(
            v.error.as_deref(),
            Some(
                "no row was loaded: all 40 rows were rejected; most for one reason (30 rows), for example line 3: column score: not an integer"
            )
        );
        let one = verdict(&RunEnd {
            rows_committed: 1,
            ..all.clone()
        });
        assert_eq!(one.status, JobStatus::Succeeded);
        let empty = verdict(&RunEnd::default());
        assert_eq!(
            empty.status,
            JobStatus::Succeeded,
            "an empty file is no failure"
        );
    }

    #[test]
    fn an_interrupted_run_is_resumable_unless_over_its_limits() {
        let v = verdict(&RunEnd {
            stop: Some(Stop::Interrupted),
            max_rejects: None,
            ..end()
        });
        assert_eq!((v.status, v.interrupted), (JobStatus::Failed, true));
        let v = verdict(&RunEnd {
            stop: stopped(&[Stop::Interrupted, Stop::RejectLimit]),
            ..end()
        });
        assert_eq!((v.interrupted, v.rejects_exceeded), (false, true));
        let v = verdict(&RunEnd {
            rows_read: 0,
            rows_rejected: 0,
            max_reject_ratio: Some(0.0),
            ..Default::default()
        });
        assert_eq!(v.status, JobStatus::Succeeded);
    }
}
