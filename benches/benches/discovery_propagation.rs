//! Propagation of an EndpointSlice change to the gateway's routing table, end to end
//! in one process: the fake Kubernetes API server (`discovery::fake`) takes the write,
//! the kube-rs watcher sees it, the engine coalesces and publishes a snapshot, and the
//! gateway's one writer (`reload::Reloader::run`, as `gateway run` runs it) recompiles
//! and swaps the runtime. The clock stops when a freshly loaded runtime (what a new
//! request pins) has the new endpoint set. Each change waits for the previous one to
//! land, so every change pays the coalescing quiet time once.
//!
//! Not a criterion benchmark: the result is a latency distribution (p50, p99, max)
//! over `CHANGES` changes, printed per coalescing setting.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/bench-target cargo bench -p benches --bench discovery_propagation
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery::fake::FakeApiServer;
use gateway::metrics::Metrics;
use gateway::reload::{Reloader, RuntimeStore};
use serde_json::json;

const CHANGES: usize = 200;

fn slice(endpoints: &[u8]) -> serde_json::Value {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|n| json!({"addresses": [format!("10.0.0.{n}")], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    })
}

/// The endpoint sets the benchmark cycles through (all different from their neighbours).
fn endpoint_set(i: usize) -> Vec<u8> {
    let n = 1 + (i % 5) as u8;
    (1..=n).map(|k| k + (i % 3) as u8 * 10).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn run(quiet: &str, max_delay: &str) -> Vec<Duration> {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }));
    fake.apply(slice(&endpoint_set(0)));

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_yaml()).unwrap();
    let config = dir.path().join("gateway.yaml");
    let text = format!(
        "listeners: [{{name: public, address: '127.0.0.1:1'}}]
discovery:
  kubernetes: {{kubeconfig: '{}', namespaces: [shop], quiet: {quiet}, max_delay: {max_delay}}}
upstreams:
  web: {{kubernetes: {{namespace: shop, service: web, port: http}}}}
routes: [{{id: web, upstream: web}}]
",
        kubeconfig.display()
    );
    std::fs::write(&config, &text).unwrap();

    // What `server::run` does, minus the listeners.
    let spec = gateway::config::parse(&text, "gateway.yaml").unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    // `start` blocks on building the Kubernetes client: not on a runtime thread.
    let (discovery, registry) = (spec.discovery.clone().unwrap(), metrics.registry().clone());
    let source = tokio::task::spawn_blocking(move || {
        gateway::kubernetes::start(&discovery, &registry).unwrap()
    })
    .await
    .unwrap();
    let runtime = gateway::runtime::compile(&spec, 1, None).unwrap();
    let store = Arc::new(RuntimeStore::new(runtime, &config, metrics));
    let reloader = Arc::new(
        Reloader::new(
            Arc::clone(&store),
            config.clone(),
            Duration::from_millis(200),
            text,
        )
        .with_discovery(Arc::new(spec), source.snapshots.clone()),
    );
    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(Arc::clone(&reloader).run(shutdown));

    let current = |store: &RuntimeStore| -> Vec<String> {
        store.load().upstreams["web"]
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect()
    };
    let want = |i: usize| -> Vec<String> {
        endpoint_set(i)
            .iter()
            .map(|n| format!("10.0.0.{n}:8080"))
            .collect()
    };
    // First sync.
    let deadline = Instant::now() + Duration::from_secs(30);
    while current(&store) != want(0) {
        assert!(Instant::now() < deadline, "no first sync");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut samples = Vec::with_capacity(CHANGES);
    for i in 1..=CHANGES {
        let target = want(i);
        let started = Instant::now();
        fake.apply(slice(&endpoint_set(i)));
        while current(&store) != target {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "change {i} lost"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples.push(started.elapsed());
    }
    writer.abort();
    drop(source);
    samples
}

fn main() {
    // `cargo test --benches` runs bench targets with no `--bench` flag: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("EndpointSlice change at the API -> swapped gateway runtime, {CHANGES} changes each");
    println!("| coalescing (quiet / max delay) | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (quiet, max_delay) in [("100ms", "1s"), ("20ms", "200ms")] {
        let mut samples = rt.block_on(run(quiet, max_delay));
        samples.sort();
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {quiet} / {max_delay} | {} | {} | {} |",
            ms(percentile(&samples, 0.50)),
            ms(percentile(&samples, 0.99)),
            ms(samples[samples.len() - 1]),
        );
    }
}
