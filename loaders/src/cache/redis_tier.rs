//! The Redis tier. Where a model's entries live depends on its key
//! ([`Layout`]): integer keys, which a batch mostly carries in runs, live in
//! hashes of up to a hundred — a key's hash is `{prefix}:{model}:{stem}..`,
//! the stem being the key without its last two characters, so the ids
//! 12300 to 12399 share `…:123..`; text and uuid keys, which rarely share
//! a stem within a batch, keep a Redis key each, `{prefix}:{model}:{key}`.
//! Why: a Redis key with an expiry of its own costs Redis more CPU than a
//! whole load costs the machine without Redis, and a hash of one entry
//! costs more still. Storing a million 270-byte entries took Redis 4.2–4.8 s
//! of CPU as keys (`SET … NX PX`), 1.0–1.1 s as hashes of a hundred renamed
//! into place, 2.3–2.6 s as hashes of a hundred through the script below;
//! random keys as hashes of one entry took 1.8× (renamed) to 2.8× (script)
//! what they take as keys (pipelined, Redis 7.0, this repository's machine).
//! Each entry is `version|expires|json` (a tombstone has no json): the
//! version zero-padded to 19 digits, the entry's own expiry in Unix
//! milliseconds to 13, checked on every read, as a hash's TTL (renewed by
//! every write) outlives the older entries in it. `{prefix}:~flush:{model}`
//! holds the version below which the model's entries are dead. Writes and
//! fills compare versions in a script; a model's first write skips it
//! where nothing is there yet: keys are set with `NX`, and hashes are
//! filled under temporary keys and renamed into place only if still
//! absent (`RENAMENX`, atomic). Every call has a deadline, and after a
//! failure Redis is left alone for a moment: a slow or absent Redis costs
//! a load nothing but a counted, logged miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use nexus_pipeline::types::ColumnType;

use super::from_batch::Entry;
use super::stats::Stats;
use super::{CacheError, CachedModel};

/// How long Redis is left alone after a failure.
const BACKOFF: Duration = Duration::from_secs(1);
/// Entries per script call: a script holds Redis for its whole run, so
/// chunks stay small enough not to stall readers (about a millisecond).
const CHUNK: usize = 250;

/// Width of the zero-padded version at the start of every entry.
const VERSION_WIDTH: usize = 19;
/// Width of the zero-padded expiry after it.
const EXPIRY_WIDTH: usize = 13;
/// Characters a key loses to name its hash.
const STEM_CUT: usize = 2;

/// Where a model's entries live in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A Redis key per entry (text and uuid keys).
    Keys,
    /// Hashes of the keys that share a stem (integer keys).
    Hashes,
}

impl Layout {
    pub fn of(key_type: ColumnType) -> Layout {
        match key_type {
            ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt => Layout::Hashes,
            _ => Layout::Keys,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Layout::Keys => "keys",
            Layout::Hashes => "hashes",
        }
    }
}

/// The Redis key that holds `key`'s entry: its own, or its hash's (where
/// the entry is the field `key`).
pub fn place(prefix: &str, model: &str, layout: Layout, key: &str) -> String {
    match layout {
        Layout::Keys => format!("{prefix}:{model}:{key}"),
        Layout::Hashes => format!("{prefix}:{model}:{}..", stem(key)),
    }
}

/// `key` without its last [`STEM_CUT`] characters.
fn stem(key: &str) -> &str {
    let cut = key
        .char_indices()
        .rev()
        .nth(STEM_CUT - 1)
        .map_or(0, |(i, _)| i);
    &key[..cut]
}

/// An entry's parts, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    pub version: i64,
    /// Unix milliseconds after which the entry is gone.
    pub expires: u64,
    /// The row's JSON; empty for a tombstone.
    pub json: &'a str,
}

