//! `GET /api/v2/ws` (SPEC §6): subscribe to a job or to all your jobs;
//! the current state at once, progress at most every 250 ms, every state
//! change, a heartbeat, ping/pong, and an error message (not a disconnect)
//! for a bad message. Each connection has its own outbox: progress samples
//! beyond a small bound drop the oldest, state changes are never dropped, and
//! a slow reader never holds up anything but itself.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use nexus_loaders::jobs::{self, JobRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use super::AppState;
use super::auth::authenticate;
use super::problem::Problem;
use crate::auth::Role;
use crate::auth::store::Principal;
use crate::jobs::progress::Event;

/// Progress samples a connection keeps for a slow reader.
const PROGRESS_BACKLOG: usize = 32;
/// State changes a connection keeps for a reader that does not read at all,
/// before it is closed.
const STATE_BACKLOG: usize = 10_000;

#[derive(Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
}

pub async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or(q.access_token)
        .ok_or_else(|| {
            Problem::unauthorized("an access token is required (Authorization or ?access_token=)")
        })?;
    let who = authenticate(&state, &token).await?;
    Ok(ws.on_upgrade(move |socket| session(state, who, socket)))
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

/// Serializes with `type` first, as SPEC §6 asks.
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

async fn session(state: AppState, who: Principal, socket: WebSocket) {
    metrics::gauge!("nexus_ws_connections").increment(1.0);
    let outbox = Arc::new(Outbox::default());
    let subs = Arc::new(Mutex::new(Subscriptions::default()));
    // Drain the hub at once into this connection's outbox.
    let relay = {
        let (outbox, subs, who) = (outbox.clone(), subs.clone(), who.clone());
        let mut rx = state.hub.subscribe();
        tokio::spawn(async move {
            loop {
                let event = match rx.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a WebSocket relay fell behind the hub");
                        continue;
                    }
                    Err(_) => return,
                };
                let wanted = {
                    let s = subs.lock().expect("subs");
                    s.all || s.jobs.contains(&event.job_id())
                };
                if wanted && may_see(&who, event.owner()) {
                    let (progress, text) = event_message(&event);
                    if !outbox.push(progress, text) {
                        return;
                    }
                }
            }
        })
    };
    let (mut sink, mut stream) = socket.split();
    let mut heartbeat = tokio::time::interval(state.config.ws_heartbeat);
    heartbeat.tick().await;
    loop {
        if let Some(text) = outbox.pop() {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
            continue;
        }
        tokio::select! {
            _ = outbox.ready.notified() => {}
            _ = heartbeat.tick() => {
                let ts = chrono::Utc::now().to_rfc3339();
                outbox.push(false, typed_first(json!({"type": "heartbeat", "ts": ts})));
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => handle(&state, &who, &subs, &outbox, t.as_str()).await,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
        if relay.is_finished() {
            break;
        }
    }
    relay.abort();
    metrics::gauge!("nexus_ws_connections").decrement(1.0);
}

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

async fn handle(
    state: &AppState,
    who: &Principal,
    subs: &Mutex<Subscriptions>,
    outbox: &Outbox,
    text: &str,
) {
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
            let mut s = subs.lock().expect("subs");
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
                    subs.lock().expect("subs").jobs.insert(id);
                    send_current(state, outbox, &j);
                }
                None => {
                    outbox.push(false, error(&format!("no job {id}")));
                }
            }
        }
        ClientMessage::Subscribe { all: true, .. } => {
            subs.lock().expect("subs").all = true;
            let owner = (who.role != Role::Admin).then_some(who.username.as_str());
            if let Ok(db) = state.pool.get().await {
                for status in ["running", "queued"] {
                    if let Ok(page) = jobs::page(&**db, owner, Some(status), None, 100, None).await
                    {
                        for j in &page {
                            send_current(state, outbox, j);
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

/// The state of a job for a subscriber joining now: its record, and its
/// latest progress while it runs.
fn send_current(state: &AppState, outbox: &Outbox, j: &JobRecord) {
    outbox.push(false, job_message(j));
    if let Some(p) = state.hub.latest(j.job_id) {
        outbox.push(true, event_message(&Event::Progress(p)).1);
    }
}
