//! `GET /api/v2/ws` (the protocol is in the README): subscribe to a job or to all your jobs;
//! the current state at once, progress at most every 250 ms, every state
//! change, a heartbeat, ping/pong, and an error message (not a disconnect)
//! for a bad message. Each connection has its own outbox: progress samples
//! beyond a small bound drop the oldest, state changes are never dropped, and
//! a slow reader never holds up anything but itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use nexus_loaders::JobStatus;
use nexus_loaders::jobs::{self, JobRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::AppState;
use super::auth::authenticate;
use super::problem::Problem;
use crate::auth::Role;
use crate::auth::store::Principal;
use crate::jobs::progress::Event;
use crate::read_cache::AuthChange;
use tokio::sync::broadcast::error::RecvError;

/// Progress samples a connection keeps for a slow reader.
const PROGRESS_BACKLOG: usize = 32;
/// State changes a connection keeps for a reader that does not read at all,
/// before it is closed.
const STATE_BACKLOG: usize = 10_000;

#[derive(Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
}

/// The subprotocol a client names, beside its token, and the server picks.
pub const SUBPROTOCOL: &str = "nexus";
/// A token offered as a subprotocol: `bearer.<access token>`.
const TOKEN_PROTOCOL: &str = "bearer.";

/// The access token: `Authorization: Bearer`, or a `bearer.<token>`
/// subprotocol (what a browser can send: `new WebSocket(url, ["nexus",
/// "bearer." + token])`), or — a fallback that puts the token in URLs and
/// logs — `?access_token=`.
fn token(headers: &HeaderMap, q: WsQuery) -> Option<String> {
    let bearer = super::auth::bearer(headers);
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL));
    bearer.or(offered).map(str::to_string).or(q.access_token)
}

pub async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, Problem> {
    let token = token(&headers, q).ok_or_else(|| {
        Problem::unauthorized(
            "an access token is required (Authorization, a `bearer.<token>` subprotocol, or ?access_token=)",
        )
    })?;
    let who = authenticate(&state, &token).await?;
    Ok(ws
        .protocols([SUBPROTOCOL])
        .on_upgrade(move |socket| session(state, who, socket)))
}

/// Messages waiting to be sent to one client.
#[derive(Default)]
struct Outbox {
    queue: Mutex<VecDeque<(bool, String)>>,
    ready: Notify,
}

impl Outbox {
    /// Queues a message; `progress` ones are the droppable kind. False when
    /// the client has stopped reading for good.
    fn push(&self, progress: bool, text: String) -> bool {
        let mut q = self.queue.lock().expect("outbox");
        if progress && q.iter().filter(|(p, _)| *p).count() >= PROGRESS_BACKLOG {
            if let Some(i) = q.iter().position(|(p, _)| *p) {
                q.remove(i);
            }
            metrics::counter!("nexus_ws_progress_dropped_total").increment(1);
        }
        if q.len() >= PROGRESS_BACKLOG + STATE_BACKLOG {
            return false;
        }
        q.push_back((progress, text));
        drop(q);
        self.ready.notify_one();
        true
    }

    fn pop(&self) -> Option<String> {
        self.queue
            .lock()
            .expect("outbox")
            .pop_front()
            .map(|(_, t)| t)
    }
}

#[derive(Default)]
struct Subscriptions {
    all: bool,
    jobs: HashSet<Uuid>,
}

fn may_see(who: &Principal, owner: Option<&str>) -> bool {
    who.role == Role::Admin || owner == Some(who.username.as_str())
}

fn job_message(j: &JobRecord) -> String {
    let mut v = serde_json::to_value(j).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), json!("job"));
    }
    typed_first(v)
}

/// Serializes with `type` first, as the protocol promises.
fn typed_first(v: Value) -> String {
    let Value::Object(mut map) = v else {
        return v.to_string();
    };
    let kind = map.remove("type").unwrap_or(Value::Null);
    let mut out = serde_json::Map::new();
    out.insert("type".into(), kind);
    out.extend(map);
    Value::Object(out).to_string()
}

fn event_message(e: &Event) -> (bool, String) {
    let (progress, mut v) = match e {
        Event::Progress(p) => (true, serde_json::to_value(p).unwrap_or_default()),
        Event::Job(j) => (false, serde_json::to_value(j).unwrap_or_default()),
    };
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "type".into(),
            json!(if progress { "progress" } else { "job" }),
        );
    }
    (progress, typed_first(v))
}

