//! The record cache against real Redis and PostgreSQL: each strategy and
//! its TTL, read-after-upsert with parallel writers, Redis stopped in the
//! middle of a load, the local tier alone, the records route's `X-Cache`
//! values and the `cache` commands. Each test has its own database and its
//! own Redis key prefix (or its own Redis server).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::redis::{PrivateRedis, TestRedis};
use common::server::{ADMIN_PW, Server, assert_problem};
use common::{Run, TestDb, run, wait_for};
use nexus_loaders::cache::Stored;
use serde_json::Value;

/// Models `wt`, `wb`, `ca` (the three strategies), `brief` (a 2 s TTL) and
/// `plain` (not cached): `id bigint` key, `name text`, 50 rows a batch;
/// `tk`: `wt` with a `text` key.
fn models(db: &TestDb) -> PathBuf {
    let mut toml = String::new();
    for (name, cache, warm) in [
        (
            "wt",
            "{ strategy = \"write_through\", ttl = \"30m\" }",
            true,
        ),
        (
            "wb",
            "{ strategy = \"write_behind\", ttl = \"30m\" }",
            false,
        ),
        ("ca", "{ strategy = \"cache_aside\", ttl = \"30m\" }", false),
        (
            "brief",
            "{ strategy = \"write_through\", ttl = \"2s\" }",
            false,
        ),
        ("plain", "{ strategy = \"none\" }", false),
        (
            "tk",
            "{ strategy = \"write_through\", ttl = \"30m\" }",
            false,
        ),
    ] {
        let key_type = if name == "tk" { "text" } else { "bigint" };
        toml.push_str(&format!(
            "[models.{name}]\ntable = \"{name}\"\nkey = [\"id\"]\nbatch_size = 50\ncache = {cache}\nwarm = {warm}\n\
             [[models.{name}.columns]]\nname = \"id\"\ntype = \"{key_type}\"\n\
             [[models.{name}.columns]]\nname = \"name\"\ntype = \"text\"\n"
        ));
    }
    db.file("cache-models.toml", toml)
}

/// `id,name` rows `tag-id` for the ids given, in that order.
fn rows(ids: impl IntoIterator<Item = i64>, tag: &str) -> String {
    let mut s = String::from("id,name\n");
    for i in ids {
        s.push_str(&format!("{i},{tag}-{i}\n"));
    }
    s
}

/// `nexus load` in its own process with extra settings.
fn load(db: &TestDb, env: &[(&str, &str)], model: &str, mode: &str, csv: &str) -> Run {
    let file = db.file(&format!("{model}-{}.csv", uuid::Uuid::new_v4()), csv);
    let mut c = db.nexus();
    c.env("NEXUS_MODELS", models(db));
    for (k, v) in env {
        c.env(k, v);
    }
    run(c.args([
        "load",
        "--model",
        model,
        "--mode",
        mode,
        file.to_str().unwrap(),
    ]))
}

fn server(db: &TestDb, env: &[(&str, &str)]) -> (Server, String) {
    let m = models(db);
    let mut all = vec![
        ("NEXUS_MODELS", m.to_str().unwrap()),
        ("NEXUS_RATE_LIMIT", "1000000"),
        ("NEXUS_RATE_BURST", "100000"),
        // Warming at startup races with what tests read; one test turns it on.
        ("NEXUS_CACHE_WARM_ROWS", "0"),
    ];
    all.extend_from_slice(env);
    let s = Server::start(db, &all);
    let (token, _) = s.tokens("admin", ADMIN_PW);
    (s, token)
}

/// The Redis settings and one more.
fn with<'a>(redis: &'a TestRedis, extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut env = redis.env().to_vec();
    env.push(extra);
    env
}

/// A record through the route: (X-Cache, row).
fn record(s: &Server, token: &str, model: &str, key: &str) -> (String, Value) {
    let r = s.get(&format!("/api/v2/records/{model}/{key}"), token);
    assert_eq!(r.status(), 200, "{model}/{key}");
    let tier = r.headers()["x-cache"].to_str().unwrap().to_string();
    (tier, r.json().unwrap())
}

/// Uploads a file as a job on `s` and waits until it succeeded.
fn job(s: &Server, token: &str, model: &str, mode: &str, csv: String) {
    let r = s
        .http
        .post(s.url(&format!("/api/v2/jobs?model={model}&mode={mode}")))
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the job to finish", Duration::from_secs(120), || {
        let j: Value = s.get(&format!("/api/v2/jobs/{id}"), token).json().unwrap();
        assert_ne!(j["status"], "failed", "{j}");
        j["status"] == "succeeded"
    });
}

