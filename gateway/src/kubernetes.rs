//! Owns the gateway side of Kubernetes discovery: turning a discovery snapshot into the
//! endpoints of `kubernetes` upstreams (at compile time, see `runtime::compile_with`),
//! the discovery facts a runtime carries (snapshot version, whether a route still waits
//! for the first snapshot), and starting the snapshot source the config names (the
//! embedded watcher or a control-plane subscription) on a runtime of its own.

use std::time::SystemTime;

use discovery::Snapshot;
use serde_json::{Value, json};

use crate::config::{KubernetesUpstreamSpec, Spec};
use crate::router::{RouteAction, RouteTable};
use crate::upstream::UpstreamPool;
use crate::upstream::policy::EndpointSpec;

/// The endpoints of one `kubernetes` upstream in `snapshot`: the backends of its
/// Service port, narrowed by zone hints when they apply; none before the first
/// snapshot or while the Service has no backends. Terminating-but-serving backends
/// come through as draining: they finish what they have and take nothing new.
pub fn endpoints(
    snapshot: Option<&Snapshot>,
    upstream: &KubernetesUpstreamSpec,
    zone: Option<&str>,
) -> Vec<EndpointSpec> {
    let Some(service) = snapshot.and_then(|s| s.services.get(&upstream.service)) else {
        return Vec::new();
    };
    discovery::for_zone(service.resolve(&upstream.port), zone)
        .into_iter()
        .map(|b| EndpointSpec {
            address: b.address.to_string(),
            weight: 1,
            draining: b.draining,
        })
        .collect()
}

/// What a runtime knows about discovery.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryState {
    /// `kubernetes` or `control_plane`; `None` without a discovery section.
    pub mode: Option<&'static str>,
    /// Version of the snapshot this runtime was compiled with.
    pub snapshot_version: Option<u64>,
    /// When the gateway first compiled that snapshot (kept across config reloads).
    pub snapshot_at: Option<SystemTime>,
    /// A route proxies to a `kubernetes` upstream but no snapshot has arrived yet: the
    /// gateway is not ready.
    pub waiting: bool,
}

impl DiscoveryState {
    pub fn new(
        spec: &Spec,
        snapshot: Option<&Snapshot>,
        routes: &RouteTable,
        previous: Option<&DiscoveryState>,
    ) -> Self {
        let uses_kubernetes = routes.routes().iter().any(|r| match &r.action {
            RouteAction::Proxy(b) => b.targets.iter().any(|(p, _)| p.kubernetes.is_some()),
            _ => false,
        });
        let snapshot_version = snapshot.map(|s| s.version);
        let snapshot_at = match previous {
            Some(p) if p.snapshot_version == snapshot_version => p.snapshot_at,
            _ => snapshot_version.map(|_| SystemTime::now()),
        };
        Self {
            mode: spec.discovery.as_ref().map(|d| d.mode()),
            snapshot_version,
            snapshot_at,
            waiting: uses_kubernetes && snapshot.is_none(),
        }
    }
}

/// `/admin/upstreams`: where discovery stands.
pub fn describe(d: &DiscoveryState) -> Value {
    json!({
        "mode": d.mode,
        "snapshot_version": d.snapshot_version,
        "snapshot_applied_at": d.snapshot_at.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "waiting_for_first_snapshot": d.waiting,
    })
}

/// `/admin/upstreams`: where a pool's endpoints come from.
pub fn describe_source(pool: &UpstreamPool) -> Value {
    match &pool.kubernetes {
        Some(k) => json!({
            "kind": "kubernetes",
            "namespace": k.service.namespace,
            "service": k.service.name,
            "port": k.port.to_string(),
        }),
        None => json!({"kind": "static"}),
    }
}
