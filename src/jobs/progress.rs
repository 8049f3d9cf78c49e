//! Live job events for WebSocket subscribers. State changes come from a
//! trigger on `nexus.jobs` (channel `nexus_jobs`, from any process);
//! progress of jobs running in this server is sampled every 250 ms and
//! published on the progress bus. `crate::events` publishes and hears both,
//! so a subscriber on one server sees jobs running on any of them. The hub
//! keeps counters monotone per job (a resumed job re-reads its file) and the
//! latest sample for subscribers that join mid-job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_loaders::JobStatus;
use nexus_pipeline::progress::Progress;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// How often progress is sampled and published.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProgressMsg {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub rows_read: i64,
    pub rows_committed: i64,
    pub rows_rejected: i64,
    pub bytes_read: i64,
    pub bytes_total: Option<i64>,
    pub rows_per_sec: f64,
    pub eta_ms: Option<i64>,
    #[serde(default)]
    pub owner: Option<String>,
}

/// A state change, as the trigger announces it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMsg {
    pub job_id: Uuid,
    pub status: JobStatus,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub rows_read: i64,
    #[serde(default)]
    pub rows_committed: i64,
    #[serde(default)]
    pub rows_rejected: i64,
    #[serde(default)]
    pub bytes_read: i64,
    #[serde(default)]
    pub bytes_total: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Event {
    Progress(ProgressMsg),
    Job(JobMsg),
}

impl Event {
    pub fn job_id(&self) -> Uuid {
        match self {
            Event::Progress(p) => p.job_id,
            Event::Job(j) => j.job_id,
        }
    }

    pub fn owner(&self) -> Option<&str> {
        match self {
            Event::Progress(p) => p.owner.as_deref(),
            Event::Job(j) => j.owner.as_deref(),
        }
    }
}

struct Local {
    progress: Arc<Progress>,
    bytes_total: Option<i64>,
    owner: Option<String>,
    started: Instant,
    /// The previous sample (time, rows) and a smoothed rows/s.
    previous: Option<(Instant, u64)>,
    rate: f64,
}

pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    latest: Mutex<HashMap<Uuid, ProgressMsg>>,
    local: Mutex<HashMap<Uuid, Local>>,
}

