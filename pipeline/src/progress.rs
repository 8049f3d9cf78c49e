//! Live counters of one load, shared by the stages that advance them and
//! whoever reports them (a progress bar now, WebSocket subscribers later).
//! Plain atomics: reading them never blocks the pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Progress {
    /// Raw input bytes consumed (before decompression).
    pub bytes_read: Arc<AtomicU64>,
    /// Rows of committed batches (committed + rejected).
    pub rows_read: AtomicU64,
    pub rows_committed: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub batches_committed: AtomicU64,
    /// Of `rows_read`, those earlier runs of a resumed job settled.
    pub earlier_rows: AtomicU64,
    /// How far into the input (raw bytes, as `bytes_read`) committed batches reach.
    pub bytes_committed: AtomicU64,
}

/// A point-in-time copy of [`Progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgressSnapshot {
    pub bytes_read: u64,
    pub rows_read: u64,
    pub rows_committed: u64,
    pub rows_rejected: u64,
    pub batches_committed: u64,
    #[serde(skip)]
    pub earlier_rows: u64,
    #[serde(skip)]
    pub bytes_committed: u64,
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            rows_read: self.rows_read.load(Ordering::Relaxed),
            rows_committed: self.rows_committed.load(Ordering::Relaxed),
            rows_rejected: self.rows_rejected.load(Ordering::Relaxed),
            batches_committed: self.batches_committed.load(Ordering::Relaxed),
            earlier_rows: self.earlier_rows.load(Ordering::Relaxed),
            bytes_committed: self.bytes_committed.load(Ordering::Relaxed),
        }
    }

    /// Counts one committed batch.
    pub fn add_batch(&self, committed: u64, rejected: u64) {
        self.rows_committed.fetch_add(committed, Ordering::Relaxed);
        self.rows_rejected.fetch_add(rejected, Ordering::Relaxed);
        self.rows_read
            .fetch_add(committed + rejected, Ordering::Relaxed);
        self.batches_committed.fetch_add(1, Ordering::Relaxed);
    }
}
