//! `nexus serve` as a client sees it: authentication and sessions, roles,
//! rate limits and login throttling, headers, compression, CORS, problem
//! details, metrics, OpenAPI and graceful shutdown — against a real server
//! process and a real PostgreSQL.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::server::{ADMIN_PW, SECRET, Server, add_user, assert_problem};
use common::{TestDb, wait_for};
use serde_json::{Value, json};

#[test]
fn login_access_and_expiry() {
    let db = TestDb::new();
    let s = Server::start(&db, &[("NEXUS_ACCESS_TTL", "2s")]);
    assert_problem(s.login("admin", "wrong"), 401);
    assert_problem(s.login("nobody", ADMIN_PW), 401);
    let (access, _) = s.tokens("admin", ADMIN_PW);
    let r = s.get("/api/v2/models", &access);
    assert_eq!(r.status(), 200);
    let models: Value = r.json().unwrap();
    assert_eq!(models.as_array().unwrap().len(), 6);
    let one: Value = s.get("/api/v2/models/customer", &access).json().unwrap();
    assert_eq!(one["key"], json!(["id"]));
    assert_problem(s.get("/api/v2/models/nope", &access), 404);
    assert_problem(s.get("/api/v2/models", "garbage"), 401);
    let r = s.http.get(s.url("/api/v2/models")).send().unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_problem(r, 401);
    // Expiry is enforced to the second: no leeway.
    wait_for(
        "the access token to expire",
        Duration::from_secs(10),
        || s.get("/api/v2/models", &access).status() == 401,
    );
    let events: Vec<String> = db
        .sql("SELECT event FROM nexus.audit_log ORDER BY id")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        events,
        ["user_created", "login_failed", "login_failed", "login_ok"]
    );
}

#[test]
fn refresh_rotates_and_reuse_revokes_the_session() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let (_, r1) = s.tokens("admin", ADMIN_PW);
    let v: Value = s.refresh(&r1).json().unwrap();
    let (a2, r2) = (
        v["access_token"].as_str().unwrap(),
        v["refresh_token"].as_str().unwrap(),
    );
    assert_ne!(r1, r2);
    assert_eq!(s.get("/api/v2/models", a2).status(), 200);
    // The spent token again: the whole session goes.
    assert_problem(s.refresh(&r1), 401);
    assert_problem(s.get("/api/v2/models", a2), 401);
    assert_problem(s.refresh(r2), 401);
    assert_eq!(
        db.count("nexus.audit_log WHERE event = 'refresh_reuse_detected'"),
        1
    );
    assert_problem(s.refresh("not-a-token"), 401);
    // Refresh tokens are stored as their SHA-256, never as issued.
    assert_eq!(
        db.count(&format!(
            "nexus.refresh_tokens WHERE token_hash = sha256(convert_to('{r2}', 'UTF8'))"
        )),
        1
    );
    // Expired and revoked sessions are cleaned up.
    let r = db.run(&["sessions", "cleanup"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("deleted 1 "), "{r:?}");
}

#[test]
fn logout_and_disabling_take_effect_at_once() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let (a, r) = s.tokens("admin", ADMIN_PW);
    let res = s
        .http
        .post(s.url("/api/v2/auth/logout"))
        .bearer_auth(&a)
        .send()
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_problem(s.get("/api/v2/models", &a), 401);
    assert_problem(s.refresh(&r), 401);

    add_user(&db, "vera", "viewer", "viewer-password");
    let (va, _) = s.tokens("vera", "viewer-password");
    assert_eq!(s.get("/api/v2/models", &va).status(), 200);
    let out = db.run(&["user", "disable", "vera"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Another process's change reaches the server's session cache by
    // notification: within milliseconds, not on the next expiry.
    wait_for(
        "the disabled user's token to be refused",
        Duration::from_secs(5),
        || s.get("/api/v2/models", &va).status() == 401,
    );
    assert_problem(s.get("/api/v2/models", &va), 401);
    assert_problem(s.login("vera", "viewer-password"), 401);
    let list = db.run(&["user", "list"]);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("vera") && l.contains("disabled")),
        "{list:?}"
    );
}

