//! The cache's figures: hits per tier and misses per model, evictions,
//! Redis failures and write-behind drops — kept here for `cache stats` and
//! the servers' stats table, and sent to the `metrics` facade for `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Cache, Tier};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelStats {
    pub model: String,
    pub hits_local: u64,
    pub hits_redis: u64,
    pub misses: u64,
}

impl ModelStats {
    pub fn hit_ratio(&self) -> Option<f64> {
        let all = self.hits_local + self.hits_redis + self.misses;
        (all > 0).then(|| (self.hits_local + self.hits_redis) as f64 / all as f64)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsSnapshot {
    pub models: Vec<ModelStats>,
    pub local_entries: u64,
    pub local_bytes: u64,
    pub evictions: u64,
    pub redis_errors: u64,
    pub write_behind_depth: u64,
    pub write_behind_dropped: u64,
}

#[derive(Default)]
pub struct Stats {
    models: Mutex<BTreeMap<String, ModelStats>>,
    evictions: AtomicU64,
    redis_errors: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<Instant>>,
}

/// Failures closer together than this are one outage (logged once).
const OUTAGE_GAP: Duration = Duration::from_secs(30);

impl Stats {
    pub(super) fn hit(&self, model: &str, tier: Tier) {
        let mut models = self.models.lock().expect("cache stats");
        if !models.contains_key(model) {
            let fresh = ModelStats {
                model: model.to_string(),
                ..Default::default()
            };
            models.insert(model.to_string(), fresh);
        }
        let m = models.get_mut(model).expect("inserted above");
        match tier {
            Tier::Local => m.hits_local += 1,
            Tier::Redis => m.hits_redis += 1,
            Tier::Miss => m.misses += 1,
        }
        drop(models);
        match tier {
            Tier::Miss => {
                metrics::counter!("nexus_cache_misses_total", "model" => model.to_string())
                    .increment(1)
            }
            t => metrics::counter!("nexus_cache_hits_total", "model" => model.to_string(), "tier" => t.as_str())
                .increment(1),
        }
    }

    pub(super) fn evicted(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("nexus_cache_evictions_total").increment(1);
    }

    /// Counts a Redis failure; true for the first of an outage.
    pub(super) fn redis_error(&self) -> bool {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("nexus_cache_redis_errors_total").increment(1);
        let mut last = self.last_error.lock().expect("cache stats");
        let first = last.is_none_or(|t| t.elapsed() > OUTAGE_GAP);
        *last = Some(Instant::now());
        first
    }

    pub(super) fn dropped(&self, rows: u64) {
        self.dropped.fetch_add(rows, Ordering::Relaxed);
        metrics::counter!("nexus_cache_write_behind_dropped_total").increment(rows);
    }

    pub(super) fn snapshot(&self, cache: &Cache) -> StatsSnapshot {
        let (local_entries, local_bytes) = cache.local.as_ref().map_or((0, 0), |l| l.size());
        let depth = cache.write_behind_depth() as u64;
        metrics::gauge!("nexus_cache_local_entries").set(local_entries as f64);
        metrics::gauge!("nexus_cache_local_bytes").set(local_bytes as f64);
        metrics::gauge!("nexus_cache_write_behind_depth").set(depth as f64);
        let models: Vec<ModelStats> = self
            .models
            .lock()
            .expect("cache stats")
            .values()
            .cloned()
            .collect();
        for m in &models {
            if let Some(r) = m.hit_ratio() {
                metrics::gauge!("nexus_cache_hit_ratio", "model" => m.model.clone()).set(r);
            }
        }
        StatsSnapshot {
            models,
            local_entries,
            local_bytes,
            evictions: self.evictions.load(Ordering::Relaxed),
            redis_errors: self.redis_errors.load(Ordering::Relaxed),
            write_behind_depth: depth,
            write_behind_dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}
