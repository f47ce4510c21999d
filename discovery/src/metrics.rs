//! Owns discovery's Prometheus metrics. They are registered into a registry the caller
//! supplies, so the gateway (embedded watcher or control-plane client) and the
//! `discovery` binary each expose them on their own `/metrics`.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every discovery metric. Cloning shares the underlying series.
#[derive(Clone, Debug)]
pub struct DiscoveryMetrics {
    /// 1 once the first full list of every watched resource has been published.
    pub synced: IntGauge,
    pub snapshot_version: IntGauge,
    pub publishes: IntCounter,
    pub services: IntGauge,
    pub endpoints: IntGauge,
    /// Seconds since the watch was last known healthy; 0 while it is.
    pub stale_seconds: Gauge,
    pub watch_errors: IntCounterVec,
    pub events: IntCounterVec,
    pub relists: IntCounterVec,
    /// 1 while a change that removes too many endpoints waits for confirmation.
    pub mass_deletion_held: IntGauge,
    pub mass_deletions_held: IntCounter,
    pub rebuild_seconds: Histogram,
    /// Control-plane server: connected subscribers, and subscribers sent a fresh full
    /// snapshot because they fell behind.
    pub subscribers: IntGauge,
    pub subscriber_lagged: IntCounter,
    /// Control-plane client: 1 while connected; reconnect attempts.
    pub client_connected: IntGauge,
    pub client_reconnects: IntCounter,
}

#[derive(Debug, thiserror::Error)]
#[error("registering discovery metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl DiscoveryMetrics {
    /// Metrics registered into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, MetricsError> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.synced.clone()))?;
        registry.register(Box::new(m.snapshot_version.clone()))?;
        registry.register(Box::new(m.publishes.clone()))?;
        registry.register(Box::new(m.services.clone()))?;
        registry.register(Box::new(m.endpoints.clone()))?;
        registry.register(Box::new(m.stale_seconds.clone()))?;
        registry.register(Box::new(m.watch_errors.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.relists.clone()))?;
        registry.register(Box::new(m.mass_deletion_held.clone()))?;
        registry.register(Box::new(m.mass_deletions_held.clone()))?;
        registry.register(Box::new(m.rebuild_seconds.clone()))?;
        registry.register(Box::new(m.subscribers.clone()))?;
        registry.register(Box::new(m.subscriber_lagged.clone()))?;
        registry.register(Box::new(m.client_connected.clone()))?;
        registry.register(Box::new(m.client_reconnects.clone()))?;
        Ok(m)
    }

    /// Metrics that nobody scrapes (tests, or a caller without a registry).
    pub fn unregistered() -> Result<Self, MetricsError> {
        Ok(Self {
            synced: IntGauge::new(
                "discovery_synced",
                "1 once the first full list of every watched resource was published",
            )?,
            snapshot_version: IntGauge::new(
                "discovery_snapshot_version",
                "Version of the last published snapshot",
            )?,
            publishes: IntCounter::new("discovery_publishes_total", "Snapshots published")?,
            services: IntGauge::new("discovery_services", "Services in the last snapshot")?,
            endpoints: IntGauge::new(
                "discovery_endpoints",
                "Backends over all Services and ports in the last snapshot",
            )?,
            stale_seconds: Gauge::new(
                "discovery_snapshot_stale_seconds",
                "Seconds since the source was last known healthy (0 while it is): the age of the snapshot in use during an outage",
            )?,
            watch_errors: IntCounterVec::new(
                Opts::new("discovery_watch_errors_total", "Watch errors by resource"),
                &["resource"],
            )?,
            events: IntCounterVec::new(
                Opts::new(
                    "discovery_watch_events_total",
                    "Watch events by resource and type",
                ),
                &["resource", "type"],
            )?,
            relists: IntCounterVec::new(
                Opts::new(
                    "discovery_relists_total",
                    "Complete lists applied, by resource",
                ),
                &["resource"],
            )?,
            mass_deletion_held: IntGauge::new(
                "discovery_mass_deletion_held",
                "1 while a change removing too many endpoints waits for confirmation",
            )?,
            mass_deletions_held: IntCounter::new(
                "discovery_mass_deletions_held_total",
                "Changes held by the mass-deletion guard",
            )?,
            rebuild_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "discovery_rebuild_seconds",
                    "Time to recompute the changed Services of one snapshot",
                )
                .buckets(vec![
                    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ]),
            )?,
            subscribers: IntGauge::new(
                "discovery_subscribers",
                "Gateways connected to the control-plane stream",
            )?,
            subscriber_lagged: IntCounter::new(
                "discovery_subscriber_lagged_total",
                "Subscribers that fell behind and were sent a fresh full snapshot",
            )?,
            client_connected: IntGauge::new(
                "discovery_client_connected",
                "1 while connected to the control plane",
            )?,
            client_reconnects: IntCounter::new(
                "discovery_client_reconnects_total",
                "Connection attempts to the control plane after the first",
            )?,
        })
    }
}
