//! The `discovery` binary end to end: started as a process with `KUBECONFIG` pointing
//! at the fake API server, it must report not-ready until synced, stream the cluster's
//! endpoints to a gateway client with the bearer token, and follow a change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use discovery::client::ClientConfig;
use discovery::fake::{FakeApiServer, Fault};
use discovery::metrics::DiscoveryMetrics;
use discovery::{PortRef, ServiceKey, Snapshot, SnapshotReceiver};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

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

async fn until(rx: &mut SnapshotReceiver, cond: impl Fn(&Snapshot) -> bool) {
    tokio::time::timeout(WAIT, async {
        loop {
            if rx.borrow_and_update().as_ref().is_some_and(|s| cond(s)) {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("timed out waiting for the snapshot");
}

fn web_backends(s: &Snapshot) -> usize {
    s.services
        .get(&ServiceKey::new("shop", "web"))
        .map_or(0, |svc| svc.resolve(&PortRef::Name("http".into())).len())
}

fn slice(hosts: std::ops::Range<u8>) -> serde_json::Value {
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

#[tokio::test]
async fn the_binary_watches_through_kubeconfig_and_streams_to_a_client() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80}]}
    }));
    fake.apply(slice(1..3));
    // Not ready until the first sync: the lists fail at first.
    fake.set_fault(Fault::Status(503));

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
            .env("KUBECONFIG", &kubeconfig)
            .env("DISCOVERY_TOKEN", "t0ken")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).ok() }
    };
    tokio::time::timeout(WAIT, async {
        while status("/healthz").await != Some(200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the binary did not come up");
    assert_eq!(status("/readyz").await, Some(503));

    fake.set_fault(Fault::None);
    let metrics = DiscoveryMetrics::unregistered().unwrap();
    let mut config = ClientConfig::new(base.clone(), metrics);
    config.token = Some("t0ken".into());
    let mut rx = discovery::client::spawn(config);
    until(&mut rx, |s| web_backends(s) == 2).await;
    assert_eq!(status("/readyz").await, Some(200));

    fake.apply(slice(1..4));
    until(&mut rx, |s| web_backends(s) == 3).await;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("discovery_synced 1"), "{metrics}");
    drop(process);
}

#[test]
fn check_rejects_bad_settings_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("discovery.yaml");
    std::fs::write(&file, "watch:\n  source: pods\n  coalesce: { quiet: 0s }\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_discovery"))
        .args(["--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("watch.source"), "{stderr}");
    assert!(stderr.contains("watch.coalesce.quiet"), "{stderr}");
    std::fs::write(&file, "watch:\n  namespaces: [shop]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_discovery"))
        .args(["--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
