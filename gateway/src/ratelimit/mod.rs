//! Owns rate limiting: named policies (`PolicySpec`), the request key each policy
//! counts by, the request-phase decision over a route's policies ([`decide`]), and the
//! IETF `RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers,
//! structured-field form). `local` decides in process (GCRA via `governor`); `cluster`
//! decides in Redis and falls back to `local` by policy.
//!
//! A policy's limiter lives in an `Arc` handed from one runtime to the next while the
//! policy's definition is unchanged, so a reload does not reset anyone's budget.

pub mod breaker;
pub mod cluster;
pub mod local;

use std::net::IpAddr;
use std::time::Duration;

use governor::clock::Clock;
use http::{HeaderMap, HeaderName};

use crate::metrics::Metrics;
pub use breaker::BreakerSpec;
pub use cluster::{Batch, ClusterOutcome, ClusterPolicy, FailurePolicy, RedisBackend, RedisSpec};
pub use local::{PolicyLimiter, Verdict};

/// What a policy counts requests by; parts are joined into one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Header(HeaderName),
    RouteId,
    /// The API consumer the request authenticated as (client IP when there is none).
    Consumer,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    pub name: String,
    /// `count` requests per `period`, with bursts up to `burst`.
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
    pub key: Vec<KeyPart>,
    pub max_keys: usize,
    /// Also send `X-RateLimit-Limit/Remaining/Reset`.
    pub legacy_headers: bool,
    /// `scope: cluster`: decided in Redis.
    pub cluster: Option<ClusterSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSpec {
    pub on_failure: cluster::FailurePolicy,
    /// Replicas sharing the limit; the local fallback allows limit / replicas.
    pub expected_replicas: u32,
    /// `mode: batched`; `None` is strict (one Redis round trip per request).
    pub batch: Option<cluster::Batch>,
}

fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The outcome of every policy of a route for one request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `(policy name, quota, window, remaining, reset)` per policy.
    pub entries: Vec<(String, u32, u64, u32, u64)>,
    /// Set when some policy refused the request: how long until it would pass.
    pub retry_after: Option<Duration>,
    pub legacy: bool,
    /// A `fail_closed` cluster policy could not reach Redis: answer 503.
    pub unavailable: bool,
}

impl Outcome {
    /// Response headers: `RateLimit-Policy` and `RateLimit` (and the legacy trio).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        let policy = self
            .entries
            .iter()
            .map(|(name, q, w, _, _)| format!("\"{name}\";q={q};w={w}"))
            .collect::<Vec<_>>()
            .join(", ");
        let state = self
            .entries
            .iter()
            .map(|(name, _, _, r, t)| format!("\"{name}\";r={r};t={t}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = vec![("ratelimit-policy", policy), ("ratelimit", state)];
        if self.legacy {
            // The most restrictive policy speaks for the legacy headers.
            if let Some((_, q, _, r, t)) = self.entries.iter().min_by_key(|e| e.3) {
                out.push(("x-ratelimit-limit", q.to_string()));
                out.push(("x-ratelimit-remaining", r.to_string()));
                out.push(("x-ratelimit-reset", t.to_string()));
            }
        }
        if let Some(wait) = self.retry_after {
            out.push(("retry-after", secs_up(wait).max(1).to_string()));
        }
        out
    }
}

/// The request facts keys are built from.
#[derive(Debug)]
pub struct KeyInput<'a> {
    pub client_ip: Option<IpAddr>,
    pub headers: &'a HeaderMap,
    pub route_id: &'a str,
    /// The consumer of a verified API key.
    pub consumer: Option<&'a str>,
}

/// Build `policy`'s key for a request. A missing header falls back to the client IP, so
/// leaving a header out never escapes the limit.
pub fn key_for(spec: &PolicySpec, input: &KeyInput<'_>) -> String {
    let ip = || {
        input
            .client_ip
            .map_or_else(|| "-".to_owned(), |ip| ip.to_string())
    };
    let mut key = String::new();
    for part in &spec.key {
        if !key.is_empty() {
            key.push('|');
        }
        match part {
            KeyPart::ClientIp => key.push_str(&ip()),
            KeyPart::RouteId => key.push_str(input.route_id),
            KeyPart::Consumer => match input.consumer {
                Some(c) => {
                    key.push_str("c=");
                    key.push_str(c);
                }
                None => {
                    key.push_str("ip=");
                    key.push_str(&ip());
                }
            },
            KeyPart::Header(name) => match input.headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if !v.is_empty() => {
                    key.push_str("h=");
                    key.push_str(v);
                }
                _ => {
                    key.push_str("ip=");
                    key.push_str(&ip());
                }
            },
        }
    }
    key
}

/// Check every policy of a route (all must pass) and collect the header values.
/// Local policies decide in process; cluster policies ask Redis (see `cluster`).
pub async fn decide(
    limiters: &[std::sync::Arc<PolicyLimiter>],
    input: &KeyInput<'_>,
    metrics: &Metrics,
) -> Outcome {
    let mut out = Outcome::default();
    for l in limiters {
        let key = key_for(&l.spec, input);
        let verdict = match &l.cluster {
            None => l.check(&key),
            Some(cluster) => match cluster.check(&l.spec, &key, metrics).await {
                cluster::ClusterOutcome::Verdict(v) => v,
                cluster::ClusterOutcome::Unavailable => {
                    out.unavailable = true;
                    continue;
                }
            },
        };
        out.record(l, verdict);
    }
    out
}

impl Outcome {
    fn record<C: Clock>(&mut self, l: &PolicyLimiter<C>, verdict: Verdict) {
        let (remaining, wait) = match verdict {
            Verdict::Allowed { remaining } => (remaining, None),
            Verdict::Limited { retry_after } => (0, Some(retry_after)),
        };
        self.legacy |= l.spec.legacy_headers;
        let reset = match wait {
            Some(w) => secs_up(w),
            None => secs_up(l.reset_after(remaining)),
        };
        self.entries.push((
            l.spec.name.clone(),
            l.spec.count,
            l.window_secs(),
            remaining,
            reset,
        ));
        if let Some(w) = wait {
            self.retry_after = Some(self.retry_after.map_or(w, |r| r.max(w)));
        }
    }
}

/// Check local policies synchronously (tests and benchmarks with injected clocks).
pub fn decide_local<C: Clock>(
    limiters: &[std::sync::Arc<PolicyLimiter<C>>],
    input: &KeyInput<'_>,
) -> Outcome {
    let mut out = Outcome::default();
    for l in limiters {
        let key = key_for(&l.spec, input);
        out.record(l, l.check(&key));
    }
    out
}

#[cfg(test)]
mod tests;