impl<'a> Stored<'a> {
    pub fn parse(raw: &'a str) -> Option<Stored<'a>> {
        let (version, rest) = raw.split_once('|')?;
        let (expires, json) = rest.split_once('|')?;
        Some(Stored {
            version: version.parse().ok()?,
            expires: expires.parse().ok()?,
            json,
        })
    }

    pub fn expired(&self) -> bool {
        self.expires <= now_ms()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An entry: `version|expires|json` (a tombstone has no json).
fn entry(version: i64, ttl: Duration, json: &str) -> String {
    format!("{}{json}", head(version, ttl))
}

/// The start of every entry of a version written now that lives `ttl`:
/// `version|expires|`, zero-padded.
pub(super) fn head(version: i64, ttl: Duration) -> String {
    format!(
        "{:0vw$}|{:0ew$}|",
        version.max(0),
        now_ms() + ms(ttl),
        vw = VERSION_WIDTH,
        ew = EXPIRY_WIDTH
    )
}

/// Sets entries, comparing versions. KEYS: the flush marker, then places
/// (keys or hashes); ARGV: mode, version (`write`: padded) or the marker
/// seen (`warm`), ttl ms, now ms (padded), layout, then for each place a
/// count (1 for a key) and that many key/entry pairs. `write` replaces an
/// entry of an older version; `warm` one that is dead (older than the
/// marker, or expired), if the marker is still the one seen (else -1).
/// Returns the entries set and the places that did not exist.
const SET_ENTRIES: &str = r#"
local warm = ARGV[1] == 'warm'
local v, ttl, now = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local hashed = ARGV[5] == 'hashes'
local floor = 0
if warm then
  local fl = redis.call('GET', KEYS[1]) or ''
  if fl ~= v then return {-1, 0} end
  floor = tonumber(fl) or 0
end
local a, set, fresh = 6, 0, 0
for i = 2, #KEYS do
  local h, n = KEYS[i], tonumber(ARGV[a])
  local fields = {}
  for j = 1, n do fields[j] = ARGV[a + 2 * j - 1] end
  local cur
  if hashed then
    if redis.call('EXISTS', h) == 0 then fresh = fresh + 1 end
    cur = redis.call('HMGET', h, unpack(fields))
  else
    -- Only an entry's head: version and expiry.
    local c = redis.call('GETRANGE', h, 0, 33)
    if c == '' then c = false; fresh = fresh + 1 end
    cur = {c}
  end
  local args = {}
  for j = 1, n do
    local c = cur[j]
    local replace = not c
    if c then
      if warm then
        replace = tonumber(string.sub(c, 1, 19)) < floor or string.sub(c, 21, 33) <= now
      else
        replace = string.sub(c, 1, 19) < v
      end
    end
    if replace then
      args[#args + 1] = fields[j]
      args[#args + 1] = ARGV[a + 2 * j]
    end
  end
  if #args > 0 and not hashed then
    redis.call('SET', h, args[2], 'PX', ttl)
    set = set + 1
  elseif #args > 0 then
    redis.call('HSET', h, unpack(args))
    set = set + #args / 2
    if redis.call('PTTL', h) < ttl then redis.call('PEXPIRE', h, ttl) end
  end
  a = a + 1 + 2 * n
end
return {set, fresh}
"#;

/// A read's fill: set the entry only if it and the flush marker are still
/// what the reader saw. KEYS: place, flush marker; ARGV: layout, key,
/// seen entry, seen marker ('' = absent), new entry, ttl ms.
const FILL: &str = r#"
local hashed = ARGV[1] == 'hashes'
local cur
if hashed then cur = redis.call('HGET', KEYS[1], ARGV[2]) else cur = redis.call('GET', KEYS[1]) end
local fl = redis.call('GET', KEYS[2]) or ''
if (cur or '') == ARGV[3] and fl == ARGV[4] then
  if not hashed then
    redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
    return 1
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[5])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
  return 1
end
return 0
"#;

/// Raises the flush marker to a version (never lowers it).
const FLUSH: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
"#;

/// How [`SET_ENTRIES`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetMode {
    Write,
    Warm,
}

impl SetMode {
    fn as_str(self) -> &'static str {
        match self {
            SetMode::Write => "write",
            SetMode::Warm => "warm",
        }
    }
}

pub struct RedisTier {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    stats: Arc<Stats>,
    /// Milliseconds since `epoch` until which Redis is left alone.
    resting_until: AtomicU64,
    epoch: Instant,
    set_entries: redis::Script,
    fill: redis::Script,
    flush: redis::Script,
    /// Per model: whether its last write found its hashes absent (then
    /// the next one tries renaming into place first).
    absent_last: Mutex<HashMap<String, bool>>,
}

/// An entry as a reader saw it, with the model's flush marker.
#[derive(Debug, Clone)]
pub struct Seen {
    entry: Option<String>,
    marker: Option<String>,
}

impl Seen {
    fn marker_version(&self) -> i64 {
        self.marker
            .as_deref()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    fn stored(&self) -> Option<Stored<'_>> {
        Stored::parse(self.entry.as_deref()?)
    }

    /// The row, if the entry holds one that no flush has killed and that
    /// has not expired.
    pub fn live(&self) -> Option<String> {
        let e = self.stored()?;
        (!e.json.is_empty() && e.version >= self.marker_version() && !e.expired())
            .then(|| e.json.to_string())
    }

    /// The version a fill after this observation stores.
    pub fn fill_version(&self) -> i64 {
        let entry = self.stored().map_or(0, |e| e.version);
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
            set_entries: redis::Script::new(SET_ENTRIES),
            fill: redis::Script::new(FILL),
            flush: redis::Script::new(FLUSH),
            absent_last: Mutex::default(),
        })
    }

