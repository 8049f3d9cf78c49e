//! `/api/v2/jobs`: streaming uploads that become queued jobs, and job
//! listing, status, cancel and rejects. Users see their own jobs; admins
//! see all. A job that is not yours is answered as not found.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use nexus_loaders::jobs::{self, JobRecord, NewJob};
use nexus_loaders::load::UploadOptions;
use nexus_loaders::{JobStatus, Mode};
use nexus_pipeline::model::{InputDef, InputFormat};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::CurrentUser;
use super::problem::{Authenticated, OneJob, Problem, ProblemBody};
use crate::auth::Role;
use crate::jobs::storage::{ByteStream, UploadError};

/// An upload's parameters: the command line's load options. Unknown ones
/// are refused (400), not ignored.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The model to load into (the document lists the models in force).
    pub model: String,
    pub mode: Option<Mode>,
    pub format: Option<FormatParam>,
    /// Load the whole file in one transaction.
    pub atomic: Option<bool>,
    /// Input encoding (default utf-8).
    pub encoding: Option<EncodingParam>,
    /// Field delimiter: one ASCII character, `\t` for tab (default `,`);
    /// not the quote character.
    #[param(min_length = 1, max_length = 3)]
    pub delimiter: Option<String>,
    /// Quote character (default `"`); not the delimiter.
    #[param(min_length = 1, max_length = 1)]
    pub quote: Option<String>,
    /// An unquoted field text meaning NULL (default: the empty field).
    pub null: Option<String>,
    /// Whether the first line is a header (default true); without one,
    /// fields map to the model's columns by position.
    pub header: Option<bool>,
    /// Zone for timestamps without an offset (IANA name or +HH:MM).
    pub timezone: Option<String>,
    /// Fail once more than this many rows are rejected.
    #[param(minimum = 0)]
    pub max_rejects: Option<u64>,
    /// Fail when more than this fraction of the rows is rejected.
    #[param(minimum = 0.0, maximum = 1.0)]
    pub max_reject_ratio: Option<f64>,
    /// Load even if this file was already loaded into this model.
    pub force: Option<bool>,
}

impl CreateParams {
    pub(crate) fn upload_options(&self) -> UploadOptions {
        UploadOptions {
            input: InputDef {
                format: self.format.map(FormatParam::format),
                null: self.null.clone().map(|n| vec![n]),
                timezone: self.timezone.clone(),
                encoding: self.encoding.map(|e| e.name().to_string()),
                delimiter: self.delimiter.clone(),
                quote: self.quote.clone(),
                max_rejects: self.max_rejects,
                max_reject_ratio: self.max_reject_ratio,
                max_record_bytes: None,
            },
            has_header: self.header.unwrap_or(true),
            force: self.force.unwrap_or(false),
        }
    }
}

/// Input encodings this build reads.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub enum EncodingParam {
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "latin1")]
    Latin1,
    #[serde(rename = "windows-1252")]
    Windows1252,
}

impl EncodingParam {
    fn name(self) -> &'static str {
        match self {
            EncodingParam::Utf8 => "utf-8",
            EncodingParam::Latin1 => "latin1",
            EncodingParam::Windows1252 => "windows-1252",
        }
    }
}

/// Input formats this build reads: CSV, NDJSON (one JSON object per
/// line), Parquet, Arrow IPC (file or stream). Without one: by the file's
/// magic bytes (Parquet, Arrow), the upload's Content-Type (`text/csv`,
/// `application/x-ndjson`, `application/vnd.apache.parquet`,
/// `application/vnd.apache.arrow.file`, `application/vnd.apache.arrow.stream`)
/// or file name (`.ndjson`, `.jsonl`, `.parquet`, `.arrow`), else the model's.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatParam {
    Csv,
    Ndjson,
    Parquet,
    Arrow,
}

impl From<InputFormat> for FormatParam {
    fn from(f: InputFormat) -> FormatParam {
        match f {
            InputFormat::Csv => FormatParam::Csv,
            InputFormat::Ndjson => FormatParam::Ndjson,
            InputFormat::Parquet => FormatParam::Parquet,
            InputFormat::Arrow => FormatParam::Arrow,
        }
    }
}

