//! The watcher against the fake Kubernetes API server, through the real kube-rs
//! client: the endpoint model as the API delivers it, and the publishing rules under
//! relists, outages, bursts and mass deletions.
//!
//! Waits are bounded condition waits; no assertion depends on how long something took.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use discovery::fake::{FakeApiServer, Fault};
use discovery::metrics::DiscoveryMetrics;
use discovery::watcher::{Coalesce, MassDeletionGuard, Source, WatchConfig, WatchHandle};
use discovery::{PortRef, Service, ServiceKey, Snapshot, SnapshotReceiver};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn service(ns: &str, name: &str, ports: &[(&str, u16)], publish_not_ready: bool) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "labels": {"team": "web"}},
        "spec": {"ports": ports, "publishNotReadyAddresses": publish_not_ready}
    })
}

fn slice_with(
    ns: &str,
    name: &str,
    svc: &str,
    address_type: &str,
    ports: Value,
    endpoints: Value,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name,
            "labels": {"kubernetes.io/service-name": svc, "team": "web"}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints
    })
}

/// A slice of ready endpoints `10.0.<net>.<i>` on one unnamed-or-named port.
fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    port: (&str, u16),
    net: u8,
    hosts: std::ops::Range<u8>,
) -> Value {
    let endpoints: Vec<Value> = hosts
        .map(|h| json!({"addresses": [format!("10.0.{net}.{h}")], "conditions": {"ready": true}}))
        .collect();
    slice_with(
        ns,
        name,
        svc,
        "IPv4",
        json!([{"name": port.0, "port": port.1, "protocol": "TCP"}]),
        json!(endpoints),
    )
}

struct Setup {
    fake: FakeApiServer,
    rx: SnapshotReceiver,
    handle: WatchHandle,
    metrics: DiscoveryMetrics,
}

fn config(metrics: &DiscoveryMetrics) -> WatchConfig {
    let mut config = WatchConfig::new(metrics.clone());
    config.coalesce = Coalesce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
    };
    config
}

async fn start(fake: FakeApiServer, tweak: impl FnOnce(&mut WatchConfig)) -> Setup {
    let metrics = DiscoveryMetrics::unregistered().unwrap();
    let mut config = config(&metrics);
    tweak(&mut config);
    let client = kube::Client::try_from(fake.kube_config()).unwrap();
    let (rx, handle) = discovery::watcher::spawn(client, config);
    Setup {
        fake,
        rx,
        handle,
        metrics,
    }
}