fn entry(c: &mut redis::Connection, path: &str) -> Option<String> {
    common::redis::cached(c, path)
}

/// Milliseconds until a stored entry expires.
fn expires_in(entry: &str) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    Stored::parse(entry).unwrap().expires as i64 - now
}

/// The TTL (ms) of the Redis hash that holds `prefix:model:key` (the test
/// models' keys are integers).
fn hash_ttl(c: &mut redis::Connection, path: &str) -> i64 {
    let mut parts = path.splitn(3, ':');
    let (p, m, k) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let layout = nexus_loaders::cache::Layout::Hashes;
    redis::cmd("PTTL")
        .arg(nexus_loaders::cache::place(p, m, layout, k))
        .query(c)
        .unwrap()
}

fn pending(db: &TestDb) -> i64 {
    db.sql("SELECT count(*) FROM nexus.job_batches WHERE cache_pending")[0].get(0)
}

#[test]
fn write_through_fills_both_tiers_with_the_model_ttl() {
    let db = TestDb::new();
    let redis = TestRedis::new();
    let (s, t) = server(&db, &redis.env());
    let r = load(&db, &redis.env(), "wt", "append", &rows(1..=120, "a"));
    assert_eq!(r.code, 0, "{r:?}");
    let mut c = redis.connection();
    let p = &redis.prefix;
    assert_eq!(common::redis::cached_count(&mut c, p, "wt"), 120);
    let e = entry(&mut c, &format!("{p}:wt:7")).unwrap();
    let stored = Stored::parse(&e).unwrap();
    assert!(stored.version > 0, "{e}");
    assert_eq!(
        serde_json::from_str::<Value>(stored.json).unwrap()["name"],
        "a-7"
    );
    // The entry's own expiry, and its hash's TTL at least as long.
    let ttl = expires_in(&e);
    assert!(ttl > 1_700_000 && ttl <= 1_800_000, "ttl {ttl}");
    assert!(hash_ttl(&mut c, &format!("{p}:wt:7")) >= ttl - 1_000);

    // Redis first (the server's memory is empty), then the local tier.
    assert_eq!(
        record(&s, &t, "wt", "7"),
        ("redis".into(), serde_json::json!({"id": 7, "name": "a-7"}))
    );
    assert_eq!(record(&s, &t, "wt", "7").0, "local");
    // Keys are read as their type: 007 is 7.
    assert_eq!(record(&s, &t, "wt", "007").0, "local");
    assert_problem(s.get("/api/v2/records/wt/100000", &t), 404);
    assert_problem(s.get("/api/v2/records/wt/seven", &t), 400);
    assert_problem(s.get("/api/v2/records/nope/7", &t), 404);

    // A short TTL expires in Redis.
    assert_eq!(
        load(&db, &redis.env(), "brief", "append", &rows(1..=3, "b")).code,
        0
    );
    let ttl = expires_in(&entry(&mut c, &format!("{p}:brief:1")).unwrap());
    assert!(ttl > 0 && ttl <= 2000, "ttl {ttl}");
    assert!(hash_ttl(&mut c, &format!("{p}:brief:1")) <= 2000);
    wait_for("the short TTL to expire", Duration::from_secs(10), || {
        entry(&mut c, &format!("{p}:brief:1")).is_none()
    });

    // A model without a cache is read straight from its table.
    assert_eq!(
        load(&db, &redis.env(), "plain", "append", &rows(1..=2, "p")).code,
        0
    );
    assert_eq!(record(&s, &t, "plain", "1").0, "miss");
    assert_eq!(record(&s, &t, "plain", "1").0, "miss");
    assert!(redis.keys().iter().all(|k| !k.contains(":plain:")));
}

