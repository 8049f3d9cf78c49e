//! A load may claim its file before the file's hash is known: when no job
//! of its model has had a file of that size, no earlier job can be the same
//! file, so the claim needs no hash and the first COPYs need not wait for
//! one (hashing a large file takes a tenth of its load). Until the hash is
//! recorded with the job, though, no batch of the job may commit: a re-run
//! finds a file's earlier jobs by the hash, and a crash in between must
//! leave no rows it could not find. This is what the writers wait on.

use tokio::sync::watch;

/// Where the hash of a load's file stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileHash {
    /// Being computed; the job has no hash yet.
    Pending,
    /// Recorded with the job: its batches may commit.
    Recorded,
    /// It could not be computed or recorded; the load fails with this.
    Failed(String),
}

/// The writers' view of [`FileHash`]: cheap to clone, waited on before a
/// commit.
#[derive(Debug, Clone)]
pub struct HashGate(watch::Receiver<FileHash>);

impl HashGate {
    /// A gate for a job whose hash was recorded when it was claimed.
    pub fn recorded() -> HashGate {
        let (_, rx) = watch::channel(FileHash::Recorded);
        HashGate(rx)
    }

    /// A gate that opens when the sender says the hash is recorded.
    pub fn pending() -> (watch::Sender<FileHash>, HashGate) {
        let (tx, rx) = watch::channel(FileHash::Pending);
        (tx, HashGate(rx))
    }

    /// Whether the hash is still being computed or recorded.
    pub fn is_pending(&self) -> bool {
        *self.0.borrow() == FileHash::Pending
    }

    /// Waits until the hash is recorded; `Err` with the reason when it
    /// will not be.
    pub async fn wait(&self) -> Result<(), String> {
        let mut rx = self.0.clone();
        let state = match rx.wait_for(|s| *s != FileHash::Pending).await {
            Ok(s) => s.clone(),
            Err(_) => FileHash::Failed("the file's hash was never recorded".into()),
        };
        match state {
            FileHash::Failed(reason) => Err(reason),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_opens_when_the_hash_is_recorded_and_not_before() {
        assert!(!HashGate::recorded().is_pending());
        assert_eq!(HashGate::recorded().wait().await, Ok(()));
        let (tx, gate) = HashGate::pending();
        assert!(gate.is_pending());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait().await }
        });
        tx.send(FileHash::Recorded).unwrap();
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert!(!gate.is_pending());
    }

    #[tokio::test]
    async fn a_gate_whose_hash_failed_or_was_dropped_says_why() {
        let (tx, gate) = HashGate::pending();
        tx.send(FileHash::Failed("unreadable".into())).unwrap();
        assert_eq!(gate.wait().await, Err("unreadable".into()));
        let (tx, gate) = HashGate::pending();
        drop(tx);
        assert!(gate.wait().await.unwrap_err().contains("never recorded"));
    }
}
