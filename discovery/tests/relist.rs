//! Drift repair through the `discovery` binary: the fake API server "restarts" serving
//! a different state without any watch event (as an API server restored from an older
//! etcd backup does, keeping earlier resourceVersions valid), so a watch that resumes
//! never hears of the change. Only a full relist repairs it: periodically, or because
//! the watch was down for longer than the bound. Either way the snapshot the binary
//! serves must come to show the new state, and the repaired objects are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use discovery::fake::{FakeApiServer, Fault};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "relist-t0ken";

/// Kills the process when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn slice(hosts: std::ops::Range<u8>) -> Value {
    let endpoints: Vec<_> = hosts
        .map(|h| json!({"addresses": [format!("10.1.0.{h}")]}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": "web-1",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    })
}

struct Binary {
    _process: Process,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Binary {
    async fn start(fake: &FakeApiServer, args: &[&str]) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, fake.kubeconfig_yaml()).unwrap();
        let port = free_port();
        let process = Process(
            Command::new(env!("CARGO_BIN_EXE_discovery"))
                .args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--namespace",
                    "shop",
                ])
                .args(args)
                .env("KUBECONFIG", &kubeconfig)
                .env("DISCOVERY_TOKEN", TOKEN)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let binary = Binary {
            _process: process,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        binary
            .wait("the binary to sync", |b| async move {
                b.backends().await.is_some()
            })
            .await;
        binary
    }

    /// The addresses of shop/web port http in the snapshot the binary serves.
    async fn backends(&self) -> Option<Vec<String>> {
        let r = self
            .http
            .get(format!("{}/v1/snapshot", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        let mut out: Vec<String> = v["services"]["shop/web"]["backends"]["http"]
            .as_array()?
            .iter()
            .map(|b| b["address"].as_str().unwrap().to_owned())
            .collect();
        out.sort();
        Some(out)
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the series `name` (with its labels, as exposed), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn wait<'a, F, Fut>(&'a self, what: &str, cond: F)
    where
        F: Fn(&'a Binary) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !cond(self).await {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; snapshot {:?}\n{}",
                self.backends().await,
                self.metrics().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn addresses(hosts: std::ops::Range<u8>) -> Vec<String> {
    let mut v: Vec<String> = hosts.map(|h| format!("10.1.0.{h}:8080")).collect();
    v.sort();
    v
}

async fn cluster() -> FakeApiServer {
    let fake = FakeApiServer::start().await.unwrap();
    fake.set_bookmark_interval(Duration::from_millis(200));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80}]}
    }));
    fake.apply(slice(1..3));
    fake
}

#[tokio::test]
async fn a_periodic_relist_repairs_what_a_restarted_api_server_never_announced() {
    let fake = cluster().await;
    let bin = Binary::start(
        &fake,
        &["--relist-interval", "1s", "--relist-after-gap", "1h"],
    )
    .await;
    assert_eq!(bin.backends().await.unwrap(), addresses(1..3));

    // The API server comes back with other endpoints and no event for them; the
    // watches resume from versions that are still valid and replay nothing.
    fake.restart_with(vec![slice(5..9)], &[]).unwrap();
    bin.wait("the drift to be repaired", |b| async move {
        b.backends().await == Some(addresses(5..9))
    })
    .await;
    let repaired = bin
        .metric("discovery_relist_repaired_total{resource=\"endpointslices\"}")
        .await;
    assert!(repaired >= 1.0, "{}", bin.metrics().await);
    assert!(
        bin.metric("discovery_forced_relists_total{reason=\"periodic\"}")
            .await
            >= 1.0
    );

    // A relist that finds nothing new repairs nothing.
    let relists = bin
        .metric("discovery_relists_total{resource=\"endpointslices\"}")
        .await;
    bin.wait("another relist", |b| async move {
        b.metric("discovery_relists_total{resource=\"endpointslices\"}")
            .await
            > relists
    })
    .await;
    assert_eq!(
        bin.metric("discovery_relist_repaired_total{resource=\"endpointslices\"}")
            .await,
        repaired
    );
}

#[tokio::test]
async fn a_watch_gap_longer_than_the_bound_is_followed_by_a_relist() {
    let fake = cluster().await;
    // No periodic relist within the test: only the gap may trigger one.
    let bin = Binary::start(
        &fake,
        &["--relist-interval", "1h", "--relist-after-gap", "1s"],
    )
    .await;
    assert_eq!(bin.backends().await.unwrap(), addresses(1..3));

    // The API server goes away for longer than the bound...
    fake.set_fault(Fault::DropConnections);
    bin.wait("a gap relist to be started", |b| async move {
        b.metric("discovery_forced_relists_total{reason=\"gap\"}")
            .await
            >= 1.0
    })
    .await;
    // ...and comes back with a state it never sent events for.
    fake.restart_with(vec![slice(3..5)], &[]).unwrap();
    fake.set_fault(Fault::None);
    bin.wait("the drift to be repaired", |b| async move {
        b.backends().await == Some(addresses(3..5))
    })
    .await;
    assert!(
        bin.metric("discovery_relist_repaired_total{resource=\"endpointslices\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        bin.metric("discovery_forced_relists_total{reason=\"periodic\"}")
            .await,
        0.0
    );
}
