//! The WebSocket protocol (README) against real servers: current state on
//! subscribe, progress, state changes, ping/pong, errors, heartbeats,
//! authentication, ownership, a client that never reads, and progress of a
//! job running on another server.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::redis::TestRedis;
use common::server::{ADMIN_PW, Server, add_user};
use common::{TestDb, wait_for};
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const ROWS: i64 = 150_000;

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn setup(db: &TestDb) -> (String, Vec<u8>) {
    let models = common::small_batch_model(db);
    let mut csv = String::from("id,payload\n");
    for i in 1..=ROWS {
        csv.push_str(&format!("{i},row {i}\n"));
    }
    (models.to_str().unwrap().to_string(), csv.into_bytes())
}

fn connect(s: &Server, token: &str) -> Ws {
    let url = format!(
        "{}/api/v2/ws?access_token={token}",
        s.base.replace("http://", "ws://")
    );
    let (ws, _) = tungstenite::connect(url).unwrap();
    if let MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).unwrap();
}

/// The next JSON message.
fn next(ws: &mut Ws) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => {
                assert!(t.starts_with("{\"type\":"), "`type` comes first: {t}");
                return serde_json::from_str(&t).unwrap();
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads until `done` holds for a message; returns all of them.
fn read_until(ws: &mut Ws, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "no end in sight: {seen:?}");
        let m = next(ws);
        let stop = done(&m);
        seen.push(m);
        if stop {
            return seen;
        }
    }
}

fn upload(s: &Server, token: &str, body: Vec<u8>) -> String {
    let r = s
        .http
        .post(s.url("/api/v2/jobs?model=ev"))
        .bearer_auth(token)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn finished(m: &Value) -> bool {
    m["type"] == "job" && m["status"] == "succeeded"
}

/// Progress counters never go backwards.
fn assert_monotone(messages: &[Value]) -> usize {
    let progress: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "progress")
        .collect();
    for w in progress.windows(2) {
        for k in ["rows_read", "rows_committed", "bytes_read"] {
            assert!(
                w[1][k].as_i64() >= w[0][k].as_i64(),
                "{k} went backwards: {} then {}",
                w[0],
                w[1]
            );
        }
    }
    progress.len()
}

#[test]
fn a_subscriber_sees_state_progress_and_the_end() {
    let db = TestDb::new();
    let (models, csv) = setup(&db);
    let s = Server::start(
        &db,
        &[("NEXUS_MODELS", &models), ("NEXUS_WS_HEARTBEAT", "1s")],
    );
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let mut ws = connect(&s, &a);
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(next(&mut ws)["type"], "pong");
    send(&mut ws, json!({"type": "dance"}));
    let e = next(&mut ws);
    assert_eq!(e["type"], "error");
    assert!(e["message"].as_str().unwrap().contains("bad message"));
    send(
        &mut ws,
        json!({"type": "subscribe", "job_id": uuid::Uuid::new_v4()}),
    );
    assert_eq!(next(&mut ws)["type"], "error", "an unknown job");
    let id = upload(&s, &a, csv);
    send(&mut ws, json!({"type": "subscribe", "job_id": id}));
    let first = next(&mut ws);
    assert_eq!(first["type"], "job", "the current state at once");
    assert_eq!(first["job_id"], id.as_str());
    let all = read_until(&mut ws, finished);
    let end = all.last().unwrap();
    assert_eq!(end["rows_committed"], ROWS);
    assert!(assert_monotone(&all) >= 1, "progress while it ran: {all:?}");
    let p = all.iter().find(|m| m["type"] == "progress").unwrap();
    for k in [
        "job_id",
        "status",
        "rows_read",
        "rows_committed",
        "rows_rejected",
        "bytes_read",
        "bytes_total",
        "rows_per_sec",
        "eta_ms",
    ] {
        assert!(p.get(k).is_some(), "progress lacks {k}: {p}");
    }
    let hb = read_until(&mut ws, |m| m["type"] == "heartbeat");
    assert!(hb.last().unwrap()["ts"].is_string());
}

