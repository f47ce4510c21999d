//! Owns local rate limiting: named policies (GCRA via `governor` keyed limiters), the
//! request key each policy counts by, the decision, and the IETF `RateLimit-Policy` /
//! `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers, structured-field form).
//!
//! A policy's limiter lives in an `Arc` handed from one runtime to the next while the
//! policy's definition is unchanged, so a reload does not reset anyone's budget. Memory is
//! bounded: idle keys are evicted every few thousand decisions, and while `max_keys` keys
//! are live every request is counted in one shared overflow bucket until a sweep frees
//! room (degraded, counted in a metric, but still limited: never unlimited).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// What a policy counts requests by; parts are joined into one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Header(HeaderName),
    RouteId,
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
    pub on_failure: crate::ratelimit_cluster::FailurePolicy,
    /// Replicas sharing the limit; the local fallback allows limit / replicas.
    pub expected_replicas: u32,
    /// `mode: batched`; `None` is strict (one Redis round trip per request).
    pub batch: Option<crate::ratelimit_cluster::Batch>,
}

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Decisions between two sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;
const OVERFLOW_KEY: &str = "\u{0}overflow";

#[derive(Debug)]
pub struct PolicyLimiter<C: Clock = DefaultClock> {
    pub spec: PolicySpec,
    /// Identity of the definition; an unchanged one keeps its limiter across reloads.
    pub fingerprint: String,
    limiter: Keyed<C>,
    decisions: AtomicU64,
    /// Times a new key went to the overflow bucket because `max_keys` were live.
    pub overflowed: AtomicU64,
    /// Set for `scope: cluster` policies.
    pub cluster: Option<crate::ratelimit_cluster::ClusterPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

impl PolicyLimiter<DefaultClock> {
    pub fn new(spec: PolicySpec) -> Self {
        Self::with_clock(spec, DefaultClock::default())
    }
}

impl<C: Clock> PolicyLimiter<C> {
    pub fn with_clock(spec: PolicySpec, clock: C) -> Self {
        // One cell every period/count; at most `burst` at once.
        let per_cell = spec.period / spec.count.max(1);
        let burst = NonZeroU32::new(spec.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            fingerprint: format!("{spec:?}"),
            limiter: RateLimiter::dashmap_with_clock(quota, clock).with_middleware(),
            spec,
            decisions: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            cluster: None,
        }
    }

    /// Seconds in the policy window (for the `w` parameter).
    fn window_secs(&self) -> u64 {
        self.spec.period.as_secs().max(1)
    }

    pub fn check(&self, key: &str) -> Verdict {
        let n = self.decisions.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let key = if self.limiter.len() >= self.spec.max_keys {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            OVERFLOW_KEY
        } else {
            key
        };
        match self.limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => Verdict::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Limited {
                retry_after: not_until.wait_time_from(self.limiter.clock().now()),
            },
        }
    }