#[test]
fn roles_are_enforced() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    add_user(&db, "vic", "viewer", "viewer-password");
    add_user(&db, "uma", "uploader", "uploader-password");
    for (user, pw) in [("vic", "viewer-password"), ("uma", "uploader-password")] {
        let (a, _) = s.tokens(user, pw);
        let v = assert_problem(s.get("/health/detailed", &a), 403);
        assert!(v["detail"].as_str().unwrap().contains("admin"));
    }
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let r = s.get("/health/detailed", &a);
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["postgres"]["status"], "ok");
    assert!(v["pool"]["details"]["max_size"].as_u64().unwrap() > 0);
    assert_eq!(v["workers"]["status"], "ok");
    assert_eq!(v["workers"]["details"]["configured"], 1);
    let dup = db.run(&["user", "add", "vic", "--role", "viewer", "--password-stdin"]);
    assert_ne!(dup.code, 0);
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let db = TestDb::new();
    let s = Server::start(
        &db,
        &[("NEXUS_RATE_LIMIT", "60"), ("NEXUS_RATE_BURST", "3")],
    );
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = s.http.get(s.url("/api/v2/models")).send().unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry));
            assert_problem(r, 429);
            break;
        }
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429],
        "the burst of 3 anonymous requests, then 429"
    );
    let metrics = s.metrics();
    assert!(
        metrics.contains("nexus_http_rate_limited_total 1"),
        "{metrics}"
    );
}

