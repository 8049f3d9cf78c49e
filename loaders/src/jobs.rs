//! Job records in `nexus.jobs`: creating, finding one to resume, finishing
//! with counters derived from the committed checkpoints, listing, and the
//! per-job rejects. The one place that writes the job table.
//!
//! Every UPDATE here that changes a column of `JobRecord` also sets
//! `status`: the `nexus_jobs` trigger (migration 4) fires on it, and servers
//! keep job records in memory on the strength of that announcement.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, GenericClient, Row};
use uuid::Uuid;

use crate::vocab::{JobStatus, Mode};

/// A job as reported by `--json`, `jobs show` and the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, schemars::JsonSchema))]
pub struct JobRecord {
    pub job_id: Uuid,
    pub model: String,
    pub target: String,
    pub mode: Mode,
    pub atomic: bool,
    pub status: JobStatus,
    pub file_name: Option<String>,
    /// The file's SHA-256 (hex); `None` while a load that claimed the file
    /// before its hash was known is still hashing it.
    pub file_hash: Option<String>,
    pub rows_read: i64,
    pub rows_committed: i64,
    pub rows_rejected: i64,
    pub bytes_read: i64,
    pub bytes_total: Option<i64>,
    pub duration_ms: i64,
    pub rows_per_sec: f64,
    pub error: Option<String>,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Running, but no process holds it any more (killed, crashed): it
    /// resumes when its load runs again (or its lease expires, for a
    /// queued job).
    pub interrupted: bool,
}

/// A job record's columns in `nexus.job_view`, which counts what a
/// running job has committed so far.
const JOB_COLUMNS: &str = "id, model, target, mode, atomic, status, file_name, file_hash, rows_read, \
    rows_committed, rows_rejected, bytes_read, bytes_total, duration_ms, error, owner, created_at, \
    started_at, finished_at, interrupted";

impl JobRecord {
    fn from_row(r: &Row) -> JobRecord {
        let duration_ms: i64 = r.get(13);
        let rows_read: i64 = r.get(8);
        JobRecord {
            job_id: r.get(0),
            model: r.get(1),
            target: r.get(2),
            mode: r.get(3),
            atomic: r.get(4),
            status: r.get(5),
            file_name: r.get(6),
            file_hash: r.get(7),
            rows_read,
            rows_committed: r.get(9),
            rows_rejected: r.get(10),
            bytes_read: r.get(11),
            bytes_total: r.get(12),
            duration_ms,
            rows_per_sec: if duration_ms > 0 {
                (rows_read as f64 * 1000.0 / duration_ms as f64).round()
            } else {
                0.0
            },
            error: r.get(14),
            owner: r.get(15),
            created_at: r.get(16),
            started_at: r.get(17),
            finished_at: r.get(18),
            interrupted: r.get(19),
        }
    }
}

/// What a new job is.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub model: &'a str,
    pub target: &'a str,
    pub mode: Mode,
    pub atomic: bool,
    pub status: JobStatus,
    pub file_name: Option<&'a str>,
    pub file_hash: Option<&'a str>,
    pub bytes_total: Option<i64>,
    pub options: serde_json::Value,
    pub owner: Option<&'a str>,
    /// Where an uploaded file is stored (jobs queued over HTTP).
    pub storage_key: Option<&'a str>,
}

pub async fn create(
    c: &impl GenericClient,
    job: &NewJob<'_>,
) -> Result<Uuid, tokio_postgres::Error> {
    let id = Uuid::new_v4();
    c.execute(
        crate::status_sql!(
            "INSERT INTO nexus.jobs (id, model, target, mode, atomic, status, file_name, file_hash,
                                 bytes_total, options, owner, storage_key, started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 CASE WHEN $6 = {running} THEN now() END,
                 CASE WHEN $6 = {skipped} THEN now() END)"
        ),
        &[
            &id,
            &job.model,
            &job.target,
            &job.mode,
            &job.atomic,
            &job.status,
            &job.file_name,
            &job.file_hash,
            &job.bytes_total,
            &job.options,
            &job.owner,
            &job.storage_key,
        ],
    )
    .await?;
    Ok(id)
}

