//! Owns `Runtime`: the compiled, immutable product of one `Spec` (route table, upstream
//! pools, request limits) with a monotonically increasing version. Requests pin one
//! `Arc<Runtime>` for their whole life; reloads build a new one and swap it whole.
//! Inputs are the `Spec` and the latest discovery snapshot: `kubernetes` upstreams
//! take their endpoints from it (see `kubernetes`), so a new snapshot is just another
//! compile and swap.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indexmap::IndexMap;

use crate::auth::{JwtRuntime, RouteJwt};
use crate::config::{ActionSpec, Spec, SpecError};
use crate::kubernetes::{self, DiscoveryState};
use crate::ratelimit::PolicyLimiter;
use crate::ratelimit_cluster::{ClusterPolicy, RedisBackend};
use crate::router::{Route, RouteAction, RouteTable};
use crate::upstream::{Backends, UpstreamPool};

#[derive(Debug)]
pub struct Runtime {
    pub version: u64,
    pub compiled_at: SystemTime,
    pub routes: RouteTable,
    pub upstreams: IndexMap<String, Arc<UpstreamPool>>,
    /// Limiters by policy name; an unchanged policy keeps its limiter across reloads.
    pub rate_limiters: IndexMap<String, Arc<PolicyLimiter>>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The Redis connection of cluster rate limits; kept across reloads while unchanged.
    pub redis: Option<Arc<RedisBackend>>,
    pub max_request_header_bytes: usize,
    /// Listener, admin and server settings this runtime was started with; a reload
    /// that changes them is reported as needing a restart.
    pub restart_settings: String,
    pub shutdown_grace_period: Duration,
    /// JWT providers; their key stores outlive reloads while unchanged.
    pub jwt: JwtRuntime,
    /// Every header some route sets from verified claims (`claims_to_headers`). A client
    /// never supplies these on any route: a service behind a route without auth must not
    /// believe an identity the gateway did not verify.
    pub identity_headers: Vec<http::HeaderName>,
    /// `server.cache`; the storage itself lives outside the runtime (see `cache`).
    pub cache: crate::cache::CacheSettings,
    /// The discovery snapshot this runtime was compiled with, and whether a route
    /// waits for one.
    pub discovery: DiscoveryState,
}

/// The settings that only take effect at process start, as comparable text.
pub fn restart_settings(spec: &Spec) -> String {
    format!(
        "listeners={:?} admin={:?} threads={} grace={:?} debounce={:?} cache={:?} discovery={:?}",
        spec.listeners,
        spec.admin.address,
        spec.server.threads,
        spec.server.shutdown_grace_period,
        spec.server.reload_debounce,
        spec.server.cache,
        spec.discovery
    )
}

/// Build a runtime from a validated spec. Fails only on what validation cannot know
/// (an endpoint host that does not resolve, a regex set too large to build); every
/// failure is reported, with its path.
///
/// `previous` is the runtime being replaced: an upstream whose definition is unchanged
/// (and names only IP addresses, so there is nothing to re-resolve) is reused whole, with
/// its ring and counters; every other pool takes over the load state of the endpoints
/// it shares with its predecessor.
pub fn compile(
    spec: &Spec,
    version: u64,
    previous: Option<&Runtime>,
) -> Result<Runtime, Vec<SpecError>> {
    compile_with(spec, None, version, previous)
}