impl Setup {
    /// Wait until the published snapshot satisfies `cond`, and return it.
    async fn until(
        &mut self,
        what: &str,
        mut cond: impl FnMut(&Snapshot) -> bool,
    ) -> Arc<Snapshot> {
        let rx = &mut self.rx;
        bounded(what, async {
            loop {
                if let Some(snap) = rx.borrow_and_update().clone()
                    && cond(&snap)
                {
                    return snap;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
    }

    async fn synced(&mut self) -> Arc<Snapshot> {
        self.until("first sync", |_| true).await
    }

    /// Wait for `cond` to hold on the watcher itself.
    async fn until_status(
        &self,
        what: &str,
        cond: impl Fn(&discovery::watcher::WatchStatus) -> bool,
    ) {
        bounded(what, async {
            while !cond(&self.handle.status()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name)
}

fn addrs(snap: &Snapshot, ns: &str, name: &str, port: PortRef) -> Vec<String> {
    snap.services
        .get(&key(ns, name))
        .map(|s| s.resolve(&port))
        .unwrap_or_default()
        .into_iter()
        .map(|b| b.address.to_string())
        .collect()
}

fn svc<'a>(snap: &'a Snapshot, ns: &str, name: &str) -> &'a Arc<Service> {
    &snap.services[&key(ns, name)]
}

fn http() -> PortRef {
    PortRef::Name("http".into())
}

#[tokio::test]
async fn slices_merge_per_service_and_one_changing_leaves_the_others() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(service("shop", "api", &[("http", 80)], false));
    fake.apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..3));
    fake.apply(slice("shop", "web-b", "web", ("http", 8080), 2, 1..2));
    fake.apply(slice("shop", "api-a", "api", ("http", 9090), 3, 1..2));
    let mut s = start(fake, |_| {}).await;
    let first = s.synced().await;
    assert_eq!(
        addrs(&first, "shop", "web", http()),
        vec!["10.0.1.1:8080", "10.0.1.2:8080", "10.0.2.1:8080"]
    );
    assert_eq!(addrs(&first, "shop", "web", PortRef::Number(80)).len(), 3);

    s.fake
        .apply(slice("shop", "web-b", "web", ("http", 8080), 2, 1..3));
    let next = s
        .until("web-b grows", |snap| {
            addrs(snap, "shop", "web", http()).len() == 4
        })
        .await;
    assert_eq!(next.version, first.version + 1);
    assert!(Arc::ptr_eq(
        svc(&first, "shop", "api"),
        svc(&next, "shop", "api")
    ));
    assert!(!Arc::ptr_eq(
        svc(&first, "shop", "web"),
        svc(&next, "shop", "web")
    ));
}

#[tokio::test]
async fn a_duplicate_across_slices_appears_once() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..3));
    fake.apply(slice("shop", "web-b", "web", ("http", 8080), 1, 2..4));
    let mut s = start(fake, |_| {}).await;
    let snap = s.synced().await;
    assert_eq!(
        addrs(&snap, "shop", "web", http()),
        vec!["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]
    );
}

fn conditions_slice(name: &str, endpoints: Value) -> Value {
    slice_with(
        "shop",
        name,
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        endpoints,
    )
}

#[tokio::test]
async fn missing_conditions_default_as_the_api_documents() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(conditions_slice(
        "web-a",
        json!([
            {"addresses": ["10.0.0.1"]},
            {"addresses": ["10.0.0.2"], "conditions": {}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
        ]),
    ));
    let mut s = start(fake, |_| {}).await;
    let snap = s.synced().await;
    // No conditions, or empty ones, mean ready; not ready without more means not serving.
    assert_eq!(
        addrs(&snap, "shop", "web", http()),
        vec!["10.0.0.1:8080", "10.0.0.2:8080"]
    );
}

#[tokio::test]
async fn terminating_endpoints_serve_only_when_nothing_is_ready() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    let draining = json!({"addresses": ["10.0.0.1"],
        "conditions": {"ready": false, "serving": true, "terminating": true}});
    let gone = json!({"addresses": ["10.0.0.2"],
        "conditions": {"ready": false, "serving": false, "terminating": true}});
    let ready = json!({"addresses": ["10.0.0.3"], "conditions": {"ready": true}});
    fake.apply(conditions_slice("web-a", json!([draining, gone, ready])));
    let mut s = start(fake, |_| {}).await;
    let snap = s.synced().await;
    assert_eq!(addrs(&snap, "shop", "web", http()), vec!["10.0.0.3:8080"]);

    s.fake
        .apply(conditions_slice("web-a", json!([draining, gone])));
    let snap = s
        .until("fallback to draining", |snap| {
            addrs(snap, "shop", "web", http()) == vec!["10.0.0.1:8080"]
        })
        .await;
    assert!(svc(&snap, "shop", "web").resolve(&http())[0].draining);
}

