//! Queue workers: claim a job with `FOR UPDATE SKIP LOCKED`, hold a lease
//! and renew it, run the job through [`nexus_loaders::run_load`] (the same
//! path as `nexus load`), and on shutdown stop at a batch boundary and hand
//! the job back to the queue. A job whose worker died is claimed again once
//! its lease expires, and resumes from its checkpoints.

use std::sync::Arc;
use std::time::Duration;

use nexus_loaders::JobStatus;
use nexus_loaders::jobs::{self, Claimed};
use nexus_loaders::load::{LoadError, LoadRequest};
use nexus_pipeline::progress::Progress;
use tokio_util::sync::CancellationToken;

use crate::jobs::progress::Hub;
use crate::jobs::storage::Storage;

/// What queue workers use of the server.
pub struct WorkerContext {
    pub pool: deadpool_postgres::Pool,
    /// For loads, which open their own COPY connections.
    pub database_url: String,
    pub models: Arc<nexus_pipeline::ModelSet>,
    pub storage: Arc<dyn Storage>,
    pub hub: Arc<Hub>,
    pub cache: Arc<nexus_loaders::cache::Cache>,
    /// Woken when a job is queued in this process.
    pub queue: Arc<tokio::sync::Notify>,
    /// This process, as a lease owner.
    pub instance: uuid::Uuid,
    pub lease: Duration,
    pub copy_connections: usize,
    pub db_retry: Duration,
}

/// Runs `n` workers until `shutdown` is cancelled.
pub fn spawn(
    context: WorkerContext,
    n: usize,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let state = Arc::new(context);
    (0..n)
        .map(|i| {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            let owner = format!("{}/{i}", state.instance);
            tokio::spawn(async move { work(state, owner, shutdown).await })
        })
        .collect()
}

async fn work(state: Arc<WorkerContext>, owner: String, shutdown: CancellationToken) {
    let lease = state.lease;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let claimed = match state.pool.get().await {
            Ok(db) => jobs::claim_next(&**db, &owner, lease).await,
            Err(e) => {
                tracing::warn!(error = %e, "worker cannot reach the database");
                Ok(None)
            }
        };
        match claimed {
            Ok(Some(job)) => run(&state, &owner, job, shutdown.child_token()).await,
            Ok(None) => {
                tokio::select! {
                    _ = state.queue.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming a job failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs a claimed job; `interrupt` (a child of the server's shutdown) is
/// also cancelled when the job's lease is lost.
async fn run(state: &Arc<WorkerContext>, owner: &str, job: Claimed, interrupt: CancellationToken) {
    let id = job.id;
    tracing::info!(job = %id, model = %job.model, "job claimed");
    // Renew the lease until the run is over; a lost lease stops the load
    // at a batch boundary.
    let over = CancellationToken::new();
    let renewer = {
        let (state, owner, interrupt) = (state.clone(), owner.to_string(), interrupt.clone());
        let over = over.clone();
        tokio::spawn(async move {
            let lease = state.lease;
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let renewed = match state.pool.get().await {
                            Ok(db) => jobs::renew_lease(&**db, id, &owner, lease).await.unwrap_or(false),
                            Err(_) => false,
                        };
                        if !renewed {
                            tracing::warn!(job = %id, "lost the job's lease; stopping it");
                            interrupt.cancel();
                            return;
                        }
                    }
                    _ = interrupt.cancelled() => return,
                    _ = over.cancelled() => return,
                }
            }
        })
    };
    // The model (or the table's, by its columns) with what the upload asked
    // for on top.
    let prepared = match nexus_loaders::load::UploadOptions::of_job(id, &job.options) {
        Err(e) => Err(e.to_string()),
        Ok(upload) => model_of(state, &job.model)
            .await
            .and_then(|(m, create_table)| {
                let m = m.with_input(&upload.input).map_err(|e| e.to_string())?;
                Ok((upload, m, create_table))
            }),
    };
    // The upload as a local file (fetched, from an object store) for as
    // long as the load runs.
    let prepared = match prepared {
        Ok(p) => match state.storage.fetch(&job.storage_key).await {
            Ok(copy) => Ok((p, copy)),
            Err(e) => Err(format!("the job's upload cannot be read from storage: {e}")),
        },
        Err(e) => Err(e),
    };
    let outcome = match prepared {
        Ok(((upload, model, create_table), copy)) => {
            let req = LoadRequest {
                model_key: job.model.clone(),
                model: Arc::new(model),
                path: copy.path().to_path_buf(),
                file_name: job.file_name.clone(),
                file_hash: job.file_hash.clone(),
                bytes_total: job.bytes_total.map(|b| b as u64),
                mode: job.mode,
                atomic: job.atomic,
                force: upload.force,
                has_header: upload.has_header,
                copy_connections: state.copy_connections,
                workers: std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
                create_table,
                owner: job.owner.clone(),
                interrupt: interrupt.clone(),
                job: Some(id),
                cache: Some(state.cache.clone()),
                retry: state.db_retry,
            };
            let progress = Arc::new(Progress::default());
            state
                .hub
                .started(id, progress.clone(), job.bytes_total, job.owner.clone());
            let result = nexus_loaders::run_load(&state.database_url, req, progress)
                .await
                .map(|o| o.job.status);
            state.hub.finished(id);
            drop(copy);
            result.map_err(Failure::Load)
        }
        Err(e) => Err(Failure::Setup(e)),
    };
    over.cancel();
    let _ = renewer.await;
    match outcome {
        Ok(status) => {
            tracing::info!(job = %id, %status, "job finished");
            metrics::counter!("nexus_jobs_finished_total", "status" => status.as_str())
                .increment(1);
            // A failed job's upload is kept for a look (NEXUS_UPLOAD_RETENTION).
            if status.is_finished() && status != JobStatus::Failed {
                let _ = state.storage.remove(&job.storage_key).await;
            }
        }
        Err(Failure::Load(LoadError::Busy(_))) => {
            tracing::info!(job = %id, "another worker holds this job");
        }
        Err(Failure::Load(LoadError::Deferred(_))) => {
            tracing::info!(job = %id, "another job is loading the same file; this one waits");
        }
        Err(e) => {
            let e = e.to_string();
            tracing::error!(job = %id, error = %e, "job failed");
            metrics::counter!("nexus_jobs_finished_total", "status" => JobStatus::Failed.as_str())
                .increment(1);
            if let Ok(db) = state.pool.get().await {
                let _ = jobs::finish(&**db, id, JobStatus::Failed, Some(&e), 0, 0).await;
            }
        }
    }
}

/// A job's model by the name it was queued under: a model, or a table
/// loaded by its columns (made only for a model).
async fn model_of(
    state: &WorkerContext,
    key: &str,
) -> Result<(Arc<nexus_pipeline::Model>, bool), String> {
    match key.strip_prefix(nexus_loaders::catalog::TABLE_KEY_PREFIX) {
        None => state
            .models
            .get(key)
            .map(|m| (m, true))
            .map_err(|e| e.to_string()),
        Some(table) => {
            let db = state.pool.get().await.map_err(|e| e.to_string())?;
            nexus_loaders::catalog::model_from_table(&db, table)
                .await
                .map(|m| (Arc::new(m), false))
                .map_err(|e| e.to_string())
        }
    }
}

/// Why a claimed job did not run to an end.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Load(LoadError),
    /// Its model, or its upload, could not be made ready.
    #[error("{0}")]
    Setup(String),
}