    /// Time until the bucket is full again, given what remains.
    fn reset_after(&self, remaining: u32) -> Duration {
        let per_cell = self.spec.period / self.spec.count.max(1);
        per_cell * self.spec.burst.saturating_sub(remaining)
    }
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
/// Local policies decide in process; cluster policies ask Redis (see `ratelimit_cluster`).
pub async fn decide(
    limiters: &[std::sync::Arc<PolicyLimiter>],
    input: &KeyInput<'_>,
    metrics: &crate::metrics::Metrics,
) -> Outcome {
    let mut out = Outcome::default();
    for l in limiters {
        let key = key_for(&l.spec, input);
        let verdict = match &l.cluster {
            None => l.check(&key),
            Some(cluster) => match cluster.check(&l.spec, &key, metrics).await {
                crate::ratelimit_cluster::ClusterOutcome::Verdict(v) => v,
                crate::ratelimit_cluster::ClusterOutcome::Unavailable => {
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

/// The client's address: the peer, or, when the peer is a trusted proxy, the last
/// untrusted hop of `X-Forwarded-For` (or `Forwarded: for=`).
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for element in v.split(',') {
            for pair in element.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=')
                    && k.eq_ignore_ascii_case("for")
                {
                    let val = val.trim_matches('"');
                    let val = val
                        .strip_prefix('[')
                        .and_then(|v| v.split(']').next())
                        .unwrap_or(val);
                    let val = if val.matches(':').count() == 1 {
                        val.split(':').next().unwrap_or(val)
                    } else {
                        val
                    };
                    if let Ok(ip) = val.parse() {
                        hops.push(ip);
                    }
                }
            }
        }
    }
    if hops.is_empty() {
        for v in headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            hops.extend(v.split(',').filter_map(|h| h.trim().parse::<IpAddr>().ok()));
        }
    }
    // Right to left: the first address not of our own proxies is the client.
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::sync::Arc;

    fn spec(count: u32, period: Duration, burst: u32) -> PolicySpec {
        PolicySpec {
            name: "p".into(),
            count,
            period,
            burst,
            key: vec![KeyPart::ClientIp],
            max_keys: 1000,
            legacy_headers: true,
            cluster: None,
        }
    }

    fn input(headers: &HeaderMap) -> KeyInput<'_> {
        KeyInput {
            client_ip: Some("10.0.0.1".parse().unwrap()),
            headers,
            route_id: "r",
        }
    }

    #[test]
    fn burst_then_refill_with_headers() {
        let clock = FakeRelativeClock::default();
        let l = Arc::new(PolicyLimiter::with_clock(
            spec(2, Duration::from_secs(1), 4),
            clock.clone(),
        ));
        let h = HeaderMap::new();
        let first = decide_local(&[Arc::clone(&l)], &input(&h));
        assert_eq!(first.entries[0], ("p".into(), 2, 1, 3, 1));
        let hs = first.headers();
        assert_eq!(hs[0], ("ratelimit-policy", "\"p\";q=2;w=1".into()));
        assert_eq!(hs[1], ("ratelimit", "\"p\";r=3;t=1".into()));
        assert!(
            hs.iter()
                .any(|(k, v)| *k == "x-ratelimit-remaining" && v == "3")
        );
        for want in [2, 1, 0] {
            assert_eq!(
                decide_local(&[Arc::clone(&l)], &input(&h)).entries[0].3,
                want
            );
        }
        // At the limit: refused, Retry-After until one cell (500 ms) refills -> 1 s.
        let limited = decide_local(&[Arc::clone(&l)], &input(&h));
        assert_eq!(limited.retry_after, Some(Duration::from_millis(500)));
        assert!(limited.headers().contains(&("retry-after", "1".into())));
        assert_eq!(limited.entries[0].3, 0);
        // After 1 s two cells are back.
        clock.advance(Duration::from_secs(1));
        assert_eq!(decide_local(&[Arc::clone(&l)], &input(&h)).entries[0].3, 1);
        assert_eq!(decide_local(&[Arc::clone(&l)], &input(&h)).entries[0].3, 0);
        assert!(decide_local(&[l], &input(&h)).retry_after.is_some());
    }

    #[test]
    fn admits_burst_plus_rate_times_elapsed() {
        let clock = FakeRelativeClock::default();
        let l = PolicyLimiter::with_clock(spec(10, Duration::from_secs(1), 5), clock.clone());
        let mut admitted = 0;
        // Attempts every 10 ms from 0 to 3 s inclusive: burst 5 + 10/s x 3 s = 35.
        for _ in 0..=300 {
            admitted += usize::from(matches!(l.check("k"), Verdict::Allowed { .. }));
            clock.advance(Duration::from_millis(10));
        }
        assert_eq!(admitted, 35);
    }

    #[test]
    fn keys_and_fallbacks() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        let mut s = spec(1, Duration::from_secs(1), 1);
        s.key = vec![
            KeyPart::Header(HeaderName::from_static("x-user")),
            KeyPart::RouteId,
        ];
        assert_eq!(key_for(&s, &input(&headers)), "h=alice|r");
        // No header: the client IP stands in; the limit is never skipped.
        assert_eq!(key_for(&s, &input(&HeaderMap::new())), "ip=10.0.0.1|r");
    }

    #[test]
    fn client_ip_honours_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.1.1.1".parse().unwrap(),
        );
        let proxy: IpAddr = "10.2.2.2".parse().unwrap();
        let stranger: IpAddr = "192.0.2.5".parse().unwrap();
        assert_eq!(
            client_ip(Some(proxy), &h, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(stranger), &h, &trusted),
            Some(stranger),
            "untrusted peers cannot claim an address"
        );
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.9.9.9"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            client_ip(Some(proxy), &f, &trusted),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(proxy), &HeaderMap::new(), &trusted),
            Some(proxy)
        );
    }

    #[test]
    fn overflow_bucket_bounds_memory_but_still_limits() {
        let clock = FakeRelativeClock::default();
        let mut s = spec(1, Duration::from_secs(60), 1);
        s.max_keys = 2;
        let l = PolicyLimiter::with_clock(s, clock);
        assert!(matches!(l.check("a"), Verdict::Allowed { .. }));
        assert!(matches!(l.check("b"), Verdict::Allowed { .. }));
        // Third and fourth new keys share the overflow bucket: one passes, one does not.
        assert!(matches!(l.check("c"), Verdict::Allowed { .. }));
        assert!(matches!(l.check("d"), Verdict::Limited { .. }));
        assert_eq!(l.overflowed.load(Ordering::Relaxed), 2);
    }
}
