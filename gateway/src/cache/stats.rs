//! Owns updating the cache's Prometheus metrics (defined in `crate::metrics`): lookups
//! by outcome, coalesced waits, stale responses served, revalidations, and the stored
//! bytes, objects and evictions that the storage keeps.

use crate::metrics::CacheMetrics;

use super::status::Outcome;

/// Count one request's outcome.
pub fn observe(metrics: &CacheMetrics, route: &str, outcome: Outcome, collapsed: bool) {
    metrics
        .lookups
        .with_label_values(&[route, outcome.label()])
        .inc();
    if collapsed {
        metrics.coalesced.with_label_values(&[route]).inc();
    }
    match outcome {
        Outcome::StaleWhileRevalidate => metrics
            .stale_served
            .with_label_values(&[route, "stale_while_revalidate"])
            .inc(),
        Outcome::StaleIfError => metrics
            .stale_served
            .with_label_values(&[route, "stale_if_error"])
            .inc(),
        Outcome::Revalidated => metrics
            .revalidations
            .with_label_values(&[route, "not_modified"])
            .inc(),
        Outcome::Refreshed { .. } => metrics
            .revalidations
            .with_label_values(&[route, "modified"])
            .inc(),
        _ => {}
    }
}

/// Bring the process-wide numbers (kept by the storage) into the registry.
pub fn refresh(metrics: &CacheMetrics) {
    let storage = super::storage();
    let evicted = storage.evictions();
    let seen = metrics.evictions.get();
    if evicted > seen {
        metrics.evictions.inc_by(evicted - seen);
    }
    metrics
        .stored_bytes
        .set(i64::try_from(super::stored_bytes()).unwrap_or(i64::MAX));
    metrics
        .stored_objects
        .set(i64::try_from(storage.objects()).unwrap_or(i64::MAX));
}
