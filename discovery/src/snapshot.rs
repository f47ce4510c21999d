//! Owns the published form of discovery: immutable, versioned [`Snapshot`]s of every
//! watched Service's backends, as the gateway consumes them and as the control plane
//! streams them. Whatever the source (embedded watcher, control-plane stream, a test),
//! the gateway sees one [`SnapshotReceiver`]: `None` until the first full sync, then
//! each published snapshot in turn.
//!
//! A Service that did not change between two snapshots is the same `Arc<Service>` in
//! both, so consumers can skip it with `Arc::ptr_eq`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("service key {0:?} is not namespace/name")]
pub struct BadServiceKey(String);

impl FromStr for ServiceKey {
    type Err = BadServiceKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(ns, name))
            }
            _ => Err(BadServiceKey(s.to_owned())),
        }
    }
}

impl Serialize for ServiceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a gateway upstream names a Service port: by name, or by the Service's port
/// number (resolved to the port's name through the Service, else used as the target
/// port itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// One port of a Service as its spec declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Empty for the single unnamed port a Service may have.
    pub name: String,
    pub port: u16,
}

/// An address that may receive traffic for one Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub address: SocketAddr,
    /// Terminating but still serving: finish what is in flight, prefer others.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The port's `appProtocol` (`h2c`, `grpc`, `kubernetes.io/ws`...), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Topology-aware routing hints (`hints.forZones`), empty when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub for_zones: Vec<String>,
}

/// One Service's current backends, already filtered by the endpoint rules
/// (ready, else serving-and-terminating; duplicates once; FQDN slices ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// From the Service object; empty until the Service itself has been seen.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Backends by EndpointSlice port name (`""` for an unnamed port), sorted.
    #[serde(default)]
    pub backends: BTreeMap<String, Vec<Backend>>,
}

impl Service {
    /// The backends for `port`. A name selects the slice ports of that name. A number
    /// selects the Service port with that number and then its name; when the Service
    /// declares no such port, the number is taken as the target port itself.
    pub fn resolve(&self, port: &PortRef) -> Vec<Backend> {
        match port {
            PortRef::Name(name) => self.backends.get(name).cloned().unwrap_or_default(),
            PortRef::Number(number) => {
                if let Some(p) = self.ports.iter().find(|p| p.port == *number) {
                    return self.backends.get(&p.name).cloned().unwrap_or_default();
                }
                let mut out: Vec<Backend> = self
                    .backends
                    .values()
                    .flatten()
                    .filter(|b| b.address.port() == *number)
                    .cloned()
                    .collect();
                out.sort();
                out.dedup();
                out
            }
        }
    }
}

/// Keep only the backends hinted for `zone`, but only when every backend carries
/// hints and at least one names `zone` (the EndpointSlice rule: hints are all or
/// nothing). Otherwise all backends.
pub fn for_zone(backends: Vec<Backend>, zone: Option<&str>) -> Vec<Backend> {
    let Some(zone) = zone else { return backends };
    let all_hinted = !backends.is_empty() && backends.iter().all(|b| !b.for_zones.is_empty());
    if !all_hinted
        || !backends
            .iter()
            .any(|b| b.for_zones.iter().any(|z| z == zone))
    {
        return backends;
    }
    backends
        .into_iter()
        .filter(|b| b.for_zones.iter().any(|z| z == zone))
        .collect()
}

/// Every watched Service at one moment. Versions increase by one per publish within
/// one `epoch`: the instance id of the source that numbered them (a watcher, or a
/// control plane), new at each start, so a restarted source counting from 1 again is
/// told apart from the one before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(default)]
    pub epoch: Arc<str>,
    pub version: u64,
    pub services: BTreeMap<ServiceKey, Arc<Service>>,
}

/// The live view a gateway reads: `None` until the source's first full sync.
pub type SnapshotReceiver = tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>;
/// The writing side of a [`SnapshotReceiver`].
pub type SnapshotSender = tokio::sync::watch::Sender<Option<Arc<Snapshot>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn b(port: u16, zones: &[&str]) -> Backend {
        Backend {
            address: SocketAddr::from(([10, 0, 0, 1], port)),
            draining: false,
            app_protocol: None,
            for_zones: zones.iter().map(|z| z.to_string()).collect(),
        }
    }

    #[test]
    fn ports_resolve_by_name_then_service_number_then_target_number() {
        let svc = Service {
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
            }],
            backends: BTreeMap::from([
                ("http".into(), vec![b(8080, &[]), b(8081, &[])]),
                ("metrics".into(), vec![b(9090, &[])]),
            ]),
        };
        assert_eq!(svc.resolve(&PortRef::Name("http".into())).len(), 2);
        assert_eq!(svc.resolve(&PortRef::Number(80)).len(), 2);
        assert_eq!(svc.resolve(&PortRef::Number(9090)), vec![b(9090, &[])]);
        assert!(svc.resolve(&PortRef::Name("grpc".into())).is_empty());
    }

    #[test]
    fn zone_hints_apply_only_when_complete_and_matching() {
        let all = vec![b(1, &["a"]), b(2, &["b"])];
        assert_eq!(for_zone(all.clone(), Some("a")), vec![b(1, &["a"])]);
        assert_eq!(for_zone(all.clone(), Some("c")), all);
        assert_eq!(for_zone(all.clone(), None), all);
        let partial = vec![b(1, &["a"]), b(2, &[])];
        assert_eq!(for_zone(partial.clone(), Some("a")), partial);
    }

    #[test]
    fn snapshots_round_trip_through_json() {
        let snap = Snapshot {
            epoch: "".into(),
            version: 7,
            services: BTreeMap::from([(
                ServiceKey::new("shop", "orders"),
                Arc::new(Service {
                    ports: vec![],
                    backends: BTreeMap::from([("".into(), vec![b(80, &[])])]),
                }),
            )]),
        };
        let text = serde_json::to_string(&snap).unwrap();
        assert!(text.contains("\"shop/orders\""), "{text}");
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), snap);
        assert!("noslash".parse::<ServiceKey>().is_err());
        assert_eq!(
            serde_json::from_str::<PortRef>("\"http\"").unwrap(),
            PortRef::Name("http".into())
        );
        assert_eq!(
            serde_json::from_str::<PortRef>("80").unwrap(),
            PortRef::Number(80)
        );
    }
}
