//! Owns cluster-wide rate limiting in Redis (`scope: cluster`, strict mode): one atomic
//! Lua script per decision runs GCRA with Redis `TIME` as the clock, so replicas with
//! skewed clocks agree. The connection (a reconnecting `ConnectionManager`, opened lazily
//! so the gateway starts while Redis is down) lives for the whole process.
//!
//! When Redis fails or is slower than its timeout, each policy applies its
//! `on_redis_failure`: `fail_open` (allow), `fail_closed` (503), or `local_fallback` (a
//! local limiter at the cluster limit divided by `expected_replicas`). The switch is logged
//! once per transition and shown in metrics; it reverts when Redis answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use super::breaker::{Breaker, BreakerSpec, Permit};
use super::{PolicyLimiter, PolicySpec, Verdict};
use crate::metrics::Metrics;

/// GCRA: `tat` (theoretical arrival time, µs) per key; one cell is available while
/// `tat + interval - tolerance <= now`. Takes up to ARGV[3] cells at once (1 in strict
/// mode, the batch size in batched mode) and returns {granted, wait_us, remaining}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local can = math.floor((now + tolerance - tat) / interval)
if can < 1 then
  return {0, tat + interval - tolerance - now, 0}
end
local take = math.min(can, want)
local new_tat = tat + take * interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {take, 0, math.floor((tolerance - (new_tat - now)) / interval)}
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    FailOpen,
    FailClosed,
    LocalFallback,
}

impl FailurePolicy {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "fail_open" => Ok(Self::FailOpen),
            "fail_closed" => Ok(Self::FailClosed),
            "local_fallback" => Ok(Self::LocalFallback),
            other => Err(format!(
                "unknown on_redis_failure {other:?}: use fail_open, fail_closed or local_fallback"
            )),
        }
    }
}

/// `server.redis`: where cluster limits keep their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSpec {
    /// `redis://[user[:password]@]host:port[/db]` (or `rediss://`).
    pub url: String,
    /// Per call (connecting takes at most twice this).
    pub timeout: Duration,
    /// The `AUTH` password, read from this file on every (re)connect so a rotated
    /// Secret applies without a restart; it overrides a password in `url`.
    pub password_file: Option<std::path::PathBuf>,
}

/// The process-wide Redis connection for cluster limits.
pub struct RedisBackend {
    spec: RedisSpec,
    conn: Mutex<Option<ConnectionManager>>,
    last_connect: std::sync::Mutex<Option<std::time::Instant>>,
    script: redis::Script,
    breaker: Breaker,
    /// Where the calls go, for their spans.
    peer: Peer,
}

/// The server of a Redis URL as trace attributes show it (never its credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    host: String,
    port: Option<u16>,
    db: i64,
}

impl Peer {
    fn of(url: &str) -> Peer {
        use redis::{ConnectionAddr, IntoConnectionInfo};
        match url.into_connection_info() {
            Ok(info) => {
                let (host, port) = match info.addr {
                    ConnectionAddr::Tcp(h, p) => (h, Some(p)),
                    ConnectionAddr::TcpTls { host, port, .. } => (host, Some(port)),
                    ConnectionAddr::Unix(path) => (path.display().to_string(), None),
                };
                Peer {
                    host,
                    port,
                    db: info.redis.db,
                }
            }
            // The spec checked the URL; this only keeps spans meaningful if not.
            Err(_) => Peer {
                host: crate::redact::url(url).into_owned(),
                port: None,
                db: 0,
            },
        }
    }
}

/// Least time between two attempts to open the first connection to Redis.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &crate::redact::url(&self.spec.url))
            .field("timeout", &self.spec.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// The settings this backend was made for (changed settings need a new one).
    pub fn identity(&self) -> &RedisSpec {
        &self.spec
    }

    /// The circuit breaker settings it runs with.
    pub fn breaker_spec(&self) -> &BreakerSpec {
        self.breaker.spec()
    }
}

/// A cluster decision, or why there is none.
#[derive(Debug)]
pub enum ClusterVerdict {
    Decided(Verdict),
    /// Redis is skipped (its circuit is open): apply the policy's failure mode.
    Unavailable,
    /// One call failed while the circuit is closed: decide locally this once.
    Failed,
}

