//! A cache kept correct by invalidation rather than by expiry: every change
//! to the rows behind it is announced (NOTIFY), and the process's listener
//! drops the entries. A fill that raced an invalidation is undone (tickets),
//! and while the listener is not connected a notification could be missed,
//! so the cache is then emptied and bypassed until it is back. Servers use it
//! for sessions and job records, and for the local tier of the record cache.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Whether a process's invalidations are flowing; shared by its caches.
#[derive(Clone, Default)]
pub struct Listening(Arc<AtomicBool>);

impl Listening {
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst);
    }
}

/// One cache of rows, invalidated by notifications.
pub struct ReadCache<K, V> {
    entries: moka::sync::Cache<K, V>,
    /// Bumped by every invalidation; a fill that raced one is undone.
    generation: AtomicU64,
    listening: Listening,
}

/// The generation a fill read its row under (taken before the query).
#[derive(Clone, Copy)]
pub struct Ticket(u64);

impl<K, V> ReadCache<K, V>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of at most `capacity` entries, each kept at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration, listening: Listening) -> Self {
        Self::with(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            listening,
        )
    }

    /// Around a cache built by the caller (weigher, expiry, listeners).
    pub fn with(entries: moka::sync::Cache<K, V>, listening: Listening) -> Self {
        ReadCache {
            entries,
            generation: AtomicU64::new(0),
            listening,
        }
    }

    /// The entries themselves, for figures (size, count).
    pub fn entries(&self) -> &moka::sync::Cache<K, V> {
        &self.entries
    }

    pub fn get(&self, key: &K) -> Option<V> {
        if !self.listening.is_on() {
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
        if !self.listening.is_on() || self.generation.load(Ordering::SeqCst) != ticket.0 {
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

    /// Drops the entries `drop` picks (the cache must be built with
    /// `support_invalidation_closures`).
    pub fn invalidate_if(&self, drop: impl Fn(&K, &V) -> bool + Send + Sync + 'static) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.entries.invalidate_entries_if(drop).is_err() {
            self.entries.invalidate_all();
        }
    }

    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }
}