impl FormatParam {
    pub fn format(self) -> InputFormat {
        match self {
            FormatParam::Csv => InputFormat::Csv,
            FormatParam::Ndjson => InputFormat::Ndjson,
            FormatParam::Parquet => InputFormat::Parquet,
            FormatParam::Arrow => InputFormat::Arrow,
        }
    }
}

/// The format an upload's Content-Type or file name names, for a query
/// without `format`.
fn sniffed_format(
    query: &str,
    content_type: Option<&str>,
    name: Option<&str>,
) -> Option<InputFormat> {
    if query.split('&').any(|p| p.starts_with("format=")) {
        return None;
    }
    let by_type = content_type.and_then(|t| {
        let t = t
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match t.as_str() {
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/jsonlines" => Some(InputFormat::Ndjson),
            "text/csv" => Some(InputFormat::Csv),
            "application/vnd.apache.parquet" | "application/x-parquet" => {
                Some(InputFormat::Parquet)
            }
            "application/vnd.apache.arrow.file"
            | "application/vnd.apache.arrow.stream"
            | "application/vnd.apache.arrow" => Some(InputFormat::Arrow),
            _ => None,
        }
    });
    by_type.or_else(|| name.and_then(InputFormat::of_name))
}

/// The query with the format an upload says it is, unless it names one.
fn with_sniffed_format(query: &str, content_type: Option<&str>, name: Option<&str>) -> String {
    match sniffed_format(query, content_type, name) {
        Some(f) => format!("{query}&format={}", f.as_str()),
        None => query.to_string(),
    }
}

/// The bytes of an uploaded file (a non-empty binary string).
pub struct UploadBody;

impl utoipa::PartialSchema for UploadBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .min_length(Some(1))
            .into()
    }
}

impl utoipa::ToSchema for UploadBody {}

/// A client-given file name, for display only: never a path.
fn display_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.is_empty() {
        "upload".into()
    } else {
        clean
    }
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

/// Longest option field of a multipart upload.
const OPTION_FIELD_BYTES: usize = 4096;

/// An upload's parameters, checked before any of its bytes are stored.
pub(crate) struct Accepted {
    /// The name jobs and the loaded-file ledger know the target by: the
    /// model's, or `table:` and the table's for a model made from a table.
    pub key: String,
    pub upload: UploadOptions,
    pub model: nexus_pipeline::Model,
    pub mode: Mode,
    pub atomic: bool,
}

/// Reads and checks an upload's parameters (the query, and a multipart
/// body's option fields after it): a bad one is a 400 naming it.
fn accept(state: &AppState, query: &str) -> Result<Accepted, Problem> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|e| bad(format!("bad parameters: {e}")))?;
    let Query(params) =
        Query::<CreateParams>::try_from_uri(&uri).map_err(|e| bad(e.body_text()))?;
    params.accept(&state.models).map_err(bad)
}

impl CreateParams {
    /// The model with these options on top, and the mode; a message naming
    /// what is wrong otherwise.
    pub(crate) fn accept(self, models: &nexus_pipeline::ModelSet) -> Result<Accepted, String> {
        let model = models.get(&self.model).map_err(|e| e.to_string())?;
        self.accept_for(&model)
    }

    /// As [`CreateParams::accept`], for a model made elsewhere (from a table).
    pub(crate) fn accept_for(self, model: &nexus_pipeline::Model) -> Result<Accepted, String> {
        let upload = self.upload_options();
        let model = model.with_input(&upload.input).map_err(|e| e.to_string())?;
        let mode = self.mode.unwrap_or(Mode::Append);
        if mode == Mode::Upsert && model.key.is_empty() {
            return Err(format!("model `{}` has no key to upsert on", model.name));
        }
        Ok(Accepted {
            key: model.name.clone(),
            atomic: self.atomic.unwrap_or(false),
            upload,
            model,
            mode,
        })
    }
}