/// Why `take` has no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Down {
    /// The circuit is open (or this failure opened it).
    Open,
    /// A failure the circuit tolerates.
    Failed,
}

impl RedisBackend {
    pub fn new(spec: RedisSpec, breaker: BreakerSpec) -> Self {
        let label = crate::redact::url(&spec.url).into_owned();
        Self {
            peer: Peer::of(&spec.url),
            spec,
            conn: Mutex::new(None),
            last_connect: std::sync::Mutex::new(None),
            script: redis::Script::new(GCRA),
            breaker: Breaker::new(breaker, label),
        }
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        // One task connects at a time; the others wait for it, but never longer than one
        // timeout, so a request decides (or falls back) within one timeout either way.
        let mut guard = tokio::time::timeout(self.spec.timeout, self.conn.lock())
            .await
            .ok()?;
        if let Some(c) = guard.as_ref() {
            return Some(c.clone());
        }
        // While Redis is down, try to connect at most once per `RECONNECT_EVERY`.
        {
            let mut last = self.last_connect.lock().ok()?;
            if last.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
                return None;
            }
            *last = Some(std::time::Instant::now());
        }
        let client = redis::Client::open(self.connection_info()?).ok()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.spec.timeout)
            .set_response_timeout(self.spec.timeout)
            .set_number_of_retries(1);
        let manager = tokio::time::timeout(
            self.spec.timeout * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .ok()?
        .ok()?;
        *guard = Some(manager.clone());
        Some(manager)
    }

    /// The URL's connection settings, with the password from `password_file` when set.
    /// An unreadable file is logged and counts as a failed connection (the policies'
    /// `on_redis_failure` applies), not as a connection without a password.
    fn connection_info(&self) -> Option<redis::ConnectionInfo> {
        use redis::IntoConnectionInfo;
        let mut info = self.spec.url.as_str().into_connection_info().ok()?;
        if let Some(path) = &self.spec.password_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    // Secrets written with `echo` end in a newline that is no part of it.
                    let password = text.trim_end_matches(['\r', '\n']);
                    info.redis.password = Some(password.to_owned());
                }
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "cannot read server.redis.password_file");
                    return None;
                }
            }
        }
        Some(info)
    }

    /// One GCRA decision for `key` of `spec`, within the timeout.
    pub async fn check(&self, spec: &PolicySpec, key: &str, metrics: &Metrics) -> ClusterVerdict {
        match self.take(spec, key, 1, metrics).await {
            Ok((granted, _, remaining)) if granted > 0 => {
                ClusterVerdict::Decided(Verdict::Allowed { remaining })
            }
            Ok((_, wait, _)) => ClusterVerdict::Decided(Verdict::Limited { retry_after: wait }),
            Err(Down::Open) => ClusterVerdict::Unavailable,
            Err(Down::Failed) => ClusterVerdict::Failed,
        }
    }

    /// Take up to `want` cells for `key`: `(granted, wait when none, remaining)`, or
    /// why there is no answer: the circuit is open (Redis not even asked), or this call
    /// failed or was slower than the timeout.
    pub async fn take(
        &self,
        spec: &PolicySpec,
        key: &str,
        want: u32,
        metrics: &Metrics,
    ) -> Result<(u32, Duration, u32), Down> {
        let permit = self.breaker.acquire();
        let label = self.breaker.label();
        if permit == Permit::Skip {
            metrics
                .redis_calls
                .with_label_values(&[label, "skipped"])
                .inc();
            return Err(Down::Open);
        }
        let result = self.call(spec, key, want).await;
        self.breaker.record(permit, result.is_some(), metrics);
        let outcome = if result.is_some() { "ok" } else { "error" };
        metrics
            .redis_calls
            .with_label_values(&[label, outcome])
            .inc();
        match result {
            Some(r) => Ok(r),
            None if self.breaker.is_open() => Err(Down::Open),
            None => Err(Down::Failed),
        }
    }

    async fn call(&self, spec: &PolicySpec, key: &str, want: u32) -> Option<(u32, Duration, u32)> {
        let mut span = self.span(spec);
        let result = self.gcra(spec, key, want).await;
        if let Some(span) = span.as_mut() {
            use opentelemetry::trace::Span as _;
            match &result {
                Ok((granted, _, remaining)) => span.set_attributes([
                    opentelemetry::KeyValue::new("gateway.rate_limit.granted", i64::from(*granted)),
                    opentelemetry::KeyValue::new(
                        "gateway.rate_limit.remaining",
                        i64::from(*remaining),
                    ),
                ]),
                Err(kind) => {
                    span.set_attribute(opentelemetry::KeyValue::new("error.type", *kind));
                    span.set_status(opentelemetry::trace::Status::error(*kind));
                }
            }
            span.end();
        }
        result.ok()
    }

    /// A client span for one Redis call, when the request making it is traced (the
    /// proxy runs the decision in its rate-limit span's context; see `telemetry`).
    /// Database client attributes as the OpenTelemetry semantic conventions name them.
    fn span(&self, spec: &PolicySpec) -> Option<opentelemetry::global::BoxedSpan> {
        use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
        let cx = opentelemetry::Context::current();
        if !cx.span().span_context().is_sampled() {
            return None;
        }
        let tracer = opentelemetry::global::tracer("gateway");
        let mut attrs = vec![
            opentelemetry::KeyValue::new("db.system.name", "redis"),
            opentelemetry::KeyValue::new("db.operation.name", "EVALSHA"),
            opentelemetry::KeyValue::new("db.namespace", self.peer.db.to_string()),
            opentelemetry::KeyValue::new("server.address", self.peer.host.clone()),
            opentelemetry::KeyValue::new("gateway.rate_limit.policy", spec.name.to_string()),
        ];
        if let Some(port) = self.peer.port {
            attrs.push(opentelemetry::KeyValue::new("server.port", i64::from(port)));
        }
        Some(
            tracer
                .span_builder("EVALSHA")
                .with_kind(SpanKind::Client)
                .with_attributes(attrs)
                .start_with_context(&tracer, &cx),
        )
    }

    /// The GCRA script for `key`: `(granted, wait, remaining)` or what went wrong.
    async fn gcra(
        &self,
        spec: &PolicySpec,
        key: &str,
        want: u32,
    ) -> Result<(u32, Duration, u32), &'static str> {
        let mut conn = self.connection().await.ok_or("connection")?;
        let interval = (spec.period.as_micros() / u128::from(spec.count.max(1))).max(1) as u64;
        let tolerance = interval * u64::from(spec.burst.max(1));
        let redis_key = format!("gw:rl:{}:{key}", spec.name);
        let mut call = self.script.key(redis_key);
        call.arg(interval).arg(tolerance).arg(want.max(1));
        let result: Result<Result<(i64, i64, i64), redis::RedisError>, _> =
            tokio::time::timeout(self.spec.timeout, call.invoke_async(&mut conn)).await;
        let (granted, wait_us, remaining) = match result {
            Err(_) => return Err("timeout"),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => return Err("io"),
            Ok(Err(_)) => return Err("redis_error"),
            Ok(Ok(r)) => r,
        };
        Ok((
            granted.max(0) as u32,
            Duration::from_micros(wait_us.max(0) as u64),
            remaining.max(0) as u32,
        ))
    }
}