/// The newest unfinished job for this file, model and mode, with its options.
pub async fn find_resumable(
    c: &impl GenericClient,
    model: &str,
    file_hash: &str,
    mode: Mode,
    atomic: bool,
) -> Result<Option<(Uuid, serde_json::Value)>, tokio_postgres::Error> {
    Ok(c.query_opt(
        crate::status_sql!(
            "SELECT id, options FROM nexus.jobs
             WHERE model = $1 AND file_hash = $2 AND mode = $3 AND atomic = $4
               AND status IN ({queued}, {running}, {failed}, {cancelled})
             ORDER BY created_at DESC LIMIT 1"
        ),
        &[&model, &file_hash, &mode, &atomic],
    )
    .await?
    .map(|r| (r.get(0), r.get(1))))
}

/// Whether `model` has had a file of `size` bytes (or of a size not
/// known): a job of it, or the ledger's record of a loaded one. Only such a
/// file can be one loaded or begun before, so a file of any other size is
/// new without its hash being known.
pub async fn has_file_of_size(
    c: &impl GenericClient,
    model: &str,
    size: i64,
) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM nexus.jobs WHERE model = $1 AND file_hash IS NOT NULL
                           AND (bytes_total = $2 OR bytes_total IS NULL))
             OR EXISTS (SELECT 1 FROM nexus.loaded_files WHERE model = $1
                           AND (file_size = $2 OR file_size IS NULL))",
        &[&model, &size],
    )
    .await?
    .get(0))
}

/// Fails the jobs of `model` that claimed a file of `size` bytes and never
/// recorded its hash. The caller holds the lock such a load keeps until it
/// records the hash, so their loads are gone; they committed nothing (a
/// load commits no batch before its hash is recorded).
pub async fn fail_unhashed(
    c: &impl GenericClient,
    model: &str,
    size: i64,
) -> Result<u64, tokio_postgres::Error> {
    c.execute(
        crate::status_sql!(
            "UPDATE nexus.jobs SET status = {failed}, finished_at = now(),
                 error = 'interrupted while its file was being hashed, before any batch was committed; run the load again'
             WHERE model = $1 AND bytes_total = $2 AND file_hash IS NULL AND status = {running}"
        ),
        &[&model, &size],
    )
    .await
}

/// Records the hash of the file a job claimed before it was known.
pub async fn record_hash(
    c: &impl GenericClient,
    id: Uuid,
    file_hash: &str,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "UPDATE nexus.jobs SET file_hash = $2 WHERE id = $1",
        &[&id, &file_hash],
    )
    .await?;
    Ok(())
}

