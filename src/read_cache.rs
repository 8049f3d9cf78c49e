//! In-memory copies of the rows a server reads on nearly every request
//! (live sessions, job records), so that a status read under load costs no
//! database round trip. They stay correct by invalidation, not by expiry:
//! every change to the rows behind them is announced by a trigger (NOTIFY)
//! and the server's one listener (`crate::events`) drops the entries. While
//! that listener is not connected a notification could be missed, so the
//! caches are then emptied and bypassed until it is back.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nexus_loaders::jobs::JobRecord;
use uuid::Uuid;

use crate::auth::store::LiveSession;

/// One cache of rows, invalidated by notifications.
pub struct ReadCache<K, V> {
    entries: moka::sync::Cache<K, V>,
    /// Bumped by every invalidation; a fill that raced one is undone.
    generation: AtomicU64,
    listening: Arc<AtomicBool>,
}

/// The generation a fill read its row under (taken before the query).
#[derive(Clone, Copy)]
pub struct Ticket(u64);

impl<K, V> ReadCache<K, V>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(capacity: u64, ttl: Duration, listening: Arc<AtomicBool>) -> Self {
        ReadCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            generation: AtomicU64::new(0),
            listening,
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        if !self.listening.load(Ordering::SeqCst) {
            return None;
        }
        self.entries.get(key)
    }

    /// Take before reading the row that `fill` will store.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::SeqCst))
    }

    /// Stores a row read under `ticket`, unless an invalidation came since.
    pub fn fill(&self, key: K, value: V, ticket: Ticket) {
        if !self.listening.load(Ordering::SeqCst)
            || self.generation.load(Ordering::SeqCst) != ticket.0
        {
            return;
        }
        self.entries.insert(key.clone(), value);
        // An invalidation bumps the generation before it removes: if it
        // slipped in between the check and the insert, undo the insert.
        if self.generation.load(Ordering::SeqCst) != ticket.0 {
            self.entries.invalidate(&key);
        }
    }

    pub fn invalidate(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key);
    }

    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }
}

/// The server's read caches and whether their invalidations are flowing.
pub struct ReadCaches {
    pub sessions: ReadCache<Uuid, LiveSession>,
    pub jobs: ReadCache<Uuid, JobRecord>,
    listening: Arc<AtomicBool>,
}

/// Entries are dropped on notification; the expiry only bounds how long
/// an unread entry holds memory.
const IDLE_LIMIT: Duration = Duration::from_secs(300);

impl ReadCaches {
    pub fn new() -> ReadCaches {
        let listening = Arc::new(AtomicBool::new(false));
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
            self.listening.store(false, Ordering::SeqCst);
        }
        self.sessions.clear();
        self.jobs.clear();
        if on {
            self.listening.store(true, Ordering::SeqCst);
        }
    }
}

impl Default for ReadCaches {
    fn default() -> Self {
        Self::new()
    }
}
