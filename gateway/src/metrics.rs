//! Owns the gateway's Prometheus metrics. Labels are bounded: route ids and upstream
//! names come from the config, methods outside the standard set collapse to `OTHER`,
//! statuses to their class; a raw path is never a label.
//!
//! Bottom layer: metric *definitions* only. The features that own the numbers update
//! them (and set the gauges that mirror their state before a scrape); this module
//! imports nothing from the rest of the crate.

mod policies;
mod protocols;

use http::Method;
pub use policies::PolicyMetrics;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
pub use protocols::ProtocolMetrics;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub config_version: IntGauge,
    pub config_reloads: IntCounter,
    pub config_reload_failures: IntCounter,
    pub retries: IntCounterVec,
    pub ratelimit_decisions: IntCounterVec,
    pub ratelimit_backend_errors: IntCounterVec,
    pub ratelimit_fallback_active: IntGaugeVec,
    pub retry_budget_exhausted: IntCounterVec,
    pub ejections: IntCounterVec,
    pub overloaded: IntCounterVec,
    /// Refreshed from the running runtime at scrape time.
    pub endpoints: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    pub endpoint_healthy: IntGaugeVec,
    pub endpoint_in_flight: IntGaugeVec,
    pub endpoint_selected: IntGaugeVec,
    /// JWT results by provider: valid, cached, forbidden, missing, expired, malformed...
    pub jwt_validations: IntCounterVec,
    pub jwks_refresh: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_last_success: GaugeVec,
    /// JWKS keys left out of a fetch, by provider and reason (weak_key, unusable).
    pub jwks_keys_skipped: IntCounterVec,
    /// Per Redis backend: circuit state (0 closed, 1 half-open, 2 open) and transitions.
    pub redis_circuit_state: IntGaugeVec,
    pub redis_circuit_transitions: IntCounterVec,
    /// Redis calls by backend and result (ok, error, skipped: the circuit was open).
    pub redis_calls: IntCounterVec,
    /// Response cache counters (the cache feature updates them).
    pub cache: CacheMetrics,
    /// Client connections and edge limits (the listener and `edge` update them).
    pub edge: EdgeMetrics,
    /// IP rules, CORS, API keys, forward auth, compression.
    pub policies: PolicyMetrics,
    /// TLS handshakes and certificates, HTTP/2 errors, requests by protocol.
    pub protocols: ProtocolMetrics,
    /// Runtimes swapped in for a new discovery snapshot.
    pub discovery_updates: IntCounter,
    pub discovery_update_failures: IntCounter,
    /// Refreshed from the running runtime at scrape time.
    pub discovery_snapshot_version: IntGauge,
    pub discovery_snapshot_age: Gauge,
    pub discovery_waiting: IntGauge,
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests handled, by route, method and status class",
            ),
            &["route", "method", "status_class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request head to the end of the response, by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_upstream_duration_seconds",
                "Time from choosing an endpoint to its response head, by upstream",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let config_version = IntGauge::new(
            "gateway_config_version",
            "Version of the runtime serving requests",
        )?;
        let config_reloads = IntCounter::new(
            "gateway_config_reloads_total",
            "Config reloads that were compiled and swapped in",
        )?;
        let config_reload_failures = IntCounter::new(
            "gateway_config_reload_failures_total",
            "Config reloads rejected; the previous runtime kept serving",
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_retries_total",
                "Retries granted, by upstream and reason",
            ),
            &["upstream", "reason"],
        )?;
        let retry_budget_exhausted = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_retry_budget_exhausted_total",
                "Retries refused because the upstream's retry budget was spent",
            ),
            &["upstream"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_ejections_total",
                "Endpoints ejected by outlier detection",
            ),
            &["upstream"],
        )?;
        let overloaded = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_overloaded_total",
                "Requests answered 503 because the upstream's in-flight limit and queue were full",
            ),
            &["upstream"],
        )?;
        let endpoints = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_endpoints",
                "Endpoints by state: healthy, unhealthy (active check), ejected (passive), draining",
            ),
            &["upstream", "state"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_in_flight",
                "Requests in flight to the upstream",
            ),
            &["upstream"],
        )?;
        let per_endpoint = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["upstream", "endpoint"])
        };
        let endpoint_healthy = per_endpoint(
            "gateway_upstream_endpoint_available",
            "1 when the endpoint may take new requests (healthy, not ejected, not draining)",
        )?;
        let endpoint_in_flight = per_endpoint(
            "gateway_upstream_endpoint_in_flight",
            "Requests in flight to the endpoint",
        )?;
        let endpoint_selected = per_endpoint(
            "gateway_upstream_endpoint_selected",
            "Times the endpoint was selected since it appeared (a counter, exported at scrape)",
        )?;
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "gateway_ratelimit_decisions_total",
                "Rate-limit decisions, by policy and result",
            ),
            &["policy", "result"],
        )?;
        let ratelimit_backend_errors = IntCounterVec::new(
            Opts::new(
                "gateway_ratelimit_backend_errors_total",
                "Cluster rate-limit decisions Redis could not make in time",
            ),
            &["policy"],
        )?;
        let ratelimit_fallback_active = IntGaugeVec::new(
            Opts::new(
                "gateway_ratelimit_fallback_active",
                "1 while a cluster policy runs on its failure mode because Redis is away",
            ),
            &["policy"],
        )?;
        registry.register(Box::new(ratelimit_fallback_active.clone()))?;
        let jwt_validations = IntCounterVec::new(
            Opts::new(
                "gateway_jwt_validations_total",
                "JWT checks, by provider and result",
            ),
            &["provider", "result"],
        )?;
        let jwks_refresh = IntCounterVec::new(
            Opts::new(
                "gateway_jwks_refresh_total",
                "JWKS fetches, by provider and result (success, error)",
            ),
            &["provider", "result"],
        )?;
        let jwks_keys = IntGaugeVec::new(
            Opts::new(
                "gateway_jwks_keys",
                "Keys a provider can verify with right now",
            ),
            &["provider"],
        )?;
        let jwks_last_success = GaugeVec::new(
            Opts::new(
                "gateway_jwks_last_success_timestamp_seconds",
                "Unix time of the provider's last successful JWKS fetch (0: never)",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(jwt_validations.clone()))?;
        registry.register(Box::new(jwks_refresh.clone()))?;
        registry.register(Box::new(jwks_keys.clone()))?;
        registry.register(Box::new(jwks_last_success.clone()))?;
        let discovery_updates = IntCounter::new(
            "gateway_discovery_updates_total",
            "Runtimes compiled and swapped in for a new discovery snapshot",
        )?;
        let discovery_update_failures = IntCounter::new(
            "gateway_discovery_update_failures_total",
            "Discovery snapshots that could not be compiled; the running endpoints stayed",
        )?;
        let discovery_snapshot_version = IntGauge::new(
            "gateway_discovery_snapshot_version",
            "Version of the discovery snapshot the running routing table was built from (-1: none yet)",
        )?;
        let discovery_snapshot_age = Gauge::new(
            "gateway_discovery_snapshot_age_seconds",
            "Seconds since the running discovery snapshot was applied (time since the last endpoint change)",
        )?;
        let discovery_waiting = IntGauge::new(
            "gateway_discovery_waiting",
            "1 while a route uses a kubernetes upstream and no snapshot has arrived (not ready)",
        )?;
        let jwks_keys_skipped = IntCounterVec::new(
            Opts::new(
                "gateway_jwks_keys_skipped_total",
                "JWKS keys left out of a fetched key set, by provider and reason (weak_key, unusable)",
            ),
            &["provider", "reason"],
        )?;
        let redis_circuit_state = IntGaugeVec::new(
            Opts::new(
                "gateway_redis_circuit_state",
                "Circuit breaker of a Redis backend: 0 closed, 1 half-open (probing), 2 open (Redis skipped)",
            ),
            &["backend"],
        )?;
        let redis_circuit_transitions = IntCounterVec::new(
            Opts::new(
                "gateway_redis_circuit_transitions_total",
                "Circuit breaker transitions of a Redis backend, by the state entered",
            ),
            &["backend", "state"],
        )?;
        let redis_calls = IntCounterVec::new(
            Opts::new(
                "gateway_redis_calls_total",
                "Rate-limit calls to a Redis backend, by result (ok, error, skipped while the circuit is open)",
            ),
            &["backend", "result"],
        )?;
        registry.register(Box::new(jwks_keys_skipped.clone()))?;
        registry.register(Box::new(redis_circuit_state.clone()))?;
        registry.register(Box::new(redis_circuit_transitions.clone()))?;
        registry.register(Box::new(redis_calls.clone()))?;
        registry.register(Box::new(discovery_updates.clone()))?;
        registry.register(Box::new(discovery_update_failures.clone()))?;
        registry.register(Box::new(discovery_snapshot_version.clone()))?;
        registry.register(Box::new(discovery_snapshot_age.clone()))?;
        registry.register(Box::new(discovery_waiting.clone()))?;
        for c in [
            &retries,
            &retry_budget_exhausted,
            &ejections,
            &overloaded,
            &ratelimit_decisions,
            &ratelimit_backend_errors,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        for g in [
            &endpoints,
            &in_flight,
            &endpoint_healthy,
            &endpoint_in_flight,
            &endpoint_selected,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        let cache = CacheMetrics::new(&registry)?;
        let edge = EdgeMetrics::new(&registry)?;
        let policies = PolicyMetrics::new(&registry, &LATENCY_BUCKETS)?;
        let protocols = ProtocolMetrics::new(&registry)?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_reload_failures.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            config_version,
            config_reloads,
            config_reload_failures,
            retries,
            ratelimit_decisions,
            ratelimit_backend_errors,
            ratelimit_fallback_active,
            retry_budget_exhausted,
            ejections,
            overloaded,
            endpoints,
            in_flight,
            endpoint_healthy,
            endpoint_in_flight,
            endpoint_selected,
            jwt_validations,
            jwks_refresh,
            jwks_keys,
            jwks_last_success,
            jwks_keys_skipped,
            redis_circuit_state,
            redis_circuit_transitions,
            redis_calls,
            cache,
            edge,
            policies,
            protocols,
            discovery_updates,
            discovery_update_failures,
            discovery_snapshot_version,
            discovery_snapshot_age,
            discovery_waiting,
        })
    }

    /// The registry every gateway metric is in; discovery's own metrics (watcher or
    /// control-plane client) register here too, so one `/metrics` shows both.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric. Gauges that mirror other state
    /// (endpoints, keys, cache size) are set by their owners before this is called.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// A bounded label for a request method.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The `status_class` of a request that got no response because the client went away
