//! The local tier: rows in this process's memory, bounded by a byte budget,
//! each kept for its model's TTL. Reads fill it; `nexus_cache`
//! notifications of loads (from any process) drop what they change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;

use super::CachedModel;
use super::invalidated::{Listening, ReadCache, Ticket};
use super::stats::Stats;

#[derive(Clone)]
pub struct Entry {
    json: String,
    ttl: Duration,
}

type Key = (String, String);

struct PerEntryTtl;

impl moka::Expiry<Key, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, e: &Entry, _: Instant) -> Option<Duration> {
        Some(e.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        e: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.ttl)
    }
}

pub struct LocalTier {
    cache: ReadCache<Key, Entry>,
}

impl LocalTier {
    pub(super) fn new(budget: u64, listening: Listening, stats: Arc<Stats>) -> LocalTier {
        let entries = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|k: &Key, e: &Entry| {
                (k.0.len() + k.1.len() + e.json.len() + 96).min(u32::MAX as usize) as u32
            })
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    stats.evicted();
                }
            })
            .build();
        LocalTier {
            cache: ReadCache::with(entries, listening),
        }
    }

    pub fn get(&self, model: &str, key: &str) -> Option<String> {
        self.cache
            .get(&(model.to_string(), key.to_string()))
            .map(|e| e.json)
    }

    pub(super) fn ticket(&self) -> Ticket {
        self.cache.ticket()
    }

    pub(super) fn fill(&self, model: &CachedModel, key: &str, json: String, ticket: Ticket) {
        let entry = Entry {
            json,
            ttl: model.ttl,
        };
        self.cache
            .fill((model.name.clone(), key.to_string()), entry, ticket);
    }

    pub fn invalidate(&self, model: &str, key: &str) {
        self.cache.invalidate(&(model.to_string(), key.to_string()));
    }

    pub fn flush(&self, model: &str) {
        let model = model.to_string();
        self.cache.invalidate_if(move |k, _| k.0 == model);
    }

    pub fn clear(&self) {
        self.cache.clear();
    }

    /// (entries, bytes) now held.
    pub fn size(&self) -> (u64, u64) {
        let e = self.cache.entries();
        e.run_pending_tasks();
        (e.entry_count(), e.weighted_size())
    }
}
