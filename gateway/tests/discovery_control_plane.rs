//! The control plane as it runs in production, through the real binaries: the
//! `discovery` binary watching the fake Kubernetes API server, streaming to the real
//! `gateway` binary. Trust: the stream needs the token (none or a wrong one is refused,
//! and the gateway says why), it is served over TLS with a certificate reloaded when
//! its files change, and a gateway that does not trust the certificate refuses it and
//! keeps routing with its last table. Truthful state: snapshots carry the control
//! plane's epoch, so a restarted control plane is recognised; during an outage the
//! staleness and the outage grow and the connection state says so; on a quiet stream
//! heartbeats keep the last contact recent. The embedded watcher reports the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, echo_upstream, free_port, write_atomic};
use discovery::fake::{FakeApiServer, Fault};
use serde_json::{Value, json};

const TOKEN: &str = "cp-s3cret";
const WAIT: Duration = Duration::from_secs(30);

/// The `discovery` binary next to the gateway's (cargo builds every workspace binary
/// into one directory); built on demand when a lone `cargo test -p gateway` did not.
fn discovery_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_gateway")).with_file_name("discovery");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "discovery", "--bin", "discovery"])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the discovery binary");
    }
    path
}

/// A CA and a certificate for 127.0.0.1 / localhost signed by it, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test discovery CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

const NAMESPACE: &str = "shop";

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    })
}

/// The Service's one slice with ready endpoints at these addresses.
fn slice(addrs: &[SocketAddr]) -> Value {
    let port = addrs.first().map_or(8080, SocketAddr::port);
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": endpoints,
    })
}