/// One client's connection: what it asked for and what it was sent.
struct Conn {
    who: Principal,
    outbox: Outbox,
    subs: Mutex<Subscriptions>,
    /// Per running job, the counters last sent: a client never sees them
    /// go backwards, whichever source (a checkpoint, a sample) was newer.
    sent: Mutex<HashMap<Uuid, [i64; 4]>>,
    /// Jobs this client was told are queued or running: after a lag their
    /// current state is sent again, so that no end is lost.
    open: Mutex<HashSet<Uuid>>,
}

impl Conn {
    fn new(who: Principal) -> Conn {
        Conn {
            who,
            outbox: Outbox::default(),
            subs: Mutex::new(Subscriptions::default()),
            sent: Mutex::new(HashMap::new()),
            open: Mutex::new(HashSet::new()),
        }
    }

    fn wants(&self, job: Uuid, owner: Option<&str>) -> bool {
        let s = self.subs.lock().expect("subs");
        (s.all || s.jobs.contains(&job)) && may_see(&self.who, owner)
    }

    /// Raises a running job's counters (rows read, committed, rejected,
    /// bytes read) to what was sent before, and remembers them.
    fn monotone(&self, job: Uuid, counters: [&mut i64; 4]) {
        let mut sent = self.sent.lock().expect("sent");
        let before = sent.entry(job).or_insert([i64::MIN; 4]);
        for (now, before) in counters.into_iter().zip(before.iter_mut()) {
            *now = (*now).max(*before);
            *before = *now;
        }
    }

    /// Sends a job's state; a running job's counters never go backwards.
    fn send_job(&self, j: &JobRecord) -> bool {
        let mut j = j.clone();
        self.track(j.job_id, j.status);
        if j.status == JobStatus::Running {
            let id = j.job_id;
            self.monotone(
                id,
                [
                    &mut j.rows_read,
                    &mut j.rows_committed,
                    &mut j.rows_rejected,
                    &mut j.bytes_read,
                ],
            );
        }
        self.outbox.push(false, job_message(&j))
    }

    fn track(&self, job: Uuid, status: JobStatus) {
        let mut open = self.open.lock().expect("open");
        if !status.is_finished() {
            open.insert(job);
        } else {
            open.remove(&job);
            self.sent.lock().expect("sent").remove(&job);
        }
    }

    /// Passes an event from the hub on, if the client wants it.
    fn relay(&self, event: &Event) -> bool {
        if !self.wants(event.job_id(), event.owner()) {
            return true;
        }
        match event {
            Event::Progress(p) => {
                let mut p = p.clone();
                let id = p.job_id;
                self.monotone(
                    id,
                    [
                        &mut p.rows_read,
                        &mut p.rows_committed,
                        &mut p.rows_rejected,
                        &mut p.bytes_read,
                    ],
                );
                let (progress, text) = event_message(&Event::Progress(p));
                self.outbox.push(progress, text)
            }
            Event::Job(j) => {
                self.track(j.job_id, j.status);
                let (progress, text) = event_message(event);
                self.outbox.push(progress, text)
            }
        }
    }
}

