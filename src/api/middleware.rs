//! Cross-cutting request handling: one front layer every response passes
//! through (request id, security headers, problem+json for errors, the
//! access log and HTTP metrics with HdrHistogram percentiles per route),
//! the request deadline, and per-user rate limiting (per address when
//! anonymous) with a burst, answering 429 with Retry-After.
//!
//! Each layer axum applies costs every request a boxed clone of the route's
//! service and a boxed future: with eleven of them a status read spent
//! about half its CPU in the stack (`benches/ws-load.sh`), hence one layer
//! for what every response needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hdrhistogram::Histogram;

use super::AppState;
use super::auth::{Verified, bearer};
use super::client_addr::ClientAddr;
use super::problem::Problem;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers every response carries unless its handler set its own.
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 4] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::CONTENT_SECURITY_POLICY),
    ),
];

/// Request ids in the form of a random (version 4) UUID: a random seed per
/// process, then a counter, so that no request waits on the kernel's
/// random source; unique within a process, and across processes as
/// likely as random ones.
pub struct RequestIds {
    seed: u128,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        RequestIds {
            seed: rand::random(),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // The counter's low 48 bits stay clear of the version and variant bits.
        let bytes = (self.seed ^ u128::from(n)).to_le_bytes();
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Request latencies per route: the current minute (flushed to the database
/// for `nexus perf report`) and everything since start (for /health/detailed),
/// with the route's Prometheus handles (registering one per request costs a
/// keyed lookup with allocations).
pub struct HttpStats {
    inner: Mutex<StatsInner>,
    in_flight: metrics::Gauge,
}

struct StatsInner {
    routes: HashMap<String, Route>,
    total: Histogram<u64>,
}

struct Route {
    minute: RouteStats,
    duration: metrics::Histogram,
    /// Requests by method and status.
    requests: Vec<(Method, u16, metrics::Counter)>,
}

pub struct RouteStats {
    pub histogram: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
}

impl RouteStats {
    fn new() -> RouteStats {
        RouteStats {
            histogram: histogram(),
            requests: 0,
            errors: 0,
        }
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl HttpStats {
    /// After the metrics recorder is installed: the handles are its.
    pub fn new() -> HttpStats {
        HttpStats {
            inner: Mutex::new(StatsInner {
                routes: HashMap::new(),
                total: histogram(),
            }),
            in_flight: metrics::gauge!("nexus_http_requests_in_flight"),
        }
    }

    fn record(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 600_000_000);
        let mut inner = self.lock();
        let _ = inner.total.record(micros);
        if !inner.routes.contains_key(route) {
            let entry = Route {
                minute: RouteStats::new(),
                duration: metrics::histogram!("nexus_http_request_duration_seconds", "route" => route.to_string()),
                requests: Vec::new(),
            };
            inner.routes.insert(route.to_string(), entry);
        }
        let Some(r) = inner.routes.get_mut(route) else {
            return;
        };
        let _ = r.minute.histogram.record(micros);
        r.minute.requests += 1;
        r.minute.errors += u64::from(status >= 500);
        r.duration.record(elapsed.as_secs_f64());
        match r
            .requests
            .iter()
            .find(|(m, s, _)| m == method && *s == status)
        {
            Some((_, _, counter)) => counter.increment(1),
            None => {
                let counter = metrics::counter!("nexus_http_requests_total", "route" => route.to_string(), "method" => method.to_string(), "status" => status.to_string());
                counter.increment(1);
                r.requests.push((method.clone(), status, counter));
            }
        }
    }

    /// Takes the current minute's figures, leaving it empty.
    pub fn take_minute(&self) -> HashMap<String, RouteStats> {
        let mut inner = self.lock();
        inner
            .routes
            .iter_mut()
            .filter(|(_, r)| r.minute.requests > 0)
            .map(|(route, r)| {
                (
                    route.clone(),
                    std::mem::replace(&mut r.minute, RouteStats::new()),
                )
            })
            .collect()
    }

    /// Held only over counters: a poisoned lock's figures are still whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (count, p50, p95, p99) in milliseconds, since start.
    pub fn percentiles(&self) -> (u64, f64, f64, f64) {
        let inner = self.lock();
        let h = &inner.total;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (h.len(), ms(0.5), ms(0.95), ms(0.99))
    }
}

/// Counts a request as in flight until dropped (also when the client goes away).
struct InFlight<'a>(&'a metrics::Gauge);

impl InFlight<'_> {
    fn enter(gauge: &metrics::Gauge) -> InFlight<'_> {
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What every response passes through: its request id (the client's, or a
/// new one) on the request and the response, error statuses as
/// problem+json, the security headers, the access log line and metrics.
pub async fn front(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = match req.headers().get(X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = state.request_ids.next();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    // The path is copied only for a log line that will be written.
    let path = tracing::enabled!(target: "nexus::access", tracing::Level::INFO)
        .then(|| req.uri().path().to_owned());
    let in_flight = InFlight::enter(&state.stats.in_flight);
    let res = next.run(req).await;
    drop(in_flight);
    let mut res = super::problem::as_problem(res).await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    state.stats.record(route, &method, status, elapsed);
    if let Some(path) = path {
        tracing::info!(
            target: "nexus::access",
            method = %method,
            path,
            route,
            status,
            ms = elapsed.as_secs_f64() * 1000.0,
            request_id = request_id.to_str().unwrap_or(""),
            "request"
        );
    }
    let headers = res.headers_mut();
    headers.entry(X_REQUEST_ID).or_insert(request_id);
    for (name, value) in SECURITY_HEADERS {
        headers.entry(name).or_insert(value);
    }
    res
}

/// Whom the rate limit counts: a user (any of their sessions) or, without
/// a valid access token, a client address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ClientKey {
    User(uuid::Uuid),
    Addr(IpAddr),
}

pub type Limiter = DefaultKeyedRateLimiter<ClientKey>;

pub fn limiter(per_minute: u32, burst: u32) -> Limiter {
    let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
}

/// How often the limiter forgets clients whose allowance is full again.
pub const LIMITER_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the limiter's per-client map to clients seen recently: every
/// [`LIMITER_PRUNE_EVERY`], those back to a full allowance are dropped (a
/// fresh entry would be the same), so that a stream of new addresses cannot
/// grow it without bound.
pub async fn prune_limiter(limiter: std::sync::Arc<Limiter>) {
    metrics::describe_gauge!(
        "nexus_http_rate_limit_keys",
        "Clients (users or addresses) the rate limiter remembers"
    );
    let mut tick = tokio::time::interval(LIMITER_PRUNE_EVERY);
    loop {
        tick.tick().await;
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// What an API route passes through after the front layer: the rate limit,
/// and for a bounded route (all but uploads and MCP, which stream for as
/// long as they take) the JSON body limit and `NEXUS_REQUEST_TIMEOUT`. One
/// layer for the three: see the module's comment.
#[derive(Clone)]
pub struct Gate {
    state: AppState,
    /// The body limit, for a route under the deadline.
    bounded: Option<usize>,
}

impl Gate {
    pub fn bounded(state: &AppState, body_limit: usize) -> Gate {
        Gate {
            state: state.clone(),
            bounded: Some(body_limit),
        }
    }

    pub fn streaming(state: &AppState) -> Gate {
        Gate {
            state: state.clone(),
            bounded: None,
        }
    }
}

/// Limits each user (by the subject of a valid access token) or, without
/// one, each client address; then, on a bounded route, reads at most the
/// body limit (413 past it) and answers 503 (problem+json, Retry-After)
/// for a request whose handler has not answered within
/// `NEXUS_REQUEST_TIMEOUT`, rather than leaving the client hanging (the
/// handler is dropped).
pub async fn gate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let state = &gate.state;
    let claims = bearer(req.headers()).and_then(|t| state.keys.verify(t));
    let key = match &claims {
        Some(c) => ClientKey::User(c.sub),
        None => ClientKey::Addr(
            ClientAddr::of(
                req.extensions(),
                req.headers(),
                &state.config.trusted_proxies,
            )
            .0,
        ),
    };
    if let Err(not_until) = state.limiter.check_key(&key) {
        metrics::counter!("nexus_http_rate_limited_total").increment(1);
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Problem::too_many(
            wait.as_secs_f64().ceil() as u64,
            "rate limit exceeded; retry after the time given",
        )
        .into_response();
    }
    if let Some(claims) = claims {
        req.extensions_mut().insert(Verified(claims));
    }
    let Some(limit) = gate.bounded else {
        return next.run(req).await;
    };
    // Extractors that read a body whole (JSON) answer 413 past the limit.
    let req = req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)));
    match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            metrics::counter!("nexus_http_timeouts_total").increment(1);
            Problem::unavailable("the request took too long (NEXUS_REQUEST_TIMEOUT); try again")
                .into_response()
        }
    }
}
