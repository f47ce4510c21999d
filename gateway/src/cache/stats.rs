//! Owns the cache's Prometheus metrics: lookups by outcome, coalesced waits, stale
//! responses served, revalidations, evictions, purges and stored bytes and objects.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::status::Outcome;

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

    /// Count one request's outcome.
    pub fn observe(&self, route: &str, outcome: Outcome, collapsed: bool) {
        self.lookups
            .with_label_values(&[route, outcome.label()])
            .inc();
        if collapsed {
            self.coalesced.with_label_values(&[route]).inc();
        }
        match outcome {
            Outcome::StaleWhileRevalidate => self
                .stale_served
                .with_label_values(&[route, "stale_while_revalidate"])
                .inc(),
            Outcome::StaleIfError => self
                .stale_served
                .with_label_values(&[route, "stale_if_error"])
                .inc(),
            Outcome::Revalidated => self
                .revalidations
                .with_label_values(&[route, "not_modified"])
                .inc(),
            Outcome::Refreshed { .. } => self
                .revalidations
                .with_label_values(&[route, "modified"])
                .inc(),
            _ => {}
        }
    }

    /// Bring the process-wide numbers (kept by the storage) into the registry.
    pub fn refresh(&self) {
        let storage = super::storage();
        let evicted = storage.evictions();
        let seen = self.evictions.get();
        if evicted > seen {
            self.evictions.inc_by(evicted - seen);
        }
        self.stored_bytes
            .set(i64::try_from(super::stored_bytes()).unwrap_or(i64::MAX));
        self.stored_objects
            .set(i64::try_from(storage.objects()).unwrap_or(i64::MAX));
    }
}