/// first (nginx logs these as 499).
pub const CLIENT_CLOSED: &str = "client_closed";

/// The `status_class` of a status; 0 (no response) is `none`, see [`CLIENT_CLOSED`].
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Client connections and the edge limits: open connections and refusals per listener,
/// and client-side timeouts by kind.
#[derive(Debug)]
pub struct EdgeMetrics {
    pub connections_active: IntGaugeVec,
    pub connections_rejected: IntCounterVec,
    pub downstream_timeouts: IntCounterVec,
}

impl EdgeMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections_active = IntGaugeVec::new(
            Opts::new(
                "gateway_connections_active",
                "Open client connections, by listener",
            ),
            &["listener"],
        )?;
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "gateway_connections_rejected_total",
                "Client connections closed at accept, by listener and reason (max_connections, max_connections_per_client_ip)",
            ),
            &["listener", "reason"],
        )?;
        let downstream_timeouts = IntCounterVec::new(
            Opts::new(
                "gateway_downstream_timeouts_total",
                "Client connections cut off by a client-side timeout, by listener and kind (request_header, keepalive_idle, request_body_idle, downstream_write)",
            ),
            &["listener", "kind"],
        )?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(downstream_timeouts.clone()))?;
        Ok(Self {
            connections_active,
            connections_rejected,
            downstream_timeouts,
        })
    }
}