/// The job that already loaded this file into this model, if any (the nil
/// id when that job has been purged since).
pub async fn loaded_by(
    c: &impl GenericClient,
    model: &str,
    file_hash: &str,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    Ok(c.query_opt(
        "SELECT coalesce(job_id, '00000000-0000-0000-0000-000000000000')
         FROM nexus.loaded_files WHERE model = $1 AND file_hash = $2",
        &[&model, &file_hash],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Marks a job running again (a resume) and clears its last error. A
/// resume the user asked for (`Resume::Fresh`, a new command) also clears
/// a pending cancel; one the queue handed over (`Resume::KeepCancel`) keeps
/// it, so that a cancel answered while the job was being claimed still wins.
pub async fn mark_running(
    c: &impl GenericClient,
    id: Uuid,
    resume: Resume,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        crate::status_sql!(
            "UPDATE nexus.jobs SET status = {running}, error = NULL,
                cancel_requested = cancel_requested AND $2,
                started_at = now(), finished_at = NULL WHERE id = $1"
        ),
        &[&id, &(resume == Resume::KeepCancel)],
    )
    .await?;
    Ok(())
}

/// Up to two jobs whose id starts with `prefix` (lower-case hex and `-`).
pub async fn with_id_prefix(
    c: &impl GenericClient,
    prefix: &str,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT id FROM nexus.jobs WHERE id::text LIKE $1 || '%' LIMIT 2",
        &[&prefix],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// A resumed job takes the name the file has now.
pub async fn rename_file(
    c: &impl GenericClient,
    id: Uuid,
    file_name: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    if let Some(name) = file_name {
        c.execute(
            "UPDATE nexus.jobs SET file_name = $2 WHERE id = $1",
            &[&id, &name],
        )
        .await?;
    }
    Ok(())
}

/// An unfinished job a new one replaced, and the rows it had committed
/// (they stay in the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Superseded {
    pub job_id: Uuid,
    pub rows_committed: i64,
}

/// Ends the unfinished job `old` as `cancelled`, replaced by `new` (the
/// same file read with other options, or forced); its committed batches
/// are left as they are.
pub async fn supersede(
    c: &impl GenericClient,
    old: Uuid,
    new: Uuid,
) -> Result<Superseded, tokio_postgres::Error> {
    let row = c
        .query_one(
            crate::status_sql!(
                "WITH counts AS (SELECT * FROM nexus.job_counts($1))
                 UPDATE nexus.jobs j SET status = {cancelled}, finished_at = now(), lease_owner = NULL,
                     rows_committed = counts.committed, rows_rejected = counts.rejected,
                     rows_read = counts.committed + counts.rejected,
                     error = 'superseded by job ' || $2::uuid::text
                             || ' (the same file loaded again with other options or --force); its '
                             || counts.committed || ' committed rows stay in the table'
                 FROM counts WHERE j.id = $1
                 RETURNING counts.committed"
            ),
            &[&old, &new],
        )
        .await?;
    Ok(Superseded {
        job_id: old,
        rows_committed: row.get(0),
    })
}

/// Who resumes a job, deciding the fate of a pending cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// A new command for the same file: the user's latest word.
    Fresh,
    /// A worker that claimed the job from the queue.
    KeepCancel,
}

/// Closes a job whose file was already loaded by another.
/// Records where a job's file is stored (a copy made for a load that runs
/// outside the queue), so that it can be loaded again and is swept like an
/// upload. A job without a lease is never claimed by the queue for it.
pub async fn set_storage_key(
    c: &impl GenericClient,
    id: Uuid,
    key: &str,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "UPDATE nexus.jobs SET storage_key = $2 WHERE id = $1",
        &[&id, &key],
    )
    .await?;
    Ok(())
}

/// Where a job's file is stored, if it still names one.
pub async fn storage_key(
    c: &impl GenericClient,
    id: Uuid,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(
        c.query_opt("SELECT storage_key FROM nexus.jobs WHERE id = $1", &[&id])
            .await?
            .and_then(|r| r.get(0)),
    )
}

pub async fn mark_skipped(c: &impl GenericClient, id: Uuid) -> Result<(), tokio_postgres::Error> {
    c.execute(
        crate::status_sql!("UPDATE nexus.jobs SET status = {skipped}, finished_at = now(), lease_owner = NULL WHERE id = $1"),
        &[&id],
    )
    .await?;
    Ok(())
}

/// Sequence numbers of the job's committed batches.
pub async fn committed_seqs(
    c: &impl GenericClient,
    id: Uuid,
) -> Result<Vec<u64>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT seq FROM nexus.job_batches WHERE job_id = $1",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| r.get::<_, i64>(0) as u64)
    .collect())
}