/// [`compile`] with the latest discovery snapshot (`None` before the first sync, or
/// without discovery): `kubernetes` upstreams get the snapshot's backends of their
/// Service port (zone hints applied), or no endpoints at all. A pool's fingerprint
/// includes its backend set, so a snapshot that leaves a Service alone leaves its pool
/// (ring, counters, state) untouched.
pub fn compile_with(
    spec: &Spec,
    snapshot: Option<&discovery::Snapshot>,
    version: u64,
    previous: Option<&Runtime>,
) -> Result<Runtime, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut upstreams = IndexMap::new();
    let zone = spec.discovery.as_ref().and_then(|d| d.zone.as_deref());
    for (name, u) in &spec.upstreams {
        let discovered = u
            .kubernetes
            .as_ref()
            .map(|k| kubernetes::endpoints(snapshot, k, zone));
        let endpoints = discovered.as_deref().unwrap_or(&u.endpoints);
        let fingerprint = match &discovered {
            Some(eps) => format!("{u:?}|{eps:?}"),
            None => format!("{u:?}"),
        };
        let old = previous.and_then(|p| p.upstreams.get(name));
        if let Some(old) = old.filter(|o| {
            o.fingerprint == fingerprint
                && endpoints
                    .iter()
                    .all(|e| e.address.parse::<std::net::SocketAddr>().is_ok())
        }) {
            upstreams.insert(name.clone(), Arc::clone(old));
            continue;
        }
        match UpstreamPool::compile_endpoints(name, u, endpoints, fingerprint, old.map(|o| &**o)) {
            Ok(pool) => {
                upstreams.insert(name.clone(), Arc::new(pool));
            }
            Err(e) => errors.push(SpecError {
                path: format!("upstreams.{name}.endpoints"),
                message: e.to_string(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let redis = spec.server.redis.as_ref().map(|(url, timeout)| {
        previous
            .and_then(|p| p.redis.as_ref())
            .filter(|b| b.identity() == (url.clone(), *timeout))
            .map_or_else(|| Arc::new(RedisBackend::new(url, *timeout)), Arc::clone)
    });
    let mut rate_limiters = IndexMap::new();
    for (name, policy) in &spec.rate_limit_policies {
        let mut fresh = PolicyLimiter::new(policy.clone());
        if let (Some(c), Some(backend)) = (&policy.cluster, &redis) {
            // The local fallback shares the limit with the other replicas.
            let mut local = policy.clone();
            local.cluster = None;
            local.count = policy.count.div_ceil(c.expected_replicas).max(1);
            local.burst = policy.burst.div_ceil(c.expected_replicas).max(1);
            let mut cluster =
                ClusterPolicy::new(Arc::clone(backend), c.on_failure, PolicyLimiter::new(local));
            cluster.batch = c.batch;
            fresh.cluster = Some(cluster);
            // A different Redis is a different limiter, even for the same policy.
            fresh
                .fingerprint
                .push_str(&format!("|{:?}", backend.identity()));
        }
        let limiter = previous
            .and_then(|p| p.rate_limiters.get(name))
            .filter(|old| old.fingerprint == fresh.fingerprint)
            .map_or_else(|| Arc::new(fresh), Arc::clone);
        rate_limiters.insert(name.clone(), limiter);
    }

    let jwt = JwtRuntime::compile(&spec.jwt_providers, previous.map(|p| &p.jwt));
    let mut routes = Vec::with_capacity(spec.routes.len());
    for (index, r) in spec.routes.iter().enumerate() {
        let action = match &r.action {
            ActionSpec::Proxy(targets) => {
                // Spec validation guarantees every name exists.
                let resolved: Vec<_> = targets
                    .iter()
                    .filter_map(|(name, w)| upstreams.get(name).map(|p| (Arc::clone(p), *w)))
                    .collect();
                RouteAction::Proxy(Backends::new(resolved))
            }
            ActionSpec::Redirect(rd) => RouteAction::Redirect(rd.clone()),
            ActionSpec::Direct(d) => RouteAction::Direct(d.clone()),
        };
        routes.push(Route {
            id: Arc::clone(&r.id),
            index,
            matcher: r.matcher.clone(),
            rewrite: r.rewrite.clone(),
            request_headers: r.request_headers.clone(),
            response_headers: r.response_headers.clone(),
            action,
            timeout: r.timeout,
            deadline: r.deadline,
            retry: r.retry.clone(),
            rate_limits: r
                .rate_limits
                .iter()
                .filter_map(|n| rate_limiters.get(n).map(Arc::clone))
                .collect(),
            jwt: r.jwt.as_ref().map(|j| RouteJwt::compile(j, &jwt)),
            cache: r.cache.clone(),
        });
    }
    let mut identity_headers: Vec<http::HeaderName> = spec
        .routes
        .iter()
        .filter_map(|r| r.jwt.as_ref())
        .flat_map(|j| j.claims_to_headers.iter().map(|(_, h)| h.clone()))
        .collect();
    identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    identity_headers.dedup();
    let routes = RouteTable::compile(routes).map_err(|e| {
        vec![SpecError {
            path: "routes".into(),
            message: e.to_string(),
        }]
    })?;
    let discovery = DiscoveryState::new(spec, snapshot, &routes, previous.map(|p| &p.discovery));
    Ok(Runtime {
        discovery,
        version,
        compiled_at: SystemTime::now(),
        routes,
        upstreams,
        rate_limiters,
        trusted_proxies: spec.server.trusted_proxies.clone(),
        redis,
        max_request_header_bytes: spec.server.max_request_header_bytes,
        restart_settings: restart_settings(spec),
        shutdown_grace_period: spec.server.shutdown_grace_period,
        jwt,
        identity_headers,
        cache: spec.server.cache.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(upstreams: &str) -> Spec {
        let text = format!(
            "listeners: [{{name: m, address: '127.0.0.1:1'}}]\nupstreams:\n{upstreams}routes: [{{id: r, upstream: u}}]\n"
        );
        crate::config::parse(&text, "t.yaml").unwrap()
    }

    fn state(rt: &Runtime, address: &str) -> Arc<crate::upstream::EndpointState> {
        let e = rt.upstreams["u"]
            .endpoints
            .iter()
            .find(|e| &*e.address == address)
            .unwrap();
        Arc::clone(&e.state)
    }

    #[test]
    fn load_state_survives_reloads() {
        let v1 = compile(
            &spec("  u: {load_balancing: least_outstanding, endpoints: [{address: '127.0.0.1:1'}, {address: '127.0.0.1:2'}]}\n"),
            1,
            None,
        )
        .unwrap();
        let _busy = crate::upstream::Attempt::begin(&state(&v1, "127.0.0.1:1"));

        // Same definition: the whole pool (ring, counters, state) is reused.
        let same = spec(
            "  u: {load_balancing: least_outstanding, endpoints: [{address: '127.0.0.1:1'}, {address: '127.0.0.1:2'}]}\n",
        );
        let v2 = compile(&same, 2, Some(&v1)).unwrap();
        assert!(Arc::ptr_eq(&v1.upstreams["u"], &v2.upstreams["u"]));

        // Changed definition: a new pool, but surviving endpoints keep their state.
        let changed = spec(
            "  u: {load_balancing: peak_ewma, endpoints: [{address: '127.0.0.1:1', weight: 3}, {address: '127.0.0.1:3'}]}\n",
        );
        let v3 = compile(&changed, 3, Some(&v2)).unwrap();
        assert!(!Arc::ptr_eq(&v2.upstreams["u"], &v3.upstreams["u"]));
        assert!(Arc::ptr_eq(
            &state(&v1, "127.0.0.1:1"),
            &state(&v3, "127.0.0.1:1")
        ));
        assert_eq!(state(&v3, "127.0.0.1:1").outstanding(), 1);
        assert_eq!(state(&v3, "127.0.0.1:3").outstanding(), 0);

        // Without a predecessor (gateway check, first start) everything starts fresh.
        let fresh = compile(&changed, 1, None).unwrap();
        assert_eq!(state(&fresh, "127.0.0.1:1").outstanding(), 0);
    }

    mod discovered {
        use std::collections::BTreeMap;

        use discovery::{Backend, Service, ServiceKey, ServicePort, Snapshot};

        use super::*;

        const CONFIG: &str = "
listeners: [{name: m, address: '127.0.0.1:1'}]
discovery: {zone: a, kubernetes: {}}
upstreams:
  orders: {kubernetes: {namespace: shop, service: orders, port: http}, load_balancing: least_outstanding}
  catalog: {kubernetes: {namespace: shop, service: catalog, port: 80}}
  static: {endpoints: [{address: '127.0.0.1:9'}]}
routes:
  - {id: o, match: {path: {prefix: /o}}, upstream: orders}
  - {id: c, match: {path: {prefix: /c}}, upstream: catalog}
";

        fn backend(last: u8, port: u16, draining: bool, zones: &[&str]) -> Backend {
            Backend {
                address: std::net::SocketAddr::from(([10, 0, 0, last], port)),
                draining,
                app_protocol: None,
                for_zones: zones.iter().map(|z| z.to_string()).collect(),
            }
        }

        fn service(port_name: &str, backends: Vec<Backend>) -> Arc<Service> {
            Arc::new(Service {
                ports: vec![ServicePort {
                    name: port_name.into(),
                    port: 80,
                }],
                backends: BTreeMap::from([(port_name.to_owned(), backends)]),
            })
        }

        fn snapshot(version: u64, orders: Arc<Service>, catalog: Arc<Service>) -> Snapshot {
            Snapshot {
                version,
                services: BTreeMap::from([
                    (ServiceKey::new("shop", "orders"), orders),
                    (ServiceKey::new("shop", "catalog"), catalog),
                ]),
            }
        }

        fn addresses(rt: &Runtime, pool: &str) -> Vec<(String, bool)> {
            rt.upstreams[pool]
                .endpoints
                .iter()
                .map(|e| (e.address.to_string(), e.draining))
                .collect()
        }

        #[test]
        fn pools_come_from_the_snapshot_with_draining_and_zone_hints() {
            let spec = crate::config::parse(CONFIG, "t.yaml").unwrap();
            let orders = service(
                "http",
                vec![backend(1, 8080, false, &[]), backend(2, 8080, true, &[])],
            );
            // Every catalog backend is hinted and one hint names zone `a`: only it.
            let catalog = service(
                "",
                vec![backend(3, 80, false, &["a"]), backend(4, 80, false, &["b"])],
            );
            let rt = compile_with(&spec, Some(&snapshot(1, orders, catalog)), 1, None).unwrap();
            assert_eq!(
                addresses(&rt, "orders"),
                [
                    ("10.0.0.1:8080".into(), false),
                    ("10.0.0.2:8080".into(), true)
                ]
            );
            assert_eq!(addresses(&rt, "catalog"), [("10.0.0.3:80".into(), false)]);
            assert_eq!(addresses(&rt, "static"), [("127.0.0.1:9".into(), false)]);
            assert_eq!(rt.discovery.snapshot_version, Some(1));
            assert!(!rt.discovery.waiting);
            // The draining endpoint takes nothing new.
            for _ in 0..10 {
                assert_eq!(
                    &*rt.upstreams["orders"].select(None, &[]).unwrap().1.address,
                    "10.0.0.1:8080"
                );
            }
            // Nothing ready, only serving-while-terminating backends: they are all
            // there is, so they serve (a pool of only draining endpoints would 503).
            let terminating = service(
                "http",
                vec![backend(1, 8080, true, &[]), backend(2, 8080, true, &[])],
            );
            let catalog = service("", vec![]);
            let rt = compile_with(
                &spec,
                Some(&snapshot(2, terminating, catalog)),
                2,
                Some(&rt),
            )
            .unwrap();
            assert_eq!(
                addresses(&rt, "orders"),
                [
                    ("10.0.0.1:8080".into(), false),
                    ("10.0.0.2:8080".into(), false)
                ]
            );
            assert!(rt.upstreams["orders"].select(None, &[]).is_some());
            assert!(rt.upstreams["catalog"].select(None, &[]).is_none());
        }

        #[test]
        fn changing_the_discovery_section_needs_a_restart() {
            let spec = crate::config::parse(CONFIG, "t.yaml").unwrap();
            let other = crate::config::parse(
                &CONFIG.replace("kubernetes: {}}", "kubernetes: {namespaces: [shop]}}"),
                "t.yaml",
            )
            .unwrap();
            assert_ne!(restart_settings(&spec), restart_settings(&other));
            let same =
                crate::config::parse(&CONFIG.replace("prefix: /c}", "prefix: /d}"), "t.yaml")
                    .unwrap();
            assert_eq!(restart_settings(&spec), restart_settings(&same));
        }

        #[test]
        fn before_the_first_snapshot_pools_are_empty_and_the_runtime_waits() {
            let spec = crate::config::parse(CONFIG, "t.yaml").unwrap();
            let rt = compile_with(&spec, None, 1, None).unwrap();
            assert!(rt.upstreams["orders"].endpoints.is_empty());
            assert!(rt.upstreams["orders"].select(None, &[]).is_none());
            assert!(rt.discovery.waiting);
            assert_eq!(rt.discovery.snapshot_version, None);
            // A synced snapshot without the Service: empty pool, but ready (the
            // Service may simply have no pods).
            let empty = Snapshot {
                version: 1,
                services: BTreeMap::new(),
            };
            let rt = compile_with(&spec, Some(&empty), 2, Some(&rt)).unwrap();
            assert!(rt.upstreams["orders"].endpoints.is_empty());
            assert!(!rt.discovery.waiting);
            // Without a route on a kubernetes upstream, nothing to wait for.
            let unrouted = crate::config::parse(
                "listeners: [{name: m, address: '127.0.0.1:1'}]\ndiscovery: {kubernetes: {}}\nupstreams:\n  k: {kubernetes: {namespace: a, service: b, port: 1}}\n",
                "t.yaml",
            )
            .unwrap();
            assert!(
                !compile_with(&unrouted, None, 1, None)
                    .unwrap()
                    .discovery
                    .waiting
            );
        }

        #[test]
        fn unchanged_services_keep_their_pools_and_endpoints_keep_state() {
            let spec = crate::config::parse(CONFIG, "t.yaml").unwrap();
            let orders = service("http", vec![backend(1, 8080, false, &[])]);
            let catalog = service("", vec![backend(3, 80, false, &[])]);
            let v1 = compile_with(
                &spec,
                Some(&snapshot(1, Arc::clone(&orders), Arc::clone(&catalog))),
                1,
                None,
            )
            .unwrap();
            let busy = Arc::clone(&v1.upstreams["orders"].endpoints[0].state);
            let _in_flight = crate::upstream::Attempt::begin(&busy);

            // orders scales 1 -> 3; catalog is untouched.
            let scaled = service(
                "http",
                vec![
                    backend(1, 8080, false, &[]),
                    backend(5, 8080, false, &[]),
                    backend(6, 8080, false, &[]),
                ],
            );
            let v2 = compile_with(
                &spec,
                Some(&snapshot(2, scaled, Arc::clone(&catalog))),
                2,
                Some(&v1),
            )
            .unwrap();
            assert!(Arc::ptr_eq(
                &v1.upstreams["catalog"],
                &v2.upstreams["catalog"]
            ));
            assert!(Arc::ptr_eq(
                &v1.upstreams["static"],
                &v2.upstreams["static"]
            ));
            assert!(!Arc::ptr_eq(
                &v1.upstreams["orders"],
                &v2.upstreams["orders"]
            ));
            assert_eq!(v2.upstreams["orders"].endpoints.len(), 3);
            // The surviving endpoint carries its in-flight count; the pool its state.
            let kept = &v2.upstreams["orders"].endpoints[0];
            assert!(Arc::ptr_eq(&kept.state, &busy));
            assert_eq!(kept.state.outstanding(), 1);
            assert!(Arc::ptr_eq(
                &v1.upstreams["orders"].state,
                &v2.upstreams["orders"].state
            ));

            // A config reload with the same snapshot keeps every pool and the time
            // the snapshot was applied.
            let v3 = compile_with(
                &spec,
                Some(&snapshot(2, service("http", vec![]), Arc::clone(&catalog))),
                3,
                Some(&v2),
            )
            .unwrap();
            assert!(v3.upstreams["orders"].endpoints.is_empty());
            assert_eq!(v3.discovery.snapshot_at, v2.discovery.snapshot_at);
        }
    }
}