/// Batched mode: take `size` cells from Redis at once and spend them locally, for at
/// most `interval`. Cells are taken in Redis before they are spent, so the cluster never
/// admits more than the limit (overshoot 0); cells a replica took but did not spend within
/// `interval` are lost, so the worst case admits fewer:
/// `limit - replicas x (size - 1)` per key and interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub size: u32,
    pub interval: Duration,
}

#[derive(Debug)]
struct Allowance {
    cells: u32,
    fetched: std::time::Instant,
}

/// A policy's cluster side: the backend, its failure mode, and the local fallback.
#[derive(Debug)]
pub struct ClusterPolicy {
    pub backend: Arc<RedisBackend>,
    pub on_failure: FailurePolicy,
    pub fallback: Box<PolicyLimiter>,
    pub batch: Option<Batch>,
    allowances: std::sync::Mutex<std::collections::HashMap<String, Allowance>>,
    fallback_active: AtomicBool,
}

/// What the proxy does with a cluster decision.
#[derive(Debug, PartialEq, Eq)]
pub enum ClusterOutcome {
    Verdict(Verdict),
    /// `fail_closed` while Redis is away: answer 503.
    Unavailable,
}

impl ClusterPolicy {
    pub fn new(
        backend: Arc<RedisBackend>,
        on_failure: FailurePolicy,
        fallback: PolicyLimiter,
    ) -> Self {
        Self {
            backend,
            on_failure,
            fallback: Box::new(fallback),
            batch: None,
            allowances: std::sync::Mutex::new(std::collections::HashMap::new()),
            fallback_active: AtomicBool::new(false),
        }
    }

