//! Owns the watcher's working state: every watched object reduced to the few fields the
//! endpoint rules need (the rest of each Kubernetes object is dropped on arrival), the
//! join of EndpointSlices to their Service, and the computation of one Service's
//! [`Service`] value from its slices.
//!
//! The model never publishes; it remembers which Services may have changed since the
//! last publish (`dirty`) and, asked for a candidate, recomputes only those, reusing the
//! previous `Arc<Service>` whenever the result is equal.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as disc;

use crate::Conditions;
use crate::snapshot::{Backend, Service, ServiceKey, ServicePort, Snapshot};

/// The label that joins an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which API an object came from; part of its identity so a slice and a Service of the
/// same name never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Endpoints,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// What the model keeps of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub ports: Vec<ServicePort>,
    pub publish_not_ready: bool,
}

/// One port of a slice (or of a legacy Endpoints subset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub conditions: Conditions,
    pub for_zones: Vec<String>,
}

/// A set of endpoints that share their ports: one EndpointSlice, or one subset of a
/// legacy Endpoints object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// What the model keeps of an EndpointSlice or legacy Endpoints object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceData {
    pub service: ServiceKey,
    pub groups: Vec<Group>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Service(ServiceInfo),
    Slice(SliceData),
}

/// A watched object after stripping. `data` is `None` when the object exists but does
/// not feed the model (a slice without the service-name label): an update to that
/// state removes whatever the object contributed before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub id: ObjectId,
    pub data: Option<Data>,
}

fn meta_id(
    kind: Kind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectId {
    ObjectId {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Only TCP ports carry HTTP; an absent protocol means TCP.
fn is_tcp(protocol: Option<&String>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

fn port_u16(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

pub fn strip_service(svc: &core::Service) -> Object {
    let spec = svc.spec.as_ref();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_ref()))
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: port_u16(p.port)?,
            })
        })
        .collect();
    Object {
        id: meta_id(Kind::Service, &svc.metadata),
        data: Some(Data::Service(ServiceInfo {
            ports,
            publish_not_ready: spec
                .and_then(|s| s.publish_not_ready_addresses)
                .unwrap_or(false),
        })),
    }
}

