//! The engine's `discovery.snapshot` spans for the outcomes the binary test does not
//! reach: a relist that repairs drift without changing the snapshot, and a mass
//! deletion held by the guard, then published on confirmation. Spans are collected in
//! process by a span processor; the clock is paused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery::Conditions;
use discovery::ServiceKey;
use discovery::engine::{Coalesce, Engine, MassDeletionGuard, Status, Update};
use discovery::metrics::DiscoveryMetrics;
use discovery::model::{
    Data, Group, Kind, Object, ObjectId, ServiceInfo, SliceData, SliceEndpoint, SlicePort,
};
use discovery::trace::SnapshotTracer;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use tokio::sync::{Notify, mpsc};

const SERVICES: usize = 0;
const SLICES: usize = 1;

/// Keeps every finished span.
#[derive(Clone, Debug, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collect {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn attr(span: &SpanData, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
        .unwrap_or_else(|| panic!("{key} missing in {:?}", span.attributes))
}

fn service(name: &str) -> Object {
    Object {
        id: ObjectId {
            kind: Kind::Service,
            namespace: "ns".into(),
            name: name.into(),
        },
        data: Some(Data::Service(ServiceInfo::default())),
    }
}

fn slice(name: &str, ips: std::ops::Range<u8>) -> Object {
    Object {
        id: ObjectId {
            kind: Kind::EndpointSlice,
            namespace: "ns".into(),
            name: name.into(),
        },
        data: Some(Data::Slice(SliceData {
            service: ServiceKey::new("ns", "a"),
            groups: vec![Group {
                ports: vec![SlicePort {
                    name: String::new(),
                    port: 80,
                    app_protocol: None,
                }],
                endpoints: ips
                    .map(|i| SliceEndpoint {
                        addresses: vec![IpAddr::from([10, 0, 0, i])],
                        conditions: Conditions::default(),
                        for_zones: vec![],
                    })
                    .collect(),
            }],
        })),
    }
}

fn relist(objects: Vec<Object>) -> Update {
    Update::Relist {
        stream: SLICES,
        resource: "endpointslices",
        objects,
    }
}

#[tokio::test(start_paused = true)]
async fn held_confirmed_and_repaired_builds_each_have_their_span() {
    let collect = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(collect.clone())
        .build();
    let (tx, updates) = mpsc::channel(16);
    let (stx, rx) = tokio::sync::watch::channel(None);
    let confirm = Arc::new(Notify::new());
    let engine = Engine::new(
        2,
        Coalesce::default(),
        MassDeletionGuard::default(),
        DiscoveryMetrics::unregistered().unwrap(),
        Arc::new(Mutex::new(Status::default())),
    )
    .with_tracer(Some(SnapshotTracer::new(provider.tracer("test"))));
    tokio::spawn(engine.run(updates, stx, confirm.clone()));
    let settle = || tokio::time::sleep(Duration::from_secs(5));
    let snapshots = |n: usize| {
        let spans = collect.0.lock().unwrap();
        let snaps: Vec<SpanData> = spans
            .iter()
            .filter(|s| s.name == "discovery.snapshot")
            .cloned()
            .collect();
        assert_eq!(snaps.len(), n, "{snaps:#?}");
        snaps
    };

    tx.send(Update::Relist {
        stream: SERVICES,
        resource: "services",
        objects: vec![service("a")],
    })
    .await
    .unwrap();
    tx.send(relist(vec![slice("a-1", 1..13)])).await.unwrap();
    settle().await;
    let first = snapshots(1).remove(0);
    assert_eq!(attr(&first, "discovery.trigger"), "initial_sync");
    assert_eq!(attr(&first, "discovery.snapshot.endpoints"), "12");
    let build = collect
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.name == "discovery.snapshot.build")
        .cloned()
        .unwrap();
    assert_eq!(build.parent_span_id, first.span_context.span_id());

    // A relist that finds what the watch missed (the slice under another name):
    // repaired, but the snapshot is the same.
    tx.send(relist(vec![slice("a-2", 1..13)])).await.unwrap();
    settle().await;
    let repaired = snapshots(2).remove(1);
    assert_eq!(attr(&repaired, "discovery.trigger"), "relist_repair");
    assert_eq!(attr(&repaired, "discovery.trigger.repaired_objects"), "2");
    assert_eq!(attr(&repaired, "discovery.snapshot.outcome"), "unchanged");
    assert_eq!(attr(&repaired, "discovery.snapshot.version"), "1");

    // Losing every endpoint trips the guard: a span says held, the version stays.
    tx.send(Update::Delete {
        id: slice("a-2", 0..0).id,
    })
    .await
    .unwrap();
    settle().await;
    let held = snapshots(3).remove(2);
    assert_eq!(attr(&held, "discovery.snapshot.outcome"), "held");
    assert_eq!(attr(&held, "discovery.mass_deletion.held"), "true");
    assert_eq!(attr(&held, "discovery.snapshot.version"), "1");
    assert_eq!(attr(&held, "discovery.snapshot.removed_endpoints"), "12");
    assert_eq!(attr(&held, "discovery.trigger"), "watch");
    assert_eq!(attr(&held, "discovery.trigger.watch_events"), "1");

    confirm.notify_one();
    settle().await;
    let confirmed = snapshots(4).remove(3);
    assert_eq!(attr(&confirmed, "discovery.snapshot.outcome"), "published");
    assert_eq!(attr(&confirmed, "discovery.trigger"), "confirmation");
    assert_eq!(attr(&confirmed, "discovery.snapshot.version"), "2");
    assert_eq!(attr(&confirmed, "discovery.snapshot.endpoints"), "0");
    assert_eq!(rx.borrow().as_ref().unwrap().version, 2);
}