/// Counters derived from what is committed: (committed, rejected); their
/// sum is the rows read.
pub async fn committed_counts(
    c: &impl GenericClient,
    id: Uuid,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let r = c
        .query_one(
            "SELECT committed, rejected FROM nexus.job_counts($1)",
            &[&id],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// A job's error text is kept to this many characters wherever it goes
/// (the jobs table, notifications, the API).
pub const ERROR_MAX_CHARS: usize = 2000;

/// Cuts a job's error text to [`ERROR_MAX_CHARS`].
pub fn bounded_error(e: &str) -> std::borrow::Cow<'_, str> {
    match e.char_indices().nth(ERROR_MAX_CHARS) {
        None => e.into(),
        Some((at, _)) => format!("{}… ({} bytes in all)", &e[..at], e.len()).into(),
    }
}

/// Closes a run of the job; counters come from the checkpoints, so
/// `rows_read = rows_committed + rows_rejected` holds by construction. A
/// cancel requested before this statement wins over `status`: the job ends
/// `cancelled` whatever its run came to. One statement, so that a job that
/// succeeded and the record of its file as loaded commit together (a crash
/// cannot leave one without the other). Returns the status it was given.
pub async fn finish(
    c: &impl GenericClient,
    id: Uuid,
    status: JobStatus,
    error: Option<&str>,
    bytes_read: i64,
    duration_ms: i64,
) -> Result<JobStatus, tokio_postgres::Error> {
    let error = error.map(bounded_error);
    let error = error.as_deref();
    let row = c
        .query_one(
            crate::status_sql!("WITH counts AS (SELECT * FROM nexus.job_counts($1)),
             done AS (
                 UPDATE nexus.jobs j SET
                     status = CASE WHEN j.cancel_requested THEN {cancelled} ELSE $2 END,
                     error = $3, rows_committed = counts.committed, rows_rejected = counts.rejected,
                     rows_read = counts.committed + counts.rejected, bytes_read = $4,
                     duration_ms = $5, finished_at = now()
                 FROM counts WHERE j.id = $1
                 RETURNING j.id, j.model, j.file_hash, j.bytes_total, j.status),
             ledger AS (
                 INSERT INTO nexus.loaded_files (model, file_hash, job_id, file_size)
                 SELECT model, file_hash, id, bytes_total FROM done
                 WHERE status = {succeeded} AND file_hash IS NOT NULL
                 ON CONFLICT (model, file_hash) DO UPDATE SET job_id = EXCLUDED.job_id, file_size = EXCLUDED.file_size,
                                                               loaded_at = now())
             SELECT coalesce((SELECT status FROM done), $2)"),
            &[&id, &status, &error, &bytes_read, &duration_ms],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn get(
    c: &impl GenericClient,
    id: Uuid,
) -> Result<Option<JobRecord>, tokio_postgres::Error> {
    Ok(c.query_opt(
        &format!("SELECT {JOB_COLUMNS} FROM nexus.job_view WHERE id = $1"),
        &[&id],
    )
    .await?
    .map(|r| JobRecord::from_row(&r)))
}

/// Newest first.
pub async fn list(
    c: &impl GenericClient,
    status: Option<JobStatus>,
    limit: i64,
) -> Result<Vec<JobRecord>, tokio_postgres::Error> {
    Ok(c.query(
        &format!(
            "SELECT {JOB_COLUMNS} FROM nexus.job_view WHERE ($1::text IS NULL OR status = $1::text)
                 ORDER BY created_at DESC LIMIT $2"
        ),
        &[&status, &limit],
    )
    .await?
    .iter()
    .map(JobRecord::from_row)
    .collect())
}

/// Asks a running job to stop at its next batch boundary; a queued or
/// failed job is cancelled at once. Returns the status the job had, if it
/// exists. The row is locked while it is read and changed, so a worker
/// claiming the job at the same moment either sees `cancelled` or takes the
/// job with the request set (which `mark_running` keeps for it).
pub async fn request_cancel(
    c: &mut Client,
    id: Uuid,
) -> Result<Option<JobStatus>, tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT status FROM nexus.jobs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let status: JobStatus = row.get(0);
    match status {
        JobStatus::Running => {
            tx.execute(
                "UPDATE nexus.jobs SET cancel_requested = true WHERE id = $1",
                &[&id],
            )
            .await?;
        }
        JobStatus::Queued | JobStatus::Failed => {
            tx.execute(
                crate::status_sql!(
                    "UPDATE nexus.jobs j SET status = {cancelled}, cancel_requested = true,
                        finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
                        rows_committed = c.committed, rows_rejected = c.rejected,
                        rows_read = c.committed + c.rejected
                 FROM nexus.job_counts($1) c WHERE j.id = $1"
                ),
                &[&id],
            )
            .await?;
        }
        _ => {}
    }
    tx.commit().await?;
    Ok(Some(status))
}

pub async fn cancel_requested(c: &Client, id: Uuid) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT cancel_requested FROM nexus.jobs WHERE id = $1",
        &[&id],
    )
    .await?
    .get(0))
}

