//! The Redis tier. Entries are `version|json` (`version|` is a tombstone,
//! the version zero-padded to 19 digits)
//! under `{prefix}:{model}:{key}`; `{prefix}:~flush:{model}` holds the
//! version below which the model's entries are dead. Writes and fills are
//! scripts, so each compares and sets in one step. Every call has a
//! deadline, and after a failure Redis is left alone for a moment: a slow
//! or absent Redis costs a load nothing but a counted, logged miss.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::from_batch::Entry;
use super::stats::Stats;
use super::{CacheError, CachedModel};

/// How long Redis is left alone after a failure.
const BACKOFF: Duration = Duration::from_secs(1);
/// Keys per script call: a script holds Redis for its whole run, so
/// chunks stay small enough not to stall readers (about a millisecond).
const CHUNK: usize = 250;

/// Width of the zero-padded version at the start of every entry.
const VERSION_WIDTH: usize = 19;

/// An entry: `version|json` (a tombstone has no json).
fn entry(version: i64, json: &str) -> String {
    format!("{}{json}", head(version))
}

/// The start of every entry of a version: `version|`, zero-padded.
pub(super) fn head(version: i64) -> String {
    format!("{:0width$}|", version.max(0), width = VERSION_WIDTH)
}

/// Replaces each key's entry unless it holds this version or a newer one.
/// Versions are written zero-padded to a fixed width, so the comparison
/// reads only an entry's first bytes. KEYS: entries; ARGV: padded version,
/// ttl ms, then one whole entry per key.
const WRITE: &str = r#"
local v = ARGV[1]
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('GETRANGE', k, 0, 18) < v then
    redis.call('SET', k, ARGV[i + 2], 'PX', ARGV[2])
    n = n + 1
  end
end
return n
"#;

/// A read's fill: set the entry only if it and the flush marker are still
/// what the reader saw. KEYS: entry, flush marker; ARGV: seen entry, seen
/// marker ('' = absent), new entry, ttl ms.
const FILL: &str = r#"
local cur = redis.call('GET', KEYS[1]) or ''
local fl = redis.call('GET', KEYS[2]) or ''
if cur == ARGV[1] and fl == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
"#;

/// Warming: set entries that are absent or dead (older than the flush
/// marker), if the marker is still the one seen. KEYS: flush marker,
/// entries; ARGV: seen marker, ttl ms, one entry per key.
const WARM: &str = r#"
local fl = redis.call('GET', KEYS[1]) or ''
if fl ~= ARGV[1] then return -1 end
local floor = tonumber(fl) or 0
local n = 0
for i = 2, #KEYS do
  local head = redis.call('GETRANGE', KEYS[i], 0, 18)
  if head == '' or tonumber(head) < floor then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[2])
    n = n + 1
  end
end
return n
"#;

/// Raises the flush marker to a version (never lowers it).
const FLUSH: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
"#;

pub struct RedisTier {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    stats: Arc<Stats>,
    /// Milliseconds since `epoch` until which Redis is left alone.
    resting_until: AtomicU64,
    epoch: Instant,
    write: redis::Script,
    fill: redis::Script,
    warm: redis::Script,
    flush: redis::Script,
}

/// An entry as a reader saw it, with the model's flush marker.
#[derive(Debug, Clone)]
pub struct Seen {
    entry: Option<String>,
    marker: Option<String>,
}

fn version_of(raw: &str) -> Option<(i64, &str)> {
    let (v, rest) = raw.split_once('|')?;
    Some((v.parse().ok()?, rest))
}

