//! The write-behind queue of one process: write-behind batches go to their
//! load's cache stage without ever making the load wait, within one budget
//! of rows shared by every load of the process. A batch beyond the budget
//! is not queued (its caller flushes the model instead); a queued batch
//! holds its rows until it is written — or dropped unwritten, so that a
//! stage that dies cannot leave the budget taken — and the process can
//! wait for the queue to empty before it exits. A queued batch keeps its
//! rows' bytes (for the stage to print them) only within a second budget,
//! in bytes; beyond it a batch waits as its keys alone, and the stage
//! reads its rows back — slower, but nothing is dropped for memory's sake.
//! A load's stage holds its write-behind batches while the load runs (see
//! writes.rs); when the queue is nine tenths full it is
//! [`WriteBehindQueue::pressed`], and every stage writes, so that none of
//! them has its batches dropped for another's held ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub(crate) struct WriteBehindQueue {
    /// Rows the queue holds at most.
    capacity: usize,
    /// Bytes of batch rows the queue keeps at most.
    row_bytes: usize,
    /// Rows queued now.
    depth: AtomicUsize,
    /// Bytes of batch rows kept now.
    bytes: AtomicUsize,
    /// Woken when `depth` comes back to zero.
    empty: Notify,
    /// Whether the queue was nine tenths full since it was last empty.
    pressed: watch::Sender<bool>,
}

/// Rows admitted into the queue; they leave it when this is dropped.
pub(crate) struct Admitted {
    queue: Arc<WriteBehindQueue>,
    rows: usize,
    /// Bytes of the batch's rows it keeps.
    bytes: usize,
}

impl WriteBehindQueue {
    pub(crate) fn new(capacity: usize, row_bytes: usize) -> Arc<WriteBehindQueue> {
        Arc::new(WriteBehindQueue {
            capacity,
            row_bytes,
            depth: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            empty: Notify::new(),
            pressed: watch::Sender::new(false),
        })
    }

    /// Admits `rows` if the budget has room for them.
    pub(crate) fn admit(self: &Arc<Self>, rows: usize) -> Option<Admitted> {
        let admitted = Admitted {
            queue: self.clone(),
            rows,
            bytes: 0,
        };
        let before = self.depth.fetch_add(rows, Ordering::SeqCst);
        if before + rows >= self.capacity - self.capacity / 10 {
            self.pressed
                .send_if_modified(|p| !std::mem::replace(p, true));
        }
        // Over the budget: dropping `admitted` takes the rows back out.
        (before + rows <= self.capacity).then_some(admitted)
    }

    /// Whether the queue was nine tenths full since it was last empty:
    /// stages holding their batches must write them before it drops any.
    pub(crate) fn pressed(&self) -> watch::Receiver<bool> {
        self.pressed.subscribe()
    }

    /// Rows queued now.
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Waits (up to `deadline`) until the queue is empty; false if it is not.
    pub(crate) async fn drain(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.empty.notified();
                if self.depth() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }
}

impl Admitted {
    /// Keeps `n` bytes of the batch's rows if the byte budget has room.
    pub(crate) fn keep_bytes(&mut self, n: usize) -> bool {
        let before = self.queue.bytes.fetch_add(n, Ordering::SeqCst);
        if before.saturating_add(n) > self.queue.row_bytes {
            self.queue.bytes.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        self.bytes += n;
        true
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.queue.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
        if self.queue.depth.fetch_sub(self.rows, Ordering::SeqCst) == self.rows {
            self.queue.pressed.send_replace(false);
            self.queue.empty.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_leave_the_budget_when_written_or_dropped() {
        let queue = WriteBehindQueue::new(10, 0);
        let pressed = queue.pressed();
        let a = queue.admit(6).expect("room for 6");
        assert!(!*pressed.borrow(), "6 of 10");
        assert!(queue.admit(5).is_none(), "6 + 5 is over 10");
        assert_eq!(queue.depth(), 6, "a refused admission takes nothing");
        assert!(*pressed.borrow(), "a refused admission presses");
        let b = queue.admit(4).expect("room for 4");
        assert!(!queue.drain(Duration::from_millis(20)).await);
        drop(a);
        assert_eq!(queue.depth(), 4);
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.drain(Duration::from_secs(10)).await }
        });
        drop(b);
        assert!(
            waiter.await.unwrap(),
            "draining ends when the last rows leave"
        );
        assert_eq!(queue.depth(), 0);
        assert!(!*pressed.borrow(), "empty again: holding may resume");
    }

    #[test]
    fn row_bytes_are_kept_within_their_budget_and_given_back() {
        const ROW_BYTES: usize = 1000;
        let queue = WriteBehindQueue::new(10, ROW_BYTES);
        let mut a = queue.admit(1).unwrap();
        assert!(a.keep_bytes(ROW_BYTES - 10));
        let mut b = queue.admit(1).unwrap();
        assert!(!b.keep_bytes(11), "over the byte budget");
        assert!(b.keep_bytes(10));
        drop(a);
        let mut c = queue.admit(1).unwrap();
        assert!(c.keep_bytes(ROW_BYTES - 10), "a's bytes came back");
    }
}