#[test]
fn text_keys_have_redis_keys_of_their_own() {
    let db = TestDb::new();
    let redis = TestRedis::new();
    let (s, t) = server(&db, &redis.env());
    let r = load(&db, &redis.env(), "tk", "append", &rows(1..=120, "a"));
    assert_eq!(r.code, 0, "{r:?}");
    let mut c = redis.connection();
    let p = &redis.prefix;
    assert_eq!(common::redis::cached_count(&mut c, p, "tk"), 120);
    let own: Option<String> = redis::cmd("GET")
        .arg(format!("{p}:tk:7"))
        .query(&mut c)
        .unwrap();
    let own = own.expect("key 7 as a Redis key of its own");
    assert_eq!(
        Stored::parse(&own).unwrap().json,
        r#"{"id":"7","name":"a-7"}"#
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}:tk:7"))
        .query(&mut c)
        .unwrap();
    assert!(ttl > 1_700_000 && ttl <= 1_800_000, "ttl {ttl}");
    assert_eq!(
        record(&s, &t, "tk", "7"),
        (
            "redis".into(),
            serde_json::json!({"id": "7", "name": "a-7"})
        )
    );
    // A reload: every key is there already, so the versions decide.
    let r = load(&db, &redis.env(), "tk", "upsert", &rows(1..=120, "b"));
    assert_eq!(r.code, 0, "{r:?}");
    for k in [1, 60, 120] {
        let e = entry(&mut c, &format!("{p}:tk:{k}")).unwrap();
        assert!(e.ends_with(&format!("\"b-{k}\"}}")), "key {k}: {e}");
    }
    wait_for(
        "the server to hear of the reload",
        Duration::from_secs(5),
        || record(&s, &t, "tk", "7").1["name"] == "b-7",
    );
    assert_eq!(common::redis::cached_count(&mut c, p, "tk"), 120);
}

#[test]
fn read_after_upsert_is_never_stale() {
    let db = TestDb::new();
    let redis = TestRedis::new();
    let (s, t) = server(&db, &with(&redis, ("NEXUS_COPY_CONNECTIONS", "3")));
    job(&s, &t, "wt", "append", rows(1..=200, "a"));
    for k in 1..=200 {
        assert_eq!(
            record(&s, &t, "wt", &k.to_string()).1["name"],
            format!("a-{k}")
        );
    }
    // Every key twice in one file, in different batches written by parallel
    // connections: the later row wins in the table and in both tiers.
    let mut csv = rows(1..=200, "b");
    csv.push_str(&rows(1..=200, "c")["id,name\n".len()..]);
    job(&s, &t, "wt", "upsert", csv);
    // The servers' memory drops the keys by notification, sent once Redis
    // has the new rows (before the job ends); the listener may take a moment.
    wait_for("the notifications", Duration::from_secs(5), || {
        record(&s, &t, "wt", "200").1["name"] == "c-200"
    });
    let mut c = redis.connection();
    for k in 1..=200 {
        let (_, row) = record(&s, &t, "wt", &k.to_string());
        assert_eq!(row["name"], format!("c-{k}"), "key {k}");
        let e = entry(&mut c, &format!("{}:wt:{k}", redis.prefix)).unwrap();
        assert!(e.ends_with(&format!("\"c-{k}\"}}")), "key {k}: {e}");
    }
    // Another process upserts: Redis is written before it exits; this
    // server's memory hears of it by notification.
    let r = load(&db, &redis.env(), "wt", "upsert", &rows(1..=200, "d"));
    assert_eq!(r.code, 0, "{r:?}");
    for k in 1..=200 {
        let e = entry(&mut c, &format!("{}:wt:{k}", redis.prefix)).unwrap();
        assert!(e.ends_with(&format!("\"d-{k}\"}}")), "key {k}: {e}");
    }
    wait_for(
        "the server to hear of the upsert",
        Duration::from_secs(5),
        || record(&s, &t, "wt", "200").1["name"] == "d-200",
    );
    for k in 1..=200 {
        assert_eq!(
            record(&s, &t, "wt", &k.to_string()).1["name"],
            format!("d-{k}")
        );
    }
}

#[test]
fn write_behind_writes_later_and_a_full_queue_invalidates() {
    let db = TestDb::new();
    let redis = TestRedis::new();
    let p = redis.prefix.clone();
    let mut c = redis.connection();
    {
        let (s, t) = server(&db, &redis.env());
        job(&s, &t, "wb", "append", rows(1..=300, "a"));
        wait_for(
            "write-behind rows in Redis",
            Duration::from_secs(10),
            || {
                (1..=300).all(|k| {
                    entry(&mut c, &format!("{p}:wb:{k}"))
                        .is_some_and(|e| e.ends_with(&format!("\"a-{k}\"}}")))
                })
            },
        );
        assert_eq!(record(&s, &t, "wb", "9").1["name"], "a-9");
    }
    // A queue smaller than a batch: every batch overflows. The rows are not
    // written; the model's older entries are killed instead, and counted.
    let (s, t) = server(&db, &with(&redis, ("NEXUS_CACHE_WRITE_BEHIND", "10")));
    job(&s, &t, "wb", "upsert", rows(1..=300, "b"));
    let metrics = s.metrics();
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nexus_cache_write_behind_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert_eq!(dropped, 300.0, "{metrics}");
    wait_for(
        "the pending writes to settle",
        Duration::from_secs(10),
        || pending(&db) == 0,
    );
    assert!(entry(&mut c, &format!("{p}:~flush:wb")).is_some());
    for k in [1, 150, 300] {
        let (tier, row) = record(&s, &t, "wb", &k.to_string());
        assert_eq!(row["name"], format!("b-{k}"), "key {k} from {tier}");
    }
}

