//! Owns the per-attempt decisions of a proxied request: whether a failed try may be
//! retried (route policy, method, attempts left, deadline, the upstream's retry budget),
//! how long to back off, and what a response or failure teaches passive outlier
//! detection about the endpoint.

use std::time::{Duration, Instant};

use http::Method;
use pingora::ErrorType;

use crate::metrics::Metrics;
use crate::runtime::Route;
use crate::upstream::policy::RetryOn;
use crate::upstream::{EndpointState, UpstreamPool};

/// Marks the error raised to retry a 502/503/504 answer, so `error_while_proxy` knows
/// the retry was already granted.
pub const RETRY_GATEWAY_ERROR: ErrorType = ErrorType::Custom("retry_gateway_error");

/// The retry reason of a Pingora error raised after the connection was made.
pub fn reason_for(etype: &ErrorType) -> Option<RetryOn> {
    match etype {
        ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::ConnectionClosed
        | ErrorType::ReadError
        | ErrorType::WriteError
        | ErrorType::H1Error => Some(RetryOn::Timeout),
        _ => None,
    }
}

pub fn reason_label(why: RetryOn) -> &'static str {
    match why {
        RetryOn::ConnectFailure => "connect_failure",
        RetryOn::GatewayError => "gateway_error",
        RetryOn::Timeout => "timeout",
        RetryOn::GrpcUnavailable => "grpc_unavailable",
    }
}

/// Everything a retry decision looks at.
#[derive(Debug)]
pub struct RetryCheck<'a> {
    pub route: &'a Route,
    pub pool: &'a UpstreamPool,
    pub method: &'a Method,
    pub why: RetryOn,
    /// Tries made so far, the failed one included.
    pub tries: u32,
    pub deadline: Option<Instant>,
    /// The request body was larger than Pingora's retry buffer: it cannot be re-sent.
    pub body_truncated: bool,
}

/// May this failed try be retried? Takes a retry from the upstream's budget when yes.
pub fn may_retry(c: &RetryCheck<'_>, metrics: &Metrics) -> bool {
    let policy = &c.route.retry;
    if !policy.allows(c.method, c.why)
        || c.tries >= policy.attempts
        || c.body_truncated
        || c.deadline.is_some_and(|d| Instant::now() >= d)
    {
        return false;
    }
    if !c.pool.state.budget.withdraw(&c.pool.retry_budget) {
        metrics
            .retry_budget_exhausted
            .with_label_values(&[&c.pool.name])
            .inc();
        return false;
    }
    metrics
        .retries
        .with_label_values(&[&c.pool.name, reason_label(c.why)])
        .inc();
    true
}

/// How long to wait before try number `tries + 1`, or `None` if the deadline does not
/// leave room for it.
pub fn backoff(
    route: &Route,
    tries: u32,
    deadline: Option<Instant>,
    unit_random: f64,
) -> Option<Duration> {
    let wait = route.retry.backoff(tries, unit_random);
    match deadline {
        Some(d) if Instant::now() + wait >= d => None,
        _ => Some(wait),
    }
}

/// Feed passive outlier detection with one try's outcome.
pub fn record_outcome(pool: &UpstreamPool, state: &EndpointState, failed: bool, metrics: &Metrics) {
    let Some(od) = &pool.outlier_detection else {
        return;
    };
    if !failed {
        state.record_success(od);
    } else if state.record_failure(od, || pool.may_eject()) {
        metrics.ejections.with_label_values(&[&pool.name]).inc();
        tracing::warn!(upstream = %pool.name, ejections = state.ejections(), "endpoint ejected after consecutive failures");
    }
}