#[tokio::test]
async fn publish_not_ready_addresses_includes_unready_endpoints() {
    let fake = FakeApiServer::start().await.unwrap();
    let endpoints = json!([
        {"addresses": ["10.0.0.1"], "conditions": {"ready": false}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
    ]);
    fake.apply(service("shop", "web", &[("http", 80)], true));
    fake.apply(conditions_slice("web-a", endpoints.clone()));
    fake.apply(service("shop", "api", &[("http", 80)], false));
    fake.apply(slice_with(
        "shop",
        "api-a",
        "api",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        endpoints,
    ));
    let mut s = start(fake, |_| {}).await;
    let snap = s.synced().await;
    assert_eq!(
        addrs(&snap, "shop", "web", http()),
        vec!["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(addrs(&snap, "shop", "api", http()), vec!["10.0.0.2:8080"]);
}

#[tokio::test]
async fn named_ports_resolve_per_slice_with_numeric_fallback_and_app_protocol() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80), ("grpc", 81)], false));
    // Mid-rollout: the two slices map the port names to different target ports.
    fake.apply(slice_with(
        "shop",
        "web-old",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8080}, {"name": "grpc", "port": 9000, "appProtocol": "grpc"}]),
        json!([{"addresses": ["10.0.0.1"]}]),
    ));
    fake.apply(slice_with(
        "shop",
        "web-new",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8081}, {"name": "grpc", "port": 9001, "appProtocol": "grpc"}]),
        json!([{"addresses": ["10.0.0.2"]}]),
    ));
    let mut s = start(fake, |_| {}).await;
    let snap = s.synced().await;
    assert_eq!(
        addrs(&snap, "shop", "web", http()),
        vec!["10.0.0.1:8080", "10.0.0.2:8081"]
    );
    // Service port 81 is named grpc.
    let grpc = svc(&snap, "shop", "web").resolve(&PortRef::Number(81));
    assert_eq!(grpc.len(), 2);
    assert!(
        grpc.iter()
            .all(|b| b.app_protocol.as_deref() == Some("grpc"))
    );
    // Not a Service port: taken as the target port itself.
    assert_eq!(
        addrs(&snap, "shop", "web", PortRef::Number(9001)),
        vec!["10.0.0.2:9001"]
    );
}

#[tokio::test]
async fn fqdn_slices_are_ignored_and_zone_hints_are_carried() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(slice_with(
        "shop",
        "web-fqdn",
        "web",
        "FQDN",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["web.example.com"]}]),
    ));
    fake.apply(slice_with(
        "shop",
        "web-ip",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        json!([
            {"addresses": ["10.0.0.1"], "zone": "a", "hints": {"forZones": [{"name": "a"}]}},
            {"addresses": ["10.0.0.2"], "zone": "b", "hints": {"forZones": [{"name": "b"}]}},
        ]),
    ));
    let mut s = start(fake, |_| {}).await;
    let snap = s.synced().await;
    let backends = svc(&snap, "shop", "web").resolve(&http());
    assert_eq!(backends.len(), 2);
    let in_a = discovery::for_zone(backends, Some("a"));
    assert_eq!(in_a.len(), 1);
    assert_eq!(in_a[0].address.to_string(), "10.0.0.1:8080");
}