    fn place(&self, model: &CachedModel, key: &str) -> String {
        place(&self.prefix, &model.name, Layout::of(model.key_type), key)
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
        let (m, p) = (self.marker(&model.name), self.place(model, key));
        let mut read = redis::pipe();
        read.get(&m);
        match Layout::of(model.key_type) {
            Layout::Keys => read.get(&p),
            Layout::Hashes => read.hget(&p, key),
        };
        let (marker, entry): (Option<String>, Option<String>) =
            self.call(async |c| read.query_async(c).await).await?;
        Ok(Seen { entry, marker })
    }

    pub(super) async fn fill(
        &self,
        model: &CachedModel,
        key: &str,
        seen: &Seen,
        json: &str,
    ) -> Result<(), CacheError> {
        let entry = entry(seen.fill_version(), model.ttl, json);
        let (p, m) = (self.place(model, key), self.marker(&model.name));
        let ttl = ms(model.ttl);
        self.call(async |c| {
            self.fill
                .key(&p)
                .key(&m)
                .arg(Layout::of(model.key_type).as_str())
                .arg(key)
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

    /// Versioned writes of entries (values starting with [`head`]`(version,
    /// …)`: a row, or a tombstone), grouped by place. When the model's last
    /// write found its places absent, the batch is first set where nothing
    /// is — keys with `SET … NX`, hashes built under a temporary name and
    /// renamed into place if still absent: one pipeline, no script; the
    /// places taken by then (and all of them otherwise) go through the
    /// script, which compares versions, in chunks sent together. Both leave
    /// room for readers between commands or chunks.
    pub(super) async fn write(
        &self,
        model: &CachedModel,
        version: i64,
        entries: &[Entry],
    ) -> Result<u64, CacheError> {
        let hashes = self.by_place(model, entries.iter());
        let absent_last = self
            .absent_last
            .lock()
            .expect("redis tier")
            .get(&model.name)
            .copied()
            .unwrap_or(true);
        let all = hashes.len();
        let (renamed, rest) = match (absent_last, Layout::of(model.key_type)) {
            (false, _) => (0, hashes),
            (true, Layout::Keys) => self.set_absent_keys(model, hashes).await?,
            (true, Layout::Hashes) => self.rename_into_place(model, hashes).await?,
        };
        let padded = &head(version, Duration::ZERO)[..VERSION_WIDTH];
        let (set, fresh) = self
            .set_entries(model, SetMode::Write, padded, &rest)
            .await?
            .unwrap_or_default();
        // Whether most of this write's hashes were absent decides how the
        // next write of the model starts (a load's batches share a few
        // hashes at their edges; a reload finds them all).
        let absent = if absent_last {
            all - rest.len()
        } else {
            fresh as usize
        };
        self.absent_last
            .lock()
            .expect("redis tier")
            .insert(model.name.clone(), absent * 2 >= all);
        let written = renamed + set;
        Ok(written)
    }

    /// Entries grouped by the place that holds them, in the order each
    /// place is first met.
    fn by_place<'e>(
        &self,
        model: &CachedModel,
        entries: impl Iterator<Item = &'e Entry>,
    ) -> Vec<(String, Vec<&'e Entry>)> {
        if Layout::of(model.key_type) == Layout::Keys {
            return entries
                .map(|e| (self.place(model, &e.0), vec![e]))
                .collect();
        }
        let mut at: HashMap<&str, usize> = HashMap::new();
        let mut hashes: Vec<(String, Vec<&Entry>)> = Vec::new();
        for e in entries {
            let i = *at.entry(stem(&e.0)).or_insert_with(|| {
                hashes.push((self.place(model, &e.0), Vec::new()));
                hashes.len() - 1
            });
            hashes[i].1.push(e);
        }
        hashes
    }

    /// Sets each key that holds no entry (`SET … NX`); returns the entries
    /// so written and the keys that held one.
    async fn set_absent_keys<'e>(
        &self,
        model: &CachedModel,
        keys: Vec<(String, Vec<&'e Entry>)>,
    ) -> Result<(u64, Vec<(String, Vec<&'e Entry>)>), CacheError> {
        let ttl = ms(model.ttl);
        let mut pipe = redis::pipe();
        for (key, es) in &keys {
            for (_, value) in es.iter().copied() {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(&value[..])
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl);
            }
        }
        let set: Vec<Option<String>> = self.call(async |c| pipe.query_async(c).await).await?;
        drop(pipe);
        let (mut written, mut rest) = (0, Vec::new());
        for ((key, es), set) in keys.into_iter().zip(set) {
            match set {
                Some(_) => written += 1,
                None => rest.push((key, es)),
            }
        }
        Ok((written, rest))
    }

    /// Builds each hash under a temporary name and renames it into place
    /// if the hash does not exist; returns the entries so written and the
    /// hashes that existed.
    async fn rename_into_place<'e>(
        &self,
        model: &CachedModel,
        hashes: Vec<(String, Vec<&'e Entry>)>,
    ) -> Result<(u64, Vec<(String, Vec<&'e Entry>)>), CacheError> {
        let ttl = ms(model.ttl);
        let nonce = uuid::Uuid::new_v4().simple();
        let mut pipe = redis::pipe();
        for (i, (hash, es)) in hashes.iter().enumerate() {
            let temporary = format!("{}:~tmp:{nonce}:{i}", self.prefix);
            let bytes = es.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            let mut set = redis::Cmd::with_capacity(2 + 2 * es.len(), temporary.len() + bytes + 4);
            set.arg("HSET").arg(&temporary);
            for (k, value) in es.iter().copied() {
                set.arg(k).arg(&value[..]);
            }
            pipe.add_command(set).ignore();
            pipe.cmd("PEXPIRE").arg(&temporary).arg(ttl).ignore();
            pipe.cmd("RENAMENX").arg(&temporary).arg(hash);
            pipe.cmd("DEL").arg(&temporary).ignore();
        }
        let renamed: Vec<i64> = self.call(async |c| pipe.query_async(c).await).await?;
        drop(pipe);
        let mut written = 0;
        let mut rest = Vec::new();
        for ((hash, es), renamed) in hashes.into_iter().zip(renamed) {
            if renamed == 1 {
                written += es.len() as u64;
            } else {
                rest.push((hash, es));
            }
        }
        Ok((written, rest))
    }

    /// Runs [`SET_ENTRIES`] over hashes in chunks of about [`CHUNK`]
    /// entries, sent together; returns the entries set and the hashes
    /// that did not exist, or `None` if a warm found the marker changed.
    async fn set_entries(
        &self,
        model: &CachedModel,
        mode: SetMode,
        version: &str,
        hashes: &[(String, Vec<&Entry>)],
    ) -> Result<Option<(u64, u64)>, CacheError> {
        let (m, ttl, now) = (self.marker(&model.name), ms(model.ttl), now_ms());
        let now = format!("{now:0w$}", w = EXPIRY_WIDTH);
        let mut calls = Vec::new();
        let mut call: Option<(redis::ScriptInvocation<'_>, usize)> = None;
        for (hash, es) in hashes {
            for part in es.chunks(CHUNK) {
                let (inv, n) = call.get_or_insert_with(|| {
                    let mut inv = self.set_entries.prepare_invoke();
                    inv.key(&m)
                        .arg(mode.as_str())
                        .arg(version)
                        .arg(ttl)
                        .arg(&now)
                        .arg(Layout::of(model.key_type).as_str());
                    (inv, 0)
                });
                inv.key(hash).arg(part.len());
                for (k, value) in part.iter().copied() {
                    inv.arg(k).arg(&value[..]);
                }
                *n += part.len();
                if *n >= CHUNK {
                    calls.extend(call.take().map(|(inv, _)| inv));
                }
            }
        }
        calls.extend(call.map(|(inv, _)| inv));
        let done = futures_util::future::try_join_all(
            calls
                .iter()
                .map(|inv| self.call(async |c| inv.invoke_async::<(i64, u64)>(c).await)),
        )
        .await?;
        if done.iter().any(|(set, _)| *set < 0) {
            return Ok(None);
        }
        Ok(Some(done.iter().fold((0, 0), |(s, f), (set, fresh)| {
            (s + *set as u64, f + fresh)
        })))
    }

    /// Sets rows that are absent or dead, unless the model was flushed
    /// meanwhile.
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
        let entries: Vec<Entry> = rows
            .iter()
            .map(|(k, json)| (k.clone(), entry(version, model.ttl, json).into_bytes()))
            .collect();
        let hashes = self.by_place(model, entries.iter());
        // `None`: flushed meanwhile, and what was read is dead already.
        self.set_entries(
            model,
            SetMode::Warm,
            marker.as_deref().unwrap_or(""),
            &hashes,
        )
        .await
        .map(|_| ())
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

    /// Entries of a model now in Redis (live or not), by scanning its keys
    /// and hashes (whichever layout its key had).
    pub async fn count(&self, model: &str) -> Result<u64, CacheError> {
        let pattern = format!("{}:{model}:*", self.prefix);
        let mut conn = self.conn.clone();
        let count = async {
            let mut n = 0u64;
            for kind in ["string", "hash"] {
                let mut cursor = 0u64;
                loop {
                    let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(5000)
                        .arg("TYPE")
                        .arg(kind)
                        .query_async(&mut conn)
                        .await?;
                    if kind == "string" {
                        n += found.len() as u64;
                    } else if !found.is_empty() {
                        let mut lengths = redis::pipe();
                        for h in &found {
                            lengths.hlen(h);
                        }
                        let lengths: Vec<u64> = lengths.query_async(&mut conn).await?;
                        n += lengths.iter().sum::<u64>();
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Ok::<u64, redis::RedisError>(n)
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

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_pipeline::model::CacheStrategy;
    use nexus_pipeline::types::ColumnType;

    #[test]
    fn a_hash_holds_the_keys_that_differ_in_their_last_two_characters() {
        let hash = |key| place("p", "m", Layout::Hashes, key);
        assert_eq!(hash("12345"), "p:m:123..");
        assert_eq!(hash("12300"), "p:m:123..");
        assert_eq!(hash("12400"), "p:m:124..");
        assert_eq!(hash("7"), "p:m:..");
        assert_eq!(hash("-7"), "p:m:..");
        assert_eq!(hash(""), "p:m:..");
        // Characters, not bytes: a key never splits inside one.
        assert_eq!(hash("naïveté"), "p:m:naïve..");
        assert_eq!(hash("日本語"), "p:m:日..");
        // Integer keys share hashes; text and uuid keys have keys of their own.
        assert_eq!(Layout::of(ColumnType::Int), Layout::Hashes);
        assert_eq!(Layout::of(ColumnType::Text), Layout::Keys);
        assert_eq!(Layout::of(ColumnType::Uuid), Layout::Keys);
        assert_eq!(place("p", "m", Layout::Keys, "ab:c"), "p:m:ab:c");
    }

    #[test]
    fn an_entry_reads_back_as_written_and_dies_at_its_expiry() {
        let e = entry(42, Duration::from_secs(60), r#"{"id":1}"#);
        let s = Stored::parse(&e).unwrap();
        assert_eq!((s.version, s.json), (42, r#"{"id":1}"#));
        assert!(!s.expired());
        assert_eq!(e.find('{'), Some(VERSION_WIDTH + 1 + EXPIRY_WIDTH + 1));
        let seen = |entry: String, marker: Option<&str>| Seen {
            entry: Some(entry),
            marker: marker.map(str::to_string),
        };
        assert_eq!(seen(e.clone(), None).live().as_deref(), Some(r#"{"id":1}"#));
        assert_eq!(seen(e.clone(), Some("43")).live(), None, "flushed");
        assert_eq!(seen(e.clone(), Some("43")).fill_version(), 43);
        let old = format!("{:019}|{:013}|{{}}", 42, now_ms() - 1);
        assert_eq!(seen(old.clone(), None).live(), None, "expired");
        assert_eq!(seen(old, None).fill_version(), 42);
        let tombstone = head(42, Duration::from_secs(60));
        assert_eq!(seen(tombstone, None).live(), None);
    }

    /// A tier on the test Redis under a prefix of its own, deleted after.
    struct Scratch {
        tier: RedisTier,
        prefix: String,
        url: String,
    }

    impl Scratch {
        fn new() -> Scratch {
            let url = std::env::var("NEXUS_TEST_REDIS")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let prefix = format!("nexus_u_{}", uuid::Uuid::new_v4().simple());
            let tier = RedisTier::new(
                &url,
                None,
                &prefix,
                Duration::from_secs(5),
                Arc::new(Stats::default()),
            )
            .unwrap();
            Scratch { tier, prefix, url }
        }

        async fn version(&self, model: &CachedModel, key: i64) -> Option<(i64, String)> {
            let seen = self.tier.read(model, &key.to_string()).await.unwrap();
            let e = Stored::parse(seen.entry.as_deref()?)?;
            Some((e.version, e.json.to_string()))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let Ok(mut c) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
            else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut c)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut c);
            }
        }
    }

    /// A model of each layout.
    fn models() -> [CachedModel; 2] {
        [ColumnType::BigInt, ColumnType::Text].map(|key_type| CachedModel {
            name: "m".into(),
            strategy: CacheStrategy::WriteThrough,
            ttl: Duration::from_secs(600),
            table: "t".into(),
            key_column: "id".into(),
            key_type,
        })
    }

    fn entries(keys: impl IntoIterator<Item = i64>, version: i64, tag: &str) -> Vec<Entry> {
        keys.into_iter()
            .map(|k| {
                let json = format!(r#"{{"id":{k},"tag":"{tag}"}}"#);
                (
                    k.to_string(),
                    entry(version, Duration::from_secs(600), &json).into_bytes(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn the_later_version_wins_whichever_way_a_write_goes() {
        for m in models() {
            later_version_wins(&m).await;
        }
    }

    async fn later_version_wins(m: &CachedModel) {
        let s = Scratch::new();
        let absent_last = |s: &Scratch| s.tier.absent_last.lock().unwrap().get("m").copied();
        // Into absent hashes: renamed into place.
        assert_eq!(
            s.tier
                .write(m, 5, &entries(100..=150, 5, "a"))
                .await
                .unwrap(),
            51
        );
        assert_eq!(absent_last(&s), Some(true));
        // An older write over them and beyond: the hash exists, so the
        // script decides key by key; the newer entries stay.
        let n = s
            .tier
            .write(m, 3, &entries(100..=199, 3, "b"))
            .await
            .unwrap();
        assert_eq!(n, 49);
        assert_eq!(
            s.version(m, 120).await,
            Some((5, r#"{"id":120,"tag":"a"}"#.into()))
        );
        assert_eq!(
            s.version(m, 170).await,
            Some((3, r#"{"id":170,"tag":"b"}"#.into()))
        );
        assert_eq!(absent_last(&s), Some(false));
        // Straight to the script now; a newer write replaces.
        assert_eq!(
            s.tier
                .write(m, 7, &entries(100..=105, 7, "c"))
                .await
                .unwrap(),
            6
        );
        assert_eq!(s.version(m, 105).await.map(|v| v.0), Some(7));
        assert_eq!(s.version(m, 106).await.map(|v| v.0), Some(5));
        // The script finds new hashes absent: renaming is tried again.
        let n = s
            .tier
            .write(m, 8, &entries(1000..=1299, 8, "d"))
            .await
            .unwrap();
        assert_eq!(n, 300);
        assert_eq!(absent_last(&s), Some(true));
        // A tombstone of a newer version kills an entry; an older does not.
        let tomb = |k: i64, v: i64| (k.to_string(), head(v, m.ttl).into_bytes());
        s.tier.write(m, 9, &[tomb(1000, 9)]).await.unwrap();
        s.tier.write(m, 1, &[tomb(1001, 1)]).await.unwrap();
        assert_eq!(s.version(m, 1000).await, Some((9, String::new())));
        assert_eq!(s.version(m, 1001).await.map(|v| v.0), Some(8));
        assert_eq!(s.tier.count("m").await.unwrap(), 100 + 300);
    }

    #[tokio::test]
    async fn reads_fill_and_warm_only_what_they_saw() {
        for m in models() {
            fill_and_warm(&m).await;
        }
    }

    async fn fill_and_warm(m: &CachedModel) {
        let s = Scratch::new();
        s.tier.write(m, 5, &entries(1..=3, 5, "a")).await.unwrap();
        // A fill after a read that saw nothing: taken.
        let seen = s.tier.read(m, "42").await.unwrap();
        assert_eq!(seen.live(), None);
        s.tier.fill(m, "42", &seen, r#"{"id":42}"#).await.unwrap();
        assert_eq!(
            s.tier.read(m, "42").await.unwrap().live().as_deref(),
            Some(r#"{"id":42}"#)
        );
        // A fill that raced a write: the write's entry stays.
        let seen = s.tier.read(m, "2").await.unwrap();
        s.tier.write(m, 6, &entries([2], 6, "b")).await.unwrap();
        s.tier
            .fill(m, "2", &seen, r#"{"stale":true}"#)
            .await
            .unwrap();
        assert_eq!(s.version(m, 2).await.map(|v| v.0), Some(6));
        // Flushed, then warmed: dead entries are replaced, at the marker's
        // version; a flush during the warm would have stopped it.
        s.tier.flush("m", 10).await.unwrap();
        assert_eq!(s.tier.read(m, "1").await.unwrap().live(), None);
        s.tier
            .warm(m, &[("1".into(), r#"{"id":1,"w":1}"#.into())])
            .await
            .unwrap();
        assert_eq!(
            s.tier.read(m, "1").await.unwrap().live().as_deref(),
            Some(r#"{"id":1,"w":1}"#)
        );
        assert_eq!(s.version(m, 1).await.map(|v| v.0), Some(10));
    }
}