/// A stored file waiting to become a queued job.
pub(crate) struct StoredFile {
    pub stored: crate::jobs::storage::Stored,
    /// For display only.
    pub name: String,
}

/// Queues a job for a stored file, as `owner`, and wakes a worker.
pub(crate) async fn enqueue(
    pool: &deadpool_postgres::Pool,
    queue: &tokio::sync::Notify,
    accepted: &Accepted,
    file: &StoredFile,
    owner: &str,
) -> Result<JobRecord, Problem> {
    let db = pool.get().await?;
    let model = &accepted.model;
    let id = jobs::create(
        &**db,
        &NewJob {
            model: &accepted.key,
            target: &model.def.table,
            mode: accepted.mode,
            atomic: accepted.atomic,
            status: JobStatus::Queued,
            file_name: Some(&file.name),
            file_hash: Some(&file.stored.sha256),
            bytes_total: Some(file.stored.size as i64),
            options: nexus_loaders::load::queued_job_options(model, &accepted.upload),
            owner: Some(owner),
            storage_key: Some(&file.stored.key),
        },
    )
    .await?;
    let job = jobs::get(&**db, id)
        .await?
        .ok_or_else(|| Problem::internal("the new job vanished"))?;
    queue.notify_one();
    Ok(job)
}

/// Upload a file; it is stored (streamed, hashed) and queued as a job.
#[utoipa::path(post, path = "/api/v2/jobs", tag = "jobs", security(("bearer" = [])), params(CreateParams),
    request_body(content = Option<UploadBody>, description = "The file: raw (text/csv) or multipart/form-data with a `file` part (load options may come as fields before it, as in the query); Content-Encoding: gzip accepted", content_type = "text/csv"),
    responses(
        (status = 202, description = "Stored and queued", body = JobRecord),
        (status = 400, description = "Bad parameters", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Larger than NEXUS_MAX_UPLOAD", body = ProblemBody, content_type = "application/problem+json"),
        Authenticated,
    ))]
pub async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response, Problem> {
    user.require(&[Role::Admin, Role::Uploader])?;
    let mut query = query.unwrap_or_default();
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let filename_header = req
        .headers()
        .get("x-filename")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let limit = state.config.max_upload;
    let (stored, accepted) = if is_multipart {
        let mut form = Multipart::from_request(req, &state)
            .await
            .map_err(|e| bad(format!("bad multipart body: {e}")))?;
        let mut found = None;
        while let Some(mut field) = form
            .next_field()
            .await
            .map_err(|e| bad(format!("bad multipart body: {e}")))?
        {
            let Some(field_name) = field.name().map(str::to_string) else {
                continue;
            };
            if field_name != "file" {
                // Options as fields before the file: as if in the query.
                let mut value = Vec::new();
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| bad(format!("bad multipart body: {e}")))?
                {
                    value.extend_from_slice(&chunk);
                    if value.len() > OPTION_FIELD_BYTES {
                        return Err(bad(format!("the field `{field_name}` is too long")));
                    }
                }
                let value = String::from_utf8_lossy(&value);
                query.push_str(&format!(
                    "&{}={}",
                    urlencoding(&field_name),
                    urlencoding(&value)
                ));
                continue;
            }
            let query = with_sniffed_format(&query, field.content_type(), field.file_name());
            let accepted = accept(&state, &query)?;
            let name = field.file_name().map(display_name);
            let stream: ByteStream = Box::pin(field.map_err(std::io::Error::other));
            found = Some(((state.storage.put(stream, limit).await, name), accepted));
            break;
        }
        found.ok_or_else(|| bad("the multipart body has no `file` part"))?
    } else {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let query = with_sniffed_format(&query, content_type, filename_header.as_deref());
        let accepted = accept(&state, &query)?;
        let stream: ByteStream = Box::pin(
            req.into_body()
                .into_data_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        );
        (
            (
                state.storage.put(stream, limit).await,
                filename_header.as_deref().map(display_name),
            ),
            accepted,
        )
    };
    let (stored, name) = match stored {
        (Ok(s), name) => (s, name.unwrap_or_else(|| "upload".into())),
        (Err(UploadError::TooLarge(n)), _) => {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload is larger than {n} bytes (NEXUS_MAX_UPLOAD)"),
            ));
        }
        (Err(UploadError::Body(e)), _) => {
            return Err(bad(format!("reading the upload failed: {e}")));
        }
        (Err(e @ UploadError::Storage(_)), _) => return Err(Problem::internal(e)),
    };
    let job = enqueue(
        &state.pool,
        &state.queue,
        &accepted,
        &StoredFile { stored, name },
        &user.0.username,
    )
    .await?;
    let location = format!("/api/v2/jobs/{}", job.job_id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub status: Option<JobStatus>,
    pub model: Option<String>,
    /// Only this owner's jobs (admins; others see only their own anyway).
    pub owner: Option<String>,
    /// Default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<Uuid>,
}

