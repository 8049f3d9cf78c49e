//! The MCP channel: the operations of the CLI and the API as tools and
//! resources for an AI assistant, over the same code paths. `nexus mcp`
//! speaks stdio for the launching user (an admin of the local
//! installation; loads run in that process, as `nexus load` runs them);
//! `nexus serve` answers Streamable HTTP at `/mcp` for the API's users, by
//! their bearer token and role (loads become queued jobs, as uploads do).
//! The SDK is `rmcp`, pinned: its API moves between majors, so it is used
//! here and nowhere else.

pub mod files;

use std::sync::Arc;
use std::time::Duration;

use nexus_loaders::jobs::{self, JobRecord, RejectGroup, RejectRow};
use nexus_loaders::load::{LoadRequest, Prepared};
use nexus_loaders::{JobStatus, Mode};
use nexus_pipeline::ModelSet;
use nexus_pipeline::progress::Progress;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{IntoCallToolResult, schema_for_output, schema_for_type};
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, JsonObject, ListResourceTemplatesResult,
    ListResourcesResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::api::jobs::{Accepted, CreateParams, EncodingParam, FormatParam, StoredFile};
use crate::api::models::ModelView;
use crate::auth::Role;
use crate::auth::store::Principal;
use crate::config::Config;
use crate::jobs::progress::{Event, Hub, PROGRESS_EVERY};
use crate::jobs::storage::{LocalCopy, Storage};
use files::Roots;

/// What the tools work with, whichever transport carries them.
pub struct McpCore {
    pub pool: deadpool_postgres::Pool,
    pub models: Arc<ModelSet>,
    pub cache: Arc<nexus_loaders::cache::Cache>,
    pub hub: Arc<Hub>,
    pub storage: Arc<dyn Storage>,
    pub config: Arc<Config>,
    pub database_url: String,
    pub channel: Channel,
}

/// How a transport's callers are known and where their loads run.
pub enum Channel {
    /// `nexus mcp`: the user who launched it, as an admin; loads run here
    /// and stop (resumable) when the client goes.
    Stdio {
        owner: String,
        loads: TaskTracker,
        interrupt: CancellationToken,
    },
    /// `/mcp` in `nexus serve`: the bearer token's user; loads are queued
    /// jobs; files only under the roots.
    Http {
        queue: Arc<tokio::sync::Notify>,
        roots: Roots,
    },
}

/// Who is calling: the owner new jobs get, and the role that decides what
/// they may do and see.
struct Caller {
    name: String,
    role: Role,
}

impl Caller {
    fn require(&self, roles: &[Role], what: &str) -> Result<(), Refusal> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        Err(Refusal(format!(
            "{what} needs the role {}; you are {} ({})",
            Role::either(roles),
            self.name,
            self.role.as_str()
        )))
    }

    fn sees(&self, job: &JobRecord) -> bool {
        crate::api::jobs::may_see(self.role, &self.name, job)
    }
}

/// A tool's answer: its structured content, and a line for a reader.
pub struct Reply<T> {
    value: T,
    summary: String,
}

impl<T: Serialize> IntoCallToolResult for Reply<T> {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        let value = serde_json::to_value(&self.value)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let mut result = CallToolResult::structured(value);
        result.content.insert(0, ContentBlock::text(self.summary));
        Ok(result.into())
    }
}

/// A tool call that could not be done: a tool result with `isError` and a
/// message saying what to change; the session goes on.
#[derive(Debug)]
pub struct Refusal(String);

impl IntoCallToolResult for Refusal {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::error(vec![ContentBlock::text(self.0)]).into())
    }
}

impl From<tokio_postgres::Error> for Refusal {
    fn from(e: tokio_postgres::Error) -> Refusal {
        Refusal(format!(
            "the database failed: {}",
            nexus_loaders::pg::describe(&e)
        ))
    }
}

impl From<deadpool_postgres::PoolError> for Refusal {
    fn from(e: deadpool_postgres::PoolError) -> Refusal {
        Refusal(format!(
            "the database is not reachable now ({e}); try again"
        ))
    }
}

impl From<crate::api::problem::Problem> for Refusal {
    fn from(p: crate::api::problem::Problem) -> Refusal {
        Refusal(p.detail.unwrap_or_else(|| p.status.to_string()))
    }
}

type ToolResult<T> = Result<Reply<T>, Refusal>;

