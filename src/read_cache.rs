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
    /// Sessions that may have ended (revoked, their user disabled), for
    /// whatever holds one open — a WebSocket — to check again.
    pub auth_changes: tokio::sync::broadcast::Sender<AuthChange>,
}

/// A change that may have ended sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthChange {
    Session(Uuid),
    /// Any session may have ended (a user changed, or notices were missed).
    All,
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
            auth_changes: tokio::sync::broadcast::Sender::new(1024),
        }
    }

    /// A session (or any) may have ended: forget it and tell its holders.
    pub fn session_changed(&self, change: AuthChange) {
        match change {
            AuthChange::Session(id) => self.sessions.invalidate(&id),
            AuthChange::All => self.sessions.clear(),
        }
        let _ = self.auth_changes.send(change);
    }

    /// The listener is (or is no longer) receiving every notification.
    /// Either way what is cached may have missed one: drop it all.
    pub fn set_listening(&self, on: bool) {
        if !on {
            self.listening.set(false);
        }
        self.sessions.clear();
        self.jobs.clear();
        let _ = self.auth_changes.send(AuthChange::All);
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