impl Hub {
    /// A hub whose relays may fall `buffer` events behind before they
    /// resynchronise.
    pub fn new(buffer: usize) -> Hub {
        Hub {
            tx: broadcast::Sender::new(buffer.max(1)),
            latest: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// The latest progress of a running job, for a subscriber joining now.
    /// A job running in this process is read now: the sample heard back
    /// from the bus is up to a tick and a round trip old, behind commits
    /// the ledger already shows.
    pub fn latest(&self, job: Uuid) -> Option<ProgressMsg> {
        let heard = self.latest.lock().expect("hub").get(&job).cloned();
        let local = self.local.lock().expect("hub");
        let Some(l) = local.get(&job) else {
            return heard;
        };
        let now = l.progress.snapshot();
        let mut p = heard.unwrap_or_else(|| ProgressMsg {
            job_id: job,
            status: JobStatus::Running,
            rows_read: 0,
            rows_committed: 0,
            rows_rejected: 0,
            bytes_read: 0,
            bytes_total: l.bytes_total,
            rows_per_sec: 0.0,
            eta_ms: None,
            owner: l.owner.clone(),
        });
        p.rows_read = p.rows_read.max(now.rows_read as i64);
        p.rows_committed = p.rows_committed.max(now.rows_committed as i64);
        p.rows_rejected = p.rows_rejected.max(now.rows_rejected as i64);
        p.bytes_read = p.bytes_read.max(now.bytes_read as i64);
        Some(p)
    }

    /// A job starts running here; its counters are sampled until `finished`.
    pub fn started(
        &self,
        job: Uuid,
        progress: Arc<Progress>,
        bytes_total: Option<i64>,
        owner: Option<String>,
    ) {
        self.local.lock().expect("hub").insert(
            job,
            Local {
                progress,
                bytes_total,
                owner,
                started: Instant::now(),
                previous: None,
                rate: 0.0,
            },
        );
    }

    /// Jobs running in this process now.
    pub fn running_here(&self) -> usize {
        self.local.lock().expect("hub").len()
    }

    pub fn finished(&self, job: Uuid) {
        self.local.lock().expect("hub").remove(&job);
    }

    /// Samples the jobs running here.
    pub(crate) fn samples(&self) -> Vec<ProgressMsg> {
        let mut local = self.local.lock().expect("hub");
        local
            .iter_mut()
            .map(|(id, l)| {
                let s = l.progress.snapshot();
                let now = Instant::now();
                // A resumed job starts from its committed totals: rates count
                // only what this run adds, smoothed over recent samples.
                if let Some((t, rows)) = l.previous {
                    let dt = now.duration_since(t).as_secs_f64().max(0.001);
                    let instant = s.rows_read.saturating_sub(rows) as f64 / dt;
                    l.rate = if l.rate == 0.0 {
                        instant
                    } else {
                        0.7 * l.rate + 0.3 * instant
                    };
                }
                l.previous = Some((now, s.rows_read));
                let rate = l.rate;
                let secs = l.started.elapsed().as_secs_f64().max(0.001);
                let byte_rate = s.bytes_read as f64 / secs;
                let eta_ms = l.bytes_total.filter(|_| byte_rate > 0.0).map(|total| {
                    ((total as f64 - s.bytes_read as f64).max(0.0) / byte_rate * 1000.0) as i64
                });
                ProgressMsg {
                    job_id: *id,
                    status: JobStatus::Running,
                    rows_read: s.rows_read as i64,
                    rows_committed: s.rows_committed as i64,
                    rows_rejected: s.rows_rejected as i64,
                    bytes_read: s.bytes_read as i64,
                    bytes_total: l.bytes_total,
                    rows_per_sec: rate.round(),
                    eta_ms,
                    owner: l.owner.clone(),
                }
            })
            .collect()
    }

    /// An event from the channels: made monotone, remembered, passed on.
    pub(crate) fn receive(&self, event: Event) {
        let event = match event {
            Event::Progress(mut p) => {
                let mut latest = self.latest.lock().expect("hub");
                if let Some(prev) = latest.get(&p.job_id) {
                    p.rows_read = p.rows_read.max(prev.rows_read);
                    p.rows_committed = p.rows_committed.max(prev.rows_committed);
                    p.rows_rejected = p.rows_rejected.max(prev.rows_rejected);
                    p.bytes_read = p.bytes_read.max(prev.bytes_read);
                }
                latest.insert(p.job_id, p.clone());
                Event::Progress(p)
            }
            Event::Job(j) => {
                if j.status != JobStatus::Running {
                    self.latest.lock().expect("hub").remove(&j.job_id);
                }
                Event::Job(j)
            }
        };
        let _ = self.tx.send(Arc::new(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job running here answers with its counters now, not with the
    /// sample last heard from the bus.
    #[test]
    fn a_local_job_is_never_behind_its_commits() {
        let hub = Hub::new(4);
        let job = Uuid::new_v4();
        let progress = Arc::new(Progress::default());
        hub.started(job, progress.clone(), Some(1000), None);
        let mut early = hub.samples().remove(0);
        hub.receive(Event::Progress(early.clone()));
        progress.add_batch(7, 1);
        let now = hub.latest(job).expect("a running job");
        assert_eq!(
            (now.rows_committed, now.rows_rejected, now.rows_read),
            (7, 1, 8)
        );
        // What was heard counts where it is ahead (another run's totals).
        early.rows_committed = 50;
        hub.receive(Event::Progress(early));
        assert_eq!(hub.latest(job).unwrap().rows_committed, 50);
        hub.finished(job);
        assert_eq!(hub.latest(job).unwrap().rows_committed, 50);
    }
}