impl Seen {
    fn marker_version(&self) -> i64 {
        self.marker
            .as_deref()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// The row, if the entry holds one that no flush has killed.
    pub fn live(&self) -> Option<String> {
        let (v, json) = version_of(self.entry.as_deref()?)?;
        (!json.is_empty() && v >= self.marker_version()).then(|| json.to_string())
    }

    /// The version a fill after this observation stores.
    pub fn fill_version(&self) -> i64 {
        let entry = self
            .entry
            .as_deref()
            .and_then(version_of)
            .map_or(0, |(v, _)| v);
        entry.max(self.marker_version())
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

impl RedisTier {
    pub(super) fn new(
        url: &str,
        ca: Option<&std::path::Path>,
        prefix: &str,
        timeout: Duration,
        stats: Arc<Stats>,
    ) -> Result<RedisTier, CacheError> {
        let client = match ca {
            // `rediss://` checks the server against the system's CAs
            // (SSL_CERT_FILE too), unless told another.
            None => redis::Client::open(url),
            Some(ca) => {
                if !url.starts_with("rediss://") {
                    return Err(CacheError::RedisCa(format!(
                        "{}: set for a Redis reached without TLS (use rediss://)",
                        ca.display()
                    )));
                }
                let pem = std::fs::read(ca)
                    .map_err(|e| CacheError::RedisCa(format!("{}: {e}", ca.display())))?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
        }
        .map_err(CacheError::RedisUrl)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        Ok(RedisTier {
            conn: ConnectionManager::new_lazy_with_config(client.clone(), config)
                .map_err(CacheError::RedisUrl)?,
            client,
            prefix: prefix.to_string(),
            timeout,
            stats,
            resting_until: AtomicU64::new(0),
            epoch: Instant::now(),
            write: redis::Script::new(WRITE),
            fill: redis::Script::new(FILL),
            warm: redis::Script::new(WARM),
            flush: redis::Script::new(FLUSH),
        })
    }

    pub fn key(&self, model: &str, key: &str) -> String {
        format!("{}:{model}:{key}", self.prefix)
    }

    fn marker(&self, model: &str) -> String {
        format!("{}:~flush:{model}", self.prefix)
    }

    /// Runs one Redis call under the deadline, unless Redis is resting.
    async fn call<T>(
        &self,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, CacheError> {
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.resting_until.load(Ordering::Relaxed) {
            return Err(CacheError::Timeout(Duration::ZERO));
        }
        let mut conn = self.conn.clone();
        let result = match tokio::time::timeout(self.timeout, f(&mut conn)).await {
            Ok(r) => r.map_err(CacheError::from),
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        };
        if result.is_err() {
            let until = self.epoch.elapsed() + BACKOFF;
            self.resting_until
                .store(until.as_millis() as u64, Ordering::Relaxed);
        }
        result
    }

    /// Counts and logs a failed call (the first of an outage loudly).
    pub fn failed(&self, e: &CacheError) {
        if self.stats.redis_error() {
            tracing::warn!(error = %e, "Redis failed; the cache carries on without it and repairs when it is back");
        } else {
            tracing::debug!(error = %e, "Redis failed");
        }
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        self.call(async |c| redis::cmd("PING").query_async::<String>(c).await)
            .await
            .map(|_| ())
    }

    pub(super) async fn read(&self, model: &CachedModel, key: &str) -> Result<Seen, CacheError> {
        let keys = [self.marker(&model.name), self.key(&model.name, key)];
        let (marker, entry): (Option<String>, Option<String>) = self
            .call(async |c| redis::cmd("MGET").arg(&keys).query_async(c).await)
            .await?;
        Ok(Seen { entry, marker })
    }

    pub(super) async fn fill(
        &self,
        model: &CachedModel,
        key: &str,
        seen: &Seen,
        json: &str,
    ) -> Result<(), CacheError> {
        let entry = entry(seen.fill_version(), json);
        let (k, m) = (self.key(&model.name, key), self.marker(&model.name));
        let ttl = ms(model.ttl);
        self.call(async |c| {
            self.fill
                .key(&k)
                .key(&m)
                .arg(seen.entry.as_deref().unwrap_or(""))
                .arg(seen.marker.as_deref().unwrap_or(""))
                .arg(&entry)
                .arg(ttl)
                .invoke_async::<i64>(c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Versioned writes of entries (values starting with [`head`]`(version)`:
    /// a row, or a tombstone). A key without an entry (most keys of a load)
    /// takes its value by a plain `SET … NX`, the whole batch in one
    /// pipeline; the others go through the script, which compares
    /// versions, in chunks sent together. Both leave room for readers
    /// between commands or chunks.
    pub(super) async fn write(
        &self,
        model: &CachedModel,
        version: i64,
        entries: &[Entry],
    ) -> Result<u64, CacheError> {
        let ttl = ms(model.ttl);
        let mut key = format!("{}:{}:", self.prefix, model.name).into_bytes();
        let base = key.len();
        let mut absent = redis::pipe();
        for (k, value) in entries {
            key.truncate(base);
            key.extend_from_slice(k.as_bytes());
            absent
                .cmd("SET")
                .arg(&key[..])
                .arg(&value[..])
                .arg("NX")
                .arg("PX")
                .arg(ttl);
        }
        let set: Vec<Option<String>> = self.call(async |c| absent.query_async(c).await).await?;
        drop(absent);
        let rest: Vec<&Entry> = entries
            .iter()
            .zip(&set)
            .filter(|(_, s)| s.is_none())
            .map(|(e, _)| e)
            .collect();
        let padded = &head(version)[..VERSION_WIDTH];
        let calls: Vec<_> = rest
            .chunks(CHUNK)
            .map(|chunk| {
                let mut inv = self.write.prepare_invoke();
                for (k, _) in chunk.iter().copied() {
                    inv.key(self.key(&model.name, k));
                }
                inv.arg(padded).arg(ttl);
                for (_, value) in chunk.iter().copied() {
                    inv.arg(&value[..]);
                }
                inv
            })
            .collect();
        let written = futures_util::future::try_join_all(
            calls
                .iter()
                .map(|inv| self.call(async |c| inv.invoke_async::<u64>(c).await)),
        )
        .await?;
        Ok((set.len() - rest.len()) as u64 + written.iter().sum::<u64>())
    }

    /// Sets rows that are absent, unless the model was flushed meanwhile.
    pub(super) async fn warm(
        &self,
        model: &CachedModel,
        rows: &[(String, String)],
    ) -> Result<(), CacheError> {
        let m = self.marker(&model.name);
        let marker: Option<String> = self
            .call(async |c| redis::cmd("GET").arg(&m).query_async(c).await)
            .await?;
        let version: i64 = marker.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
        let ttl = ms(model.ttl);
        for chunk in rows.chunks(CHUNK) {
            let mut inv = self.warm.prepare_invoke();
            inv.key(&m);
            for (k, _) in chunk {
                inv.key(self.key(&model.name, k));
            }
            inv.arg(marker.as_deref().unwrap_or("")).arg(ttl);
            for (_, json) in chunk {
                inv.arg(entry(version, json));
            }
            self.call(async |c| inv.invoke_async::<i64>(c).await)
                .await?;
        }
        Ok(())
    }

    /// Kills every entry of the model older than `version`.
    pub(super) async fn flush(&self, model: &str, version: i64) -> Result<u64, CacheError> {
        let m = self.marker(model);
        self.call(async |c| self.flush.key(&m).arg(version).invoke_async::<u64>(c).await)
            .await
    }

    /// The installation's name for a pub/sub channel.
    pub fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Publishes on a channel, under the same deadline as every call.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), CacheError> {
        self.call(async |c| {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// A connection of its own for subscribing (pub/sub holds it).
    pub async fn subscriber(&self) -> Result<redis::aio::PubSub, CacheError> {
        Ok(self.client.get_async_pubsub().await?)
    }

    /// Entries of a model now in Redis (live or not), by scanning.
    pub async fn count(&self, model: &str) -> Result<u64, CacheError> {
        let pattern = format!("{}:{model}:*", self.prefix);
        let mut conn = self.conn.clone();
        let count = async {
            let mut cursor = 0u64;
            let mut n = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(5000)
                    .query_async(&mut conn)
                    .await?;
                n += keys.len() as u64;
                if next == 0 {
                    return Ok::<u64, redis::RedisError>(n);
                }
                cursor = next;
            }
        };
        match tokio::time::timeout(self.timeout * 20, count).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CacheError::Timeout(self.timeout * 20)),
        }
    }

    /// Redis's own memory figure (`used_memory`).
    pub async fn used_memory(&self) -> Result<u64, CacheError> {
        let info: String = self
            .call(async |c| redis::cmd("INFO").arg("memory").query_async(c).await)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}
