//! Owns the validated resilience settings of upstreams and routes: active health checks,
//! passive outlier detection, panic threshold, retry policy and budget, and request
//! limits, and the whole validated upstream ([`UpstreamSpec`]). `config::spec` builds
//! them; `upstream` and `proxy` act on them.

use std::time::Duration;

use discovery::{PortRef, ServiceKey};
use http::{HeaderValue, Method, StatusCode};

use super::LoadBalancing;

/// One validated upstream.
#[derive(Debug)]
pub struct UpstreamSpec {
    /// Static endpoints; empty for a `kubernetes` upstream, whose endpoints come from
    /// the discovery snapshot at compile time.
    pub endpoints: Vec<EndpointSpec>,
    pub kubernetes: Option<KubernetesUpstreamSpec>,
    pub load_balancing: LoadBalancing,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub health_check: Option<HealthCheck>,
    /// `None`: passive ejection is off.
    pub outlier_detection: Option<OutlierDetection>,
    /// Percent (0-100) of available endpoints below which health is ignored.
    pub panic_threshold: u32,
    pub retry_budget: RetryBudgetPolicy,
    pub limits: Limits,
    pub sticky_cookie: Option<StickyCookie>,
    /// HTTP version and TLS to the endpoints.
    pub transport: super::transport::TransportSpec,
}

/// A `kubernetes` upstream: the endpoints of one Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesUpstreamSpec {
    pub service: ServiceKey,
    pub port: PortRef,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    /// `host:port` as written.
    pub address: String,
    pub weight: u32,
    /// Takes no new requests; requests already in flight finish.
    pub draining: bool,
    /// The Service port's `appProtocol`, for a `kubernetes` endpoint.
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect that succeeds within the timeout.
    Tcp,
    /// `GET path` with an optional Host header; healthy when the status is expected.
    Http {
        path: String,
        host: Option<HeaderValue>,
        expected: Vec<StatusCode>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    /// Each wait is `interval` plus up to this much random extra, so checks of many
    /// gateways do not arrive in lockstep.
    pub jitter: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// Cookie-based session affinity: the cookie names the endpoint (by an opaque hash of
/// its address) that served the client first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickyCookie {
    pub name: String,
    pub ttl: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses or connect failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// Ejection time is `base_ejection_time` x the endpoint's ejection count, capped.
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// At most this share of a pool's endpoints is ejected at once (0-100).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Retries may add at most `ratio` x recent requests, plus `min_per_second`, so that
/// during an outage they cannot multiply the load on the upstream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetPolicy {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudgetPolicy {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Connections in use at once (tries in progress; HTTP/1.1 uses one connection per
    /// try). Idle keepalive connections are pooled by Pingora and not counted.
    pub max_connections: Option<u32>,
    /// Requests in flight to the upstream at once.
    pub max_in_flight: Option<u32>,
    /// Requests allowed to wait for a free in-flight slot; beyond it, 503 at once.
    pub max_pending: u32,
}

/// What a retry is allowed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    /// The connection could not be made: always safe, the request was not sent.
    ConnectFailure,
    /// The upstream answered 502, 503 or 504.
    GatewayError,
    /// The try ran into the route's per-try timeout, or the connection broke mid-request.
    Timeout,
    /// A gRPC call answered UNAVAILABLE (`grpc-status: 14`) before any message: the
    /// server says it did not process the call. Only when named in `retry_on`, and then
    /// whatever the method (every gRPC call is a POST).
    GrpcUnavailable,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total tries, the first included (1 = no retries).
    pub attempts: u32,
    pub retry_on: Vec<RetryOn>,
    /// Retry methods that are not idempotent (POST, PATCH) on gateway errors and timeouts.
    pub non_idempotent: bool,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// Without a route policy: connect failures are retried once on another endpoint.
    fn default() -> Self {
        Self {
            attempts: 2,
            retry_on: vec![RetryOn::ConnectFailure],
            non_idempotent: false,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }
}

impl RetryPolicy {
    /// May `method` be retried for `why`?
    pub fn allows(&self, method: &Method, why: RetryOn) -> bool {
        self.retry_on.contains(&why)
            && (matches!(why, RetryOn::ConnectFailure | RetryOn::GrpcUnavailable)
                || self.non_idempotent
                || method.is_idempotent())
    }

    /// Exponential backoff with full jitter before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32, unit_random: f64) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        exp.min(self.backoff_max)
            .mul_f64(unit_random.clamp(0.0, 1.0))
    }
}
