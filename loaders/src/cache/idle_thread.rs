//! One thread at the lowest CPU priority (nice 19) for work that must not
//! slow a load: printing write-behind batches. Where a load keeps every
//! core busy, the scheduler runs this work in what the load leaves; where
//! cores are spare, at once. Started on first use, one per process; a
//! panic in one piece of work does not stop it.

use std::sync::{OnceLock, mpsc};

type Work = Box<dyn FnOnce() + Send>;

static IDLE: OnceLock<Option<mpsc::Sender<Work>>> = OnceLock::new();

fn start() -> Option<mpsc::Sender<Work>> {
    let (tx, rx) = mpsc::channel::<Work>();
    std::thread::Builder::new()
        .name("nexus-idle".into())
        .spawn(move || {
            lower_priority();
            for work in rx {
                work();
            }
        })
        .ok()?;
    Some(tx)
}

/// Runs `f` on the idle thread; `None` if it could not (no thread, or
/// `f` panicked).
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let idle = IDLE.get_or_init(start).as_ref()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    idle.send(Box::new(move || {
        if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let _ = tx.send(v);
        }
    }))
    .ok()?;
    rx.await.ok()
}

/// This thread's nice value to 19, the lowest priority.
fn lower_priority() {
    nexus_pipeline::priority::lower_this_thread(19);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn work_runs_at_the_lowest_priority_and_survives_a_panic() {
        let nice = super::run(nexus_pipeline::priority::this_thread_nice).await;
        assert_eq!(nice, Some(19));
        assert_eq!(super::run(|| -> u8 { panic!("a bad batch") }).await, None);
        assert_eq!(super::run(|| 7).await, Some(7));
    }
}
