//! In-memory copies of the rows a server reads on nearly every request
//! (live sessions, job records), so that a status read under load costs no
//! database round trip. Every change to those rows is announced by a
//! trigger and the server's listener (`crate::events`) drops the entries
//! (see `nexus_loaders::cache::invalidated` for how fills stay correct).

use std::time::Duration;

use nexus_loaders::cache::invalidated::{Listening, ReadCache};
use nexus_loaders::jobs::JobRecord;
use uuid::Uuid;

use crate::auth::store::LiveSession;

/// The server's read caches and whether their invalidations are flowing.
pub struct ReadCaches {
    pub sessions: ReadCache<Uuid, LiveSession>,
    pub jobs: ReadCache<Uuid, JobRecord>,
    pub listening: Listening,
}

/// Entries are dropped on notification; the expiry only bounds how long
/// an unread entry holds memory.
const IDLE_LIMIT: Duration = Duration::from_secs(300);

impl ReadCaches {
    pub fn new() -> ReadCaches {
        let listening = Listening::default();
        ReadCaches {
            sessions: ReadCache::new(100_000, IDLE_LIMIT, listening.clone()),
            jobs: ReadCache::new(100_000, IDLE_LIMIT, listening.clone()),
            listening,
        }
    }

    /// The listener is (or is no longer) receiving every notification.
    /// Either way what is cached may have missed one: drop it all.
    pub fn set_listening(&self, on: bool) {
        if !on {
            self.listening.set(false);
        }
        self.sessions.clear();
        self.jobs.clear();
        if on {
            self.listening.set(true);
        }
    }
}

impl Default for ReadCaches {
    fn default() -> Self {
        Self::new()
    }
}
