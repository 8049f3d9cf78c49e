//! A server's background tasks (event listeners, the progress publisher,
//! housekeeping, sweeps): started into one set, stopped together by one
//! cancellation token, and waited for — the same shape as a load's stop,
//! instead of tasks aborted one by one.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Default)]
pub struct Background {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// Runs `task` until it ends or the set is stopped (the task is then
    /// dropped at its next await).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .spawn(self.stop.clone().run_until_cancelled_owned(task));
    }

    /// Stops every task and waits up to `grace` for them; false if some
    /// did not end in time.
    pub async fn stop(self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}