#[tokio::test]
async fn nothing_is_published_before_the_first_full_sync() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..2));
    fake.set_fault(Fault::Status(500));
    let mut s = start(fake, |_| {}).await;
    bounded("failed lists", async {
        while s.fake.requests("/apis/discovery.k8s.io/v1/endpointslices") < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(s.rx.borrow().is_none());
    assert!(!s.handle.status().synced);
    assert!(s.handle.status().outage.is_some());
    s.fake.set_fault(Fault::None);
    let snap = s.synced().await;
    assert_eq!(snap.version, 1);
    assert_eq!(addrs(&snap, "shop", "web", http()), vec!["10.0.1.1:8080"]);
    assert_eq!(s.metrics.synced.get(), 1);
}

#[tokio::test]
async fn a_relist_after_410_is_applied_once_and_atomically() {
    let fake = FakeApiServer::start().await.unwrap();
    for name in ["a", "b", "c"] {
        fake.apply(service("shop", name, &[("http", 80)], false));
        fake.apply(slice(
            "shop",
            &format!("{name}-1"),
            name,
            ("http", 8080),
            1,
            1..2,
        ));
    }
    let mut s = start(fake, |_| {}).await;
    let first = s.synced().await;
    let relists_before = s
        .metrics
        .relists
        .with_label_values(&["endpointslices"])
        .get();

    // Changes the watches cannot see, then a compaction: the watchers must relist.
    s.fake.set_fault(Fault::DropConnections);
    s.until_status("outage noticed", |st| st.outage.is_some())
        .await;
    for name in ["a", "b", "c"] {
        s.fake.apply(slice(
            "shop",
            &format!("{name}-1"),
            name,
            ("http", 8080),
            2,
            1..3,
        ));
    }
    s.fake.compact();
    s.fake.set_fault(Fault::None);

    let all_changed = |snap: &Snapshot| {
        ["a", "b", "c"]
            .iter()
            .all(|n| addrs(snap, "shop", n, http()) == vec!["10.0.2.1:8080", "10.0.2.2:8080"])
    };
    let next = s.until("relisted state", |snap| all_changed(snap)).await;
    // One publish carried all three Services: no snapshot showed a part of the relist.
    assert_eq!(next.version, first.version + 1);
    assert!(
        s.metrics
            .relists
            .with_label_values(&["endpointslices"])
            .get()
            > relists_before
    );
    s.until_status("healthy again", |st| st.outage.is_none())
        .await;
}

#[tokio::test]
async fn an_identical_relist_publishes_nothing() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..3));
    let mut s = start(fake, |_| {}).await;
    let first = s.synced().await;
    bounded("watches open", async {
        while s.fake.open_watches() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let relists = |m: &DiscoveryMetrics| {
        m.relists.with_label_values(&["endpointslices"]).get()
            + m.relists.with_label_values(&["services"]).get()
    };
    let before = relists(&s.metrics);
    s.fake.expire_watches();
    bounded("both relists", async {
        while relists(&s.metrics) < before + 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A real change afterwards is the very next version: the relist published nothing.
    s.fake
        .apply(slice("shop", "web-b", "web", ("http", 8080), 2, 1..2));
    let next = s
        .until("the real change", |snap| {
            addrs(snap, "shop", "web", http()).len() == 3
        })
        .await;
    assert_eq!(next.version, first.version + 1);
}

#[tokio::test]
async fn an_outage_keeps_the_table_and_the_watch_resumes() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..3));
    let mut s = start(fake, |_| {}).await;
    let first = s.synced().await;

    s.fake.set_fault(Fault::DropConnections);
    s.until_status("outage noticed", |st| st.outage.is_some())
        .await;
    assert!(
        s.metrics
            .watch_errors
            .with_label_values(&["endpointslices"])
            .get()
            > 0
    );
    // The table in use is still the last one, and its age is exported.
    assert!(Arc::ptr_eq(s.rx.borrow().as_ref().unwrap(), &first));
    bounded("staleness exported", async {
        while s.metrics.stale_seconds.get() <= 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    s.fake
        .apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..4));
    s.fake.set_fault(Fault::None);
    s.until("the change made during the outage", |snap| {
        addrs(snap, "shop", "web", http()).len() == 3
    })
    .await;
    s.until_status("healthy again", |st| {
        st.outage.is_none() && st.last_contact_age.is_some()
    })
    .await;
    bounded("staleness back to zero", async {
        while s.metrics.stale_seconds.get() != 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_burst_gives_one_publish_and_churn_still_publishes() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..2));
    let mut s = start(fake, |c| {
        // Long enough that a burst written in a loop is always one quiet period.
        c.coalesce = Coalesce {
            quiet: Duration::from_millis(500),
            max_delay: Duration::from_secs(2),
        };
    })
    .await;
    let first = s.synced().await;
    for i in 2..=20u8 {
        s.fake
            .apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..i));
    }
    let next = s
        .until("the burst's end state", |snap| {
            addrs(snap, "shop", "web", http()).len() == 19
        })
        .await;
    assert_eq!(next.version, first.version + 1);

    // Churn that never pauses for the quiet period still publishes: a change every
    // 100 ms for four max-delays.
    let publishes_before = s.metrics.publishes.get();
    for i in 0..80u8 {
        s.fake.apply(slice(
            "shop",
            "web-a",
            "web",
            ("http", 8080),
            1,
            1..(20 + i),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.metrics.publishes.get() > publishes_before);
}

#[tokio::test]
async fn a_deleted_service_removes_its_backends() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(service("shop", "api", &[("http", 80)], false));
    fake.apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..3));
    fake.apply(slice("shop", "api-a", "api", ("http", 8080), 2, 1..3));
    let mut s = start(fake, |_| {}).await;
    s.synced().await;
    assert!(s.fake.delete("v1", "Service", "shop", "web"));
    let snap = s
        .until("web removed", |snap| {
            !snap.services.contains_key(&key("shop", "web"))
        })
        .await;
    assert_eq!(addrs(&snap, "shop", "api", http()).len(), 2);
}