#[test]
fn cache_aside_loads_leave_tombstones_and_reads_fill() {
    let db = TestDb::new();
    let redis = TestRedis::new();
    let p = redis.prefix.clone();
    let mut c = redis.connection();
    let (s, t) = server(&db, &redis.env());
    assert_eq!(
        load(&db, &redis.env(), "ca", "append", &rows(1..=50, "a")).code,
        0
    );
    let e = entry(&mut c, &format!("{p}:ca:5")).unwrap();
    assert!(e.ends_with('|') && e.len() > 1, "a tombstone: {e}");
    assert_eq!(
        record(&s, &t, "ca", "5"),
        ("miss".into(), serde_json::json!({"id": 5, "name": "a-5"}))
    );
    assert_eq!(record(&s, &t, "ca", "5").0, "local");
    let e = entry(&mut c, &format!("{p}:ca:5")).unwrap();
    assert!(e.ends_with("\"a-5\"}"), "filled by the read: {e}");
    // A server with nothing in memory finds it in Redis.
    let (s2, t2) = server(&db, &redis.env());
    assert_eq!(record(&s2, &t2, "ca", "5").0, "redis");

    assert_eq!(
        load(&db, &redis.env(), "ca", "upsert", &rows(1..=50, "b")).code,
        0
    );
    let e = entry(&mut c, &format!("{p}:ca:5")).unwrap();
    assert!(e.ends_with('|'), "a tombstone again: {e}");
    wait_for("the servers to drop key 5", Duration::from_secs(5), || {
        record(&s, &t, "ca", "5").1["name"] == "b-5"
            && record(&s2, &t2, "ca", "5").1["name"] == "b-5"
    });
}

#[test]
fn redis_stopped_mid_load_the_load_completes_and_the_cache_recovers() {
    let db = TestDb::new();
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("NEXUS_REDIS_PREFIX", "nx"),
        ("NEXUS_REDIS_TIMEOUT", "100ms"),
    ];
    assert_eq!(
        load(&db, &env, "wt", "append", &rows(1..=2000, "a")).code,
        0
    );
    let mut c = redis.connection();
    assert!(entry(&mut c, "nx:wt:7").unwrap().ends_with("\"a-7\"}"));
    // Redis keeps these old rows across its restart.
    let _: String = redis::cmd("SAVE").query(&mut c).unwrap();
    drop(c);

    // 40,000 rows (every key 20 times) in 800 batches; Redis dies early on.
    let mut csv = String::from("id,name\n");
    for round in 0..20 {
        csv.push_str(&rows(1..=2000, &format!("b{round}"))["id,name\n".len()..]);
    }
    let file = db.file("upsert.csv", &csv);
    let mut cmd = db.nexus();
    cmd.env("NEXUS_MODELS", models(&db));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .args([
            "load",
            "--model",
            "wt",
            "--mode",
            "upsert",
            file.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the upsert to commit some batches",
        Duration::from_secs(60),
        || {
            db.sql("SELECT count(*) FROM nexus.job_batches b JOIN nexus.jobs j ON j.id = b.job_id WHERE j.mode = 'upsert'")[0]
            .get::<_, i64>(0)
            > 5
        },
    );
    redis.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(db.count("wt"), 2000);
    assert_eq!(db.count("wt WHERE name LIKE 'b19-%'"), 2000);
    assert!(
        pending(&db) > 0,
        "batches whose Redis write failed stay pending"
    );

    // Redis comes back with its old rows; a server repairs the cache.
    redis.restart();
    let (s, t) = server(&db, &env);
    wait_for("the cache repair", Duration::from_secs(15), || {
        pending(&db) == 0
    });
    let mut c = redis.connection();
    assert!(entry(&mut c, "nx:~flush:wt").is_some());
    assert!(
        entry(&mut c, "nx:wt:7").unwrap().ends_with("\"a-7\"}"),
        "the old row is still there, dead"
    );
    assert_eq!(
        record(&s, &t, "wt", "7"),
        ("miss".into(), serde_json::json!({"id": 7, "name": "b19-7"}))
    );
    let (s2, t2) = server(&db, &env);
    assert_eq!(
        record(&s2, &t2, "wt", "7"),
        (
            "redis".into(),
            serde_json::json!({"id": 7, "name": "b19-7"})
        )
    );
}

