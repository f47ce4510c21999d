//! The `discovery` binary traces its snapshot builds: started against the fake API
//! server with tracing pointed at an in-process OTLP/HTTP receiver, it must export a
//! `discovery.snapshot` span per published snapshot (service `discovery`, the
//! snapshot's version and counts, what triggered it), a build step as its child, and
//! a span per relist; configured by the `tracing:` section or by the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` variable alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};

use discovery::fake::FakeApiServer;
use otlp::{Got, receiver, wait_spans};
use serde_json::json;

// The gateway's OTLP test receiver: one decoder of exported spans for both crates.
#[path = "../../gateway/tests/common/otlp.rs"]
mod otlp;

/// Kills the process when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `g` is the `discovery.snapshot` span of snapshot `version`.
fn is_snapshot(g: &Got, version: u64) -> bool {
    g.span.name == "discovery.snapshot"
        && g.attr("discovery.snapshot.version") == Some(version.to_string())
}

fn slice(name: &str, hosts: std::ops::Range<u8>) -> serde_json::Value {
    let endpoints: Vec<_> = hosts
        .map(|h| json!({"addresses": [format!("10.1.0.{h}")]}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": name,
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    })
}

async fn fake_with_web() -> FakeApiServer {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80}]}
    }));
    fake.apply(slice("web-1", 1..3));
    fake
}

/// The binary against `fake`, with `config` as its settings file and `env` set; the
/// OTel variables of the test's own environment are removed first.
fn discovery(
    fake: &FakeApiServer,
    dir: &tempfile::TempDir,
    config: &str,
    env: &[(&str, String)],
) -> Process {
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_yaml()).unwrap();
    let file = dir.path().join("discovery.yaml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_discovery"));
    cmd.args(["--listen", "127.0.0.1:0", "--namespace", "shop", "--config"])
        .arg(&file)
        .env("KUBECONFIG", &kubeconfig)
        .env("DISCOVERY_TOKEN", "t0ken")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Process(cmd.spawn().unwrap())
}

#[tokio::test]
async fn snapshot_builds_are_traced_with_their_counts_and_trigger() {
    let (collector, store) = receiver().await;
    let fake = fake_with_web().await;
    let dir = tempfile::tempdir().unwrap();
    let process = discovery(
        &fake,
        &dir,
        &format!("tracing:\n  otlp: {{ endpoint: 'http://{collector}', protocol: http }}\n"),
        &[],
    );

    let got = wait_spans(&store, "the first snapshot span", |g| {
        g.iter().any(|g| is_snapshot(g, 1))
    })
    .await;
    let first = got.iter().find(|g| is_snapshot(g, 1)).unwrap();
    assert_eq!(first.service, "discovery");
    assert_eq!(
        first.attr("discovery.snapshot.services").as_deref(),
        Some("1")
    );
    assert_eq!(
        first.attr("discovery.snapshot.endpoints").as_deref(),
        Some("2")
    );
    assert_eq!(
        first.attr("discovery.snapshot.outcome").as_deref(),
        Some("published")
    );
    assert_eq!(
        first.attr("discovery.trigger").as_deref(),
        Some("initial_sync")
    );
    assert_eq!(
        first.attr("discovery.mass_deletion.held").as_deref(),
        Some("false")
    );
    assert!(
        first
            .attr("discovery.snapshot.epoch")
            .is_some_and(|e| !e.is_empty())
    );
    assert!(first.span.end_time_unix_nano >= first.span.start_time_unix_nano);

    // The build step is a child of the snapshot span; each resource's list is a span.
    let got = wait_spans(&store, "the build step and relist spans", |g| {
        g.iter().any(|c| {
            c.span.name == "discovery.snapshot.build" && c.span.parent_span_id == first.span.span_id
        }) && g.iter().any(|r| {
            r.span.name == "discovery.relist"
                && r.attr("discovery.resource").as_deref() == Some("endpointslices")
        })
    })
    .await;
    let relist = got
        .iter()
        .find(|r| {
            r.span.name == "discovery.relist"
                && r.attr("discovery.resource").as_deref() == Some("endpointslices")
        })
        .unwrap();
    assert_eq!(relist.attr("discovery.objects").as_deref(), Some("1"));
    assert_eq!(
        relist.attr("discovery.relist.reason").as_deref(),
        Some("initial")
    );

    // A watch event: the next snapshot's span says so and carries the new counts.
    fake.apply(slice("web-2", 10..13));
    let got = wait_spans(&store, "the second snapshot span", |g| {
        g.iter().any(|g| is_snapshot(g, 2))
    })
    .await;
    let second = got.iter().find(|g| is_snapshot(g, 2)).unwrap();
    assert_eq!(
        second.attr("discovery.snapshot.endpoints").as_deref(),
        Some("5")
    );
    assert_eq!(
        second
            .attr("discovery.snapshot.changed_services")
            .as_deref(),
        Some("1")
    );
    assert_eq!(second.attr("discovery.trigger").as_deref(), Some("watch"));
    assert_eq!(
        second.attr("discovery.trigger.watch_events").as_deref(),
        Some("1")
    );
    assert_eq!(
        second.attr("discovery.snapshot.epoch"),
        first.attr("discovery.snapshot.epoch")
    );
    drop(process);
}

#[tokio::test]
async fn the_standard_otlp_variables_alone_turn_tracing_on() {
    let (collector, store) = receiver().await;
    let fake = fake_with_web().await;
    let dir = tempfile::tempdir().unwrap();
    let process = discovery(
        &fake,
        &dir,
        "watch: { namespaces: [shop] }\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
            ("OTEL_SERVICE_NAME", "control-plane".into()),
        ],
    );
    let got = wait_spans(&store, "the first snapshot span", |g| {
        g.iter().any(|g| is_snapshot(g, 1))
    })
    .await;
    let first = got.iter().find(|g| is_snapshot(g, 1)).unwrap();
    assert_eq!(first.service, "control-plane");
    assert_eq!(
        first.attr("discovery.snapshot.endpoints").as_deref(),
        Some("2")
    );
    drop(process);
}
