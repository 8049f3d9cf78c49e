//! Cross-cutting request handling: the access log and HTTP metrics (with
//! HdrHistogram percentiles per route), and per-user rate limiting (per
//! address when anonymous) with a burst, answering 429 with Retry-After.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hdrhistogram::Histogram;

use super::AppState;
use super::client_addr::ClientAddr;
use super::problem::Problem;

/// Request latencies per route: the current minute (flushed to the database
/// for `nexus perf report`) and everything since start (for /health/detailed).
pub struct HttpStats {
    minute: Mutex<HashMap<String, RouteStats>>,
    total: Mutex<Histogram<u64>>,
}

pub struct RouteStats {
    pub histogram: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl HttpStats {
    pub fn new() -> HttpStats {
        HttpStats {
            minute: Mutex::new(HashMap::new()),
            total: Mutex::new(histogram()),
        }
    }

    fn record(&self, route: &str, micros: u64, error: bool) {
        let micros = micros.clamp(1, 600_000_000);
        let mut m = self.minute.lock().expect("stats lock");
        let s = m.entry(route.to_string()).or_insert_with(|| RouteStats {
            histogram: histogram(),
            requests: 0,
            errors: 0,
        });
        let _ = s.histogram.record(micros);
        s.requests += 1;
        s.errors += error as u64;
        drop(m);
        let _ = self.total.lock().expect("stats lock").record(micros);
    }

    /// Takes the current minute's figures, leaving it empty.
    pub fn take_minute(&self) -> HashMap<String, RouteStats> {
        std::mem::take(&mut *self.minute.lock().expect("stats lock"))
    }

    /// (count, p50, p95, p99) in milliseconds, since start.
    pub fn percentiles(&self) -> (u64, f64, f64, f64) {
        let h = self.total.lock().expect("stats lock");
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (h.len(), ms(0.5), ms(0.95), ms(0.99))
    }
}

/// Counts a request as in flight until dropped (also when the client goes away).
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        metrics::gauge!("nexus_http_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("nexus_http_requests_in_flight").decrement(1.0);
    }
}

/// Access log line and metrics for every request.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let path = req.uri().path().to_string();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let in_flight = InFlight::enter();
    let res = next.run(req).await;
    drop(in_flight);
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    metrics::counter!("nexus_http_requests_total", "route" => route.clone(), "method" => method.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("nexus_http_request_duration_seconds", "route" => route.clone())
        .record(elapsed.as_secs_f64());
    state
        .stats
        .record(&route, elapsed.as_micros() as u64, status >= 500);
    tracing::info!(
        target: "nexus::access",
        method = %method,
        path,
        route,
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
        request_id,
        "request"
    );
    res
}

pub type Limiter = DefaultKeyedRateLimiter<String>;

pub fn limiter(per_minute: u32, burst: u32) -> Limiter {
    let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
}

/// Answers 503 (problem+json, Retry-After) for a request whose handler has
/// not answered within `NEXUS_REQUEST_TIMEOUT`, rather than leaving the
/// client hanging; the handler is dropped.
pub async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            metrics::counter!("nexus_http_timeouts_total").increment(1);
            Problem::unavailable("the request took too long (NEXUS_REQUEST_TIMEOUT); try again")
                .into_response()
        }
    }
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

/// Limits each user (by the subject of a valid access token) or, without
/// one, each client address.
pub async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let user = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.keys.verify(t))
        .map(|c| format!("user:{}", c.sub));
    let key = user.unwrap_or_else(|| {
        let client = ClientAddr::of(
            req.extensions(),
            req.headers(),
            &state.config.trusted_proxies,
        );
        format!("ip:{}", client.0)
    });
    match state.limiter.check_key(&key) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            metrics::counter!("nexus_http_rate_limited_total").increment(1);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Problem::too_many(
                wait.as_secs_f64().ceil() as u64,
                "rate limit exceeded; retry after the time given",
            )
            .into_response()
        }
    }
}