/// Jobs, newest first: your own, or all for an admin.
#[utoipa::path(get, path = "/api/v2/jobs", tag = "jobs", security(("bearer" = [])), params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Bad filter", body = ProblemBody, content_type = "application/problem+json"),
        Authenticated,
    ))]
pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(p): Query<ListParams>,
) -> Result<Json<JobPage>, Problem> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad("limit must be 1 to 500"));
    }
    let owner = match user.0.role {
        Role::Admin => p.owner.as_deref(),
        _ => Some(user.0.username.as_str()),
    };
    let db = state.pool.get().await?;
    let mut page = jobs::page(&**db, owner, p.status, p.model.as_deref(), limit, p.cursor).await?;
    for j in page.iter_mut().filter(|j| j.status == JobStatus::Running) {
        live_counts(&state.hub, &db, j).await?;
    }
    let next_cursor = (page.len() as i64 == limit)
        .then(|| page.last().map(|j| j.job_id))
        .flatten();
    Ok(Json(JobPage {
        jobs: page,
        next_cursor,
    }))
}

/// A running job's counters: what it has committed so far, or the live
/// sample of its progress where that is ahead.
pub(crate) async fn live_counts(
    hub: &crate::jobs::progress::Hub,
    db: &tokio_postgres::Client,
    j: &mut JobRecord,
) -> Result<(), tokio_postgres::Error> {
    let (committed, rejected) = jobs::committed_counts(db, j.job_id).await?;
    j.rows_committed = committed;
    j.rows_rejected = rejected;
    j.rows_read = committed + rejected;
    if let Some(p) = hub.latest(j.job_id) {
        j.rows_read = j.rows_read.max(p.rows_read);
        j.rows_committed = j.rows_committed.max(p.rows_committed);
        j.rows_rejected = j.rows_rejected.max(p.rows_rejected);
        j.bytes_read = j.bytes_read.max(p.bytes_read);
    }
    Ok(())
}

/// Whom a job shows to: its owner, and every admin.
pub(crate) fn may_see(role: Role, username: &str, job: &JobRecord) -> bool {
    role == Role::Admin || job.owner.as_deref() == Some(username)
}

/// Groups of rejects one answer shows, the largest first.
pub(crate) const REJECT_GROUPS: i64 = 50;

/// The job, if the user may see it.
async fn visible(state: &AppState, user: &CurrentUser, id: Uuid) -> Result<JobRecord, Problem> {
    // Every change of a job record is announced (`crate::events`), so a
    // cached record is the committed one.
    let found = state
        .caches
        .jobs
        .get_or_read(&id, || async {
            let db = state.pool.get().await?;
            Ok::<_, Problem>(jobs::get(&**db, id).await?)
        })
        .await?;
    let mut job = found
        .filter(|j| may_see(user.0.role, &user.0.username, j))
        .ok_or_else(|| Problem::not_found(format!("no job {id}")))?;
    if job.status == JobStatus::Running {
        match state.hub.latest(id) {
            // The live sample every server keeps saves a query per read.
            Some(p) => {
                job.rows_read = p.rows_read;
                job.rows_committed = p.rows_committed;
                job.rows_rejected = p.rows_rejected;
                job.bytes_read = p.bytes_read;
            }
            None => live_counts(&state.hub, &*state.pool.get().await?, &mut job).await?,
        }
    }
    Ok(job)
}