pub fn strip_endpoint_slice(slice: &disc::EndpointSlice) -> Object {
    let id = meta_id(Kind::EndpointSlice, &slice.metadata);
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|name| !name.is_empty())
        .map(|name| ServiceKey::new(id.namespace.clone(), name.clone()));
    // FQDN slices name hosts, not addresses; a gateway upstream is an address.
    let Some(service) = service.filter(|_| slice.address_type != "FQDN") else {
        return Object { id, data: None };
    };
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_ref()))
        .filter_map(|p| {
            Some(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                // An unset port means "all ports", which gives no address to dial.
                port: port_u16(p.port?)?,
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .map(|e| SliceEndpoint {
            addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            conditions: e
                .conditions
                .as_ref()
                .map(|c| Conditions {
                    ready: c.ready,
                    serving: c.serving,
                    terminating: c.terminating,
                })
                .unwrap_or_default(),
            for_zones: e
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect(),
        })
        .collect();
    Object {
        id,
        data: Some(Data::Slice(SliceData {
            service,
            groups: vec![Group { ports, endpoints }],
        })),
    }
}

/// Legacy `v1` Endpoints: the object is named after its Service; `addresses` are ready,
/// `notReadyAddresses` are not; there is no terminating state.
pub fn strip_endpoints(eps: &core::Endpoints) -> Object {
    let id = meta_id(Kind::Endpoints, &eps.metadata);
    let service = ServiceKey::new(id.namespace.clone(), id.name.clone());
    let groups = eps
        .subsets
        .iter()
        .flatten()
        .map(|subset| {
            let ports = subset
                .ports
                .iter()
                .flatten()
                .filter(|p| is_tcp(p.protocol.as_ref()))
                .filter_map(|p| {
                    Some(SlicePort {
                        name: p.name.clone().unwrap_or_default(),
                        port: port_u16(p.port)?,
                        app_protocol: p.app_protocol.clone(),
                    })
                })
                .collect();
            let with_ready = |list: &Option<Vec<core::EndpointAddress>>, ready: bool| {
                list.iter()
                    .flatten()
                    .filter_map(|a| a.ip.parse().ok())
                    .map(move |ip| SliceEndpoint {
                        addresses: vec![ip],
                        conditions: Conditions {
                            ready: Some(ready),
                            serving: Some(ready),
                            terminating: Some(false),
                        },
                        for_zones: Vec::new(),
                    })
                    .collect::<Vec<_>>()
            };
            let mut endpoints = with_ready(&subset.addresses, true);
            endpoints.extend(with_ready(&subset.not_ready_addresses, false));
            Group { ports, endpoints }
        })
        .collect();
    Object {
        id,
        data: Some(Data::Slice(SliceData { service, groups })),
    }
}

/// One address's merged view across every slice that lists it.
#[derive(Default)]
struct Merged {
    ready: bool,
    serving_terminating: bool,
    terminating: bool,
    app_protocol: Option<String>,
    for_zones: BTreeSet<String>,
}

/// Apply the endpoint rules to one Service's slices.
pub fn compute_service<'a>(
    info: &ServiceInfo,
    slices: impl IntoIterator<Item = &'a SliceData>,
) -> Service {
    let mut by_port: BTreeMap<&str, BTreeMap<SocketAddr, Merged>> = BTreeMap::new();
    for slice in slices {
        for group in &slice.groups {
            for port in &group.ports {
                let entries = by_port.entry(port.name.as_str()).or_default();
                for ep in &group.endpoints {
                    let c = &ep.conditions;
                    for ip in &ep.addresses {
                        let m = entries.entry(SocketAddr::new(*ip, port.port)).or_default();
                        // A duplicate counts once, with its best state.
                        m.ready |= c.is_ready();
                        m.serving_terminating |= c.is_serving() && c.is_terminating();
                        m.terminating |= c.is_terminating();
                        if m.app_protocol.is_none() {
                            m.app_protocol.clone_from(&port.app_protocol);
                        }
                        m.for_zones.extend(ep.for_zones.iter().cloned());
                    }
                }
            }
        }
    }
    let mut backends = BTreeMap::new();
    for (name, entries) in by_port {
        let make = |(addr, m): (&SocketAddr, &Merged), draining: bool| Backend {
            address: *addr,
            draining,
            app_protocol: m.app_protocol.clone(),
            for_zones: m.for_zones.iter().cloned().collect(),
        };
        let list: Vec<Backend> = if info.publish_not_ready {
            // The Service asks for every endpoint regardless of readiness.
            entries.iter().map(|e| make(e, e.1.terminating)).collect()
        } else {
            let ready: Vec<Backend> = entries
                .iter()
                .filter(|(_, m)| m.ready)
                .map(|e| make(e, false))
                .collect();
            if ready.is_empty() {
                entries
                    .iter()
                    .filter(|(_, m)| m.serving_terminating)
                    .map(|e| make(e, true))
                    .collect()
            } else {
                ready
            }
        };
        backends.insert(name.to_owned(), list);
    }
    Service {
        ports: info.ports.clone(),
        backends,
    }
}

/// Number of backends over every port of a Service.
pub fn endpoint_count(svc: &Service) -> usize {
    svc.backends.values().map(Vec::len).sum()
}

/// Backends of `old` whose address no longer serves the same port name in `new`.
pub fn removed_count(old: &Service, new: Option<&Service>) -> usize {
    old.backends
        .iter()
        .map(|(port, list)| {
            let kept: HashSet<SocketAddr> = new
                .and_then(|n| n.backends.get(port))
                .into_iter()
                .flatten()
                .map(|b| b.address)
                .collect();
            list.iter().filter(|b| !kept.contains(&b.address)).count()
        })
        .sum()
}

/// The outcome of comparing the model with the last published services.
#[derive(Debug, Default)]
pub struct Candidate {
    pub services: BTreeMap<ServiceKey, Arc<Service>>,
    /// Services added, removed or changed.
    pub changed: usize,
    /// Backends of the previous services that are gone.
    pub removed_endpoints: usize,
    pub total_endpoints: usize,
}

#[derive(Default)]
pub struct Model {
    objects: HashMap<ObjectId, (usize, Data)>,
    by_origin: HashMap<usize, HashSet<ObjectId>>,
    slices_by_service: HashMap<ServiceKey, BTreeSet<ObjectId>>,
    dirty: BTreeSet<ServiceKey>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    fn service_of(id: &ObjectId, data: &Data) -> ServiceKey {
        match data {
            Data::Service(_) => ServiceKey::new(id.namespace.clone(), id.name.clone()),
            Data::Slice(s) => s.service.clone(),
        }
    }

    fn remove(&mut self, id: &ObjectId) -> bool {
        let Some((origin, old)) = self.objects.remove(id) else {
            return false;
        };
        if let Some(set) = self.by_origin.get_mut(&origin) {
            set.remove(id);
        }
        let key = Self::service_of(id, &old);
        if let Data::Slice(_) = old
            && let Some(set) = self.slices_by_service.get_mut(&key)
        {
            set.remove(id);
            if set.is_empty() {
                self.slices_by_service.remove(&key);
            }
        }
        self.dirty.insert(key);
        true
    }

    /// Add or replace one object; `true` when anything the model keeps changed.
    pub fn apply(&mut self, origin: usize, object: Object) -> bool {
        let Object { id, data } = object;
        let Some(data) = data else {
            return self.remove(&id);
        };
        if let Some((_, old)) = self.objects.get(&id)
            && *old == data
        {
            return false;
        }
        self.remove(&id);
        let key = Self::service_of(&id, &data);
        if let Data::Slice(_) = data {
            self.slices_by_service
                .entry(key.clone())
                .or_default()
                .insert(id.clone());
        }
        self.by_origin.entry(origin).or_default().insert(id.clone());
        self.objects.insert(id, (origin, data));
        self.dirty.insert(key);
        true
    }

    pub fn delete(&mut self, id: &ObjectId) -> bool {
        self.remove(id)
    }

    /// Replace everything `origin` contributed with `objects` in one step (a relist).
    /// Returns how many objects differed (added, changed or gone): 0 when the relist
    /// only confirmed what the model held.
    pub fn relist(&mut self, origin: usize, objects: Vec<Object>) -> usize {
        let listed: HashSet<&ObjectId> = objects.iter().map(|o| &o.id).collect();
        let gone: Vec<ObjectId> = self
            .by_origin
            .get(&origin)
            .into_iter()
            .flatten()
            .filter(|id| !listed.contains(id))
            .cloned()
            .collect();
        let mut changed = 0;
        for id in &gone {
            changed += usize::from(self.remove(id));
        }
        for object in objects {
            changed += usize::from(self.apply(origin, object));
        }
        changed
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The published form of one Service, if its Service object is known.
    pub fn service(&self, key: &ServiceKey) -> Option<Service> {
        let id = ObjectId {
            kind: Kind::Service,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        let Some((_, Data::Service(info))) = self.objects.get(&id) else {
            return None;
        };
        let slices = self
            .slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|sid| match self.objects.get(sid) {
                Some((_, Data::Slice(s))) => Some(s),
                _ => None,
            });
        Some(compute_service(info, slices))
    }

    /// Recompute the dirty Services against `prev`. Unchanged Services keep `prev`'s
    /// `Arc`. Dirty marks stay until [`Model::published`].
    pub fn candidate(&self, prev: &Snapshot, prev_total: usize) -> Candidate {
        let mut services = prev.services.clone();
        let mut changed = 0;
        let mut removed_endpoints = 0;
        let mut total = prev_total;
        for key in &self.dirty {
            let new = self.service(key);
            let old = prev.services.get(key);
            match (old, new) {
                (Some(old), Some(new)) if **old == new => {}
                (None, None) => {}
                (old, new) => {
                    changed += 1;
                    if let Some(old) = old {
                        removed_endpoints += removed_count(old, new.as_ref());
                        total -= endpoint_count(old);
                    }
                    match new {
                        Some(new) => {
                            total += endpoint_count(&new);
                            services.insert(key.clone(), Arc::new(new));
                        }
                        None => {
                            services.remove(key);
                        }
                    }
                }
            }
        }
        Candidate {
            services,
            changed,
            removed_endpoints,
            total_endpoints: total,
        }
    }

    /// The last candidate was published (or found equal): nothing is dirty any more.
    pub fn published(&mut self) {
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn ep(
        last: u8,
        ready: Option<bool>,
        serving: Option<bool>,
        term: Option<bool>,
    ) -> SliceEndpoint {
        SliceEndpoint {
            addresses: vec![ip(last)],
            conditions: Conditions {
                ready,
                serving,
                terminating: term,
            },
            for_zones: vec![],
        }
    }

    fn slice(svc: &str, ports: &[(&str, u16)], endpoints: Vec<SliceEndpoint>) -> SliceData {
        SliceData {
            service: ServiceKey::new("ns", svc),
            groups: vec![Group {
                ports: ports
                    .iter()
                    .map(|(n, p)| SlicePort {
                        name: n.to_string(),
                        port: *p,
                        app_protocol: None,
                    })
                    .collect(),
                endpoints,
            }],
        }
    }

    fn addrs(svc: &Service, port: &str) -> Vec<(String, bool)> {
        svc.backends
            .get(port)
            .into_iter()
            .flatten()
            .map(|b| (b.address.to_string(), b.draining))
            .collect()
    }

    #[test]
    fn named_ports_resolve_per_slice() {
        // Two slices of one Service: the same port name maps to different numbers.
        let a = slice("web", &[("http", 8080)], vec![ep(1, None, None, None)]);
        let b = slice("web", &[("http", 9090)], vec![ep(2, None, None, None)]);
        let svc = compute_service(&ServiceInfo::default(), [&a, &b]);
        assert_eq!(
            addrs(&svc, "http"),
            vec![
                ("10.0.0.1:8080".into(), false),
                ("10.0.0.2:9090".into(), false)
            ]
        );
    }

    #[test]
    fn terminating_serving_endpoints_drain_only_when_none_ready() {
        let s = slice(
            "web",
            &[("", 80)],
            vec![
                ep(1, Some(false), Some(true), Some(true)),
                ep(2, Some(false), Some(false), Some(true)),
            ],
        );
        let svc = compute_service(&ServiceInfo::default(), [&s]);
        assert_eq!(addrs(&svc, ""), vec![("10.0.0.1:80".into(), true)]);
        let with_ready = slice("web", &[("", 80)], vec![ep(3, Some(true), None, None)]);
        let svc = compute_service(&ServiceInfo::default(), [&s, &with_ready]);
        assert_eq!(addrs(&svc, ""), vec![("10.0.0.3:80".into(), false)]);
    }

    #[test]
    fn publish_not_ready_addresses_takes_every_endpoint() {
        let s = slice(
            "web",
            &[("", 80)],
            vec![ep(1, Some(false), Some(false), None)],
        );
        let info = ServiceInfo {
            ports: vec![],
            publish_not_ready: true,
        };
        assert_eq!(
            addrs(&compute_service(&info, [&s]), ""),
            vec![("10.0.0.1:80".into(), false)]
        );
        assert!(addrs(&compute_service(&ServiceInfo::default(), [&s]), "").is_empty());
    }

    #[test]
    fn a_duplicate_counts_once_with_its_best_state() {
        let a = slice("web", &[("", 80)], vec![ep(1, Some(false), None, None)]);
        let b = slice("web", &[("", 80)], vec![ep(1, Some(true), None, None)]);
        let svc = compute_service(&ServiceInfo::default(), [&a, &b]);
        assert_eq!(addrs(&svc, ""), vec![("10.0.0.1:80".into(), false)]);
    }

    fn obj_service(name: &str) -> Object {
        Object {
            id: ObjectId {
                kind: Kind::Service,
                namespace: "ns".into(),
                name: name.into(),
            },
            data: Some(Data::Service(ServiceInfo::default())),
        }
    }

    fn obj_slice(name: &str, svc: &str, last: u8) -> Object {
        Object {
            id: ObjectId {
                kind: Kind::EndpointSlice,
                namespace: "ns".into(),
                name: name.into(),
            },
            data: Some(Data::Slice(slice(
                svc,
                &[("", 80)],
                vec![ep(last, None, None, None)],
            ))),
        }
    }

    #[test]
    fn unchanged_services_keep_their_arc_and_relists_remove_the_unlisted() {
        let mut m = Model::new();
        assert_eq!(m.relist(0, vec![obj_service("a"), obj_service("b")]), 2);
        assert_eq!(
            m.relist(1, vec![obj_slice("a-1", "a", 1), obj_slice("b-1", "b", 2)]),
            2
        );
        let c = m.candidate(&Snapshot::default(), 0);
        assert_eq!((c.changed, c.total_endpoints), (2, 2));
        m.published();
        let prev = Snapshot {
            epoch: "".into(),
            version: 1,
            services: c.services,
        };
        // Relist: a's slice changes, b's slice disappears.
        assert_eq!(m.relist(1, vec![obj_slice("a-1", "a", 3)]), 2);
        let c = m.candidate(&prev, 2);
        assert_eq!(
            (c.changed, c.removed_endpoints, c.total_endpoints),
            (2, 2, 1)
        );
        assert!(c.services[&ServiceKey::new("ns", "b")].backends.is_empty());
        // An identical relist changes nothing.
        m.published();
        assert_eq!(m.relist(1, vec![obj_slice("a-1", "a", 3)]), 0);
        assert!(!m.has_dirty());
    }
}
