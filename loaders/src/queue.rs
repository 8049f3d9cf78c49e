//! The queue between a load's stages and its writers, bounded by the bytes
//! its batches hold rather than by their number.
//!
//! A load's stages start before its job is claimed (the file is hashed and
//! the claim makes its round trips meanwhile), and the writers start only
//! after. A queue of a few batches filled in milliseconds and left the
//! cores idle for the rest of that wait; bounded by bytes, the stages run
//! ahead as far as [`QUEUE_BYTES`] allows, so that the rows they encode
//! then are work the load no longer does beside PostgreSQL. Batches vary
//! in size (a batch is cut at its row count or at 8 MiB of input), so a
//! count would bound memory only loosely.

use std::sync::Arc;

use nexus_pipeline::EncodedBatch;
use nexus_pipeline::batch::{EncodedRow, RecordMeta};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// How many bytes of batches a load's queue holds at most (a batch larger
/// than this still passes, alone).
pub const QUEUE_BYTES: usize = 48 << 20;

/// Permits count KiB: a semaphore's permits are `u32`-sized per acquire.
const UNIT: usize = 1024;

/// The sending half, for a stage thread (outside the runtime).
pub struct BatchSender {
    tx: mpsc::UnboundedSender<(EncodedBatch, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    units: u32,
    runtime: tokio::runtime::Handle,
}

/// The receiving half, for the writers.
pub struct BatchReceiver {
    rx: mpsc::UnboundedReceiver<(EncodedBatch, OwnedSemaphorePermit)>,
}

/// A queue holding at most `bytes` of batches. Call within the runtime:
/// the sender waits on it.
pub fn batch_queue(bytes: usize) -> (BatchSender, BatchReceiver) {
    let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let (tx, rx) = mpsc::unbounded_channel();
    (
        BatchSender {
            tx,
            room: Arc::new(Semaphore::new(units as usize)),
            units,
            runtime: tokio::runtime::Handle::current(),
        },
        BatchReceiver { rx },
    )
}

/// The memory a batch holds while it waits: its COPY body, its input and
/// its row tables.
fn weight(batch: &EncodedBatch) -> usize {
    batch.copy.capacity()
        + batch.raw.data.capacity()
        + batch.raw.records.capacity() * std::mem::size_of::<RecordMeta>()
        + batch.rows.capacity() * std::mem::size_of::<EncodedRow>()
}

impl BatchSender {
    /// Queues `batch` once there is room for it, blocking the calling
    /// thread meanwhile; false when the receiver is gone.
    pub fn blocking_send(&self, batch: EncodedBatch) -> bool {
        let units = (weight(&batch) / UNIT).clamp(1, self.units as usize) as u32;
        // Every permit comes back when a batch leaves the queue or the
        // queue is dropped with it, so this wait always ends.
        let Ok(permit) = self
            .runtime
            .block_on(self.room.clone().acquire_many_owned(units))
        else {
            return false;
        };
        self.tx.send((batch, permit)).is_ok()
    }
}

impl BatchReceiver {
    /// The next batch; its room goes back to the queue.
    pub async fn recv(&mut self) -> Option<EncodedBatch> {
        self.rx.recv().await.map(|(batch, _room)| batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use nexus_pipeline::batch::RawBatch;

    use super::*;

    fn batch(seq: u64, bytes: usize) -> EncodedBatch {
        EncodedBatch {
            seq,
            rows_read: 0,
            copy: vec![0; bytes],
            rows: Vec::new(),
            rejects: Vec::new(),
            raw: RawBatch::default(),
            deferred: Vec::new(),
        }
    }

    /// Waits for `done` with a deadline.
    async fn until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_holds_no_more_than_its_bytes() {
        let (tx, mut rx) = batch_queue(100 << 10);
        let room = tx.room.clone();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let sender = std::thread::spawn(move || {
            for seq in 0..5 {
                assert!(tx.blocking_send(batch(seq, 40 << 10)));
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Two batches of 40 KiB fit in 100 KiB; the third waits for room.
        until(|| sent.load(Ordering::SeqCst) == 2).await;
        assert!(room.available_permits() < 40);
        assert_eq!(sent.load(Ordering::SeqCst), 2);
        for seq in 0..5 {
            assert_eq!(rx.recv().await.map(|b| b.seq), Some(seq));
        }
        until(|| sent.load(Ordering::SeqCst) == 5).await;
        sender.join().unwrap();
        assert_eq!(rx.recv().await.map(|b| b.seq), None);
        assert_eq!(room.available_permits(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_larger_than_the_queue_passes_alone() {
        let (tx, mut rx) = batch_queue(64 << 10);
        let sender =
            std::thread::spawn(move || (0..2).all(|seq| tx.blocking_send(batch(seq, 1 << 20))));
        assert_eq!(rx.recv().await.map(|b| b.copy.len()), Some(1 << 20));
        assert_eq!(rx.recv().await.map(|b| b.copy.len()), Some(1 << 20));
        assert!(sender.join().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_waiting_for_room_stops_when_the_writers_are_gone() {
        let (tx, rx) = batch_queue(64 << 10);
        let room = tx.room.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = tx.blocking_send(batch(0, 60 << 10));
            // No room for this one until the receiver goes.
            let second = tx.blocking_send(batch(1, 60 << 10));
            let _ = done_tx.send((first, second));
        });
        until(|| rx.rx.len() == 1 && room.available_permits() == 0).await;
        drop(rx);
        let outcome =
            tokio::task::spawn_blocking(move || done_rx.recv_timeout(Duration::from_secs(10)))
                .await
                .unwrap();
        assert_eq!(outcome, Ok((true, false)));
    }
}
