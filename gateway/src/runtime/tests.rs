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
            epoch: "".into(),
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
            crate::config::parse(&CONFIG.replace("prefix: /c}", "prefix: /d}"), "t.yaml").unwrap();
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
            epoch: "".into(),
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