/// Arguments as the schema says, or a refusal naming what does not fit.
fn arguments<T: DeserializeOwned>(args: JsonObject) -> Result<T, Refusal> {
    serde_path_to_error::deserialize(serde_json::Value::Object(args)).map_err(|e| {
        let path = e.path().to_string();
        let what = if path == "." {
            "bad arguments".to_string()
        } else {
            format!("bad argument `{path}`")
        };
        Refusal(format!(
            "{what}: {} (see the tool's input schema)",
            e.inner()
        ))
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadFileArgs {
    /// The model to load into (see list_models). Give this or `table`.
    pub model: Option<String>,
    /// An existing table, `schema.table`, to load into by its columns
    /// (instead of a model).
    pub table: Option<String>,
    /// The file to load: an absolute path on the server (over HTTP only
    /// under the directories the server allows). CSV or NDJSON, optionally
    /// .gz or .zst.
    pub path: Option<String>,
    /// The data itself, as CSV (or NDJSON) text, up to 1 MiB, instead of a
    /// path.
    pub content: Option<String>,
    /// Load the file uploaded for this earlier job again (for example with
    /// corrected options), instead of a path.
    pub from_job: Option<Uuid>,
    /// append (default), upsert (by the model's key; the last row for a
    /// key wins) or replace (empty the table and load, in one transaction).
    pub mode: Option<Mode>,
    /// csv or ndjson (one JSON object per line); by default, from the
    /// path's extension (`.ndjson`, `.jsonl`), else the model's (csv).
    pub format: Option<FormatParam>,
    /// Load the whole file in one transaction: all rows or none.
    pub atomic: Option<bool>,
    /// Input encoding (default utf-8).
    pub encoding: Option<EncodingParam>,
    /// Field delimiter: one ASCII character, `\t` for tab (default `,`).
    pub delimiter: Option<String>,
    /// Quote character (default `"`).
    pub quote: Option<String>,
    /// An unquoted field text meaning NULL (default: the empty field).
    pub null: Option<String>,
    /// Whether the first line is a header (default true); without one,
    /// fields map to the columns by position.
    pub header: Option<bool>,
    /// Zone for timestamps without an offset (IANA name or +HH:MM).
    pub timezone: Option<String>,
    /// Fail once more than this many rows are rejected.
    pub max_rejects: Option<u64>,
    /// Fail when more than this fraction (0 to 1) of the rows is rejected.
    pub max_reject_ratio: Option<f64>,
    /// Load even if this file was already loaded into this model.
    pub force: Option<bool>,
}

impl LoadFileArgs {
    /// The upload parameters these arguments amount to, for `model`.
    fn params(&self, model: String) -> CreateParams {
        CreateParams {
            model,
            mode: self.mode,
            format: self.format,
            atomic: self.atomic,
            encoding: self.encoding,
            delimiter: self.delimiter.clone(),
            quote: self.quote.clone(),
            null: self.null.clone(),
            header: self.header,
            timezone: self.timezone.clone(),
            max_rejects: self.max_rejects,
            max_reject_ratio: self.max_reject_ratio,
            force: self.force,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    /// The job's id (a UUID, as load_file or list_jobs return it).
    pub job_id: Uuid,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListJobsArgs {
    /// Only jobs in this state.
    pub status: Option<JobStatus>,
    /// Only jobs of this model.
    pub model: Option<String>,
    /// At most this many, newest first (1 to 500, default 20).
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectsArgs {
    /// The job's id.
    pub job_id: Uuid,
    /// How many rejected rows to list, by line (1 to 1000, default 20);
    /// the groups always cover all of them.
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelArgs {
    /// The model's name (see list_models).
    pub model: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateArgs {
    /// The model whose cached records to drop.
    pub model: String,
    /// One record's key (its key columns' values; several joined by `|`);
    /// without it, every record of the model.
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Serialize, JsonSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobRecord>,
}

#[derive(Serialize, JsonSchema)]
pub struct Rejects {
    pub job_id: Uuid,
    pub status: JobStatus,
    /// How many rows of the job were rejected in all.
    pub rows_rejected: i64,
    /// The rejects grouped by kind (column, and reason without its
    /// values), the largest first, each with its first examples.
    pub groups: Vec<RejectGroup>,
    /// The first rejected rows by line: line number, column, reason, and the
    /// raw input.
    pub rejects: Vec<RejectRow>,
}

#[derive(Serialize, JsonSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
}

#[derive(Serialize, JsonSchema)]
pub struct Invalidated {
    pub model: String,
    /// The key dropped, canonical; null when every record of the model was.
    pub key: Option<String>,
}

/// At most this many rejected rows in one answer.
const REJECTS_MAX: i64 = 1000;
/// Jobs listed as resources.
const JOB_RESOURCES: i64 = 50;
/// How often a followed job's record is read, besides its events.
const FOLLOW_CHECK: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct NexusMcp {
    core: Arc<McpCore>,
    tool_router: ToolRouter<NexusMcp>,
}

#[tool_router]
impl NexusMcp {
    pub fn new(core: Arc<McpCore>) -> NexusMcp {
        NexusMcp {
            core,
            tool_router: Self::tool_router(),
        }
    }

    /// Load a CSV file into PostgreSQL as a Nexus job. Give `model` (or
    /// `table`) and exactly one of `path`, `content` or `from_job`. Every
    /// row is validated by the model's rules and stored exactly as
    /// PostgreSQL would; bad rows are rejected with their line and reason
    /// while the rest load. Returns the job at once (status queued or
    /// running) — poll job_status until it is succeeded, failed or
    /// cancelled; with a progressToken the call instead reports progress
    /// and returns the finished job (cancelling the call cancels the job).
    /// Loading the same file with the same options again resumes or skips
    /// it; other options or `force` start a new job.
    #[tool(
        input_schema = schema_for_type::<LoadFileArgs>(),
        output_schema = schema_for_output::<JobRecord>(),
        annotations(
            title = "Load a file",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn load_file(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<JobRecord> {
        let caller = self.caller(&ctx)?;
        caller.require(&[Role::Admin, Role::Uploader], "loading a file")?;
        let args: LoadFileArgs = arguments(args)?;
        let job = self.start_load(&caller, args).await?;
        let Some(token) = ctx.meta.get_progress_token() else {
            return Ok(job_reply(job));
        };
        let job = self.follow(job, token, &ctx.peer, &ctx.ct).await?;
        Ok(job_reply(job))
    }

    /// One job: its status (queued, running, succeeded, failed, cancelled,
    /// skipped), row counts (read, committed, rejected), bytes, rate, error
    /// and timings. `interrupted` means it stopped without finishing and
    /// resumes when loaded again.
    #[tool(
        input_schema = schema_for_type::<JobArgs>(),
        output_schema = schema_for_output::<JobRecord>(),
        annotations(title = "Job status", read_only_hint = true, open_world_hint = false)
    )]
    async fn job_status(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<JobRecord> {
        let caller = self.caller(&ctx)?;
        let args: JobArgs = arguments(args)?;
        Ok(job_reply(self.job(&caller, args.job_id).await?))
    }

    /// Recent jobs, newest first: yours (an admin sees everyone's),
    /// optionally only those in one status or of one model.
    #[tool(
        input_schema = schema_for_type::<ListJobsArgs>(),
        output_schema = schema_for_output::<JobList>(),
        annotations(title = "List jobs", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_jobs(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<JobList> {
        let caller = self.caller(&ctx)?;
        let args: ListJobsArgs = arguments(args)?;
        let limit = args.limit.unwrap_or(20);
        if !(1..=500).contains(&limit) {
            return Err(Refusal(format!("limit {limit}: give 1 to 500")));
        }
        let jobs = self
            .recent_jobs(&caller, args.status, args.model.as_deref(), limit)
            .await?;
        let summary = format!("{} jobs", jobs.len());
        Ok(Reply {
            value: JobList { jobs },
            summary,
        })
    }

    /// Cancel a queued or running job. A running job stops at its next
    /// batch boundary: what it committed stays in the table.
    #[tool(
        input_schema = schema_for_type::<JobArgs>(),
        output_schema = schema_for_output::<JobRecord>(),
        annotations(
            title = "Cancel a job",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn cancel_job(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<JobRecord> {
        let caller = self.caller(&ctx)?;
        caller.require(&[Role::Admin, Role::Uploader], "cancelling a job")?;
        let args: JobArgs = arguments(args)?;
        self.job(&caller, args.job_id).await?;
        let job = crate::api::jobs::cancel_job(&self.core.pool, args.job_id).await?;
        Ok(job_reply(job))
    }

    /// Why a job's rows were rejected: the rejects grouped by kind (largest
    /// first, with examples) and the first rejected rows with their line
    /// number, column, reason and raw input — enough to fix the file or
    /// pick other load options.
    #[tool(
        input_schema = schema_for_type::<RejectsArgs>(),
        output_schema = schema_for_output::<Rejects>(),
        annotations(title = "Job rejects", read_only_hint = true, open_world_hint = false)
    )]
    async fn job_rejects(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<Rejects> {
        let caller = self.caller(&ctx)?;
        let args: RejectsArgs = arguments(args)?;
        let limit = args.limit.unwrap_or(20);
        if !(1..=REJECTS_MAX).contains(&limit) {
            return Err(Refusal(format!("limit {limit}: give 1 to {REJECTS_MAX}")));
        }
        let rejects = self.rejects(&caller, args.job_id, limit).await?;
        let summary = format!(
            "job {}: {} rows rejected in {} kinds",
            rejects.job_id,
            rejects.rows_rejected,
            rejects.groups.len()
        );
        Ok(Reply {
            value: rejects,
            summary,
        })
    }

    /// The models files can be loaded into: each with its table, key,
    /// columns (type, required, the header it is read from, its rules) and
    /// cache strategy.
    #[tool(
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = schema_for_output::<ModelList>(),
        annotations(title = "List models", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_models(&self, ctx: RequestContext<RoleServer>) -> ToolResult<ModelList> {
        self.caller(&ctx)?;
        let models: Vec<ModelView> = self
            .core
            .models
            .iter()
            .map(|m| ModelView::from(m.as_ref()))
            .collect();
        let summary = models
            .iter()
            .map(|m| format!("{} → {}", m.name, m.table))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Reply {
            value: ModelList { models },
            summary,
        })
    }

    /// One model: its table, key, columns with their types, whether each is
    /// required, the input header it is read from and its validation rules.
    #[tool(
        input_schema = schema_for_type::<ModelArgs>(),
        output_schema = schema_for_output::<ModelView>(),
        annotations(title = "Describe a model", read_only_hint = true, open_world_hint = false)
    )]
    async fn describe_model(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<ModelView> {
        self.caller(&ctx)?;
        let args: ModelArgs = arguments(args)?;
        let view = self.model_view(&args.model)?;
        let summary = format!(
            "model {} → table {}, {} columns",
            view.name,
            view.table,
            view.columns.len()
        );
        Ok(Reply {
            value: view,
            summary,
        })
    }

    /// Whether the service can work: PostgreSQL (required), Redis
    /// (optional), the job queue and the connection pool; figures for
    /// admins.
    #[tool(
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = schema_for_output::<crate::api::health::DetailedHealth>(),
        annotations(title = "Health", read_only_hint = true, open_world_hint = false)
    )]
    async fn health(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<crate::api::health::DetailedHealth> {
        let caller = self.caller(&ctx)?;
        let report = crate::api::health::report(&crate::api::health::Parts {
            pool: &self.core.pool,
            cache: &self.core.cache,
            hub: &self.core.hub,
            config: &self.core.config,
            http: None,
            uptime: None,
        })
        .await;
        let report = if caller.role == Role::Admin {
            report
        } else {
            report.without_details()
        };
        let summary = format!(
            "{}: postgres {}, redis {}",
            report.status, report.postgres.status, report.redis.status
        );
        Ok(Reply {
            value: report,
            summary,
        })
    }

    /// The record cache: per cached model its hits (local memory, Redis),
    /// misses and hit ratio, entries in Redis, and Redis's state.
    #[tool(
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = schema_for_output::<crate::cmd::cache::StatsReport>(),
        annotations(title = "Cache statistics", read_only_hint = true, open_world_hint = false)
    )]
    async fn cache_stats(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<crate::cmd::cache::StatsReport> {
        self.caller(&ctx)?;
        let db = self.core.pool.get().await?;
        let report = crate::cmd::cache::stats(&self.core.cache, &db, &self.core.models)
            .await
            .map_err(|e| Refusal(format!("{e:#}")))?;
        let summary = format!(
            "redis {}, {} cached models",
            report.redis,
            report.models.len()
        );
        Ok(Reply {
            value: report,
            summary,
        })
    }

    /// Drop cached records of a model (one key, or all of them) from Redis
    /// and every server's memory; the next read fetches them from
    /// PostgreSQL. Admins only.
    #[tool(
        input_schema = schema_for_type::<InvalidateArgs>(),
        output_schema = schema_for_output::<Invalidated>(),
        annotations(
            title = "Invalidate cached records",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn cache_invalidate(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<Invalidated> {
        let caller = self.caller(&ctx)?;
        caller.require(&[Role::Admin], "invalidating the cache")?;
        let args: InvalidateArgs = arguments(args)?;
        let message = |e: anyhow::Error| Refusal(format!("{e:#}"));
        let cached =
            crate::cmd::cache::cached_model(&self.core.models, &args.model).map_err(message)?;
        let key = args
            .key
            .map(|k| nexus_loaders::cache::keys::canonical(cached.key_type, &k))
            .transpose()
            .map_err(|e| Refusal(e.to_string()))?;
        let keys = key.clone().map(|k| vec![k]);
        let db = self.core.pool.get().await?;
        self.core
            .cache
            .invalidate(&**db, &cached, keys.as_deref())
            .await
            .map_err(|e| Refusal(format!("invalidating failed: {e}")))?;
        let summary = match &key {
            Some(k) => format!("{}: key {k} invalidated", args.model),
            None => format!("{}: every record invalidated", args.model),
        };
        Ok(Reply {
            value: Invalidated {
                model: args.model,
                key,
            },
            summary,
        })
    }
}

fn job_reply(job: JobRecord) -> Reply<JobRecord> {
    let summary = match &job.error {
        Some(e) => format!(
            "job {} {}: {} committed, {} rejected — {e}",
            job.job_id, job.status, job.rows_committed, job.rows_rejected
        ),
        None => format!(
            "job {} {}: {} read, {} committed, {} rejected",
            job.job_id, job.status, job.rows_read, job.rows_committed, job.rows_rejected
        ),
    };
    Reply {
        value: job,
        summary,
    }
}

impl NexusMcp {
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, Refusal> {
        match &self.core.channel {
            Channel::Stdio { owner, .. } => Ok(Caller {
                name: owner.clone(),
                role: Role::Admin,
            }),
            Channel::Http { .. } => ctx
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|p| p.extensions.get::<Principal>())
                .map(|p| Caller {
                    name: p.username.clone(),
                    role: p.role,
                })
                // The route's middleware lets no request through without one.
                .ok_or_else(|| Refusal("not authenticated".into())),
        }
    }

    fn model_view(&self, name: &str) -> Result<ModelView, Refusal> {
        let m = self
            .core
            .models
            .get(name)
            .map_err(|e| Refusal(e.to_string()))?;
        Ok(ModelView::from(m.as_ref()))
    }

    /// The job, with a running job's live counts, if the caller may see it.
    async fn job(&self, caller: &Caller, id: Uuid) -> Result<JobRecord, Refusal> {
        let db = self.core.pool.get().await?;
        let mut job = jobs::get(&**db, id)
            .await?
            .filter(|j| caller.sees(j))
            .ok_or_else(|| Refusal(format!("no job {id} (see list_jobs)")))?;
        if job.status == JobStatus::Running {
            crate::api::jobs::live_counts(&self.core.hub, &db, &mut job).await?;
        }
        Ok(job)
    }

    async fn recent_jobs(
        &self,
        caller: &Caller,
        status: Option<JobStatus>,
        model: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobRecord>, Refusal> {
        let owner = (caller.role != Role::Admin).then_some(caller.name.as_str());
        let db = self.core.pool.get().await?;
        let mut page = jobs::page(&**db, owner, status, model, limit, None).await?;
        for j in page.iter_mut().filter(|j| j.status == JobStatus::Running) {
            crate::api::jobs::live_counts(&self.core.hub, &db, j).await?;
        }
        Ok(page)
    }

    async fn rejects(&self, caller: &Caller, id: Uuid, limit: i64) -> Result<Rejects, Refusal> {
        let job = self.job(caller, id).await?;
        let db = self.core.pool.get().await?;
        let groups = jobs::reject_groups(&**db, id, crate::api::jobs::REJECT_GROUPS).await?;
        let rejects = jobs::rejects_page(&**db, id, None, limit)
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        Ok(Rejects {
            job_id: id,
            status: job.status,
            rows_rejected: job.rows_rejected,
            groups,
            rejects,
        })
    }

    /// Checks the arguments, stages the file and starts the job.
    async fn start_load(
        &self,
        caller: &Caller,
        mut args: LoadFileArgs,
    ) -> Result<JobRecord, Refusal> {
        let core = &self.core;
        let source = match (args.path.take(), args.content.take(), args.from_job) {
            (Some(p), None, None) => Source::Path(p),
            (None, Some(c), None) => Source::Content(c),
            (None, None, Some(j)) => Source::Upload(j),
            _ => {
                return Err(Refusal(
                    "give exactly one of `path`, `content` or `from_job`".into(),
                ));
            }
        };
        if let (None, Source::Path(path)) = (args.format, &source) {
            // As `nexus load` does: by the file's name, else the model's.
            args.format = nexus_pipeline::model::InputFormat::of_name(path).map(FormatParam::from);
        }
        let target = match (&args.model, &args.table) {
            (Some(model), None) => {
                let accepted = args
                    .params(model.clone())
                    .accept(&core.models)
                    .map_err(Refusal)?;
                Target {
                    accepted,
                    create_table: true,
                }
            }
            (None, Some(table)) => {
                let db = core.pool.get().await?;
                let model = nexus_loaders::catalog::model_from_table(&db, table)
                    .await
                    .map_err(|e| Refusal(e.to_string()))?;
                let mut accepted = args
                    .params(table.clone())
                    .accept_for(&model)
                    .map_err(Refusal)?;
                accepted.key = nexus_loaders::catalog::table_key(&model);
                Target {
                    accepted,
                    create_table: false,
                }
            }
            _ => {
                return Err(Refusal(
                    "give either `model` (see list_models) or `table`, not both".into(),
                ));
            }
        };
        let name = source.name();
        let staged = self.stage(caller, source).await?;
        match &core.channel {
            Channel::Http { queue, .. } => {
                let stored = match staged {
                    Staged::Stored(s) => s,
                    Staged::Local(_) => return Err(Refusal("the file was not stored".into())),
                };
                let job = crate::api::jobs::enqueue(
                    &core.pool,
                    queue,
                    &target.accepted,
                    &StoredFile { stored, name },
                    &caller.name,
                )
                .await?;
                Ok(job)
            }
            Channel::Stdio {
                loads, interrupt, ..
            } => {
                let file = match staged {
                    // The load hashes a local file, beside its first batches.
                    Staged::Local(p) => LocalFile {
                        path: p,
                        hash: None,
                        stored_key: None,
                        copy: None,
                    },
                    Staged::Stored(s) => {
                        let copy =
                            core.storage.fetch(&s.key).await.map_err(|e| {
                                Refusal(format!("the stored copy cannot be read: {e}"))
                            })?;
                        LocalFile {
                            path: copy.path().to_path_buf(),
                            hash: Some(s.sha256),
                            stored_key: Some(s.key),
                            copy: Some(copy),
                        }
                    }
                };
                self.run_here(caller, target, name, file, loads, interrupt)
                    .await
            }
        }
    }

    /// The file of a load: where it lies (stdio paths), or a stored copy.
    async fn stage(&self, caller: &Caller, source: Source) -> Result<Staged, Refusal> {
        let core = &self.core;
        let limit = core.config.max_upload;
        let stored = match (source, &core.channel) {
            (Source::Path(path), Channel::Stdio { .. }) => {
                let p = std::path::PathBuf::from(&path);
                if !p.is_file() {
                    return Err(Refusal(format!("{path}: no such file")));
                }
                return Ok(Staged::Local(p));
            }
            (Source::Path(path), Channel::Http { roots, .. }) => {
                let file = roots.open(&path).map_err(Refusal)?;
                files::store_file(core.storage.as_ref(), file, &path, limit).await
            }
            (Source::Content(content), _) => {
                files::store_content(core.storage.as_ref(), content).await
            }
            (Source::Upload(earlier), _) => {
                self.job(caller, earlier).await?;
                let db = core.pool.get().await?;
                let copy = match jobs::storage_key(&**db, earlier).await? {
                    Some(k) => core.storage.fetch(&k).await.ok(),
                    None => None,
                };
                let file = copy
                    .as_ref()
                    .and_then(|c| std::fs::File::open(c.path()).ok())
                    .ok_or_else(|| {
                        Refusal(format!(
                            "job {earlier} has no stored upload any more (an upload is removed once \
                             its job succeeds, and after NEXUS_UPLOAD_RETENTION): upload the file again"
                        ))
                    })?;
                files::store_file(
                    core.storage.as_ref(),
                    file,
                    &format!("the upload of job {earlier}"),
                    limit,
                )
                .await
            }
        };
        Ok(Staged::Stored(stored.map_err(Refusal)?))
    }

    /// Runs a load in this process (stdio), as `nexus load` does; returns
    /// its job as soon as it is claimed.
    async fn run_here(
        &self,
        caller: &Caller,
        target: Target,
        name: String,
        file: LocalFile,
        loads: &TaskTracker,
        interrupt: &CancellationToken,
    ) -> Result<JobRecord, Refusal> {
        let core = self.core.clone();
        let Accepted {
            key,
            upload,
            model,
            mode,
            atomic,
        } = target.accepted;
        let req = LoadRequest {
            model: Arc::new(model),
            model_key: key,
            bytes_total: std::fs::metadata(&file.path).ok().map(|m| m.len()),
            path: file.path,
            file_name: Some(name),
            file_hash: file.hash,
            mode,
            atomic,
            force: upload.force,
            has_header: upload.has_header,
            copy_connections: core.config.copy_connections,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            create_table: target.create_table,
            owner: Some(caller.name.clone()),
            interrupt: interrupt.child_token(),
            retry: core.config.db_retry,
            job: None,
            cache: Some(core.cache.clone()),
        };
        let bytes_total = req.bytes_total.map(|b| b as i64);
        let progress = Arc::new(Progress::default());
        let prepared =
            nexus_loaders::load::Load::prepare(&core.database_url, req, progress.clone())
                .await
                .map_err(|e| Refusal(e.to_string()));
        let forget = |key: &Option<String>| {
            if let Some(k) = key {
                let (storage, k) = (core.storage.clone(), k.clone());
                loads.spawn(async move {
                    let _ = storage.remove(&k).await;
                });
            }
        };
        let mut load = match prepared {
            Ok(Prepared::Ready(load)) => load,
            Ok(Prepared::Skipped(outcome)) => {
                forget(&file.stored_key);
                return Ok(outcome.job);
            }
            Err(e) => {
                forget(&file.stored_key);
                return Err(e);
            }
        };
        let id = load.job_id();
        if let Some(key) = &file.stored_key {
            let db = core.pool.get().await?;
            jobs::set_storage_key(&**db, id, key).await?;
        }
        core.hub
            .started(id, progress, bytes_total, Some(caller.name.clone()));
        let hub = core.hub.clone();
        let storage = core.storage.clone();
        let stored_key = file.stored_key;
        let copy = file.copy;
        loads.spawn(async move {
            let end = load.run().await;
            drop(copy);
            let status = match load.close(end).await {
                Ok(o) => Some(o.job.status),
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "load failed");
                    None
                }
            };
            hub.finished(id);
            // A failed job's copy is kept for a look, as a server keeps its upload.
            if let Some(k) = stored_key
                && status.is_some_and(|s| s.is_finished() && s != JobStatus::Failed)
            {
                let _ = storage.remove(&k).await;
            }
        });
        self.job_record(id).await
    }

    /// Sends progress of the job until it ends, and returns it then; a
    /// cancelled call cancels the job.
    async fn follow(
        &self,
        job: JobRecord,
        token: ProgressToken,
        peer: &Peer<RoleServer>,
        ct: &CancellationToken,
    ) -> Result<JobRecord, Refusal> {
        let id = job.job_id;
        let mut events = self.core.hub.subscribe();
        let mut sample = tokio::time::interval(PROGRESS_EVERY);
        let mut check = tokio::time::interval(FOLLOW_CHECK);
        // Progress must grow with each notification: the last value sent.
        let mut sent = 0.0;
        let mut notify = async |done: i64, total: Option<i64>, message: String| {
            // Bytes are known in advance where rows are not; rows are in the message.
            let value = done as f64;
            if value <= sent {
                return;
            }
            sent = value;
            let mut n = ProgressNotificationParam::new(token.clone(), value).with_message(message);
            if let Some(t) = total.filter(|t| *t > 0) {
                n = n.with_total(t as f64);
            }
            let _ = peer.notify_progress(n).await;
        };
        let mut job = job;
        while !job.status.is_finished() {
            tokio::select! {
                _ = ct.cancelled() => {
                    let mut db = self.core.pool.get().await?;
                    jobs::request_cancel(&mut db, id).await?;
                    return Err(Refusal(format!("the call was cancelled, and so was job {id}")));
                }
                event = events.recv() => match event {
                    Ok(e) if e.job_id() == id && matches!(e.as_ref(), Event::Job(_)) => {
                        job = self.job_record(id).await?;
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        events = self.core.hub.subscribe();
                    }
                },
                _ = sample.tick() => {
                    if let Some(p) = self.core.hub.latest(id) {
                        let done = if p.bytes_total.is_some() { p.bytes_read } else { p.rows_read };
                        notify(done, p.bytes_total, format!(
                            "{} rows read, {} committed, {} rejected, {} rows/s",
                            p.rows_read, p.rows_committed, p.rows_rejected, p.rows_per_sec
                        )).await;
                    }
                }
                _ = check.tick() => job = self.job_record(id).await?,
            }
        }
        let done = match job.bytes_total {
            Some(t) if t > 0 => t,
            _ => job.rows_read,
        };
        notify(
            done,
            job.bytes_total,
            format!(
                "{}: {} committed, {} rejected",
                job.status, job.rows_committed, job.rows_rejected
            ),
        )
        .await;
        Ok(job)
    }

    async fn job_record(&self, id: Uuid) -> Result<JobRecord, Refusal> {
        let db = self.core.pool.get().await?;
        jobs::get(&**db, id)
            .await?
            .ok_or_else(|| Refusal(format!("job {id} vanished")))
    }
}

/// Where a load's bytes come from.
enum Source {
    Path(String),
    Content(String),
    Upload(Uuid),
}

impl Source {
    /// The job's file name, for display.
    fn name(&self) -> String {
        match self {
            Source::Path(p) => p.clone(),
            Source::Content(_) => "content".into(),
            Source::Upload(j) => format!("upload of job {j}"),
        }
    }
}

enum Staged {
    /// A file loaded where it lies (stdio).
    Local(std::path::PathBuf),
    /// A copy in upload storage.
    Stored(crate::jobs::storage::Stored),
}

/// What a load goes into.
struct Target {
    accepted: Accepted,
    /// A model's table is made if missing; a table named is not.
    create_table: bool,
}

struct LocalFile {
    path: std::path::PathBuf,
    /// Its SHA-256 when known (a stored copy's); else the load hashes it.
    hash: Option<String>,
    /// The storage copy to remove when the load is done.
    stored_key: Option<String>,
    /// The stored copy as a local file, while the load reads it.
    copy: Option<LocalCopy>,
}

const JOB_URI: &str = "nexus://jobs/";
const MODEL_URI: &str = "nexus://models/";
const JSON: &str = "application/json";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for NexusMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(rmcp::model::Implementation::new(
            "nexus",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Nexus loads CSV files into PostgreSQL tables through validated models. \
             Start with list_models (or describe_model) to see what a file must look like, \
             load_file to start a job, job_status to follow it, and job_rejects to see why rows \
             were rejected. Jobs, their rejects and models are also resources \
             (nexus://jobs/{id}, nexus://jobs/{id}/rejects, nexus://models/{name}).",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let caller = self.caller(&ctx).map_err(refused)?;
        let mut resources: Vec<Resource> = self
            .core
            .models
            .iter()
            .map(|m| {
                Resource::new(
                    format!("{MODEL_URI}{}", m.name),
                    format!("model {}", m.name),
                )
                .with_description(format!(
                    "The model `{}`: table {}, columns and rules",
                    m.name, m.def.table
                ))
                .with_mime_type(JSON)
            })
            .collect();
        let recent = self
            .recent_jobs(&caller, None, None, JOB_RESOURCES)
            .await
            .map_err(refused)?;
        for j in recent {
            let label = format!("job {} ({}, {})", j.job_id, j.model, j.status);
            resources.push(
                Resource::new(format!("{JOB_URI}{}", j.job_id), label.clone()).with_mime_type(JSON),
            );
            if j.rows_rejected > 0 {
                resources.push(
                    Resource::new(
                        format!("{JOB_URI}{}/rejects", j.job_id),
                        format!("rejects of {label}"),
                    )
                    .with_mime_type(JSON),
                );
            }
        }
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.caller(&ctx).map_err(refused)?;
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{JOB_URI}{{job_id}}"), "job")
                .with_description("A job: status, counts, error, timings")
                .with_mime_type(JSON),
            ResourceTemplate::new(format!("{JOB_URI}{{job_id}}/rejects"), "job rejects")
                .with_description("A job's rejects: grouped by kind, and the first 1000 rows with line, column, reason and raw input")
                .with_mime_type(JSON),
            ResourceTemplate::new(format!("{MODEL_URI}{{name}}"), "model")
                .with_description("A model: table, key, columns, rules, cache")
                .with_mime_type(JSON),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = self.caller(&ctx).map_err(refused)?;
        let uri = request.uri;
        let not_found = |why: String| ErrorData::resource_not_found(why, None);
        let value = if let Some(name) = uri.strip_prefix(MODEL_URI) {
            serde_json::to_value(self.model_view(name).map_err(|r| not_found(r.0))?)
        } else if let Some(rest) = uri.strip_prefix(JOB_URI) {
            let (id, rejects) = match rest.strip_suffix("/rejects") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let id: Uuid = id
                .parse()
                .map_err(|_| not_found(format!("{uri}: `{id}` is not a job id")))?;
            if rejects {
                serde_json::to_value(
                    self.rejects(&caller, id, REJECTS_MAX)
                        .await
                        .map_err(|r| not_found(r.0))?,
                )
            } else {
                serde_json::to_value(self.job(&caller, id).await.map_err(|r| not_found(r.0))?)
            }
        } else {
            return Err(not_found(format!(
                "{uri}: not a Nexus resource (nexus://jobs/{{id}}, nexus://jobs/{{id}}/rejects, nexus://models/{{name}})"
            )));
        }
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(value.to_string(), uri).with_mime_type(JSON),
        ])
        .into())
    }
}

/// `/mcp` for `nexus serve`: Streamable HTTP over the server's services.
/// Requests reach it authenticated (`crate::api::auth::authenticated`).
/// Host names are not checked (callers hold a bearer token, which a
/// rebinding page cannot); a browser's Origin must be one of
/// NEXUS_CORS_ORIGINS.
pub fn http_service(
    state: &crate::api::AppState,
) -> rmcp::transport::StreamableHttpService<
    NexusMcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    let core = Arc::new(McpCore {
        pool: state.pool.clone(),
        models: state.models.clone(),
        cache: state.cache.clone(),
        hub: state.hub.clone(),
        storage: state.storage.clone(),
        config: state.config.clone(),
        database_url: state.database_url.clone(),
        channel: Channel::Http {
            queue: state.queue.clone(),
            roots: state.mcp_roots.clone(),
        },
    });
    let config = rmcp::transport::StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_allowed_origins(state.config.cors_origins.clone())
        .enforce_origin_validation()
        // Inline content, escaped as JSON, and the rest of the call.
        .with_max_request_body_bytes((2 * files::INLINE_MAX + (64 << 10)) as usize)
        .with_cancellation_token(state.shutdown.child_token());
    rmcp::transport::StreamableHttpService::new(
        move || Ok(NexusMcp::new(core.clone())),
        Default::default(),
        config,
    )
}

fn refused(r: Refusal) -> ErrorData {
    ErrorData::invalid_request(r.0, None)
}
