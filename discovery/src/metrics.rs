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
    /// Control-plane client: failed sessions by reason (`tls`, `unauthorized`,
    /// `status`, `connect`, `idle`, `decode`, `ended`...).
    pub client_errors: IntCounterVec,
    /// The source of snapshots (the API server for a watcher, the control plane for a
    /// client): 1 while it answers; how long the current outage has lasted (0 while
    /// it answers); seconds since it last said anything (bookmarks and heartbeats
    /// count, so this stays small on a healthy quiet watch).
    pub source_connected: IntGauge,
    pub source_outage_seconds: Gauge,
    pub last_contact_age_seconds: Gauge,
    /// Relists forced by discovery itself (`periodic`, `gap` after a long watch
    /// outage), and the objects such relists found different from what the watch
    /// had delivered: drift repaired.
    pub forced_relists: IntCounterVec,
    pub relist_repairs: IntCounterVec,
    /// Control-plane server: TLS certificate reloads by result, failed handshakes,
    /// requests refused for a missing or wrong token.
    pub tls_reloads: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    pub unauthorized: IntCounter,
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
        registry.register(Box::new(m.client_errors.clone()))?;
        registry.register(Box::new(m.source_connected.clone()))?;
        registry.register(Box::new(m.source_outage_seconds.clone()))?;
        registry.register(Box::new(m.last_contact_age_seconds.clone()))?;
        registry.register(Box::new(m.forced_relists.clone()))?;
        registry.register(Box::new(m.relist_repairs.clone()))?;
        registry.register(Box::new(m.tls_reloads.clone()))?;
        registry.register(Box::new(m.tls_handshake_failures.clone()))?;
        registry.register(Box::new(m.unauthorized.clone()))?;
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
            client_errors: IntCounterVec::new(
                Opts::new(
                    "discovery_client_errors_total",
                    "Control-plane sessions that failed, by reason",
                ),
                &["reason"],
            )?,
            source_connected: IntGauge::new(
                "discovery_source_connected",
                "1 while the source of snapshots (API server or control plane) answers",
            )?,
            source_outage_seconds: Gauge::new(
                "discovery_source_outage_seconds",
                "Length of the current outage of the source of snapshots (0 while it answers)",
            )?,
            last_contact_age_seconds: Gauge::new(
                "discovery_last_contact_age_seconds",
                "Seconds since the source of snapshots last sent anything (bookmarks and heartbeats count)",
            )?,
            forced_relists: IntCounterVec::new(
                Opts::new(
                    "discovery_forced_relists_total",
                    "Full relists started by discovery itself, by resource and reason (periodic, gap)",
                ),
                &["resource", "reason"],
            )?,
            relist_repairs: IntCounterVec::new(
                Opts::new(
                    "discovery_relist_repaired_total",
                    "Objects a relist found different from what the watch had delivered (drift repaired), by resource",
                ),
                &["resource"],
            )?,
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "discovery_tls_reloads_total",
                    "Changed TLS certificate files loaded (ok) or refused (error)",
                ),
                &["result"],
            )?,
            tls_handshake_failures: IntCounter::new(
                "discovery_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out",
            )?,
            unauthorized: IntCounter::new(
                "discovery_unauthorized_requests_total",
                "Requests refused for a missing or wrong bearer token",
            )?,
        })
    }
}

/// The control plane's span export (registered only when tracing is on, so a gateway
/// or an untraced control plane exposes none of them).
#[derive(Clone, Debug)]
pub struct TraceMetrics {
    pub spans_exported: IntCounter,
    /// Spans lost, by reason: `queue_full` (the collector is too slow or down),
    /// `export_failed`, `exporter_stopped`.
    pub spans_dropped: IntCounterVec,
    pub export_failures: IntCounter,
}

impl TraceMetrics {
    /// Metrics registered into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, MetricsError> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.spans_exported.clone()))?;
        registry.register(Box::new(m.spans_dropped.clone()))?;
        registry.register(Box::new(m.export_failures.clone()))?;
        Ok(m)
    }

    /// Metrics that nobody scrapes (tests).
    pub fn unregistered() -> Result<Self, MetricsError> {
        Ok(Self {
            spans_exported: IntCounter::new(
                "discovery_trace_spans_exported_total",
                "Spans sent to the OTLP collector",
            )?,
            spans_dropped: IntCounterVec::new(
                Opts::new(
                    "discovery_trace_spans_dropped_total",
                    "Spans lost before reaching the collector, by reason (queue_full, export_failed, exporter_stopped)",
                ),
                &["reason"],
            )?,
            export_failures: IntCounter::new(
                "discovery_trace_export_failures_total",
                "OTLP export calls that failed",
            )?,
        })
    }
}