/// One job.
#[utoipa::path(get, path = "/api/v2/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobRecord),
        OneJob,
        Authenticated,
    ))]
pub async fn show(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Response, Problem> {
    let job = visible(&state, &user, id).await?;
    Ok(state.rendered_jobs.render(job).into_response())
}

/// Job records as last answered, in JSON: hundreds of clients polling one
/// job's status mostly read the same record (a running job's counters move
/// once a batch), and printing it was a tenth of a status read's CPU.
/// Looked up by job and used only when the record is equal, so never stale.
pub struct RenderedJobs(moka::sync::Cache<Uuid, std::sync::Arc<(JobRecord, bytes::Bytes)>>);

impl RenderedJobs {
    pub fn new() -> RenderedJobs {
        RenderedJobs(
            moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(std::time::Duration::from_secs(60))
                .build(),
        )
    }

    fn render(&self, job: JobRecord) -> impl IntoResponse + use<> {
        let json = match self.0.get(&job.job_id) {
            Some(r) if r.0 == job => r.1.clone(),
            _ => {
                let json = bytes::Bytes::from(serde_json::to_vec(&job).unwrap_or_default());
                self.0
                    .insert(job.job_id, std::sync::Arc::new((job, json.clone())));
                json
            }
        };
        ([(header::CONTENT_TYPE, "application/json")], json)
    }
}

impl Default for RenderedJobs {
    fn default() -> Self {
        Self::new()
    }
}

/// Cancel a job: a running one stops at its next batch boundary.
#[utoipa::path(post, path = "/api/v2/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 202, description = "Cancelling (or cancelled)", body = JobRecord),
        (status = 409, description = "The job has already finished", body = ProblemBody, content_type = "application/problem+json"),
        OneJob,
        Authenticated,
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Response, Problem> {
    visible(&state, &user, id).await?;
    let job = cancel_job(&state.pool, id).await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

/// Cancels a job the caller may see: 409 when it has finished already.
pub(crate) async fn cancel_job(
    pool: &deadpool_postgres::Pool,
    id: Uuid,
) -> Result<JobRecord, Problem> {
    let mut db = pool.get().await?;
    match jobs::request_cancel(&mut db, id).await? {
        Some(s) if s.is_cancellable() => {}
        Some(s) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!("job {id} is {s}; nothing to cancel"),
            ));
        }
        None => return Err(Problem::not_found(format!("no job {id}"))),
    }
    jobs::get(&**db, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no job {id}")))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RejectsParams {
    /// JSON only: rejects per page (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
    /// JSON only: the cursor of the previous page's `Link: <…>; rel="next"`.
    pub after: Option<String>,
}

/// Rejects per query of a streamed CSV.
const CSV_PAGE: i64 = 10_000;

/// The job's rejects grouped by kind (column, and reason without the
/// values it names), the largest groups first, each with its first examples.
#[utoipa::path(get, path = "/api/v2/jobs/{id}/rejects/summary", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Up to 50 groups", body = Vec<jobs::RejectGroup>),
        OneJob,
        Authenticated,
    ))]
pub async fn reject_summary(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<jobs::RejectGroup>>, Problem> {
    visible(&state, &user, id).await?;
    let db = state.pool.get().await?;
    Ok(Json(jobs::reject_groups(&**db, id, REJECT_GROUPS).await?))
}

/// The job's rejects: all of them as CSV (`line,column,reason,raw`),
/// streamed; or a page of them as JSON with `Accept: application/json`,
/// the next page linked in `Link: <…>; rel="next"`.
#[utoipa::path(get, path = "/api/v2/jobs/{id}/rejects", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id"), RejectsParams),
    responses(
        (status = 200, description = "The rejects", content_type = "text/csv"),
        OneJob,
        Authenticated,
    ))]