/// Behind a trusted proxy each forwarded client has its own rate limit and
/// is the address the audit log records; from anyone else the forwarding
/// headers are ignored (a client could write them).
#[test]
fn only_trusted_proxies_name_the_client() {
    let db = TestDb::new();
    let s = Server::start(
        &db,
        &[
            ("NEXUS_RATE_LIMIT", "60"),
            ("NEXUS_RATE_BURST", "2"),
            ("NEXUS_TRUSTED_PROXIES", "127.0.0.9/32, ::1"),
        ],
    );
    let status = |from: &str, forwarded_for: &str| {
        client_from(from)
            .get(s.url("/api/v2/models"))
            .header("x-forwarded-for", forwarded_for)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let via_proxy: Vec<u16> = ["203.0.113.1"; 3]
        .iter()
        .map(|c| status("127.0.0.9", c))
        .collect();
    assert_eq!(via_proxy, [401, 401, 429], "one forwarded client's burst");
    assert_eq!(status("127.0.0.9", "203.0.113.2"), 401, "another client");
    // A client's own entry before the proxy's is not believed.
    assert_eq!(status("127.0.0.9", "203.0.113.2, 203.0.113.1"), 429);
    // Not a trusted peer: its header names nobody.
    let direct: Vec<u16> = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .map(|c| status("127.0.0.5", c))
        .collect();
    assert_eq!(direct, [401, 401, 429], "the peer's burst");
    // The audit log records the forwarded client of a login.
    let r = client_from("127.0.0.9")
        .post(s.url("/api/v2/auth/login"))
        .header("forwarded", r#"for="198.51.100.77:5000";proto=https"#)
        .json(&serde_json::json!({"username": "admin", "password": "wrong"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        db.count("nexus.audit_log WHERE event = 'login_failed' AND ip = '198.51.100.77'"),
        1
    );
}

/// NEXUS_METRICS_BIND moves /metrics to its own listener: the API's
/// address no longer answers it.
#[test]
fn metrics_can_have_their_own_listener() {
    let db = TestDb::new();
    let s = Server::start(&db, &[("NEXUS_METRICS_BIND", "127.0.0.1:0")]);
    let url = s
        .startup
        .iter()
        .find_map(|l| l.strip_prefix("nexus: metrics on "))
        .unwrap_or_else(|| panic!("{:?}", s.startup))
        .to_string();
    let r = s.http.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("nexus_uptime_seconds"));
    assert_eq!(s.http.get(s.url("/metrics")).send().unwrap().status(), 404);
    let bad = common::run(db.nexus().env("NEXUS_METRICS_BIND", "metrics:99").args([
        "serve",
        "--bind",
        "127.0.0.1:0",
    ]));
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("NEXUS_METRICS_BIND"), "{bad:?}");
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address
/// reaches the server on loopback).
fn client_from(ip: &str) -> reqwest::blocking::Client {
    common::http()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// `n` login attempts at once from `ip`; the statuses they got.
fn parallel_logins(s: &Server, ip: &str, n: usize, user: impl Fn(usize) -> String) -> Vec<u16> {
    let client = client_from(ip);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (client, url, user) = (client.clone(), s.url("/api/v2/auth/login"), user(i));
                scope.spawn(move || {
                    client
                        .post(url)
                        .json(&serde_json::json!({"username": user, "password": "wrong"}))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Guessing slows down per account from one address and per address, with
/// growing waits; parallel guesses cannot pass the allowance together; and
/// the owner logging in from elsewhere is never locked out.
#[test]
fn failed_logins_slow_down_the_guesser_not_the_owner() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let statuses = parallel_logins(&s, "127.0.0.2", 30, |_| "admin".into());
    let verified = statuses.iter().filter(|&&c| c == 401).count();
    let throttled = statuses.iter().filter(|&&c| c == 429).count();
    assert_eq!(verified + throttled, 30, "{statuses:?}");
    // Five free, a sixth that starts the waits, and at most one more if the
    // burst outlasted the first one-second wait.
    assert!((6..=7).contains(&verified), "{statuses:?}");
    // The owner, elsewhere, logs in.
    let r = client_from("127.0.0.3")
        .post(s.url("/api/v2/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": ADMIN_PW}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // From the guessing address even the right password waits its turn.
    db.exec(
        "UPDATE nexus.login_throttle SET blocked_until = now() + interval '60 seconds'
         WHERE key = E'acct:admin\\n127.0.0.2'",
    );
    let r = client_from("127.0.0.2")
        .post(s.url("/api/v2/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": ADMIN_PW}))
        .send()
        .unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=61).contains(&retry), "{retry}");
    assert_problem(r, 429);
    // One address guessing many accounts is slowed down too.
    let statuses = parallel_logins(&s, "127.0.0.4", 40, |i| format!("user{i}"));
    let verified = statuses.iter().filter(|&&c| c == 401).count();
    assert!((21..=22).contains(&verified), "{statuses:?}");
    assert!(db.count("nexus.audit_log WHERE event = 'login_throttled'") >= 40 - 22 + 30 - 7);
}

#[test]
fn headers_compression_and_problem_details() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    for r in [
        s.get("/api/v2/models", &a),
        s.http.get(s.url("/nowhere")).send().unwrap(),
    ] {
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'self'")
        );
        assert_eq!(h["x-request-id"].len(), 36);
    }
    let r = s
        .http
        .get(s.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    // Over 1 KiB: gzip; under: as is.
    let big = s
        .http
        .get(s.url("/api/v2/models"))
        .bearer_auth(&a)
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(big.headers()["content-encoding"], "gzip");
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&big.bytes().unwrap()[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert!(plain.len() > 1024 && plain.starts_with('['));
    let small = s
        .http
        .get(s.url("/health"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert!(small.headers().get("content-encoding").is_none());
    assert_eq!(small.text().unwrap(), r#"{"status":"ok"}"#);
    // Problem details everywhere.
    assert_problem(s.http.get(s.url("/nowhere")).send().unwrap(), 404);
    assert_problem(s.http.delete(s.url("/health")).send().unwrap(), 405);
    let bad = s
        .http
        .post(s.url("/api/v2/auth/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_problem(bad, 400);
    let wrong_type = s
        .http
        .post(s.url("/api/v2/auth/login"))
        .body("x")
        .send()
        .unwrap();
    assert_problem(wrong_type, 415);
    let huge = s
        .http
        .post(s.url("/api/v2/auth/login"))
        .header("content-type", "application/json")
        .body(vec![b' '; 200 << 10])
        .send()
        .unwrap();
    assert_problem(huge, 413);
}

#[test]
fn cors_preflight_allowed_and_refused() {
    let db = TestDb::new();
    let s = Server::start(&db, &[("NEXUS_CORS_ORIGINS", "https://app.example")]);
    let preflight = |origin: &str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/api/v2/models"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
            .unwrap()
    };
    let ok = preflight("https://app.example");
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        ok.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let refused = preflight("https://evil.example");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[test]
fn metrics_and_openapi() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    s.get("/api/v2/models", &a);
    let m = s.metrics();
    for needle in [
        "nexus_http_requests_total{route=\"/api/v2/models\",method=\"GET\",status=\"200\"} 1",
        "nexus_logins_total{result=\"ok\"} 1",
        "nexus_http_request_duration_seconds",
        "nexus_db_pool_size",
        "nexus_db_pool_available",
        "nexus_db_pool_waiting",
        "nexus_uptime_seconds",
        "nexus_rows_committed_total{model=\"customer\"} 0",
        "nexus_rows_rejected_total{model=\"quote\"} 0",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    let doc: Value = s
        .http
        .get(s.url("/api/v2/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v2/auth/login",
        "/api/v2/auth/refresh",
        "/api/v2/auth/logout",
        "/api/v2/models",
        "/api/v2/models/{model}",
        "/health",
        "/health/detailed",
        "/metrics",
        "/api/v2/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[test]
fn startup_refuses_a_missing_or_short_secret() {
    let db = TestDb::new();
    let r = common::run(
        db.nexus()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env_remove("NEXUS_JWT_SECRET"),
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("NEXUS_JWT_SECRET is not set"), "{r:?}");
    let r = common::run(
        db.nexus()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("NEXUS_JWT_SECRET", "short"),
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("shorter than 32 bytes"), "{r:?}");
    let r = common::run(
        db.nexus()
            .args(["serve", "--bind", "nonsense"])
            .env("NEXUS_JWT_SECRET", SECRET),
    );
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let db = TestDb::new();
    let mut s = Server::start(&db, &[]);
    let addr = s.base.trim_start_matches("http://").to_string();
    // A login whose body arrives in two parts: in flight while we signal.
    let body = json!({"username": "admin", "password": ADMIN_PW}).to_string();
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /api/v2/auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        &body[..5]
    )
    .unwrap();
    wait_for(
        "the request to be in flight",
        Duration::from_secs(10),
        || {
            let m = s.metrics();
            m.lines()
                .find_map(|l| l.strip_prefix("nexus_http_requests_in_flight "))
                .is_some_and(|v| v.trim().parse::<f64>().unwrap() >= 2.0)
        },
    );
    common::sigterm(s.child().id());
    conn.write_all(&body.as_bytes()[5..]).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("access_token"));
    let status = s.child().wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn perf_report_shows_jobs_and_request_percentiles() {
    let db = TestDb::new();
    let mut s = Server::start(&db, &[]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    for _ in 0..3 {
        assert_eq!(s.get("/api/v2/models", &a).status(), 200);
    }
    common::sigterm(s.child().id());
    assert_eq!(
        s.child().wait().unwrap().code(),
        Some(0),
        "statistics are flushed at shutdown"
    );
    let demo = common::fixture("customers.csv");
    assert_eq!(
        db.run(&["load", "--model", "customer", demo.to_str().unwrap()])
            .code,
        0
    );
    let r = db.run(&["perf", "report", "--since", "1h", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["jobs"]["finished"], 1);
    assert_eq!(v["jobs"]["rows"], 1000);
    assert!(v["jobs"]["rows_per_sec"]["p50"].as_f64().unwrap() > 0.0);
    let routes = v["requests"].as_array().unwrap();
    let models = routes
        .iter()
        .find(|r| r["route"] == "/api/v2/models")
        .expect("the models route");
    assert_eq!(models["requests"], 3);
    let l = &models["latency_ms"];
    assert!(l["p50"].as_f64().unwrap() > 0.0 && l["p50"].as_f64() <= l["p99"].as_f64());
    let text = db.run(&["perf", "report"]);
    assert!(text.stdout.contains("/api/v2/auth/login"), "{text:?}");
    assert_eq!(db.run(&["perf", "report", "--since", "soon"]).code, 2);
}

/// A request whose statement waits on a lock, or which cannot get a pooled
/// connection, is answered 503 (problem+json, Retry-After) within the
/// deadline, never left hanging; once the lock is gone all is well.
#[test]
fn a_stuck_database_is_answered_503_not_a_hang() {
    let db = TestDb::new();
    let s = Server::start(
        &db,
        &[
            ("NEXUS_REQUEST_TIMEOUT", "1s"),
            ("NEXUS_DB_POOL_TIMEOUT", "500ms"),
            ("NEXUS_DB_POOL_MAX", "2"),
            ("NEXUS_WORKERS", "0"),
        ],
    );
    let (a, _) = s.tokens("admin", ADMIN_PW);
    assert_eq!(s.get("/api/v2/jobs", &a).status(), 200);
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release_tx, release) = std::sync::mpsc::channel::<()>();
    let url = db.url.clone();
    let holder = std::thread::spawn(move || {
        let mut c = postgres_client(&url);
        let mut tx = c.transaction().unwrap();
        tx.batch_execute("LOCK TABLE nexus.jobs IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        locked_tx.send(()).unwrap();
        release.recv().unwrap();
        tx.rollback().unwrap();
    });
    locked.recv().unwrap();
    let started = std::time::Instant::now();
    let answers: Vec<reqwest::blocking::Response> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.get("/api/v2/jobs", &a)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for r in answers {
        assert_eq!(r.headers()["retry-after"], "1");
        assert_problem(r, 503);
    }
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    wait_for(
        "the service to answer again",
        Duration::from_secs(30),
        || s.get("/api/v2/jobs", &a).status() == 200,
    );
}

fn postgres_client(url: &str) -> SyncClient {
    SyncClient::connect(url)
}

/// A blocking PostgreSQL session on its own thread's runtime.
struct SyncClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

struct SyncTx<'a> {
    c: &'a mut SyncClient,
}

impl SyncClient {
    fn connect(url: &str) -> SyncClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        });
        SyncClient { rt, client }
    }

    fn transaction(&mut self) -> Result<SyncTx<'_>, tokio_postgres::Error> {
        self.rt.block_on(self.client.batch_execute("BEGIN"))?;
        Ok(SyncTx { c: self })
    }
}

impl SyncTx<'_> {
    fn batch_execute(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.c.rt.block_on(self.c.client.batch_execute(sql))
    }

    fn rollback(self) -> Result<(), tokio_postgres::Error> {
        self.c.rt.block_on(self.c.client.batch_execute("ROLLBACK"))
    }
}

/// Millions of rejects must not be read into memory at once: the CSV
/// streams a page at a time, the JSON comes in linked pages; together they
/// hold every reject once, in line order.
#[test]
fn rejects_stream_as_csv_and_page_as_json() {
    let db = TestDb::new();
    let mut csv = String::from("id,payload\n");
    for i in 1..=24_000 {
        if i % 2 == 0 {
            csv.push_str(&format!("bad{i},x\n"));
        } else {
            csv.push_str(&format!("{i},ok\n"));
        }
    }
    let models = common::small_batch_model(&db);
    let f = db.file("r.csv", &csv);
    let r = db.run_with_models(
        &models,
        &["load", "--json", "--model", "ev", f.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let job: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(job["rows_rejected"], 12_000);
    let id = job["job_id"].as_str().unwrap();
    let s = Server::start(&db, &[("NEXUS_MODELS", models.to_str().unwrap())]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let text = s
        .get(&format!("/api/v2/jobs/{id}/rejects"), &a)
        .text()
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "line,column,reason,raw");
    assert_eq!(lines.len(), 12_001);
    let numbers: Vec<i64> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in line order, once each"
    );
    // JSON, in pages of 5000 linked by `Link`.
    let mut next = Some(format!("/api/v2/jobs/{id}/rejects?limit=5000"));
    let mut seen = Vec::new();
    while let Some(path) = next.take() {
        let r = s
            .http
            .get(s.url(&path))
            .bearer_auth(&a)
            .header("accept", "application/json")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_string()
        });
        let page: Vec<Value> = r.json().unwrap();
        assert!(page.len() <= 5000);
        seen.extend(page.iter().map(|v| v["line"].as_i64().unwrap()));
    }
    assert_eq!(seen, numbers);
    let r = s
        .http
        .get(s.url(&format!("/api/v2/jobs/{id}/rejects?after=nonsense")))
        .bearer_auth(&a)
        .header("accept", "application/json")
        .send()
        .unwrap();
    assert_problem(r, 400);
    // The command line streams them too.
    let r = db.run(&["jobs", "rejects", id]);
    assert_eq!(r.code, 0);
    assert_eq!(r.stdout, text);
    let r = db.run(&["jobs", "rejects", "--json", id]);
    let all: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(all.len(), 12_000);
}

/// Keys no row can have are 400 on the records route, text keys included;
/// the rate limiter forgets clients whose allowance is full again; jobs
/// from the command line belong to no service user.
#[test]
fn bad_keys_limiter_memory_and_command_line_owners() {
    let db = TestDb::new();
    let models = db.file(
        "m.toml",
        "[models.tk]\ntable = \"tk\"\nkey = [\"code\"]\n\
         [[models.tk.columns]]\nname = \"code\"\ntype = \"text\"\n\
         [[models.tk.columns]]\nname = \"n\"\ntype = \"int\"\n\
         [models.ik]\ntable = \"ik\"\nkey = [\"id\"]\n\
         [[models.ik.columns]]\nname = \"id\"\ntype = \"int\"\n",
    );
    let f = db.file("tk.csv", "code,n\nabc,1\n");
    let r = run_as(
        &db,
        &models,
        "ann",
        &["load", "--json", "--model", "tk", f.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let job: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(job["owner"], "cli:ann");
    let s = Server::start(&db, &[("NEXUS_MODELS", models.to_str().unwrap())]);
    add_user(&db, "ann", "uploader", "ann-password");
    let (ann, _) = s.tokens("ann", "ann-password");
    let mine: Value = s.get("/api/v2/jobs", &ann).json().unwrap();
    assert_eq!(
        mine["jobs"],
        json!([]),
        "a service user named like the account sees nothing"
    );
    let (a, _) = s.tokens("admin", ADMIN_PW);
    assert_eq!(s.get("/api/v2/records/tk/abc", &a).status(), 200);
    for path in [
        "/api/v2/records/tk/%00",
        "/api/v2/records/tk/a%00b",
        "/api/v2/records/ik/%00",
    ] {
        assert_problem(s.get(path, &a), 400);
    }
    let mut child = db
        .nexus()
        .args([
            "user",
            "add",
            "cli:ann",
            "--role",
            "viewer",
            "--password-stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "long-enough-password").unwrap();
    assert_eq!(
        child.wait().unwrap().code(),
        Some(2),
        "no service user takes a `cli:` name"
    );
    // Five addresses, remembered, then forgotten once their allowance is full.
    for ip in [
        "127.0.0.31",
        "127.0.0.32",
        "127.0.0.33",
        "127.0.0.34",
        "127.0.0.35",
    ] {
        let c = common::http()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        assert_eq!(c.get(s.url("/api/v2/models")).send().unwrap().status(), 401);
    }
    let keys = |s: &Server| -> f64 {
        s.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("nexus_http_rate_limit_keys "))
            .map(|v| v.trim().parse().unwrap())
            .unwrap()
    };
    assert!(keys(&s) >= 5.0, "{}", keys(&s));
    wait_for(
        "the limiter to forget idle clients",
        Duration::from_secs(60),
        || keys(&s) == 0.0,
    );
}

fn run_as(db: &TestDb, models: &std::path::Path, user: &str, args: &[&str]) -> common::Run {
    common::run(
        db.nexus()
            .env("NEXUS_MODELS", models)
            .env("USER", user)
            .args(args),
    )
}

/// A server nobody can log in to says so at startup, with the command that
/// lets someone in; once there is an administrator it says nothing.
#[test]
fn a_server_without_an_administrator_says_how_to_get_in() {
    let db = TestDb::new();
    let s = Server::start(&db, &[("NEXUS_ADMIN_PASSWORD", "")]);
    let hint = s
        .startup
        .iter()
        .find(|l| l.contains("no administrator exists yet"))
        .unwrap_or_else(|| panic!("{:?}", s.startup));
    assert!(
        hint.contains("nexus user add admin --role admin --password-stdin"),
        "{hint}"
    );
    drop(s);
    let s = Server::start(&db, &[]);
    assert!(
        !s.startup.iter().any(|l| l.contains("no administrator")),
        "{:?}",
        s.startup
    );
}