#[test]
fn joining_mid_job_gets_the_current_state_and_others_jobs_stay_hidden() {
    let db = TestDb::new();
    let (models, csv) = setup(&db);
    let s = Server::start(&db, &[("NEXUS_MODELS", &models)]);
    add_user(&db, "uma", "uploader", "uploader-password");
    add_user(&db, "vic", "viewer", "viewer-password");
    let (u, _) = s.tokens("uma", "uploader-password");
    let (v, _) = s.tokens("vic", "viewer-password");
    let id = upload(&s, &u, csv);
    wait_for("batches to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 5
    });
    let mut ws = connect(&s, &u);
    send(&mut ws, json!({"type": "subscribe", "all": true}));
    let all = read_until(&mut ws, finished);
    // The current state comes at once; a progress sample may overtake it.
    let at = all.iter().position(|m| m["type"] == "job").unwrap();
    assert_eq!(all[at]["status"], "running", "{all:?}");
    assert!(all[..at].iter().all(|m| m["type"] == "progress"), "{all:?}");
    assert!(
        all.iter()
            .any(|m| m["type"] == "progress" && m["rows_committed"].as_i64().unwrap() > 0),
        "a joiner sees how far the job is: {all:?}"
    );
    assert_monotone(&all);
    // A viewer sees neither the job nor its events.
    let mut other = connect(&s, &v);
    send(&mut other, json!({"type": "subscribe", "job_id": id}));
    assert_eq!(next(&mut other)["type"], "error");
    // Authentication is required.
    let url = format!("{}/api/v2/ws", s.base.replace("http://", "ws://"));
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[test]
fn a_client_that_never_reads_does_not_slow_the_job_nor_lose_its_end() {
    let db = TestDb::new();
    let (models, csv) = setup(&db);
    let s = Server::start(&db, &[("NEXUS_MODELS", &models)]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let mut idle = connect(&s, &a);
    send(&mut idle, json!({"type": "subscribe", "all": true}));
    let id = upload(&s, &a, csv);
    wait_for("the job to finish", Duration::from_secs(120), || {
        let j: Value = s.get(&format!("/api/v2/jobs/{id}"), &a).json().unwrap();
        j["status"] == "succeeded"
    });
    // Everything it missed is waiting, the final state included.
    let all = read_until(&mut idle, finished);
    assert_monotone(&all);
}

/// Two servers on one database: one runs the job, the other (no workers)
/// has the subscriber. `bus` is extra server settings (Redis or not).
fn progress_crosses_servers(bus: &[(&str, &str)]) {
    let db = TestDb::new();
    let (models, csv) = setup(&db);
    let mut runner_env = vec![("NEXUS_MODELS", models.as_str())];
    runner_env.extend_from_slice(bus);
    let mut watcher_env = runner_env.clone();
    watcher_env.push(("NEXUS_WORKERS", "0"));
    let runner = Server::start(&db, &runner_env);
    let watcher = Server::start(&db, &watcher_env);
    let (a, _) = watcher.tokens("admin", ADMIN_PW);
    let mut ws = connect(&watcher, &a);
    send(&mut ws, json!({"type": "subscribe", "all": true}));
    let id = upload(&watcher, &a, csv);
    let all = read_until(&mut ws, finished);
    assert!(
        assert_monotone(&all) >= 1,
        "progress crossed servers: {all:?}"
    );
    assert!(all.iter().all(|m| m["job_id"] == id.as_str()));
    drop(runner);
}

#[test]
fn progress_of_a_job_on_another_server_reaches_subscribers() {
    progress_crosses_servers(&[]);
}

/// With Redis the samples travel on its pub/sub alone (the servers do not
/// NOTIFY progress then), on the installation's own channel.
#[test]
fn progress_crosses_servers_over_redis_pubsub() {
    let redis = TestRedis::new();
    let mut sub = redis.connection();
    let channel = format!("{}:progress", redis.prefix);
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    let spy = std::thread::spawn(move || {
        let mut pubsub = sub.as_pubsub();
        pubsub.subscribe(&channel).unwrap();
        pubsub
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        subscribed_tx.send(()).unwrap();
        let m = pubsub.get_message().expect("a progress sample on Redis");
        serde_json::from_str::<Value>(&m.get_payload::<String>().unwrap()).unwrap()
    });
    subscribed.recv().unwrap();
    progress_crosses_servers(&redis.env());
    let sample = spy.join().unwrap();
    assert!(sample["rows_read"].as_i64().is_some(), "{sample}");
}

/// Counters of a running job never go backwards for a client, whichever
/// message carries them (its state, a sample), starting from what
/// `GET /jobs/{id}` answered just before it subscribed.
fn assert_never_behind(start: &Value, messages: &[Value]) {
    let mut last = start.clone();
    for m in messages
        .iter()
        .filter(|m| m["type"] == "progress" || (m["type"] == "job" && m["status"] == "running"))
    {
        for k in ["rows_read", "rows_committed", "bytes_read"] {
            assert!(
                m[k].as_i64() >= last[k].as_i64(),
                "{k} went backwards: {last} then {m}"
            );
        }
        last = m.clone();
    }
}

#[test]
fn a_subscriber_never_sees_counters_older_than_the_status_route() {
    let db = TestDb::new();
    let (models, csv) = setup(&db);
    let s = Server::start(&db, &[("NEXUS_MODELS", &models)]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let id = upload(&s, &a, csv);
    wait_for("batches to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 5
    });
    let status: Value = s.get(&format!("/api/v2/jobs/{id}"), &a).json().unwrap();
    assert_eq!(status["status"], "running", "{status}");
    assert!(status["rows_committed"].as_i64().unwrap() > 0, "{status}");
    let mut ws = connect(&s, &a);
    send(&mut ws, json!({"type": "subscribe", "job_id": id}));
    let all = read_until(&mut ws, finished);
    assert_eq!(all[0]["type"], "job", "{all:?}");
    assert_never_behind(&status, &all);
}

/// A server that keeps one event for its relays (a relay that misses
/// events resends the current state: `src/api/ws.rs` tests that) delivers
/// every job's end of eight jobs on two workers.
#[test]
fn every_end_reaches_a_subscriber_with_the_smallest_event_buffer() {
    let db = TestDb::new();
    let models = common::small_batch_model(&db);
    let s = Server::start(
        &db,
        &[
            ("NEXUS_MODELS", models.to_str().unwrap()),
            ("NEXUS_WS_EVENT_BUFFER", "1"),
            ("NEXUS_WORKERS", "2"),
        ],
    );
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let mut ws = connect(&s, &a);
    send(&mut ws, json!({"type": "subscribe", "all": true}));
    let mut ids = std::collections::HashSet::new();
    for j in 0..8 {
        let mut csv = String::from("id,payload\n");
        for i in 1..=3000 {
            csv.push_str(&format!("{i},job {j} row {i}\n"));
        }
        ids.insert(upload(&s, &a, csv.into_bytes()));
    }
    let mut ended = std::collections::HashSet::new();
    let all = read_until(&mut ws, |m| {
        if finished(m) {
            ended.insert(m["job_id"].as_str().unwrap().to_string());
        }
        ended == ids
    });
    assert!(all.iter().all(|m| m["type"] != "error"), "{all:?}");
}

/// With Redis down, progress goes over PostgreSQL and still reaches a
/// subscriber on another server.
#[test]
fn progress_crosses_servers_while_redis_is_down() {
    let mut redis = common::redis::PrivateRedis::start();
    let url = redis.url();
    redis.kill();
    progress_crosses_servers(&[("REDIS_URL", url.as_str())]);
}

/// A socket opened with the token as a subprotocol (`nexus`,
/// `bearer.<token>`), as a browser does it: no token in the URL.
fn connect_with_protocol(s: &Server, token: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let url = format!("{}/api/v2/ws", s.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("nexus, bearer.{token}").parse().unwrap(),
    );
    let (ws, resp) = tungstenite::connect(req).unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "nexus",
        "the server picks `nexus`, never echoes the token"
    );
    if let MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    ws
}

