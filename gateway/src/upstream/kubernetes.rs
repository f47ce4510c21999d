//! Owns `kubernetes` upstreams' side of a discovery snapshot: which endpoints the
//! snapshot gives one Service port (zone hints and draining applied), compiled into the
//! pool like static endpoints, and how `/admin/upstreams` names a pool's source.

use discovery::Snapshot;
use serde_json::{Value, json};

use super::UpstreamPool;
use super::policy::{EndpointSpec, KubernetesUpstreamSpec};

/// The endpoints of one `kubernetes` upstream in `snapshot`: the backends of its
/// Service port, narrowed by zone hints when they apply; none before the first
/// snapshot or while the Service has no backends.
///
/// Terminating-but-serving backends come through as draining (they finish what they
/// have and take nothing new) while any other backend is left. When they are all
/// there is (the model's fallback when no endpoint is ready), they take traffic, as
/// kube-proxy does: a pool of only draining endpoints would answer 503 while the pods
/// still serve.
pub fn endpoints(
    snapshot: Option<&Snapshot>,
    upstream: &KubernetesUpstreamSpec,
    zone: Option<&str>,
) -> Vec<EndpointSpec> {
    let Some(service) = snapshot.and_then(|s| s.services.get(&upstream.service)) else {
        return Vec::new();
    };
    let backends = discovery::for_zone(service.resolve(&upstream.port), zone);
    let only_draining = backends.iter().all(|b| b.draining);
    backends
        .into_iter()
        .map(|b| EndpointSpec {
            address: b.address.to_string(),
            weight: 1,
            draining: b.draining && !only_draining,
            app_protocol: b.app_protocol,
        })
        .collect()
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
