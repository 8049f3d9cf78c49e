//! Commit ordering for upserts. Parallel writers stage their batches at
//! once, but merge in sequence order, so that "the last row for a key wins"
//! holds across batches exactly as it does within one.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::watch;

pub struct SeqGate {
    done: Mutex<BTreeSet<u64>>,
    /// The lowest sequence number not yet committed; `u64::MAX` once aborted.
    next: watch::Sender<u64>,
}

impl SeqGate {
    /// `committed`: batches a previous run already committed.
    pub fn new(committed: impl IntoIterator<Item = u64>) -> SeqGate {
        let gate = SeqGate {
            done: Mutex::new(committed.into_iter().collect()),
            next: watch::Sender::new(0),
        };
        gate.advance();
        gate
    }

    fn advance(&self) {
        let done = self.done.lock().expect("gate lock");
        let mut next = *self.next.borrow();
        if next == u64::MAX {
            return;
        }
        while done.contains(&next) {
            next += 1;
        }
        self.next.send_replace(next);
    }

    /// Waits until every batch before `seq` is committed; false if aborted.
    pub async fn wait_turn(&self, seq: u64) -> bool {
        let mut rx = self.next.subscribe();
        let next = rx
            .wait_for(|n| *n >= seq)
            .await
            .map(|n| *n)
            .unwrap_or(u64::MAX);
        next != u64::MAX
    }

    pub fn done(&self, seq: u64) {
        self.done.lock().expect("gate lock").insert(seq);
        self.advance();
    }

    /// Releases every waiter with "aborted".
    pub fn abort(&self) {
        self.next.send_replace(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_predecessors() {
        let gate = std::sync::Arc::new(SeqGate::new([0]));
        assert!(gate.wait_turn(1).await, "0 was committed before");
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait_turn(3).await });
        gate.done(2);
        assert!(!waiter.is_finished());
        gate.done(1);
        assert!(waiter.await.unwrap());
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait_turn(9).await });
        gate.abort();
        assert!(!waiter.await.unwrap());
    }
}
