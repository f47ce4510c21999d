//! Discovery at 1,000 Services x 10 endpoints: the model's rebuild time (a full relist,
//! and one Service changing), the heap the model and a snapshot hold, and the
//! control plane's fan-out of one update to 100 subscribed clients.

// The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use discovery::Conditions;
use discovery::model::{
    Data, Group, Kind, Model, Object, ObjectId, ServiceInfo, SliceData, SliceEndpoint, SlicePort,
};
use discovery::protocol::Message;
use discovery::{Backend, Service, ServiceKey, ServicePort, Snapshot};

/// Live heap bytes, over all threads.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SERVICES: usize = 1_000;
const ENDPOINTS: usize = 10;

fn id(kind: Kind, name: String) -> ObjectId {
    ObjectId {
        kind,
        namespace: "shop".into(),
        name,
    }
}

/// One Service object and one 10-endpoint slice per Service; `salt` changes addresses.
fn objects(salt: u8) -> (Vec<Object>, Vec<Object>) {
    let mut services = Vec::with_capacity(SERVICES);
    let mut slices = Vec::with_capacity(SERVICES);
    for s in 0..SERVICES {
        let name = format!("svc-{s:04}");
        services.push(Object {
            id: id(Kind::Service, name.clone()),
            data: Some(Data::Service(ServiceInfo {
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                }],
                publish_not_ready: false,
            })),
        });
        slices.push(slice(&name, s, salt));
    }
    (services, slices)
}

fn slice(name: &str, s: usize, salt: u8) -> Object {
    Object {
        id: id(Kind::EndpointSlice, format!("{name}-abcde")),
        data: Some(Data::Slice(SliceData {
            service: ServiceKey::new("shop", name),
            groups: vec![Group {
                ports: vec![SlicePort {
                    name: "http".into(),
                    port: 8080,
                    app_protocol: None,
                }],
                endpoints: (0..ENDPOINTS)
                    .map(|e| SliceEndpoint {
                        addresses: vec![IpAddr::from([
                            10,
                            (s / 250) as u8,
                            (s % 250) as u8,
                            e as u8 + salt,
                        ])],
                        conditions: Conditions::default(),
                        for_zones: vec![],
                    })
                    .collect(),
            }],
        })),
    }
}

fn built_model() -> Model {
    let (services, slices) = objects(1);
    let mut model = Model::new();
    model.relist(0, services);
    model.relist(1, slices);
    model
}

fn snapshot_of(model: &mut Model) -> Snapshot {
    let candidate = model.candidate(&Snapshot::default(), 0);
    model.published();
    Snapshot {
        epoch: "".into(),
        version: 1,
        services: candidate.services,
    }
}

fn report_memory() {
    let (services, slices) = objects(1);
    let before = LIVE.load(Ordering::Relaxed);
    let mut model = Model::new();
    model.relist(0, services);
    model.relist(1, slices);
    let with_model = LIVE.load(Ordering::Relaxed);
    let snap = snapshot_of(&mut model);
    let with_snapshot = LIVE.load(Ordering::Relaxed);
    let json = serde_json::to_vec(&snap).unwrap();
    println!(
        "discovery memory at {SERVICES} Services x {ENDPOINTS} endpoints: model {} KiB, snapshot {} KiB, snapshot as JSON {} KiB",
        (with_model - before) / 1024,
        (with_snapshot - with_model) / 1024,
        json.len() / 1024
    );
    black_box((model, snap));
}

