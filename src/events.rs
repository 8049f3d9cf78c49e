//! What a server hears of other processes. One PostgreSQL connection
//! LISTENs to job state changes (`nexus_jobs`) and session or user changes
//! (`nexus_auth`), both announced by triggers whatever process made them;
//! they feed the job hub and invalidate the read caches. Progress samples,
//! many per second, travel on the progress bus: Redis pub/sub when
//! `REDIS_URL` is set (channel `{prefix}:progress`, over the cache's Redis
//! tier), else — and whenever Redis does not answer — PostgreSQL
//! `NOTIFY nexus_progress`, which every server always listens to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use crate::background::Background;
use crate::jobs::progress::{Event, Hub, ProgressMsg};
use nexus_loaders::cache::Cache;

use crate::read_cache::{AuthChange, ReadCaches};

const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Where progress samples are published: Redis when the cache has it and
/// it answers, PostgreSQL otherwise.
pub struct ProgressBus {
    pool: deadpool_postgres::Pool,
    /// The cache, when it has Redis (its connection, prefix and deadlines).
    redis: Option<Arc<Cache>>,
}

const PROGRESS_CHANNEL: &str = "progress";

impl ProgressBus {
    pub fn new(cache: &Arc<Cache>, pool: deadpool_postgres::Pool) -> ProgressBus {
        ProgressBus {
            pool,
            redis: cache.has_redis().then(|| cache.clone()),
        }
    }

    /// Publishes one sample; false when it could not be sent either way.
    pub async fn publish(&self, sample: &ProgressMsg) -> bool {
        let payload = serde_json::to_string(sample).unwrap_or_default();
        if let Some(cache) = &self.redis
            && cache.publish(PROGRESS_CHANNEL, &payload).await.is_ok()
        {
            return true;
        }
        let Ok(db) = self.pool.get().await else {
            return false;
        };
        db.execute("SELECT pg_notify('nexus_progress', $1)", &[&payload])
            .await
            .is_ok()
    }
}

/// Publishes samples of local jobs every 250 ms while they change.
pub async fn publish_progress(hub: Arc<Hub>, bus: Arc<ProgressBus>) {
    let mut sent: HashMap<Uuid, ProgressMsg> = HashMap::new();
    let mut tick = tokio::time::interval(crate::jobs::progress::PROGRESS_EVERY);
    loop {
        tick.tick().await;
        let samples = hub.samples();
        sent.retain(|id, _| samples.iter().any(|s| s.job_id == *id));
        let changed: Vec<ProgressMsg> = samples
            .into_iter()
            .filter(|s| {
                sent.get(&s.job_id)
                    .is_none_or(|p| (p.rows_read, p.bytes_read) != (s.rows_read, s.bytes_read))
            })
            .collect();
        if changed.is_empty() {
            continue;
        }
        for s in changed {
            if bus.publish(&s).await {
                sent.insert(s.job_id, s);
            }
        }
    }
}

/// Starts the listeners into `tasks`; they reconnect until stopped.
pub fn spawn_listeners(
    tasks: &Background,
    hub: Arc<Hub>,
    caches: Arc<ReadCaches>,
    cache: Arc<Cache>,
    database_url: String,
    bus: &ProgressBus,
) {
    tasks.spawn(listen_postgres(
        Heard {
            hub: hub.clone(),
            caches,
            cache,
        },
        database_url,
    ));
    if let Some(cache) = &bus.redis {
        tasks.spawn(listen_redis(hub, cache.clone()));
    }
}

/// Who the PostgreSQL notifications are for.
struct Heard {
    hub: Arc<Hub>,
    caches: Arc<ReadCaches>,
    cache: Arc<Cache>,
}

impl Heard {
    /// Whatever was cached may have missed a notification: drop it all.
    fn set_listening(&self, on: bool) {
        self.caches.set_listening(on);
        self.cache.clear_local();
    }
}

async fn listen_postgres(heard: Heard, url: String) {
    let channels =
        "LISTEN nexus_jobs; LISTEN nexus_auth; LISTEN nexus_cache; LISTEN nexus_progress";
    loop {
        let mut database = match nexus_loaders::tls::Database::parse(&url) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "the event listener cannot parse the database URL");
                return;
            }
        };
        database.config.application_name("nexus events");
        match database.config.connect(database.tls.clone()).await {
            Ok((client, mut conn)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                let listen = client.batch_execute(channels);
                let mut listen = std::pin::pin!(listen);
                let mut listening = false;
                loop {
                    tokio::select! {
                        r = &mut listen, if !listening => {
                            if r.is_err() { break; }
                            listening = true;
                            heard.set_listening(true);
                        }
                        m = messages.next() => match m {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                heard.dispatch(n.channel(), n.payload());
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                }
                heard.set_listening(false);
                tracing::warn!("the event listener lost its connection; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "the event listener cannot connect"),
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

impl Heard {
    fn dispatch(&self, channel: &str, payload: &str) {
        let (hub, caches) = (&self.hub, &self.caches);
        match channel {
            "nexus_jobs" => {
                if let Ok(j) = serde_json::from_str::<crate::jobs::progress::JobMsg>(payload) {
                    // Before subscribers hear of the change, so that a read
                    // prompted by it sees the new state.
                    caches.jobs.invalidate(&j.job_id);
                    hub.receive(Event::Job(j));
                }
            }
            "nexus_auth" => caches.session_changed(match payload.split_once(':') {
                Some(("sessions", id)) => match Uuid::parse_str(id) {
                    Ok(id) => AuthChange::Session(id),
                    Err(_) => AuthChange::All,
                },
                // A user changed: role, disabling. Rare; check every session.
                _ => AuthChange::All,
            }),
            "nexus_cache" => self.cache.apply_notice(payload),
            "nexus_progress" => {
                if let Ok(p) = serde_json::from_str(payload) {
                    hub.receive(Event::Progress(p));
                }
            }
            _ => {}
        }
    }
}

async fn listen_redis(hub: Arc<Hub>, cache: Arc<Cache>) {
    loop {
        match cache.subscribe(PROGRESS_CHANNEL).await {
            Ok(mut pubsub) => {
                let mut messages = pubsub.on_message();
                while let Some(m) = messages.next().await {
                    let Ok(payload) = m.get_payload::<String>() else {
                        continue;
                    };
                    if let Ok(p) = serde_json::from_str(&payload) {
                        hub.receive(Event::Progress(p));
                    }
                }
                tracing::warn!("the Redis progress subscription ended; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis progress"),
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}
