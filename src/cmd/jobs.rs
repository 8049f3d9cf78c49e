//! `nexus jobs`: list, show, cancel and export rejects of jobs.

use std::io::Write;

use clap::Subcommand;
use nexus_loaders::JobStatus;
use nexus_loaders::jobs;
use uuid::Uuid;

use crate::config::Config;
use crate::db::Database;
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Recent jobs, newest first.
    List {
        #[arg(long, value_parser = str::parse::<JobStatus>)]
        status: Option<JobStatus>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One job, as JSON.
    Show { id: String },
    /// Stop a running job at its next batch boundary.
    Cancel { id: String },
    /// A job's rejects as CSV (line,column,reason,raw).
    Rejects {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete jobs that finished longer ago than a duration, with their
    /// rejects and uploads. The files they loaded stay loaded (a later run
    /// of the same file is still skipped).
    Purge {
        /// How old a finished job must be: 30d, 12h, 90m.
        #[arg(long, value_name = "DURATION", value_parser = nexus_pipeline::duration::parse_duration)]
        older_than: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
}

/// Rejects read per query by `nexus jobs rejects`.
const REJECTS_PAGE: i64 = 10_000;

/// A job by its id or a unique start of it (as `jobs list` shows them).
async fn resolve_id(client: &tokio_postgres::Client, id: &str) -> anyhow::Result<Uuid> {
    if let Ok(full) = Uuid::parse_str(id) {
        return Ok(full);
    }
    let prefix = id.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(exit::usage(format!(
            "`{id}` is not a job id (give the id, or at least its first 4 characters)"
        )));
    }
    match jobs::with_id_prefix(client, &prefix).await?.as_slice() {
        [one] => Ok(*one),
        [] => Err(exit::failed(format!("no job id starts with `{id}`"))),
        _ => Err(exit::usage(format!(
            "more than one job id starts with `{id}`: give more of it"
        ))),
    }
}

pub async fn run(config: &Config, command: JobsCommand) -> anyhow::Result<u8> {
    let database = Database::open(config).await?;
    let result = async {
        let mut client = database.connect().await?;
        nexus_loaders::migrate::migrate(&mut client).await?;
        let mut out = std::io::stdout().lock();
        match command {
            JobsCommand::List {
                status,
                limit,
                json,
            } => {
                let list = jobs::list(&client, status, limit.clamp(1, 10_000)).await?;
                if json {
                    writeln!(out, "{}", serde_json::to_string(&list)?)?;
                } else {
                    writeln!(
                        out,
                        "{:<36}  {:<11}  {:<20}  {:>10}  {:>10}  {:>8}  {:<20}  {:<30}  error",
                        "job",
                        "status",
                        "model",
                        "read",
                        "committed",
                        "rejected",
                        "created",
                        "file"
                    )?;
                    for j in list {
                        // A running job no process holds any more.
                        let status = if j.interrupted {
                            "interrupted".to_string()
                        } else {
                            j.status.to_string()
                        };
                        let error: String =
                            j.error.as_deref().unwrap_or("").chars().take(80).collect();
                        writeln!(
                            out,
                            "{:<36}  {:<11}  {:<20}  {:>10}  {:>10}  {:>8}  {:<20}  {:<30}  {}",
                            j.job_id,
                            status,
                            j.model,
                            j.rows_read,
                            j.rows_committed,
                            j.rows_rejected,
                            j.created_at.format("%Y-%m-%d %H:%M:%S"),
                            j.file_name.unwrap_or_default(),
                            error
                        )?;
                    }
                }
            }
            JobsCommand::Show { id } => {
                let id = resolve_id(&client, &id).await?;
                let job = jobs::get(&client, id)
                    .await?
                    .ok_or_else(|| exit::failed(format!("no job {id}")))?;
                writeln!(out, "{}", serde_json::to_string_pretty(&job)?)?;
            }
            JobsCommand::Cancel { id } => {
                let id = resolve_id(&client, &id).await?;
                match jobs::request_cancel(&mut client, id).await? {
                    None => return Err(exit::failed(format!("no job {id}"))),
                    Some(JobStatus::Running) => {
                        writeln!(out, "cancelling job {id}: it stops at its next batch")?
                    }
                    Some(s) if s.is_cancellable() => writeln!(out, "cancelled job {id}")?,
                    Some(s) => {
                        return Err(exit::failed(format!("job {id} is {s}; nothing to cancel")));
                    }
                }
            }
            JobsCommand::Rejects { id, json } => {
                let id = resolve_id(&client, &id).await?;
                if jobs::get(&client, id).await?.is_none() {
                    return Err(exit::failed(format!("no job {id}")));
                }
                // Page by page: millions of rejects in constant memory.
                if json {
                    write!(out, "[")?;
                } else {
                    writeln!(out, "{}", jobs::REJECTS_CSV_HEADER.join(","))?;
                }
                let (mut after, mut first) = (None, true);
                loop {
                    let page =
                        jobs::rejects_page(&client, id, after.as_ref(), REJECTS_PAGE).await?;
                    let Some((_, last)) = page.last() else { break };
                    after = Some(last.clone());
                    let rows: Vec<jobs::RejectRow> = page.into_iter().map(|(r, _)| r).collect();
                    if json {
                        for r in &rows {
                            if !first {
                                write!(out, ",")?;
                            }
                            first = false;
                            serde_json::to_writer(&mut out, r)?;
                        }
                    } else {
                        let mut buf = Vec::new();
                        jobs::rejects_csv(&mut buf, &rows)?;
                        out.write_all(&buf)?;
                    }
                }
                if json {
                    writeln!(out, "]")?;
                }
            }
            JobsCommand::Purge { older_than, json } => {
                let storage = config.storage.open(&config.data_dir)?;
                let (purged, uploads) =
                    crate::jobs::retention::purge(&*storage, &mut client, older_than).await?;
                if json {
                    let v = serde_json::json!({
                        "jobs": purged.jobs,
                        "rejects": purged.rejects,
                        "uploads": uploads,
                    });
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(
                        out,
                        "purged {} jobs, {} rejects and {uploads} uploads",
                        purged.jobs, purged.rejects
                    )?;
                }
            }
        }
        Ok(0)
    }
    .await;
    database.close().await;
    result
}