    /// Spend one locally held cell, if a fresh allowance has one.
    fn spend_local(&self, key: &str, batch: &Batch) -> Option<u32> {
        let mut map = self.allowances.lock().ok()?;
        let a = map.get_mut(key)?;
        if a.cells > 0 && a.fetched.elapsed() < batch.interval {
            a.cells -= 1;
            Some(a.cells)
        } else {
            None
        }
    }

    fn keep_allowance(&self, spec: &PolicySpec, key: &str, cells: u32, batch: &Batch) {
        if let Ok(mut map) = self.allowances.lock() {
            if map.len() >= spec.max_keys {
                // Expired allowances are worth nothing: drop them first.
                map.retain(|_, a| a.fetched.elapsed() < batch.interval);
            }
            if map.len() < spec.max_keys {
                map.insert(
                    key.to_owned(),
                    Allowance {
                        cells,
                        fetched: std::time::Instant::now(),
                    },
                );
            }
        }
    }

    async fn decide(&self, spec: &PolicySpec, key: &str, metrics: &Metrics) -> ClusterVerdict {
        let Some(batch) = self.batch else {
            return self.backend.check(spec, key, metrics).await;
        };
        if let Some(left) = self.spend_local(key, &batch) {
            return ClusterVerdict::Decided(Verdict::Allowed { remaining: left });
        }
        match self.backend.take(spec, key, batch.size, metrics).await {
            Ok((0, wait, _)) => ClusterVerdict::Decided(Verdict::Limited { retry_after: wait }),
            Ok((granted, _, remaining)) => {
                self.keep_allowance(spec, key, granted - 1, &batch);
                ClusterVerdict::Decided(Verdict::Allowed {
                    remaining: remaining + granted - 1,
                })
            }
            Err(Down::Open) => ClusterVerdict::Unavailable,
            Err(Down::Failed) => ClusterVerdict::Failed,
        }
    }

    pub async fn check(&self, spec: &PolicySpec, key: &str, metrics: &Metrics) -> ClusterOutcome {
        match self.decide(spec, key, metrics).await {
            ClusterVerdict::Failed => {
                // One failed call while the circuit is closed: no flip into the failure
                // mode (no stray 503s from one slow reply); this request is limited
                // locally at the fallback rate.
                metrics
                    .ratelimit_backend_errors
                    .with_label_values(&[&spec.name])
                    .inc();
                ClusterOutcome::Verdict(self.fallback.check(key))
            }
            ClusterVerdict::Decided(v) => {
                if self.fallback_active.swap(false, Ordering::Relaxed) {
                    tracing::info!(policy = %spec.name, "redis answers again; cluster rate limiting restored");
                    metrics
                        .ratelimit_fallback_active
                        .with_label_values(&[&spec.name])
                        .set(0);
                }
                ClusterOutcome::Verdict(v)
            }
            ClusterVerdict::Unavailable => {
                metrics
                    .ratelimit_backend_errors
                    .with_label_values(&[&spec.name])
                    .inc();
                if !self.fallback_active.swap(true, Ordering::Relaxed) {
                    tracing::warn!(policy = %spec.name, mode = ?self.on_failure, "redis unavailable; rate limiting falls back");
                    metrics
                        .ratelimit_fallback_active
                        .with_label_values(&[&spec.name])
                        .set(1);
                }
                match self.on_failure {
                    FailurePolicy::FailOpen => ClusterOutcome::Verdict(Verdict::Allowed {
                        remaining: spec.burst,
                    }),
                    FailurePolicy::FailClosed => ClusterOutcome::Unavailable,
                    FailurePolicy::LocalFallback => {
                        ClusterOutcome::Verdict(self.fallback.check(key))
                    }
                }
            }
        }
    }
}