/// One reject of a job.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, schemars::JsonSchema))]
pub struct RejectRow {
    pub line: i64,
    pub column: Option<String>,
    pub reason: String,
    pub raw: String,
}

impl RejectRow {
    /// The reject as an example in a sentence: `line N: [column C: ]reason`.
    pub fn example(&self) -> String {
        match &self.column {
            Some(c) => format!("line {}: column {c}: {}", self.line, self.reason),
            None => format!("line {}: {}", self.line, self.reason),
        }
    }
}

/// Rejects of one kind (column and reason without its values).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, schemars::JsonSchema))]
pub struct RejectGroup {
    pub column: Option<String>,
    /// The reason with the values it names replaced (`N`, `(…)=(…)`).
    pub kind: String,
    pub count: i64,
    /// The first few rejects of the kind, by line.
    pub examples: Vec<RejectRow>,
}

/// A job's rejects grouped by kind, the largest groups first (at most
/// `limit` groups, each with up to 3 examples).
pub async fn reject_groups(
    c: &impl GenericClient,
    id: Uuid,
    limit: i64,
) -> Result<Vec<RejectGroup>, tokio_postgres::Error> {
    let rows = c
        .query(
            r#"WITH r AS (
                 SELECT line, "column", reason, raw, nexus.reject_kind(reason) AS kind
                 FROM nexus.rejects WHERE job_id = $1),
             g AS (
                 SELECT "column", kind, count(*) AS n, min(line) AS first FROM r
                 GROUP BY "column", kind ORDER BY n DESC, first LIMIT $2)
             SELECT g."column", g.kind, g.n, e.line, e.reason, e.raw
             FROM g CROSS JOIN LATERAL (
                 SELECT line, reason, raw FROM r
                 WHERE r.kind = g.kind AND r."column" IS NOT DISTINCT FROM g."column"
                 ORDER BY line LIMIT 3) e
             ORDER BY g.n DESC, g.first, e.line"#,
            &[&id, &limit],
        )
        .await?;
    let mut groups: Vec<RejectGroup> = Vec::new();
    for row in rows {
        let (column, kind): (Option<String>, String) = (row.get(0), row.get(1));
        let example = RejectRow {
            line: row.get(3),
            column: column.clone(),
            reason: row.get(4),
            raw: row.get(5),
        };
        match groups.last_mut() {
            Some(g) if g.column == column && g.kind == kind => g.examples.push(example),
            _ => groups.push(RejectGroup {
                column,
                kind,
                count: row.get(2),
                examples: vec![example],
            }),
        }
    }
    Ok(groups)
}

/// The header of rejects as CSV (`nexus jobs rejects`, the HTTP route).
pub const REJECTS_CSV_HEADER: [&str; 4] = ["line", "column", "reason", "raw"];

/// Appends rejects as CSV records (no header) to `out`.
pub fn rejects_csv(out: &mut Vec<u8>, rows: &[RejectRow]) -> Result<(), csv::Error> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    for r in rows {
        w.write_record([
            r.line.to_string().as_str(),
            r.column.as_deref().unwrap_or_default(),
            &r.reason,
            &r.raw,
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// Where a page of rejects ends: the next page starts after it. Rejects are
/// read in line order (a line's rejects in the order they are stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectCursor {
    pub line: i64,
    /// The row's physical position, to break ties between rejects of one line.
    tid: String,
}

impl std::fmt::Display for RejectCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.line, self.tid)
    }
}

