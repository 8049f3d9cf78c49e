//! Keeping the upload store to what jobs still need. A server sweeps at
//! startup and then every hour: partial files of uploads cut off mid-way,
//! the uploads of jobs that finished longer than `NEXUS_UPLOAD_RETENTION`
//! ago, and stored files no job refers to (a crash between storing an
//! upload and queueing its job). `nexus jobs purge` removes old jobs
//! themselves, with their rejects and uploads, through [`purge`].

use std::sync::Arc;
use std::time::Duration;

use nexus_loaders::jobs;

use super::storage::Storage;

/// A partial upload untouched this long was cut off.
pub const PARTIAL_IDLE: Duration = Duration::from_secs(10 * 60);
/// A stored file no job refers to, this old, was left by a crash.
pub const ORPHAN_AGE: Duration = Duration::from_secs(60 * 60);
/// How often a server sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60 * 60);

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub partial: usize,
    pub finished: usize,
    pub orphans: usize,
}

/// One sweep of the store.
pub async fn sweep(
    storage: &dyn Storage,
    db: &tokio_postgres::Client,
    retention: Duration,
) -> anyhow::Result<Swept> {
    let partial = storage.sweep_partial(PARTIAL_IDLE).await?;
    let released = jobs::release_uploads(db, retention).await?;
    for key in &released {
        storage.remove(key).await?;
    }
    let old = storage.older_than(ORPHAN_AGE.min(retention)).await?;
    let orphans = jobs::unreferenced(db, &old).await?;
    for key in &orphans {
        storage.remove(key).await?;
    }
    Ok(Swept {
        partial,
        finished: released.len(),
        orphans: orphans.len(),
    })
}

/// Sweeps now and every [`SWEEP_EVERY`], for as long as it is polled.
pub async fn sweep_periodically(
    storage: Arc<dyn Storage>,
    pool: deadpool_postgres::Pool,
    retention: Duration,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let result = match pool.get().await {
            Ok(db) => sweep(storage.as_ref(), &db, retention).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(s) if s != Swept::default() => tracing::info!(
                partial = s.partial,
                finished = s.finished,
                orphans = s.orphans,
                "swept the upload store"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "sweeping the upload store failed; trying again later")
            }
        }
    }
}

/// Deletes jobs finished more than `older_than` ago with their rejects,
/// then their uploads.
pub async fn purge(
    storage: &dyn Storage,
    db: &mut tokio_postgres::Client,
    older_than: Duration,
) -> anyhow::Result<(jobs::Purged, usize)> {
    let purged = jobs::purge(db, older_than).await?;
    for key in &purged.storage_keys {
        storage.remove(key).await?;
    }
    let uploads = purged.storage_keys.len();
    Ok((purged, uploads))
}