/// The response cache's metrics: lookups by outcome, coalesced waits, stale responses
/// served, revalidations, evictions, purges, and stored bytes and objects.
#[derive(Debug)]
pub struct CacheMetrics {
    pub lookups: IntCounterVec,
    pub coalesced: IntCounterVec,
    pub stale_served: IntCounterVec,
    pub revalidations: IntCounterVec,
    pub evictions: IntCounter,
    pub purged: IntCounter,
    pub stored_bytes: IntGauge,
    pub stored_objects: IntGauge,
}

impl CacheMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "gateway_cache_requests_total",
                "Requests on caching routes, by route and outcome (hit, stale, miss, expired, revalidated, uncacheable, bypass)",
            ),
            &["route", "outcome"],
        )?;
        let coalesced = IntCounterVec::new(
            Opts::new(
                "gateway_cache_coalesced_total",
                "Requests that waited for another request to fill the same entry",
            ),
            &["route"],
        )?;
        let stale_served = IntCounterVec::new(
            Opts::new(
                "gateway_cache_stale_served_total",
                "Stale responses served, by reason (stale_while_revalidate, stale_if_error)",
            ),
            &["route", "reason"],
        )?;
        let revalidations = IntCounterVec::new(
            Opts::new(
                "gateway_cache_revalidations_total",
                "Conditional requests for stale entries, by result (not_modified, modified)",
            ),
            &["route", "result"],
        )?;
        let evictions = IntCounter::new(
            "gateway_cache_evictions_total",
            "Entries removed to stay under server.cache.max_bytes",
        )?;
        let purged = IntCounter::new(
            "gateway_cache_purged_total",
            "Entries removed by purges and unsafe-method invalidations",
        )?;
        let stored_bytes = IntGauge::new(
            "gateway_cache_stored_bytes",
            "Bytes (headers and bodies) held by the cache",
        )?;
        let stored_objects = IntGauge::new(
            "gateway_cache_stored_objects",
            "Responses held by the cache",
        )?;
        for c in [&lookups, &coalesced, &stale_served, &revalidations] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(evictions.clone()))?;
        registry.register(Box::new(purged.clone()))?;
        registry.register(Box::new(stored_bytes.clone()))?;
        registry.register(Box::new(stored_objects.clone()))?;
        Ok(Self {
            lookups,
            coalesced,
            stale_served,
            revalidations,
            evictions,
            purged,
            stored_bytes,
            stored_objects,
        })
    }
}