fn model(c: &mut Criterion) {
    report_memory();
    let mut group = c.benchmark_group("discovery_model");
    group.bench_function("relist_and_rebuild_1000x10", |b| {
        b.iter_batched(
            || objects(1),
            |(services, slices)| {
                let mut model = Model::new();
                model.relist(0, services);
                model.relist(1, slices);
                let candidate = model.candidate(&Snapshot::default(), 0);
                // Returned, so that freeing them is not timed.
                (model, candidate)
            },
            BatchSize::LargeInput,
        )
    });
    // `iter_batched_ref`: freeing the model is not part of a rebuild.
    group.bench_function("rebuild_1000x10", |b| {
        b.iter_batched_ref(
            built_model,
            |model| black_box(model.candidate(&Snapshot::default(), 0)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("one_service_changes_1000x10", |b| {
        b.iter_batched_ref(
            || {
                let mut model = built_model();
                let snap = snapshot_of(&mut model);
                (model, snap)
            },
            |(model, snap)| {
                model.apply(1, slice("svc-0500", 500, 2));
                black_box(model.candidate(snap, SERVICES * ENDPOINTS))
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

const CLIENTS: usize = 100;

fn service(hosts: u8) -> Arc<Service> {
    Arc::new(Service {
        ports: vec![],
        backends: [(
            "http".to_string(),
            (1..=hosts)
                .map(|h| Backend {
                    address: ([10, 0, 0, h], 8080).into(),
                    draining: false,
                    app_protocol: None,
                    for_zones: vec![],
                })
                .collect(),
        )]
        .into(),
    })
}

/// How each of the 100 subscribers consumes the stream.
#[derive(Clone, Copy)]
enum Subscriber {
    /// `discovery::client`: parses every update and rebuilds its snapshot, as a gateway
    /// does. 100 of them share this process's 2 cores.
    Client,
    /// Reads and parses the update lines only: the server's own fan-out.
    Lines,
}

/// Forwards each version a subscriber reaches into a `watch`, so one wait loop serves
/// both kinds.
async fn subscribe(url: String, kind: Subscriber) -> tokio::sync::watch::Receiver<u64> {
    let (tx, rx) = tokio::sync::watch::channel(0);
    match kind {
        Subscriber::Client => {
            let config = discovery::client::ClientConfig::new(
                url,
                discovery::metrics::DiscoveryMetrics::unregistered().unwrap(),
            );
            let mut snapshots = discovery::client::spawn(config);
            tokio::spawn(async move {
                loop {
                    let v = snapshots
                        .borrow_and_update()
                        .as_ref()
                        .map_or(0, |s| s.version);
                    tx.send_replace(v);
                    if snapshots.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        Subscriber::Lines => {
            let response = reqwest::get(format!("{url}{}", discovery::protocol::STREAM_PATH))
                .await
                .unwrap();
            let mut body = response.bytes_stream();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await {
                    buffer.extend_from_slice(&chunk);
                    while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        match serde_json::from_slice(&line).unwrap() {
                            Message::Snapshot { version, .. } | Message::Update { version, .. } => {
                                tx.send_replace(version);
                            }
                            Message::Heartbeat { .. } => {}
                        }
                    }
                }
            });
        }
    }
    rx
}

fn fan_out_to(c: &mut Criterion, name: &str, kind: Subscriber) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, source) = tokio::sync::watch::channel(None);
    // 1,000 Services of 10 endpoints; each iteration changes one of them.
    let mut services: std::collections::BTreeMap<ServiceKey, Arc<Service>> = (0..SERVICES)
        .map(|s| (ServiceKey::new("shop", format!("svc-{s:04}")), service(10)))
        .collect();
    let mut version = 1;
    tx.send_replace(Some(Arc::new(Snapshot {
        epoch: "".into(),
        version,
        services: services.clone(),
    })));
    let mut receivers = rt.block_on(async {
        let registry = prometheus::Registry::new();
        let metrics = discovery::metrics::DiscoveryMetrics::new(&registry).unwrap();
        let cp = discovery::server::ControlPlane::start(
            discovery::server::ServerConfig::default(),
            source,
            None,
            registry,
            metrics.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { cp.serve(listener).await });
        let mut receivers = Vec::new();
        for _ in 0..CLIENTS {
            receivers.push(subscribe(url.clone(), kind).await);
        }
        for rx in &mut receivers {
            rx.wait_for(|v| *v >= 1).await.unwrap();
        }
        receivers
    });
    let mut group = c.benchmark_group("discovery_fan_out");
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                version += 1;
                let key = ServiceKey::new("shop", format!("svc-{:04}", version % SERVICES as u64));
                services.insert(key, service((version % 9 + 1) as u8));
                let snap = Arc::new(Snapshot {
                    epoch: "".into(),
                    version,
                    services: services.clone(),
                });
                let started = Instant::now();
                tx.send_replace(Some(snap));
                rt.block_on(async {
                    for rx in &mut receivers {
                        rx.wait_for(|v| *v >= version).await.unwrap();
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    rt.shutdown_background();
}

fn fan_out(c: &mut Criterion) {
    fan_out_to(c, "one_update_to_100_stream_readers", Subscriber::Lines);
    fan_out_to(c, "one_update_to_100_clients", Subscriber::Client);
}

criterion_group!(benches, model, fan_out);
criterion_main!(benches);
