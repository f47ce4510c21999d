//! Owns the edge-policy metric definitions: IP rules, CORS preflights, API keys, forward
//! auth and response compression. Labels are bounded: route ids, consumer-independent
//! results, the three algorithms.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Debug)]
pub struct PolicyMetrics {
    /// Requests refused by IP rules, by route (`-` before a route matched) and scope.
    pub ip_denied: IntCounterVec,
    /// CORS preflights answered, by route and result (allowed, origin_not_allowed, ...).
    pub cors_preflights: IntCounterVec,
    /// API-key checks by result (valid, missing, invalid, ambiguous, disabled, forbidden).
    pub api_keys: IntCounterVec,
    /// Forward-auth checks by route and result (allowed, denied, cached_allowed,
    /// cached_denied, error_denied, error_allowed).
    pub forward_auth: IntCounterVec,
    /// Time of forward-auth calls that went to the service (cache hits excluded).
    pub forward_auth_duration: HistogramVec,
    /// Compressed responses by algorithm.
    pub compressed: IntCounterVec,
    /// Bytes through the encoders, by algorithm and side (in, out).
    pub compression_bytes: IntCounterVec,
}

impl PolicyMetrics {
    pub fn new(registry: &Registry, buckets: &[f64]) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let forward_auth_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_forward_auth_duration_seconds",
                "Time of forward-auth calls to the auth service, by route",
            )
            .buckets(buckets.to_vec()),
            &["route"],
        )?;
        registry.register(Box::new(forward_auth_duration.clone()))?;
        Ok(Self {
            ip_denied: counter(
                "gateway_ip_denied_total",
                "Requests refused by IP rules, by route and scope (listener, route)",
                &["route", "scope"],
            )?,
            cors_preflights: counter(
                "gateway_cors_preflights_total",
                "CORS preflights answered by the gateway, by route and result",
                &["route", "result"],
            )?,
            api_keys: counter(
                "gateway_api_key_checks_total",
                "API-key checks, by route and result",
                &["route", "result"],
            )?,
            forward_auth: counter(
                "gateway_forward_auth_total",
                "Forward-auth decisions, by route and result",
                &["route", "result"],
            )?,
            forward_auth_duration,
            compressed: counter(
                "gateway_compressed_responses_total",
                "Responses compressed by the gateway, by algorithm",
                &["algorithm"],
            )?,
            compression_bytes: counter(
                "gateway_compression_bytes_total",
                "Bytes through the response encoders, by algorithm and side (in, out)",
                &["algorithm", "side"],
            )?,
        })
    }
}
