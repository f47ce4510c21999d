//! Kubernetes upstreams end to end: the real gateway binary follows an EndpointSlice
//! served by the fake Kubernetes API server (`discovery::fake`), either with the
//! watcher embedded or through a `discovery` control plane, in front of real Axum
//! upstreams (one per "pod", on 127.0.0.1/2/3 sharing one port like pods of a
//! Service). While a client keeps sending requests: zero failures while at least one
//! endpoint is ready, a prompt 503 (never a hang) while none is, not ready before the
//! first sync, a rolling update with requests in flight on the leaving pods, the
//! embedded mass-deletion guard confirmed on the admin API, and the last snapshot kept
//! while the control plane is away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, Member, free_port};
use discovery::fake::{FakeApiServer, Fault};
use serde_json::{Value, json};

const NAMESPACE: &str = "shop";
const SERVICE: &str = "echo";

fn service(target_port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": SERVICE},
            "ports": [{"name": "http", "port": 80, "targetPort": target_port, "protocol": "TCP"}],
        },
    })
}

/// How an endpoint appears in the slice.
#[derive(Clone, Copy)]
enum Pod {
    Ready(u8),
    /// Shutting down but still serving (`ready: false, serving: true, terminating: true`).
    Terminating(u8),
}

/// The Service's one EndpointSlice with `pods` (by last octet of 127.0.0.N).
fn slice(port: u16, pods: &[Pod]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            let (n, ready) = match p {
                Pod::Ready(n) => (n, true),
                Pod::Terminating(n) => (n, false),
            };
            json!({
                "addresses": [format!("127.0.0.{n}")],
                "conditions": {"ready": ready, "serving": true, "terminating": !ready},
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": format!("echo-{n}")},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "echo-x7k2p",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": SERVICE},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A port free on 127.0.0.1 to .6 alike.
fn shared_port() -> u16 {
    loop {
        let port = free_port();
        let free = (1..=6)
            .all(|n| std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, n], port))).is_ok());
        if free {
            return port;
        }
    }
}

fn pod(n: u8, port: u16) -> Member {
    Member::start_at(
        &format!("echo-{n}"),
        SocketAddr::from(([127, 0, 0, n], port)),
    )
}

/// `/admin/upstreams` once the `echo` pool has exactly `want` (address, draining).
async fn wait_pool(gw: &Gateway, port: u16, want: &[(u8, bool)]) -> Value {
    let want: Vec<(String, bool)> = want
        .iter()
        .map(|(n, d)| (format!("127.0.0.{n}:{port}"), *d))
        .collect();
    wait_pool_exactly(gw, want).await
}

async fn wait_pool_exactly(gw: &Gateway, mut want: Vec<(String, bool)>) -> Value {
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = gw.admin_json("/admin/upstreams").await;
        let pool = v["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "echo")
            .cloned()
            .unwrap();
        let mut got: Vec<(String, bool)> = pool["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap().to_owned(),
                    e["draining"].as_bool().unwrap(),
                )
            })
            .collect();
        got.sort();
        if got == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "pool never became {want:?}; last {got:?}:\n{v:#}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gateway config in embedded mode against `fake` (its kubeconfig written into `dir`),
/// with fast coalescing and `settings` added to `discovery.kubernetes`.
fn embedded_config(fake: &FakeApiServer, dir: &std::path::Path, settings: &str) -> String {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_yaml()).unwrap();
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
discovery:
  kubernetes: {{kubeconfig: "{}", quiet: 20ms, max_delay: 200ms, {settings}}}
{ROUTES}"#,
        kubeconfig.display()
    )
}

async fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn wait_readyz(gw: &Gateway, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = readyz(gw).await;
        if s == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never {status}: {body}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What requests sent now must get.
const MUST_SUCCEED: u8 = 0;
const MUST_BE_503: u8 = 1;
/// The cluster is changing between those two: either answer is right, nothing else.
const EITHER: u8 = 2;

/// Clients sending requests through the gateway without pause, judging each answer by
/// the expectation in force when it was sent.
struct Load {
    expect: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    /// Requests completed per worker.
    done: Vec<Arc<AtomicUsize>>,
    ok: Arc<AtomicUsize>,
    unavailable: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let mut load = Load {
            expect: Arc::new(AtomicU8::new(EITHER)),
            stop: Arc::default(),
            done: Vec::new(),
            ok: Arc::default(),
            unavailable: Arc::default(),
            failures: Arc::default(),
            tasks: Vec::new(),
        };
        for _ in 0..workers {
            let done = Arc::new(AtomicUsize::new(0));
            load.done.push(Arc::clone(&done));
            let (expect, stop, url) = (
                Arc::clone(&load.expect),
                Arc::clone(&load.stop),
                url.clone(),
            );
            let (ok, unavailable, failures) = (
                Arc::clone(&load.ok),
                Arc::clone(&load.unavailable),
                Arc::clone(&load.failures),
            );
            load.tasks.push(tokio::spawn(async move {
                // A hang is a failure: every answer must come within this.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let mode = expect.load(Ordering::SeqCst);
                    let outcome = match client.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let retry_after = r.headers().contains_key("retry-after");
                            let body = r.text().await.unwrap_or_default();
                            if status == 200 {
                                Ok(true)
                            } else if status == 503
                                && retry_after
                                && body.contains("\"no_upstream_endpoint\"")
                            {
                                Ok(false)
                            } else {
                                Err(format!("{status} {body}"))
                            }
                        }
                        Err(e) => Err(format!("request error: {e}")),
                    };
                    let verdict = match (mode, outcome) {
                        (MUST_SUCCEED | EITHER, Ok(true)) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            None
                        }
                        (MUST_BE_503 | EITHER, Ok(false)) => {
                            unavailable.fetch_add(1, Ordering::SeqCst);
                            None
                        }
                        (mode, Ok(served)) => Some(format!(
                            "mode {mode}: {}",
                            if served { "200" } else { "503" }
                        )),
                        (mode, Err(e)) => Some(format!("mode {mode}: {e}")),
                    };
                    if let Some(v) = verdict {
                        failures.lock().unwrap().push(v);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        load
    }

    fn expect(&self, mode: u8) {
        self.expect.store(mode, Ordering::SeqCst);
    }

    /// Wait until every worker completed `n` more requests: whatever they sent before
    /// is finished.
    async fn settle(&self, n: usize) {
        let start: Vec<usize> = self.done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .done
            .iter()
            .zip(&start)
            .all(|(d, s)| d.load(Ordering::SeqCst) >= s + n)
        {
            assert!(Instant::now() < deadline, "load made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    async fn stop(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (
            self.ok.load(Ordering::SeqCst),
            self.unavailable.load(Ordering::SeqCst),
            failures,
        )
    }
}

const ROUTES: &str = r#"
upstreams:
  echo:
    kubernetes: {namespace: shop, service: echo, port: http}
routes:
  - {id: echo, match: {path: {prefix: /}}, upstream: echo}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_watcher_follows_scaling_without_failed_requests() {
    let port = shared_port();
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service(port));
    let mut pods = vec![Some(pod(1, port)), None, None];
    fake.apply(slice(port, &[Pod::Ready(1)]));

    // The API server hangs: no first sync, so the gateway must say it is not ready
    // and answer the route at once with 503, not wait for endpoints.
    fake.set_fault(Fault::Hang);
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(&fake, dir.path(), "namespaces: [shop]");
    let gw = Gateway::start_unready(&config).await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "waiting_for_discovery", "{body}");
    let started = Instant::now();
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(gw.url("/before-sync"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.text().await.unwrap().contains("no_upstream_endpoint"));
    assert!(started.elapsed() < Duration::from_secs(5));

    fake.set_fault(Fault::None);
    wait_readyz(&gw, 200).await;
    let upstreams = wait_pool(&gw, port, &[(1, false)]).await;
    assert_eq!(
        upstreams["discovery"]["mode"], "kubernetes",
        "{upstreams:#}"
    );
    let pool = &upstreams["upstreams"][0];
    assert_eq!(pool["source"]["kind"], "kubernetes", "{pool:#}");
    assert_eq!(pool["source"]["service"], "echo", "{pool:#}");
    assert_eq!(pool["source"]["port"], "http", "{pool:#}");
    assert!(
        pool["source"]["snapshot_version"].as_u64().unwrap() >= 1,
        "{pool:#}"
    );
    assert_eq!(
        pool["source"]["snapshot_version"],
        upstreams["discovery"]["snapshot_version"]
    );
    gw.wait_metrics(&[
        "gateway_discovery_waiting 0",
        "discovery_synced 1",
        "gateway_discovery_snapshot_age_seconds",
    ])
    .await;

    let load = Load::start(gw.url("/echo"), 4);
    load.expect(MUST_SUCCEED);
    load.settle(20).await;

    // 1 -> 3: the new pods serve before they are announced.
    pods[1] = Some(pod(2, port));
    pods[2] = Some(pod(3, port));
    fake.apply(slice(port, &[Pod::Ready(1), Pod::Ready(2), Pod::Ready(3)]));
    wait_pool(&gw, port, &[(1, false), (2, false), (3, false)]).await;
    load.settle(30).await;
    let hits: Vec<usize> = pods.iter().map(|p| p.as_ref().unwrap().hits()).collect();
    assert!(hits.iter().all(|h| *h > 0), "every pod serves: {hits:?}");

    // 3 -> 0, as Kubernetes does it: first all terminating but still serving (the
    // only backends left, so they keep serving), then gone; the pods stop last.
    fake.apply(slice(
        port,
        &[
            Pod::Terminating(1),
            Pod::Terminating(2),
            Pod::Terminating(3),
        ],
    ));
    load.settle(30).await;
    load.expect(EITHER);
    fake.apply(slice(port, &[]));
    wait_pool(&gw, port, &[]).await;
    load.expect(MUST_BE_503);
    load.settle(2).await;
    for p in &mut pods {
        p.take();
    }
    load.settle(30).await;
    assert_eq!(
        readyz(&gw).await.0,
        200,
        "an empty Service is not unreadiness"
    );

    // 0 -> 2.
    pods[0] = Some(pod(1, port));
    pods[1] = Some(pod(2, port));
    load.expect(EITHER);
    fake.apply(slice(port, &[Pod::Ready(1), Pod::Ready(2)]));
    wait_pool(&gw, port, &[(1, false), (2, false)]).await;
    load.expect(MUST_SUCCEED);
    load.settle(30).await;
    assert!(
        pods[0].as_ref().unwrap().hits() > 0 && pods[1].as_ref().unwrap().hits() > 0,
        "both new pods serve"
    );

    assert!(load.failures().is_empty(), "{:?}", load.failures());
    let (ok, unavailable, failures) = load.stop().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 100 && unavailable > 50, "ok {ok}, 503 {unavailable}");
    // The gateway swapped runtimes for the changes, not a reload.
    let metrics = gw.wait_metrics(&["gateway_discovery_updates_total"]).await;
    assert!(
        !metrics.contains("gateway_config_reloads_total 1"),
        "snapshots are not config reloads"
    );
}

/// A `discovery` control plane (watcher on the fake API + stream server) on its own
/// runtime, so stopping it really closes every connection, like a crashed process.
struct ControlPlaneProcess {
    rt: Option<tokio::runtime::Runtime>,
}

const TOKEN: &str = "s3cret-token";

impl ControlPlaneProcess {
    fn start(fake: &FakeApiServer, addr: SocketAddr) -> ControlPlaneProcess {
        use discovery::metrics::DiscoveryMetrics;
        use discovery::server::{ControlPlane, ServerConfig};
        use discovery::watcher::{self, Coalesce, WatchConfig};

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = rt.enter();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(addr).unwrap();
            socket.listen(1024).unwrap()
        };
        let kube_config = fake.kube_config();
        rt.spawn(async move {
            let client = kube::Client::try_from(kube_config).unwrap();
            let registry = prometheus::Registry::new();
            let metrics = DiscoveryMetrics::new(&registry).unwrap();
            let mut config = WatchConfig::new(metrics.clone());
            config.namespaces = vec![NAMESPACE.into()];
            config.coalesce = Coalesce {
                quiet: Duration::from_millis(20),
                max_delay: Duration::from_millis(200),
            };
            let (snapshots, watch) = watcher::spawn(client, config);
            let server = ServerConfig {
                token: Some(TOKEN.into()),
                heartbeat: Duration::from_millis(500),
                ..ServerConfig::default()
            };
            let cp = ControlPlane::start(server, snapshots, Some(watch), registry, metrics);
            let _ = axum::serve(listener, cp.router()).await;
        });
        ControlPlaneProcess { rt: Some(rt) }
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_plane_subscriber_follows_and_survives_an_outage() {
    let port = shared_port();
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service(port));
    let _p1 = pod(1, port);
    fake.apply(slice(port, &[Pod::Ready(1)]));
    let cp_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cp = ControlPlaneProcess::start(&fake, cp_addr);

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
discovery:
  control_plane: {{url: "http://{cp_addr}", token_file: "{}"}}
{ROUTES}"#,
        token_file.display()
    );
    // Ready means the first snapshot came through the control plane.
    let gw = Gateway::start(&config).await;
    let upstreams = wait_pool(&gw, port, &[(1, false)]).await;
    assert_eq!(upstreams["discovery"]["mode"], "control_plane");
    // The control plane's mass-deletion guard is confirmed there, not here.
    let r = reqwest::Client::new()
        .post(gw.admin_url("/admin/discovery/confirm-mass-deletion"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    let load = Load::start(gw.url("/echo"), 3);
    load.expect(MUST_SUCCEED);
    let _p2 = pod(2, port);
    fake.apply(slice(port, &[Pod::Ready(1), Pod::Ready(2)]));
    wait_pool(&gw, port, &[(1, false), (2, false)]).await;
    load.settle(20).await;
    gw.wait_metrics(&["discovery_client_connected 1"]).await;

    // The control plane goes away: the gateway keeps the last snapshot and serves.
    cp.kill();
    gw.wait_metrics(&["discovery_client_connected 0"]).await;
    let _p3 = pod(3, port);
    fake.apply(slice(port, &[Pod::Ready(1), Pod::Ready(2), Pod::Ready(3)]));
    load.settle(30).await;
    wait_pool(&gw, port, &[(1, false), (2, false)]).await;
    assert_eq!(readyz(&gw).await.0, 200);

    // Back (a new process, a new epoch): the gateway reconnects and catches up.
    let _cp = ControlPlaneProcess::start(&fake, cp_addr);
    wait_pool(&gw, port, &[(1, false), (2, false), (3, false)]).await;
    load.settle(20).await;
    assert!(_p3.hits() > 0, "the pod added during the outage serves");

    let (ok, _, failures) = load.stop().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 50, "{ok}");
}

#[test]
fn an_unreadable_kubeconfig_fails_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    let config = dir.path().join("gateway.yaml");
    let text = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{}"}}]
admin: {{address: "127.0.0.1:{}"}}
discovery:
  kubernetes: {{kubeconfig: "{}"}}
{ROUTES}"#,
        free_port(),
        free_port(),
        missing.display()
    );
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway kept running without its kubeconfig");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("cannot read kubeconfig") && stderr.contains("no-such-kubeconfig"),
        "{stderr}"
    );
}