#[test]
fn the_local_tier_alone() {
    let db = TestDb::new();
    let (s, t) = server(&db, &[]);
    // The local tier is filled by reads: loads only drop what they change.
    job(&s, &t, "wt", "append", rows(1..=100, "a"));
    assert_eq!(
        record(&s, &t, "wt", "5"),
        ("miss".into(), serde_json::json!({"id": 5, "name": "a-5"}))
    );
    assert_eq!(record(&s, &t, "wt", "5").0, "local");
    job(&s, &t, "ca", "append", rows(1..=10, "a"));
    assert_eq!(record(&s, &t, "ca", "5").0, "miss");
    assert_eq!(record(&s, &t, "ca", "5").0, "local");
    // This server's own load of a key it holds drops it too.
    job(&s, &t, "wt", "upsert", rows(5..=5, "z"));
    wait_for("the server to drop key 5", Duration::from_secs(5), || {
        record(&s, &t, "wt", "5").1["name"] == "z-5"
    });
    // Another process changes rows: the notification drops them here.
    assert_eq!(load(&db, &[], "wt", "upsert", &rows(1..=100, "b")).code, 0);
    wait_for(
        "the server to hear of the upsert",
        Duration::from_secs(5),
        || record(&s, &t, "wt", "5").1["name"] == "b-5",
    );
    let metrics = s.metrics();
    assert!(
        metrics.contains("nexus_cache_hits_total{model=\"wt\",tier=\"local\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nexus_cache_misses_total{model=\"ca\"}"),
        "{metrics}"
    );
}