impl std::str::FromStr for RejectCursor {
    type Err = String;
    /// `201(0,5)`: a line and a tuple id.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a cursor from a previous page");
        let at = s.find('(').ok_or_else(bad)?;
        let line = s[..at].parse::<i64>().map_err(|_| bad())?;
        let tid = &s[at..];
        let inner = tid
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .ok_or_else(bad)?;
        let (block, off) = inner.split_once(',').ok_or_else(bad)?;
        block.parse::<u32>().map_err(|_| bad())?;
        off.parse::<u16>().map_err(|_| bad())?;
        Ok(RejectCursor {
            line,
            tid: tid.to_string(),
        })
    }
}

/// Up to `limit` rejects of a job after `after`, with the cursor of each.
pub async fn rejects_page(
    c: &impl GenericClient,
    id: Uuid,
    after: Option<&RejectCursor>,
    limit: i64,
) -> Result<Vec<(RejectRow, RejectCursor)>, tokio_postgres::Error> {
    let (line, tid) = match after {
        Some(a) => (Some(a.line), Some(a.tid.as_str())),
        None => (None, None),
    };
    Ok(c.query(
        "SELECT line, \"column\", reason, raw, ctid::text FROM nexus.rejects
             WHERE job_id = $1 AND ($2::int8 IS NULL OR (line, ctid) > ($2, $3::text::tid))
             ORDER BY line, ctid LIMIT $4",
        &[&id, &line, &tid, &limit],
    )
    .await?
    .iter()
    .map(|r| {
        (
            RejectRow {
                line: r.get(0),
                column: r.get(1),
                reason: r.get(2),
                raw: r.get(3),
            },
            RejectCursor {
                line: r.get(0),
                tid: r.get(4),
            },
        )
    })
    .collect())
}

/// A queued job a worker has claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub model: String,
    pub mode: Mode,
    pub atomic: bool,
    pub file_name: Option<String>,
    pub file_hash: Option<String>,
    pub bytes_total: Option<i64>,
    pub storage_key: String,
    pub options: serde_json::Value,
    pub owner: Option<String>,
}

/// How many times a job's lease may expire without progress (its worker
/// died each time) before it is failed instead of handed on: a file that
/// crashes servers must not crash them all.
pub const MAX_STALLED_LEASES: i32 = 2;