/// Reads until the server closes the socket; its close code.
fn closed_with(ws: &mut Ws) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return f.code.into(),
            Ok(Message::Close(None)) => return 1005,
            Ok(_) => continue,
            Err(e) => panic!("the socket was not closed by the server: {e}"),
        }
    }
}

#[test]
fn logout_revocation_and_disabling_close_open_sockets_at_once() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    add_user(&db, "uma", "uploader", "uploader-password");
    add_user(&db, "vic", "viewer", "viewer-password");
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let (a2, _) = s.tokens("admin", ADMIN_PW);
    let (u, _) = s.tokens("uma", "uploader-password");
    let (v, refresh_v) = s.tokens("vic", "viewer-password");
    let mut mine = connect_with_protocol(&s, &a);
    let mut other_session = connect_with_protocol(&s, &a2);
    let mut uma = connect_with_protocol(&s, &u);
    let mut vic = connect(&s, &v);
    for ws in [&mut mine, &mut other_session, &mut uma, &mut vic] {
        send(ws, json!({"type": "ping"}));
        assert_eq!(next(ws)["type"], "pong");
    }
    // Logout ends this session's sockets, not the same user's other session.
    let r = s
        .http
        .post(s.url("/api/v2/auth/logout"))
        .bearer_auth(&a)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(closed_with(&mut mine), 4401);
    send(&mut other_session, json!({"type": "ping"}));
    assert_eq!(next(&mut other_session)["type"], "pong");
    // A disabled user's sockets close.
    let r = db.run(&["user", "disable", "uma"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(closed_with(&mut uma), 4401);
    // A session revoked because its spent refresh token came back.
    assert_eq!(s.refresh(&refresh_v).status(), 200);
    assert_eq!(s.refresh(&refresh_v).status(), 401);
    assert_eq!(closed_with(&mut vic), 4401);
    send(&mut other_session, json!({"type": "ping"}));
    assert_eq!(next(&mut other_session)["type"], "pong");
    // A bad token as a subprotocol is refused like any other.
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/api/v2/ws", s.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "nexus, bearer.nope".parse().unwrap(),
    );
    match tungstenite::connect(req) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}