#[tokio::test]
async fn the_mass_deletion_guard_holds_until_confirmed() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(service("shop", "api", &[("http", 80)], false));
    fake.apply(slice("shop", "web-a", "web", ("http", 8080), 1, 1..11));
    fake.apply(slice("shop", "api-a", "api", ("http", 8080), 2, 1..3));
    let mut s = start(fake, |c| {
        c.mass_deletion = MassDeletionGuard {
            max_removed_share: 0.5,
            min_endpoints: 10,
        };
    })
    .await;
    let first = s.synced().await;
    // 10 of 12 endpoints go.
    assert!(
        s.fake
            .delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "web-a")
    );
    s.until_status("held", |st| st.held_mass_deletion.is_some())
        .await;
    let held = s.handle.status().held_mass_deletion.unwrap();
    assert_eq!((held.removed_endpoints, held.total_endpoints), (10, 12));
    assert_eq!(s.metrics.mass_deletion_held.get(), 1);
    assert!(Arc::ptr_eq(s.rx.borrow().as_ref().unwrap(), &first));

    s.handle.confirm_mass_deletion();
    let next = s
        .until("confirmed deletion", |snap| {
            addrs(snap, "shop", "web", http()).is_empty()
        })
        .await;
    assert_eq!(next.version, first.version + 1);
    assert!(s.handle.status().held_mass_deletion.is_none());
    assert_eq!(s.metrics.mass_deletion_held.get(), 0);
}

#[tokio::test]
async fn legacy_endpoints_feed_the_same_model() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service("shop", "web", &[("http", 80)], false));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"namespace": "shop", "name": "web"},
        "subsets": [{
            "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
            "notReadyAddresses": [{"ip": "10.0.0.3"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }]
    }));
    let mut s = start(fake, |c| c.source = Source::Endpoints).await;
    let snap = s.synced().await;
    assert_eq!(
        addrs(&snap, "shop", "web", http()),
        vec!["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert!(s.fake.requests("/api/v1/endpoints") > 0);
    assert_eq!(
        s.fake.requests("/apis/discovery.k8s.io/v1/endpointslices"),
        0
    );
}

#[tokio::test]
async fn namespaces_and_label_selectors_limit_the_watch() {
    let fake = FakeApiServer::start().await.unwrap();
    for ns in ["shop", "ops", "other"] {
        fake.apply(service(ns, "web", &[("http", 80)], false));
        fake.apply(slice(ns, "web-a", "web", ("http", 8080), 1, 1..2));
    }
    let mut unlabelled = service("shop", "hidden", &[("http", 80)], false);
    unlabelled["metadata"]["labels"] = json!({"team": "data"});
    fake.apply(unlabelled);
    let mut s = start(fake, |c| {
        c.namespaces = vec!["shop".into(), "ops".into()];
        c.label_selector = Some("team=web".into());
    })
    .await;
    let snap = s.synced().await;
    let keys: Vec<String> = snap.services.keys().map(ToString::to_string).collect();
    assert_eq!(keys, vec!["ops/web", "shop/web"]);
}