/// Claims the oldest queued job, or a running one whose lease expired (its
/// worker died), for `owner` until `lease` from now. Workers skip rows other
/// workers are claiming (`SKIP LOCKED`), so each job goes to one of them.
/// A job whose lease expired [`MAX_STALLED_LEASES`] times without a batch
/// committed in between is failed on the way, and the next one is taken.
pub async fn claim_next(
    c: &impl GenericClient,
    owner: &str,
    lease: std::time::Duration,
) -> Result<Option<Claimed>, tokio_postgres::Error> {
    loop {
        let Some(r) = c
            .query_opt(
                crate::status_sql!("WITH pick AS (
                     SELECT j.id, j.status = {running} AS expired,
                            (SELECT coalesce(sum(rows_read), 0)::bigint FROM nexus.job_batches b
                              WHERE b.job_id = j.id) AS done
                     FROM nexus.jobs j
                     WHERE j.storage_key IS NOT NULL
                       AND ((j.status = {queued} AND (j.not_before IS NULL OR j.not_before <= now()))
                            OR (j.status = {running} AND j.lease_expires_at < now()))
                     ORDER BY j.created_at FOR UPDATE SKIP LOCKED LIMIT 1),
                 verdict AS (
                     SELECT pick.id, pick.done,
                            CASE WHEN NOT pick.expired THEN j.stalled_leases
                                 WHEN pick.done IS NOT DISTINCT FROM j.claimed_done THEN j.stalled_leases + 1
                                 ELSE 0 END AS stalled
                     FROM pick JOIN nexus.jobs j ON j.id = pick.id),
                 counts AS (SELECT c.* FROM pick, nexus.job_counts(pick.id) c)
                 UPDATE nexus.jobs j SET
                     stalled_leases = v.stalled, claimed_done = v.done,
                     status = CASE WHEN v.stalled >= $3 THEN {failed}
                                   WHEN j.cancel_requested THEN {cancelled} ELSE {running} END,
                     error = CASE WHEN v.stalled >= $3 THEN
                         'failed: its worker stopped ' || v.stalled || ' times without committing a batch '
                         || '(a crash or a kill while loading it); it is not retried, so that it cannot stop '
                         || 'another server. Check the file, then upload it again' END,
                     finished_at = CASE WHEN v.stalled >= $3 OR j.cancel_requested THEN now() END,
                     lease_owner = CASE WHEN v.stalled >= $3 OR j.cancel_requested THEN NULL ELSE $1 END,
                     lease_expires_at = CASE WHEN v.stalled >= $3 OR j.cancel_requested THEN NULL
                                             ELSE now() + make_interval(secs => $2) END,
                     started_at = coalesce(started_at, now()),
                     -- A job ended here gets its counters as finish gives them.
                     rows_committed = c.committed, rows_rejected = c.rejected,
                     rows_read = c.committed + c.rejected
                 FROM verdict v, counts c WHERE j.id = v.id
                 RETURNING j.id, j.model, j.mode, j.atomic, j.file_name, j.file_hash, j.bytes_total,
                           j.storage_key, j.options, j.owner, j.status"),
                &[&owner, &lease.as_secs_f64(), &MAX_STALLED_LEASES],
            )
            .await?
        else {
            return Ok(None);
        };
        let id: Uuid = r.get(0);
        match r.get::<_, JobStatus>(10) {
            JobStatus::Failed => {
                tracing::error!(job = %id, "a job stopped its workers {MAX_STALLED_LEASES} times without progress; failed it");
                continue;
            }
            JobStatus::Cancelled => continue,
            _ => {}
        }
        return Ok(Some(Claimed {
            id,
            model: r.get(1),
            mode: r.get(2),
            atomic: r.get(3),
            file_name: r.get(4),
            file_hash: r.get(5),
            bytes_total: r.get(6),
            storage_key: r.get(7),
            options: r.get(8),
            owner: r.get(9),
        }));
    }
}

/// Extends a lease; false if it was lost (expired and taken by another worker).
pub async fn renew_lease(
    c: &impl GenericClient,
    id: Uuid,
    owner: &str,
    lease: std::time::Duration,
) -> Result<bool, tokio_postgres::Error> {
    Ok(c.execute(
        crate::status_sql!(
            "UPDATE nexus.jobs SET lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_owner = $2 AND status = {running}"
        ),
        &[&id, &owner, &lease.as_secs_f64()],
    )
    .await?
        == 1)
}

/// Puts a claimed job back in the queue, not to be claimed for `wait`
/// (another job is loading its file). Not a stall: its lease did not expire.
pub async fn defer(
    c: &impl GenericClient,
    id: Uuid,
    wait: std::time::Duration,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        crate::status_sql!(
            "UPDATE nexus.jobs SET status = {queued}, lease_owner = NULL, lease_expires_at = NULL,
                not_before = now() + make_interval(secs => $2)
         WHERE id = $1 AND status = {running}"
        ),
        &[&id, &wait.as_secs_f64()],
    )
    .await?;
    Ok(())
}

/// Hands a job back to the queue (its worker is shutting down); it resumes
/// from its checkpoints wherever it is claimed next. A job that ended
/// otherwise meanwhile (a cancel won) stays as it is.
pub async fn requeue(c: &impl GenericClient, id: Uuid) -> Result<(), tokio_postgres::Error> {
    c.execute(
        crate::status_sql!(
            "UPDATE nexus.jobs SET status = {queued}, lease_owner = NULL, lease_expires_at = NULL,
                error = NULL, finished_at = NULL
         WHERE id = $1 AND status = {failed} AND NOT cancel_requested"
        ),
        &[&id],
    )
    .await?;
    Ok(())
}

