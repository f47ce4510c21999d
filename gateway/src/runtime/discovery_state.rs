//! Owns what a runtime knows about discovery: the snapshot it was compiled with, when
//! that snapshot was first applied, and whether a route still waits for the first one;
//! and exporting those facts as the `gateway_discovery_*` gauges.

use std::time::SystemTime;

use discovery::Snapshot;

use super::route::Route;
use crate::metrics::Metrics;

/// What a runtime knows about discovery.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryState {
    /// `kubernetes` or `control_plane`; `None` without a discovery section.
    pub mode: Option<&'static str>,
    /// Epoch (source instance) and version of the snapshot this runtime was compiled
    /// with: a restarted source counts versions from 1 again, under a new epoch.
    pub snapshot_epoch: Option<std::sync::Arc<str>>,
    pub snapshot_version: Option<u64>,
    /// When the gateway first compiled that snapshot (kept across config reloads).
    pub snapshot_at: Option<SystemTime>,
    /// A route proxies to a `kubernetes` upstream but no snapshot has arrived yet: the
    /// gateway is not ready.
    pub waiting: bool,
}

impl DiscoveryState {
    pub fn new(
        mode: Option<&'static str>,
        snapshot: Option<&Snapshot>,
        routes: &[Route],
        previous: Option<&DiscoveryState>,
    ) -> Self {
        let uses_kubernetes = routes.iter().any(Route::uses_kubernetes);
        let snapshot_version = snapshot.map(|s| s.version);
        let snapshot_epoch = snapshot.map(|s| s.epoch.clone());
        let snapshot_at = match previous {
            Some(p)
                if p.snapshot_version == snapshot_version && p.snapshot_epoch == snapshot_epoch =>
            {
                p.snapshot_at
            }
            _ => snapshot_version.map(|_| SystemTime::now()),
        };
        Self {
            mode,
            snapshot_epoch,
            snapshot_version,
            snapshot_at,
            waiting: uses_kubernetes && snapshot.is_none(),
        }
    }

    /// Set the discovery gauges from the runtime serving requests.
    pub fn export_metrics(&self, metrics: &Metrics) {
        metrics
            .discovery_snapshot_version
            .set(self.snapshot_version.map_or(-1, |v| v as i64));
        metrics.discovery_snapshot_age.set(
            self.snapshot_at
                .and_then(|t| t.elapsed().ok())
                .map_or(0.0, |a| a.as_secs_f64()),
        );
        metrics.discovery_waiting.set(i64::from(self.waiting));
    }
}
