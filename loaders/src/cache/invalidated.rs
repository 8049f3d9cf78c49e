//! A cache kept correct by invalidation rather than by expiry: every change
//! to the rows behind it is announced (NOTIFY), and the process's listener
//! drops the entries. A fill that raced an invalidation is undone (tickets),
//! and while the listener is not connected a notification could be missed,
//! so the cache is then emptied and bypassed until it is back. Servers use it
//! for sessions and job records, and for the local tier of the record cache.
//!
//! An invalidation empties an entry that hundreds of clients may be reading
//! (a job's status as it starts): [`ReadCache::get_or_read`] lets one of
//! them read the row while the rest wait for it, rather than every one
//! queueing a query for the same row.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The keys being read now: each one's turn to read and how many
    /// readers hold or wait for it.
    reading: Mutex<HashMap<K, KeyTurn>>,
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
            reading: Mutex::new(HashMap::new()),
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

    /// The entry, or else the row `read` finds, stored for the next
    /// reader. Concurrent readers of one missing key take turns: the first
    /// reads, the others find its fill (or, if it found nothing or failed,
    /// read in turn).
    pub async fn get_or_read<E, F, Fut>(&self, key: &K, read: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<V>, E>>,
    {
        if !self.listening.is_on() {
            // Nothing is stored meanwhile: waiting for another's read gains nothing.
            return read().await;
        }
        if let Some(v) = self.get(key) {
            return Ok(Some(v));
        }
        let turn = {
            // Held only over a map entry: a poisoned lock's map is whole.
            let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
            let (turn, readers) = reading.entry(key.clone()).or_default();
            *readers += 1;
            turn.clone()
        };
        let mut held = Turn {
            reading: &self.reading,
            key,
            _guard: None,
        };
        held._guard = Some(turn.lock_owned().await);
        if let Some(v) = self.get(key) {
            return Ok(Some(v));
        }
        let ticket = self.ticket();
        let found = read().await?;
        if let Some(v) = &found {
            self.fill(key.clone(), v.clone(), ticket);
        }
        Ok(found)
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

/// A key's turn to read, and how many readers hold or wait for it.
type KeyTurn = (Arc<tokio::sync::Mutex<()>>, usize);

/// A reader's place at a key; on drop (also when the reader is cancelled
/// while it waits) it passes the turn on, and the last reader out forgets
/// the key.
struct Turn<'a, K: Hash + Eq> {
    reading: &'a Mutex<HashMap<K, KeyTurn>>,
    key: &'a K,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<K: Hash + Eq> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, readers)) = reading.get_mut(self.key) {
            *readers -= 1;
            if *readers == 0 {
                reading.remove(self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cache() -> Arc<ReadCache<u32, u32>> {
        let listening = Listening::default();
        listening.set(true);
        Arc::new(ReadCache::new(100, Duration::from_secs(60), listening))
    }

    /// Readers holding or waiting for a key's turn.
    fn readers(cache: &ReadCache<u32, u32>, key: u32) -> usize {
        cache.reading.lock().unwrap().get(&key).map_or(0, |t| t.1)
    }

    async fn until(what: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            tokio::task::yield_now().await;
        }
    }

    /// A reader of `key` whose read (counted in `reads`) finds `value` once
    /// `released` says so.
    fn held_read(
        cache: &Arc<ReadCache<u32, u32>>,
        key: u32,
        released: &tokio::sync::watch::Receiver<bool>,
        value: u32,
        reads: &Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<Result<Option<u32>, ()>> {
        let (cache, mut released, reads) = (cache.clone(), released.clone(), reads.clone());
        tokio::spawn(async move {
            cache
                .get_or_read(&key, || async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    Ok(Some(value))
                })
                .await
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_of_one_key_read_the_row_once() {
        let cache = cache();
        let reads = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..50)
            .map(|_| held_read(&cache, 7, &released, 42, &reads))
            .collect();
        until(|| readers(&cache, 7) == 50).await;
        release.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(Some(42)));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(readers(&cache, 7), 0, "the key is forgotten");
        assert!(cache.reading.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_or_empty_read_passes_the_turn_and_a_cancelled_reader_leaves_nothing() {
        let cache = cache();
        // Nothing found, then a failure: neither is stored, each reader reads.
        assert_eq!(
            cache.get_or_read(&1, || async { Ok::<_, ()>(None) }).await,
            Ok(None)
        );
        assert_eq!(
            cache
                .get_or_read(&1, || async { Err::<Option<u32>, _>(()) })
                .await,
            Err(())
        );
        assert_eq!(
            cache
                .get_or_read(&1, || async { Ok::<_, ()>(Some(5)) })
                .await,
            Ok(Some(5))
        );
        assert_eq!(
            cache
                .get_or_read(&1, || async { Err::<Option<u32>, _>(()) })
                .await,
            Ok(Some(5))
        );
        // A reader cancelled while it reads, and one cancelled while it waits.
        let (_hold, held) = tokio::sync::watch::channel(false);
        let reads = Arc::new(AtomicUsize::new(0));
        let reading = held_read(&cache, 2, &held, 1, &reads);
        until(|| readers(&cache, 2) == 1).await;
        let waiting = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_read(&2, || async { Ok::<_, ()>(Some(2)) })
                    .await
            })
        };
        until(|| readers(&cache, 2) == 2).await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(readers(&cache, 2), 1);
        reading.abort();
        assert!(reading.await.unwrap_err().is_cancelled());
        assert!(cache.reading.lock().unwrap().is_empty());
        // The key reads as new.
        assert_eq!(
            cache
                .get_or_read(&2, || async { Ok::<_, ()>(Some(3)) })
                .await,
            Ok(Some(3))
        );
    }

    /// While notifications may be missed nothing is stored, so readers
    /// do not queue for one another's reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_listener_readers_read_at_once() {
        let cache = cache();
        cache.listening.set(false);
        let (release, released) = tokio::sync::watch::channel(false);
        let blocked = held_read(&cache, 4, &released, 1, &Arc::new(AtomicUsize::new(0)));
        // Another reader of the key is not held up by the first.
        let second = cache.get_or_read(&4, || async { Ok::<_, ()>(Some(2)) });
        let second = tokio::time::timeout(Duration::from_secs(10), second).await;
        assert_eq!(second, Ok(Ok(Some(2))), "the second reader waited");
        release.send(true).unwrap();
        assert_eq!(blocked.await.unwrap(), Ok(Some(1)));
        assert_eq!(cache.get(&4), None);
    }

    #[tokio::test]
    async fn an_invalidation_during_a_read_is_not_undone_by_its_fill() {
        let cache = cache();
        let found = cache
            .get_or_read(&3, || async {
                cache.invalidate(&3);
                Ok::<_, ()>(Some(1))
            })
            .await;
        assert_eq!(found, Ok(Some(1)));
        assert_eq!(cache.get(&3), None, "the stale row was not stored");
    }
}