async fn session(state: AppState, who: Principal, socket: WebSocket) {
    metrics::gauge!("nexus_ws_connections").increment(1.0);
    let conn = Arc::new(Conn::new(who));
    // Drain the hub at once into this connection's outbox.
    let closed = CancellationToken::new();
    let relay = {
        let (conn, state) = (conn.clone(), state.clone());
        let rx = state.hub.subscribe();
        tokio::spawn(closed.clone().run_until_cancelled_owned(async move {
            let again = || {
                let (state, conn) = (state.clone(), conn.clone());
                async move { resync(&state, &conn).await }
            };
            relay(rx, &conn, again).await
        }))
    };
    let (mut sink, mut stream) = socket.split();
    let mut heartbeat = tokio::time::interval(state.config.ws_heartbeat);
    heartbeat.tick().await;
    let mut auth = state.caches.auth_changes.subscribe();
    loop {
        if let Some(text) = conn.outbox.pop() {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
            continue;
        }
        tokio::select! {
            _ = conn.outbox.ready.notified() => {}
            _ = heartbeat.tick() => {
                // The session may also just have expired.
                if !still_live(&state, &conn.who).await {
                    close_ended(&mut sink).await;
                    break;
                }
                let ts = chrono::Utc::now().to_rfc3339();
                conn.outbox.push(false, typed_first(json!({"type": "heartbeat", "ts": ts})));
            }
            change = auth.recv() => {
                let concerns = match change {
                    Ok(AuthChange::Session(id)) => id == conn.who.session_id,
                    Ok(AuthChange::All) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => false,
                };
                if concerns && !still_live(&state, &conn.who).await {
                    close_ended(&mut sink).await;
                    break;
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => handle(&state, &conn, t.as_str()).await,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
        if relay.is_finished() {
            break;
        }
    }
    closed.cancel();
    let _ = relay.await;
    metrics::gauge!("nexus_ws_connections").decrement(1.0);
}

/// Passes the hub's events to the connection until it closes; after a lag
/// (events missed), `resync` sends the current state again.
async fn relay<F: std::future::Future<Output = ()>>(
    mut rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    conn: &Conn,
    resync: impl Fn() -> F,
) {
    loop {
        match rx.recv().await {
            Ok(event) => {
                if !conn.relay(&event) {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "a WebSocket relay fell behind the hub; resending the current state"
                );
                metrics::counter!("nexus_ws_resyncs_total").increment(1);
                resync().await;
            }
            Err(_) => return,
        }
    }
}

/// Whether the connection's session is still live. A database that does
/// not answer keeps the connection: the next change or heartbeat asks again.
async fn still_live(state: &AppState, who: &Principal) -> bool {
    match super::auth::live_principal(state, who.session_id).await {
        Ok(p) => p.is_some_and(|p| p.user_id == who.user_id),
        Err(_) => true,
    }
}

/// Closes a connection whose session ended (logout, revoked, user disabled,
/// expired), saying so: code 4401.
async fn close_ended(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>) {
    let frame = axum::extract::ws::CloseFrame {
        code: SESSION_ENDED,
        reason: "the session ended (logged out, revoked, or the user disabled)".into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// The close code for a connection whose session ended (the 4000s are the
/// application's; 4401 mirrors HTTP 401).
pub const SESSION_ENDED: u16 = 4401;

/// After events were missed: the current state of every job the client
/// follows — those it was told are open, those open now, and those that
/// ended in the last minutes — so that no state change is lost.
async fn resync(state: &AppState, conn: &Conn) {
    let Ok(db) = state.pool.get().await else {
        return;
    };
    let (all, mut ids): (bool, HashSet<Uuid>) = {
        let s = conn.subs.lock().expect("subs");
        (s.all, s.jobs.clone())
    };
    ids.extend(conn.open.lock().expect("open").iter().copied());
    let owner = (conn.who.role != Role::Admin).then_some(conn.who.username.as_str());
    if all {
        match jobs::recently_changed(&**db, owner, RESYNC_WINDOW, RESYNC_LIMIT).await {
            Ok(recent) => ids.extend(recent),
            Err(e) => tracing::warn!(error = %e, "resync: listing recent jobs failed"),
        }
    }
    for id in ids {
        if let Ok(Some(mut j)) = jobs::get(&**db, id).await
            && conn.wants(id, j.owner.as_deref())
        {
            if j.status == JobStatus::Running {
                let _ = super::jobs::live_counts(&state.hub, &db, &mut j).await;
            }
            conn.send_job(&j);
        }
    }
}

/// Jobs changed this recently are sent again after a lag.
const RESYNC_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);
const RESYNC_LIMIT: i64 = 500;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Subscribe {
        job_id: Option<Uuid>,
        #[serde(default)]
        all: bool,
    },
    Unsubscribe {
        job_id: Option<Uuid>,
        #[serde(default)]
        all: bool,
    },
    Ping,
}

fn error(message: &str) -> String {
    typed_first(json!({"type": "error", "message": message}))
}

async fn handle(state: &AppState, conn: &Conn, text: &str) {
    let (who, outbox) = (&conn.who, &conn.outbox);
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            outbox.push(
                false,
                error(&format!(
                    "bad message: {e}; expected subscribe, unsubscribe or ping"
                )),
            );
            return;
        }
    };
    match msg {
        ClientMessage::Ping => {
            outbox.push(false, typed_first(json!({"type": "pong"})));
        }
        ClientMessage::Unsubscribe { job_id, all } => {
            let mut s = conn.subs.lock().expect("subs");
            if all {
                s.all = false;
            }
            if let Some(id) = job_id {
                s.jobs.remove(&id);
            }
        }
        ClientMessage::Subscribe {
            job_id: Some(id), ..
        } => {
            let job = match state.pool.get().await {
                Ok(db) => jobs::get(&**db, id).await.ok().flatten(),
                Err(_) => None,
            };
            match job.filter(|j| may_see(who, j.owner.as_deref())) {
                Some(j) => {
                    conn.subs.lock().expect("subs").jobs.insert(id);
                    send_current(state, conn, j).await;
                }
                None => {
                    outbox.push(false, error(&format!("no job {id}")));
                }
            }
        }
        ClientMessage::Subscribe { all: true, .. } => {
            conn.subs.lock().expect("subs").all = true;
            let owner = (who.role != Role::Admin).then_some(who.username.as_str());
            if let Ok(db) = state.pool.get().await {
                for status in [JobStatus::Running, JobStatus::Queued] {
                    if let Ok(page) = jobs::page(&**db, owner, Some(status), None, 100, None).await
                    {
                        for j in page {
                            send_current(state, conn, j).await;
                        }
                    }
                }
            }
        }
        ClientMessage::Subscribe { .. } => {
            outbox.push(false, error("subscribe needs a job_id or \"all\": true"));
        }
    }
}

/// The state of a job for a subscriber joining now: its record with the
/// newest counters known here (its checkpoints, or the live sample when
/// that is ahead), never older than what `GET /jobs/{id}` answered.
async fn send_current(state: &AppState, conn: &Conn, mut j: JobRecord) {
    if j.status == JobStatus::Running
        && let Ok(db) = state.pool.get().await
    {
        let _ = super::jobs::live_counts(&state.hub, &db, &mut j).await;
    }
    conn.send_job(&j);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::progress::{Hub, JobMsg};

    fn admin() -> Principal {
        Principal {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            username: "admin".into(),
            role: Role::Admin,
        }
    }

    fn state_change(job: Uuid, status: JobStatus) -> Event {
        Event::Job(JobMsg {
            job_id: job,
            status,
            owner: None,
            model: None,
            rows_read: 0,
            rows_committed: 0,
            rows_rejected: 0,
            bytes_read: 0,
            bytes_total: None,
            error: None,
        })
    }

    /// Events sent while the relay was not reading overflow a one-event
    /// buffer: the relay resynchronises instead of going on without them.
    #[tokio::test]
    async fn a_relay_that_lags_resends_the_current_state() {
        let hub = Hub::new(1);
        let conn = Conn::new(admin());
        conn.subs.lock().unwrap().all = true;
        let rx = hub.subscribe();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        hub.receive(state_change(a, JobStatus::Running));
        hub.receive(state_change(a, JobStatus::Succeeded));
        hub.receive(state_change(b, JobStatus::Running));
        let resyncs = std::sync::atomic::AtomicUsize::new(0);
        let relayed = relay(rx, &conn, || async {
            resyncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // What the database says now.
            conn.relay(&state_change(a, JobStatus::Succeeded));
        });
        // The hub is dropped after its last event: the relay ends.
        drop(hub);
        relayed.await;
        assert_eq!(resyncs.load(std::sync::atomic::Ordering::SeqCst), 1);
        let mut sent = Vec::new();
        while let Some(m) = conn.outbox.pop() {
            sent.push(serde_json::from_str::<Value>(&m).unwrap());
        }
        let ends: Vec<&Value> = sent
            .iter()
            .filter(|m| m["job_id"] == a.to_string() && m["status"] == "succeeded")
            .collect();
        assert_eq!(ends.len(), 1, "the missed end is sent: {sent:?}");
        assert!(
            sent.iter().any(|m| m["job_id"] == b.to_string()),
            "events after the lag still flow: {sent:?}"
        );
        assert!(conn.open.lock().unwrap().contains(&b));
        assert!(!conn.open.lock().unwrap().contains(&a));
    }
}