#[test]
fn cache_commands_warm_invalidate_and_report() {
    let db = TestDb::new();
    let redis = TestRedis::new();
    let p = redis.prefix.clone();
    let m = models(&db);
    let nexus = |args: &[&str], with_redis: bool| {
        let mut c = db.nexus();
        c.env("NEXUS_MODELS", &m);
        if with_redis {
            c.envs(redis.env());
        }
        run(c.args(args))
    };
    assert_eq!(
        load(&db, &redis.env(), "wt", "append", &rows(1..=30, "a")).code,
        0
    );
    let mut c = redis.connection();

    let r = nexus(
        &["cache", "invalidate", "--model", "wt", "--key", "007"],
        true,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(entry(&mut c, &format!("{p}:wt:7")).unwrap().ends_with('|'));

    let r = nexus(&["cache", "invalidate", "--model", "wt"], true);
    assert_eq!(r.code, 0, "{r:?}");
    let flushed_at: i64 = entry(&mut c, &format!("{p}:~flush:wt"))
        .unwrap()
        .parse()
        .unwrap();
    let (s, t) = server(&db, &redis.env());
    assert_eq!(record(&s, &t, "wt", "3").0, "miss", "flushed");

    let r = nexus(&["cache", "warm", "--model", "wt"], true);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("wt: 30 rows warmed"), "{r:?}");
    let (s2, t2) = server(&db, &redis.env());
    assert_eq!(record(&s2, &t2, "wt", "9").0, "redis", "warmed");

    // A server warms the models marked `warm` when it starts.
    let r = nexus(&["cache", "invalidate", "--model", "wt"], true);
    assert_eq!(r.code, 0, "{r:?}");
    let live = |c: &mut redis::Connection, k: i64| {
        let marker: i64 = entry(c, &format!("{p}:~flush:wt"))
            .unwrap()
            .parse()
            .unwrap();
        entry(c, &format!("{p}:wt:{k}"))
            .and_then(|e| Stored::parse(&e).map(|s| (s.version, s.json.len())))
            .is_some_and(|(v, len)| v >= marker && len > 0)
    };
    assert!(!live(&mut c, 11));
    let _warming = server(&db, &with(&redis, ("NEXUS_CACHE_WARM_ROWS", "1000")));
    wait_for("the startup warming", Duration::from_secs(10), || {
        live(&mut c, 11)
    });
    assert!(flushed_at > 0);

    wait_for("the server's figures", Duration::from_secs(10), || {
        let r = nexus(&["cache", "stats", "--json"], true);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        let wt = v["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "wt")
            .unwrap()
            .clone();
        v["redis"] == "up" && wt["redis_entries"] == 30 && wt["misses"].as_i64().unwrap() >= 1
    });
    let r = nexus(&["cache", "stats"], true);
    assert!(r.stdout.contains("write_through"), "{r:?}");

    // Mistakes are usage errors.
    assert_eq!(nexus(&["cache", "warm", "--model", "wt"], false).code, 2);
    assert_eq!(
        nexus(&["cache", "invalidate", "--model", "plain"], true).code,
        2
    );
    assert_eq!(
        nexus(
            &["cache", "invalidate", "--model", "wt", "--key", "x"],
            true
        )
        .code,
        2
    );
    assert_eq!(
        nexus(&["cache", "invalidate", "--model", "nope"], true).code,
        2
    );
}

/// A model of every type, write-through, its key `id`; 40 rows a batch.
const EVERY_TYPE: &str = r#"
[models.every]
table = "every"
key = ["id"]
batch_size = 40
cache = { strategy = "write_through", ttl = "30m" }
[[models.every.columns]]
name = "id"
type = "bigint"
[[models.every.columns]]
name = "small"
type = "smallint"
[[models.every.columns]]
name = "n4"
type = "int"
[[models.every.columns]]
name = "amount"
type = "numeric(12,2)"
[[models.every.columns]]
name = "ratio"
type = "numeric"
[[models.every.columns]]
name = "r4"
type = "real"
[[models.every.columns]]
name = "r8"
type = "double"
[[models.every.columns]]
name = "note"
type = "text"
[[models.every.columns]]
name = "code"
type = "varchar(12)"
[[models.every.columns]]
name = "cc"
type = "char(3)"
[[models.every.columns]]
name = "flag"
type = "boolean"
[[models.every.columns]]
name = "day"
type = "date"
[[models.every.columns]]
name = "at"
type = "timestamp"
[[models.every.columns]]
name = "at_tz"
type = "timestamptz"
[[models.every.columns]]
name = "ext"
type = "uuid"
[[models.every.columns]]
name = "doc"
type = "jsonb"
[[models.every.columns]]
name = "raw"
type = "bytea"
"#;

/// A CSV field, quoted unless empty (an empty field is NULL).
fn quoted(v: &str) -> String {
    if v.is_empty() {
        return String::new();
    }
    format!("\"{}\"", v.replace('"', "\"\""))
}

const EVERY_HEADER: &str =
    "id,small,n4,amount,ratio,r4,r8,note,code,cc,flag,day,at,at_tz,ext,doc,raw\n";

/// `every` CSV records (no header) for these ids, values varied by id and
/// `tag`; an empty field is NULL.
fn every_lines(ids: impl IntoIterator<Item = i64>, tag: &str) -> String {
    let pick = |i: i64, items: &[&str]| items[i as usize % items.len()].to_string();
    let mut s = String::new();
    for i in ids {
        let fields = [
            i.to_string(),
            pick(i, &["-32768", "7", "", "32767"]),
            (i * 7919 - 100_000).to_string(),
            pick(i, &["0", "-12.5", "9999999999.99", "1.005", ""]),
            pick(
                i,
                &[
                    "1e2",
                    "-0.000",
                    "NaN",
                    "3.14159265358979323846",
                    "-7",
                    "Infinity",
                ],
            ),
            pick(
                i,
                &[
                    "4.46e9",
                    "1.5",
                    "-0",
                    "NaN",
                    "1e-7",
                    "25540.5625",
                    "Infinity",
                    "3.4e38",
                ],
            ),
            pick(
                i,
                &[
                    "1.28666e21",
                    "0.1",
                    "-1e-300",
                    "-Infinity",
                    "123456789012345.6",
                    "2.5",
                ],
            ),
            quoted(&format!(
                "{tag} {}",
                pick(
                    i,
                    &[
                        "plain",
                        "a \"quote\"",
                        "back\\slash",
                        "line\nbreak",
                        "tab\there",
                        "é😀",
                        "\u{1}ctl"
                    ]
                )
            )),
            pick(i, &["abc", "", "x y z", "twelve chars"]),
            pick(i, &["a", "ab", "abc", "é"]),
            pick(i, &["t", "f", "yes", "off", ""]),
            pick(
                i,
                &[
                    "2024-02-29",
                    "0044-03-15 BC",
                    "infinity",
                    "1999-12-31",
                    "5874897-12-31",
                ],
            ),
            pick(
                i,
                &[
                    "2024-01-01 12:00:00",
                    "2000-01-01 00:00:00.5",
                    "1999-12-31 23:59:59.999999",
                    "-infinity",
                    "0001-01-01 00:00:00 BC",
                ],
            ),
            pick(
                i,
                &[
                    "2024-01-01T12:00:00+05:30",
                    "2000-01-01 00:00:00.000001Z",
                    "1970-01-01 00:00:00-08",
                    "infinity",
                ],
            ),
            format!("00000000-0000-4000-8000-{i:012}"),
            quoted(&pick(
                i,
                &[
                    r#"{"b": 1, "a": [1, 2.50, {}], "b": "x\u00e9"}"#,
                    "[]",
                    r#""text""#,
                    "1e3",
                    r#"{"aa": null, "a": {"c": true, "bb": -0.0}}"#,
                    "",
                ],
            )),
            pick(i, &["\\x0001ff", "\\x", "", "\\xdeadbeef"]),
        ];
        s.push_str(&fields.join(","));
        s.push('\n');
    }
    s
}

/// Asserts that every `every` key of the ids `from..=to` holds what
/// PostgreSQL prints (see [`every_mismatches`]).
fn assert_every_cached(db: &TestDb, redis: &TestRedis, ids: (i64, i64), dropped: &[&str]) {
    let wrong = every_mismatches(db, redis, ids, dropped);
    assert!(
        wrong.is_empty(),
        "{} differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Every `every` key in Redis against PostgreSQL's `row_to_json` of its row
/// (in a session with Nexus's pinned output settings): the keys whose
/// entries differ, with what PostgreSQL prints, of the ids `from..=to`.
/// The keys of `dropped` may hold a tombstone instead.
fn every_mismatches(
    db: &TestDb,
    redis: &TestRedis,
    (from, to): (i64, i64),
    dropped: &[&str],
) -> Vec<String> {
    let mut c = redis.connection();
    let mut wrong = Vec::new();
    let rows = db.sql_pinned(&format!(
        "SELECT id::text, row_to_json(t)::text FROM every t WHERE id BETWEEN {from} AND {to} ORDER BY id"
    ));
    for row in rows {
        let (id, want): (String, String) = (row.get(0), row.get(1));
        let got = entry(&mut c, &format!("{}:every:{id}", redis.prefix));
        let json = got.as_deref().and_then(Stored::parse).map(|s| s.json);
        if json == Some("") && dropped.contains(&id.as_str()) {
            continue;
        }
        if json != Some(want.as_str()) {
            wrong.push(format!("{id}: redis {got:?}\n   postgres {want}"));
        }
    }
    wrong
}

#[test]
fn cached_rows_are_what_row_to_json_prints_for_every_type() {
    let db = TestDb::new();
    let redis = TestRedis::new();
    let through = db.file("every.toml", EVERY_TYPE);
    // Write-behind keeping no batch rows: every row is read back in binary.
    let behind = db.file(
        "every-behind.toml",
        EVERY_TYPE.replace("write_through", "write_behind"),
    );
    let load_with = |models: &PathBuf, env: &[(&str, &str)], mode: &str, csv: String| {
        let file = db.file(&format!("every-{}.csv", uuid::Uuid::new_v4()), csv);
        let mut c = db.nexus();
        c.env("NEXUS_MODELS", models)
            .envs(redis.env())
            .envs(env.iter().copied());
        run(c.args([
            "load",
            "--model",
            "every",
            "--mode",
            mode,
            file.to_str().unwrap(),
        ]))
    };
    let load = |mode: &str, csv: String| load_with(&through, &[], mode, csv);
    // An append whose ids 5 and 77 come twice: the second rows are refused
    // (the primary key), the first ones stay.
    let csv = [
        EVERY_HEADER,
        &every_lines(1..=200, "first"),
        &every_lines([5, 77], "again"),
    ]
    .concat();
    let r = load("append", csv);
    assert_eq!(r.code, 0, "{r:?}");
    let rejects: Vec<String> = db
        .sql("SELECT line::text || ': ' || reason FROM nexus.rejects ORDER BY line")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rejects.len(), 2, "{rejects:#?}");
    assert_eq!(db.count("every"), 200);
    assert_every_cached(&db, &redis, (1, 260), &["5", "77"]);
    // The refused rows' keys were dropped, not written with the refused
    // values: a tombstone, or the committed row.
    let mut c = redis.connection();
    for id in [5, 77] {
        let e = entry(&mut c, &format!("{}:every:{id}", redis.prefix)).unwrap();
        assert!(!e.contains("again"), "{e}");
    }

    // An upsert changing ids 100..=260 with each id twice in a batch: the
    // last row of an id wins, in the table and in Redis.
    let mut csv = EVERY_HEADER.to_string();
    for chunk in (100..=260).collect::<Vec<i64>>().chunks(10) {
        for tag in ["older", "newer"] {
            csv.push_str(&every_lines(chunk.iter().copied(), tag));
        }
    }
    let r = load("upsert", csv);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(db.count("every"), 260);
    assert_eq!(
        db.sql("SELECT count(*) FROM every WHERE note LIKE 'older%'")[0].get::<_, i64>(0),
        0
    );
    assert_every_cached(&db, &redis, (1, 260), &["5", "77"]);

    // Write-behind beyond its byte budget (none here): every batch's rows
    // are read back in binary after the load and print the same.
    let no_bytes = [("NEXUS_CACHE_WRITE_BEHIND_MEMORY", "0")];
    let csv = [EVERY_HEADER, &every_lines(90..=210, "behind")].concat();
    let r = load_with(&behind, &no_bytes, "upsert", csv);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("reading rows back"), "{}", r.stderr);
    assert_eq!(
        db.sql("SELECT count(*) FROM every WHERE note LIKE 'behind%'")[0].get::<_, i64>(0),
        121
    );
    assert_every_cached(&db, &redis, (1, 260), &["5", "77"]);

    // A table that adds to what it is sent (a default, a trigger) is read
    // back after the commit instead: still the stored row.
    db.exec(
        "ALTER TABLE every ADD COLUMN loaded_at timestamptz DEFAULT '2030-01-01 00:00:00+00';
         CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN NEW.note := upper(NEW.note); RETURN NEW; END $$;
         CREATE TRIGGER shout BEFORE INSERT OR UPDATE ON every FOR EACH ROW EXECUTE FUNCTION shout()",
    );
    let r = load(
        "upsert",
        [EVERY_HEADER, &every_lines(250..=300, "third")].concat(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        db.sql("SELECT count(*) FROM every WHERE note LIKE 'THIRD%'")[0].get::<_, i64>(0),
        51
    );
    assert_every_cached(&db, &redis, (250, 300), &[]);
}

/// The repair takes a pending batch for abandoned (and flushes its model)
/// only well after anyone may still write it: while its job runs, 30 s
/// after its COMMIT (a write-behind stage holds batches up to 15 s); once
/// the job has ended, 10 s after the later of its COMMIT and the job's end
/// (a write-behind stage writes what it held when its load ends).
#[test]
fn the_repair_waits_for_what_write_behind_holds() {
    use nexus_loaders::cache::{Cache, CacheConfig, Listening};
    let db = TestDb::new();
    let redis = TestRedis::new();
    let mut c = db.nexus();
    let r = run(c.args(["migrate", "--schema-only"]));
    assert_eq!(r.code, 0, "{r:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _runtime = rt.enter();
    let cache = Cache::new(
        CacheConfig {
            redis_url: Some(redis.url.clone()),
            redis_ca: None,
            prefix: redis.prefix.clone(),
            local_bytes: None,
            write_behind_capacity: 1000,
            write_behind_bytes: 0,
            redis_timeout: Duration::from_secs(5),
        },
        Listening::default(),
    )
    .unwrap();
    // (status, seconds since the job ended, seconds since the COMMIT,
    // abandoned?)
    let cases = [
        ("running", None, 20, false),
        ("running", None, 40, true),
        ("succeeded", Some(3), 60, false),
        ("succeeded", Some(12), 60, true),
        ("succeeded", Some(12), 4, false),
    ];
    for (i, (status, ended, committed, abandoned)) in cases.into_iter().enumerate() {
        let model = format!("m{i}");
        let ended = ended.map_or("NULL".to_string(), |s| format!("now() - interval '{s} s'"));
        db.exec(&format!(
            "INSERT INTO nexus.jobs (id, model, target, mode, status, file_hash, finished_at)
               VALUES ('{id}', '{model}', '{model}', 'append', '{status}', 'x', {ended});
             INSERT INTO nexus.job_batches (job_id, seq, rows_read, rows_committed, rows_rejected, bytes_end,
                                            committed_at, cache_version, cache_pending)
               VALUES ('{id}', 1, 1, 1, 0, 1, now() - interval '{committed} s', 7, true)",
            id = uuid::Uuid::new_v4()
        ));
        let repaired = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            cache.settle(&client).await.unwrap()
        });
        assert_eq!(
            repaired,
            u64::from(abandoned),
            "{status}, ended {ended}, committed {committed} s ago"
        );
        let still = db.sql(&format!(
            "SELECT count(*) FROM nexus.job_batches b JOIN nexus.jobs j ON j.id = b.job_id
             WHERE j.model = '{model}' AND b.cache_pending"
        ))[0]
            .get::<_, i64>(0);
        assert_eq!(still, i64::from(!abandoned), "case {i}");
        db.exec(&format!("UPDATE nexus.job_batches b SET cache_pending = false FROM nexus.jobs j WHERE j.id = b.job_id AND j.model = '{model}'"));
    }
}