pub async fn rejects(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
    Query(p): Query<RejectsParams>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    visible(&state, &user, id).await?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let after = p
        .after
        .as_deref()
        .map(str::parse::<jobs::RejectCursor>)
        .transpose()
        .map_err(bad)?;
    if wants_json {
        let limit = p.limit.unwrap_or(1000);
        if !(1..=10_000).contains(&limit) {
            return Err(bad("limit must be 1 to 10000"));
        }
        let db = state.pool.get().await?;
        let page = jobs::rejects_page(&**db, id, after.as_ref(), limit).await?;
        let next = (page.len() as i64 == limit)
            .then(|| page.last().map(|(_, c)| c.to_string()))
            .flatten();
        let rows: Vec<jobs::RejectRow> = page.into_iter().map(|(r, _)| r).collect();
        let mut res = Json(rows).into_response();
        if let Some(next) = next {
            let link = format!(
                "</api/v2/jobs/{id}/rejects?limit={limit}&after={}>; rel=\"next\"",
                urlencoding(&next)
            );
            if let Ok(v) = header::HeaderValue::from_str(&link) {
                res.headers_mut().insert(header::LINK, v);
            }
        }
        return Ok(res);
    }
    // CSV: every reject, a page at a time, in constant memory.
    let mut head = jobs::REJECTS_CSV_HEADER.join(",");
    head.push('\n');
    let pages = futures_util::stream::try_unfold(
        (state.clone(), after, false),
        move |(state, after, done)| async move {
            if done {
                return Ok::<_, std::io::Error>(None);
            }
            let db = state.pool.get().await.map_err(std::io::Error::other)?;
            let page = jobs::rejects_page(&**db, id, after.as_ref(), CSV_PAGE)
                .await
                .map_err(std::io::Error::other)?;
            drop(db);
            let Some((_, last)) = page.last() else {
                return Ok(None);
            };
            let next = Some(last.clone());
            let done = (page.len() as i64) < CSV_PAGE;
            let rows: Vec<jobs::RejectRow> = page.into_iter().map(|(r, _)| r).collect();
            let mut buf = Vec::new();
            jobs::rejects_csv(&mut buf, &rows).map_err(std::io::Error::other)?;
            Ok(Some((bytes::Bytes::from(buf), (state, next, done))))
        },
    );
    let body = futures_util::stream::once(async move { Ok(bytes::Bytes::from(head)) }).chain(pages);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"rejects-{id}.csv\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// A cursor as a query value (it holds `(`, `,` and `)`).
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobRecord {
        JobRecord {
            job_id: Uuid::new_v4(),
            model: "customer".into(),
            target: "public.customer".into(),
            mode: Mode::Append,
            atomic: false,
            status: JobStatus::Running,
            file_name: Some("c.csv".into()),
            file_hash: Some("h".into()),
            rows_read: 10,
            rows_committed: 5,
            rows_rejected: 0,
            bytes_read: 100,
            bytes_total: Some(1000),
            duration_ms: 7,
            rows_per_sec: 1.5,
            error: None,
            owner: Some("admin".into()),
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            interrupted: false,
        }
    }

    async fn body(r: impl IntoResponse) -> serde_json::Value {
        let bytes = axum::body::to_bytes(r.into_response().into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Whatever was rendered before, the answer is the record as it is now.
    #[tokio::test]
    async fn a_rendered_job_is_the_record_as_it_is_now() {
        let rendered = RenderedJobs::new();
        let mut j = job();
        let first = body(rendered.render(j.clone())).await;
        assert_eq!(first, serde_json::to_value(&j).unwrap());
        assert_eq!(body(rendered.render(j.clone())).await, first);
        j.rows_committed = 6;
        assert_eq!(body(rendered.render(j.clone())).await["rows_committed"], 6);
        j.status = JobStatus::Succeeded;
        j.error = Some("x".into());
        let last = body(rendered.render(j.clone())).await;
        assert_eq!(last, serde_json::to_value(&j).unwrap());
        // Another job is its own.
        let other = job();
        assert_eq!(
            body(rendered.render(other.clone())).await["job_id"],
            other.job_id.to_string()
        );
    }
}