/// The `discovery` binary as a process on `port`, killed (by PID) on drop.
struct ControlPlane {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlane {
    fn spawn(
        fake: &FakeApiServer,
        dir: &Path,
        port: u16,
        args: &[&str],
        token: Option<&str>,
    ) -> ControlPlane {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, fake.kubeconfig_yaml()).unwrap();
        let settings = dir.join("discovery.yaml");
        // Fast heartbeats, so a quiet stream is visibly alive within the test.
        std::fs::write(
            &settings,
            "stream: {heartbeat: 200ms}\nwatch: {coalesce: {quiet: 20ms, max_delay: 200ms}}\n",
        )
        .unwrap();
        let log = dir.join(format!("discovery-{port}-{}.log", unique()));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(discovery_binary());
        cmd.arg("--config")
            .arg(&settings)
            .args(["--namespace", NAMESPACE]);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        }
        cmd.args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("DISCOVERY_TOKEN")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        if let Some(token) = token {
            cmd.env("DISCOVERY_TOKEN", token);
        }
        ControlPlane {
            child: cmd.spawn().unwrap(),
            port,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `/readyz` answers 200 through `http` at `scheme`.
    async fn wait_ready(&self, http: &reqwest::Client, scheme: &str) {
        let url = format!("{scheme}://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "control plane not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn gateway_config(control_plane: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
discovery:
  control_plane: {{{control_plane}}}
upstreams:
  echo:
    kubernetes: {{namespace: shop, service: echo, port: http}}
routes:
  - {{id: echo, match: {{path: {{prefix: /}}}}, upstream: echo}}
"#
    )
}

/// The addresses of the `echo` pool in `/admin/upstreams`.
async fn pool(gw: &Gateway) -> Vec<String> {
    let v = gw.admin_json("/admin/upstreams").await;
    let mut out: Vec<String> = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "echo")
        .map(|p| {
            p["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["address"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn wait_for<F, Fut>(gw: &Gateway, what: &str, cond: F) -> Value
where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let v = gw.admin_json("/admin/upstreams").await;
        if cond(v.clone()).await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{v:#}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_pool(gw: &Gateway, want: &[SocketAddr]) -> Value {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = pool(gw).await;
        if got == want {
            return gw.admin_json("/admin/upstreams").await;
        }
        assert!(
            Instant::now() < deadline,
            "pool never became {want:?}; last {got:?}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Two echo "pods" on 127.0.0.1 and 127.0.0.2 sharing one port, like the pods of a
/// Service (one EndpointSlice has one port for all its endpoints).
async fn two_pods() -> (SocketAddr, SocketAddr) {
    loop {
        let port = free_port();
        let (a, b) = (
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 2], port)),
        );
        let (Ok(la), Ok(lb)) = (
            tokio::net::TcpListener::bind(a).await,
            tokio::net::TcpListener::bind(b).await,
        ) else {
            continue;
        };
        for (listener, name) in [(la, "pod-1"), (lb, "pod-2")] {
            let app = example_services::echo::app(name);
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        }
        return (a, b);
    }
}

async fn get_ok(gw: &Gateway) {
    let r = reqwest::get(gw.url("/echo")).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_requires_the_token_and_says_why_it_refuses() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service());
    let dir = tempfile::tempdir().unwrap();

    // No token and no written intent: the binary refuses to start.
    let mut open = ControlPlane::spawn(&fake, dir.path(), free_port(), &[], None);
    let status = open.child.wait().unwrap();
    assert!(!status.success());
    assert!(open.log().contains("no token"), "{}", open.log());
    // Nor does it serve plain HTTP to other hosts unless told to.
    let mut wide = ControlPlane::spawn(
        &fake,
        dir.path(),
        free_port(),
        &["--listen", "0.0.0.0:0"],
        Some(TOKEN),
    );
    assert!(!wide.child.wait().unwrap().success());
    assert!(wide.log().contains("TLS"), "{}", wide.log());

    let cp = ControlPlane::spawn(&fake, dir.path(), free_port(), &[], Some(TOKEN));
    let http = reqwest::Client::new();
    cp.wait_ready(&http, "http").await;
    let stream = format!("http://127.0.0.1:{}/v1/stream", cp.port);
    let r = http.get(&stream).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(&stream).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("http://127.0.0.1:{}/v1/snapshot", cp.port))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Gateways without the token, or with a wrong one, are refused: not ready, and
    // the admin API and metrics say why.
    let token_file = dir.path().join("wrong-token");
    std::fs::write(&token_file, "wrong\n").unwrap();
    for settings in [
        format!("url: 'http://127.0.0.1:{}'", cp.port),
        format!(
            "url: 'http://127.0.0.1:{}', token_file: '{}'",
            cp.port,
            token_file.display()
        ),
    ] {
        let gw = Gateway::start_unready(&gateway_config(&settings)).await;
        let v = wait_for(&gw, "the refusal to be reported", |v| async move {
            v["discovery"]["source"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("401"))
        })
        .await;
        assert_eq!(v["discovery"]["source"]["connected"], false, "{v:#}");
        assert_eq!(v["discovery"]["waiting_for_first_snapshot"], true, "{v:#}");
        let r = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
        assert_eq!(r.status(), 503);
        gw.wait_metrics(&["discovery_client_errors_total{reason=\"unauthorized\"}"])
            .await;
    }
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", cp.port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("discovery_unauthorized_requests_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_flows_and_a_wrong_ca_keeps_the_last_table() {
    let (pod1, pod2) = two_pods().await;
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service());
    fake.apply(slice(&[pod1]));
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (pki(), pki());
    let (cert, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    std::fs::write(&cert, &first.cert).unwrap();
    std::fs::write(&key, &first.key).unwrap();
    std::fs::write(&ca, &first.ca).unwrap();
    let port = free_port();
    let tls_args = [
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ];
    let cp = ControlPlane::spawn(&fake, dir.path(), port, &tls_args, Some(TOKEN));
    cp.wait_ready(&https_client(&first.ca), "https").await;
    // Plain HTTP is not served on the TLS port.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err()
    );

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let settings = format!(
        "url: 'https://127.0.0.1:{port}', token_file: '{}', ca_file: '{}'",
        token_file.display(),
        ca.display()
    );
    let gw = Gateway::start(&gateway_config(&settings)).await;
    wait_pool(&gw, &[pod1]).await;
    get_ok(&gw).await;
    fake.apply(slice(&[pod1, pod2]));
    wait_pool(&gw, &[pod1, pod2]).await;

    // The certificate is rotated to one from another CA: new handshakes get it
    // without a restart.
    write_atomic(&key, &second.key);
    write_atomic(&cert, &second.cert);
    cp.wait_ready(&https_client(&second.ca), "https").await;

    // The control plane restarts (the gateway must reconnect) with that certificate,
    // which the gateway's CA does not sign: refused; the table and traffic stay.
    drop(cp);
    let cp = ControlPlane::spawn(&fake, dir.path(), port, &tls_args, Some(TOKEN));
    cp.wait_ready(&https_client(&second.ca), "https").await;
    fake.apply(slice(&[pod2]));
    let v = wait_for(&gw, "the certificate to be refused", |v| async move {
        v["discovery"]["source"]["last_error"]
            .as_str()
            .is_some_and(|e| e.to_ascii_lowercase().contains("certificate"))
    })
    .await;
    assert_eq!(v["discovery"]["source"]["connected"], false, "{v:#}");
    gw.wait_metrics(&[
        "discovery_client_errors_total{reason=\"tls\"}",
        "discovery_client_connected 0",
    ])
    .await;
    assert_eq!(
        pool(&gw).await,
        {
            let mut v = vec![pod1.to_string(), pod2.to_string()];
            v.sort();
            v
        },
        "the last table stays"
    );
    get_ok(&gw).await;
    assert_eq!(
        reqwest::get(gw.admin_url("/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    // The gateway's CA file is updated too: the next connection trusts it.
    write_atomic(&ca, &second.ca);
    wait_pool(&gw, &[pod2]).await;
    get_ok(&gw).await;
    let v = gw.admin_json("/admin/upstreams").await;
    assert_eq!(v["discovery"]["source"]["connected"], true, "{v:#}");
}

/// A metric's value from the gateway's `/metrics` (0 when absent).
async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_is_recognised_and_an_outage_is_reported() {
    let pod1 = echo_upstream("pod-1").await;
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(service());
    fake.apply(slice(&[pod1]));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cp = ControlPlane::spawn(&fake, dir.path(), port, &[], Some(TOKEN));
    let http = reqwest::Client::new();
    cp.wait_ready(&http, "http").await;
    // The token comes from the environment here.
    let gw = Gateway::start_with_env(
        &gateway_config(&format!(
            "url: 'http://127.0.0.1:{port}', token_env: CP_TOKEN"
        )),
        &[("CP_TOKEN", TOKEN)],
    )
    .await;
    let before = wait_pool(&gw, &[pod1]).await;
    // Routing normally, and the metrics say so in control-plane mode too.
    gw.wait_metrics(&[
        "discovery_synced 1",
        "discovery_endpoints 1",
        "discovery_services 1",
        "discovery_client_connected 1",
        "discovery_source_connected 1",
        "discovery_snapshot_stale_seconds 0",
        "discovery_source_outage_seconds 0",
    ])
    .await;
    let epoch = before["discovery"]["snapshot_epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let applied = before["discovery"]["snapshot_applied_at"].clone();
    assert_eq!(before["discovery"]["source"]["epoch"], epoch.as_str());
    // A quiet stream stays in contact through heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = gw.admin_json("/admin/upstreams").await;
    let contact = v["discovery"]["source"]["last_contact_age_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        contact < 1.0,
        "heartbeats every 200ms, yet {contact}s: {v:#}"
    );

    // The control plane goes away: the gateway keeps routing, and reports the outage.
    drop(cp);
    let v = wait_for(&gw, "the outage to be reported", |v| async move {
        v["discovery"]["source"]["outage_seconds"]
            .as_f64()
            .is_some_and(|s| s >= 1.0)
    })
    .await;
    assert_eq!(v["discovery"]["source"]["connected"], false, "{v:#}");
    assert!(v["discovery"]["source"]["last_error"].is_string(), "{v:#}");
    let deadline = Instant::now() + WAIT;
    while metric(&gw, "discovery_snapshot_stale_seconds").await < 1.0 {
        assert!(Instant::now() < deadline, "staleness never grew");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&gw, "discovery_source_outage_seconds").await >= 1.0);
    assert_eq!(metric(&gw, "discovery_source_connected").await, 0.0);
    get_ok(&gw).await;
    let age_before = metric(&gw, "gateway_discovery_snapshot_age_seconds").await;
    assert!(age_before >= 1.0, "{age_before}");

    // It comes back (a new process, versions from 1 again, the same endpoints): the
    // gateway sees a new epoch, and the snapshot's time and age start again.
    let _cp = ControlPlane::spawn(&fake, dir.path(), port, &[], Some(TOKEN));
    let v = wait_for(&gw, "the new epoch", |v| {
        let epoch = epoch.clone();
        async move {
            v["discovery"]["snapshot_epoch"]
                .as_str()
                .is_some_and(|e| e != epoch)
        }
    })
    .await;
    assert_ne!(v["discovery"]["snapshot_applied_at"], applied, "{v:#}");
    assert_eq!(
        v["discovery"]["snapshot_version"],
        v["discovery"]["source"]["version"]
    );
    assert_eq!(v["discovery"]["source"]["connected"], true, "{v:#}");
    assert!(metric(&gw, "gateway_discovery_snapshot_age_seconds").await < age_before);
    gw.wait_metrics(&[
        "discovery_snapshot_stale_seconds 0",
        "discovery_source_connected 1",
    ])
    .await;
    get_ok(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_watcher_reports_contact_and_outage_truthfully() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.set_bookmark_interval(Duration::from_millis(200));
    fake.apply(service());
    fake.apply(slice(&[
        "10.1.0.1:8080".parse().unwrap(),
        "10.1.0.2:8080".parse().unwrap(),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_yaml()).unwrap();
    let config = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
discovery:
  kubernetes: {{kubeconfig: "{}", namespaces: [shop], quiet: 20ms, max_delay: 200ms}}
upstreams:
  echo:
    kubernetes: {{namespace: shop, service: echo, port: http}}
routes:
  - {{id: echo, match: {{path: {{prefix: /}}}}, upstream: echo}}
"#,
        kubeconfig.display()
    );
    let gw = Gateway::start(&config).await;
    gw.wait_metrics(&[
        "discovery_synced 1",
        "discovery_endpoints 2",
        "discovery_source_connected 1",
        "discovery_snapshot_stale_seconds 0",
    ])
    .await;
    let v = gw.admin_json("/admin/upstreams").await;
    assert!(v["discovery"]["snapshot_epoch"].is_string(), "{v:#}");
    // Nothing changes for a while: bookmarks on the open watches are contact.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = gw.admin_json("/admin/upstreams").await;
    let contact = v["discovery"]["source"]["last_contact_age_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        contact < 1.5,
        "bookmarks every 200ms, yet {contact}s: {v:#}"
    );
    assert_eq!(v["discovery"]["source"]["connected"], true, "{v:#}");

    // The API server fails: outage and staleness grow, the table stays.
    fake.set_fault(Fault::DropConnections);
    let deadline = Instant::now() + WAIT;
    while metric(&gw, "discovery_snapshot_stale_seconds").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "staleness never grew:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&gw, "discovery_source_connected").await, 0.0);
    let v = gw.admin_json("/admin/upstreams").await;
    assert!(
        v["discovery"]["source"]["outage_seconds"].as_f64().unwrap() > 0.0,
        "{v:#}"
    );
    assert_eq!(pool(&gw).await.len(), 2);
    fake.set_fault(Fault::None);
    gw.wait_metrics(&[
        "discovery_snapshot_stale_seconds 0",
        "discovery_source_connected 1",
    ])
    .await;
}