/// A slice of `n` ready endpoints 10.1.0.1..n (nothing listens there: this test sends
/// no traffic, it watches the routing table).
fn wide_slice(n: u8) -> Value {
    let endpoints: Vec<Value> = (1..=n)
        .map(|i| json!({"addresses": [format!("10.1.0.{i}")], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "echo-wide", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn wide(n: u8) -> Vec<(String, bool)> {
    (1..=n)
        .map(|i| (format!("10.1.0.{i}:8080"), false))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mass_deletion_waits_for_confirmation_on_the_admin_api() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service(8080));
    fake.apply(wide_slice(12));
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(&fake, dir.path(), "max_removed_percent: 50");
    let gw = Gateway::start(&config).await;
    wait_pool_exactly(&gw, wide(12)).await;
    let confirm = || async {
        let r = reqwest::Client::new()
            .post(gw.admin_url("/admin/discovery/confirm-mass-deletion"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(confirm().await, (200, json!({"confirmed": false})));

    // 12 -> 2 removes 83% of all endpoints: held, the table keeps all 12.
    fake.apply(wide_slice(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    let held = loop {
        let v = gw.admin_json("/admin/upstreams").await;
        let held = v["discovery"]["source"]["held_mass_deletion"].clone();
        if !held.is_null() {
            break held;
        }
        assert!(Instant::now() < deadline, "never held: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(held["removed_endpoints"], 10, "{held}");
    assert_eq!(held["total_endpoints"], 12, "{held}");
    wait_pool_exactly(&gw, wide(12)).await;
    gw.wait_metrics(&["discovery_mass_deletion_held 1"]).await;

    // The operator confirms: the change goes out.
    assert_eq!(confirm().await, (200, json!({"confirmed": true})));
    wait_pool_exactly(&gw, wide(2)).await;
    gw.wait_metrics(&["discovery_mass_deletion_held 0"]).await;
    // Other methods on other admin paths are still refused.
    let r = reqwest::Client::new()
        .post(gw.admin_url("/admin/upstreams"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_under_load_fails_no_request() {
    let port = shared_port();
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service(port));
    let mut pods: std::collections::BTreeMap<u8, Member> =
        (1..=3).map(|n| (n, pod(n, port))).collect();
    let ready = |ns: &[u8]| ns.iter().map(|n| Pod::Ready(*n)).collect::<Vec<_>>();
    fake.apply(slice(port, &ready(&[1, 2, 3])));
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(&fake, dir.path(), "namespaces: [shop]");
    let gw = Gateway::start(&config).await;
    let pool = |ns: &[u8]| ns.iter().map(|n| (*n, false)).collect::<Vec<_>>();
    wait_pool(&gw, port, &pool(&[1, 2, 3])).await;

    // Quick requests, and slow ones that are in flight on a pod when it leaves.
    let fast = Load::start(gw.url("/echo"), 3);
    let slow = Load::start(gw.url("/delay/150"), 2);
    fast.expect(MUST_SUCCEED);
    slow.expect(MUST_SUCCEED);
    fast.settle(10).await;

    let mut current = vec![1u8, 2, 3];
    for (old, new) in [(1u8, 4u8), (2, 5), (3, 6)] {
        // Surge: the new pod starts, becomes ready, is announced.
        pods.insert(new, pod(new, port));
        current.push(new);
        fake.apply(slice(port, &ready(&current)));
        wait_pool(&gw, port, &pool(&current)).await;
        // The old pod terminates: still serving, no longer ready, so it leaves the
        // pool while others are ready; what it has in flight finishes.
        current.retain(|n| *n != old);
        let mut states = ready(&current);
        states.push(Pod::Terminating(old));
        fake.apply(slice(port, &states));
        wait_pool(&gw, port, &pool(&current)).await;
        fast.settle(3).await;
        slow.settle(2).await;
        // Gone from the slice, then the process exits.
        fake.apply(slice(port, &ready(&current)));
        pods.remove(&old);
    }
    fast.settle(20).await;
    slow.settle(3).await;
    for n in [4, 5, 6] {
        assert!(pods[&n].hits() > 0, "pod {n} serves");
    }
    let (fast_ok, _, fast_failures) = fast.stop().await;
    let (slow_ok, _, slow_failures) = slow.stop().await;
    assert!(
        fast_failures.is_empty() && slow_failures.is_empty(),
        "failed requests: {fast_failures:?} {slow_failures:?}"
    );
    assert!(fast_ok > 100 && slow_ok > 10, "{fast_ok} {slow_ok}");
}