/// Jobs that are open or changed state within `window`, newest first;
/// `owner` limits them to one user's.
pub async fn recently_changed(
    c: &impl GenericClient,
    owner: Option<&str>,
    window: std::time::Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    Ok(c
        .query(
            crate::status_sql!("SELECT id FROM nexus.jobs
             WHERE ($1::text IS NULL OR owner = $1)
               AND (status IN ({queued}, {running})
                    OR greatest(created_at, started_at, finished_at) > now() - make_interval(secs => $2))
             ORDER BY greatest(created_at, started_at, finished_at) DESC LIMIT $3"),
            &[&owner, &window.as_secs_f64(), &limit],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Statuses a job does not leave on its own.
fn finished() -> Vec<JobStatus> {
    JobStatus::ALL
        .iter()
        .copied()
        .filter(|s| s.is_finished())
        .collect()
}

/// What `purge` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Purged {
    pub jobs: u64,
    pub rejects: u64,
    /// The uploads of the purged jobs, for the caller to remove.
    #[serde(skip)]
    pub storage_keys: Vec<String>,
}

/// Deletes the jobs that finished more than `older_than` ago, with their
/// rejects and checkpoints (not their files' places in the loaded-file
/// ledger: those files stay loaded). Jobs whose cache writes are still
/// pending are kept until they are settled.
pub async fn purge(
    c: &mut Client,
    older_than: std::time::Duration,
) -> Result<Purged, tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let rows = tx
        .query(
            "DELETE FROM nexus.jobs j
             WHERE j.status = ANY($1) AND coalesce(j.finished_at, j.created_at) < now() - make_interval(secs => $2)
               AND NOT EXISTS (SELECT 1 FROM nexus.job_batches b WHERE b.job_id = j.id AND b.cache_pending)
             RETURNING j.id, j.storage_key",
            &[&finished(), &older_than.as_secs_f64()],
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let rejects = tx
        .execute("DELETE FROM nexus.rejects WHERE job_id = ANY($1)", &[&ids])
        .await?;
    tx.commit().await?;
    Ok(Purged {
        jobs: ids.len() as u64,
        rejects,
        storage_keys: rows.iter().filter_map(|r| r.get(1)).collect(),
    })
}

/// Lets go of the uploads of jobs that finished more than `retention` ago:
/// returns their keys, for the caller to remove, and forgets them.
pub async fn release_uploads(
    c: &impl GenericClient,
    retention: std::time::Duration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(c.query(
        "WITH old AS (
                 SELECT id, storage_key FROM nexus.jobs
                 WHERE storage_key IS NOT NULL AND status = ANY($1)
                   AND finished_at < now() - make_interval(secs => $2)
                 FOR UPDATE SKIP LOCKED)
             UPDATE nexus.jobs j SET storage_key = NULL FROM old WHERE j.id = old.id
             RETURNING old.storage_key",
        &[&finished(), &retention.as_secs_f64()],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// The keys of `keys` that no job refers to.
pub async fn unreferenced(
    c: &impl GenericClient,
    keys: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT k FROM unnest($1::text[]) k
             WHERE NOT EXISTS (SELECT 1 FROM nexus.jobs WHERE storage_key = k)",
        &[&keys],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// A page of jobs, newest first, after `cursor` (the last id of the
/// previous page); `owner` limits it to one user's jobs.
pub async fn page(
    c: &impl GenericClient,
    owner: Option<&str>,
    status: Option<JobStatus>,
    model: Option<&str>,
    limit: i64,
    cursor: Option<Uuid>,
) -> Result<Vec<JobRecord>, tokio_postgres::Error> {
    Ok(c
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM nexus.job_view
                 WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR status = $2::text)
                   AND ($3::text IS NULL OR model = $3)
                   AND ($5::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM nexus.jobs WHERE id = $5))
                 ORDER BY created_at DESC, id DESC LIMIT $4"
            ),
            &[&owner, &status, &model, &limit, &cursor],
        )
        .await?
        .iter()
        .map(JobRecord::from_row)
        .collect())
}
