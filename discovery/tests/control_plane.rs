//! The control-plane server and the gateway's client of it, over real HTTP on
//! 127.0.0.1: the stream's full snapshot and updates, resuming with `since`, the bearer
//! token, probes, a subscriber that falls behind, and a client that keeps its last
//! snapshot while the server is away and catches up when it returns.
//!
//! Each server runs on its own runtime thread, so stopping it closes every connection
//! the way a crashed process would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use discovery::client::ClientConfig;
use discovery::metrics::DiscoveryMetrics;
use discovery::protocol::{Message, STREAM_PATH};
use discovery::server::{ControlPlane, ServerConfig};
use discovery::{Backend, Service, ServiceKey, Snapshot, SnapshotReceiver, SnapshotSender};
use futures_util::StreamExt;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "s3cret-token";

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn service(hosts: std::ops::Range<u8>) -> Arc<Service> {
    Arc::new(Service {
        ports: vec![],
        backends: BTreeMap::from([(
            "http".to_string(),
            hosts
                .map(|h| Backend {
                    address: SocketAddr::from(([10, 0, 0, h], 8080)),
                    draining: false,
                    app_protocol: None,
                    for_zones: vec![],
                })
                .collect(),
        )]),
    })
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("shop", name)
}

fn publish(tx: &SnapshotSender, services: &[(&str, Arc<Service>)]) -> Arc<Snapshot> {
    let version = tx.borrow().as_ref().map_or(0, |s| s.version) + 1;
    let snap = Arc::new(Snapshot {
        epoch: "".into(),
        version,
        services: services.iter().map(|(n, s)| (key(n), s.clone())).collect(),
    });
    tx.send_replace(Some(snap.clone()));
    snap
}

/// A control plane on its own runtime thread; dropping it stops the runtime and
/// closes every connection.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: DiscoveryMetrics,
}

impl Server {
    fn start(bind: SocketAddr, config: ServerConfig, snapshots: SnapshotReceiver) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let registry = prometheus::Registry::new();
        let metrics = DiscoveryMetrics::new(&registry).unwrap();
        let m = metrics.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let cp = ControlPlane::start(config, snapshots, None, registry, m);
                let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                // Stopping drops the server outright (no graceful wait: streams never
                // end by themselves), like a crash.
                tokio::select! {
                    _ = cp.serve(listener) => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_background();
        });
        let addr = addr_rx.recv_timeout(WAIT).unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            metrics,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn config(token: Option<&str>) -> ServerConfig {
    ServerConfig {
        token: token.map(str::to_owned),
        ..ServerConfig::default()
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Reads one NDJSON stream line by line.
struct Lines {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl Lines {
    async fn open(url: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    async fn subscribe(server: &Server, query: &str) -> Self {
        let response = Self::open(
            &format!("{}{STREAM_PATH}{query}", server.url()),
            Some(TOKEN),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        Self {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next message that is not a heartbeat.
    async fn next(&mut self) -> Message {
        bounded("a stream message", async {
            loop {
                if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    let message: Message = serde_json::from_slice(&line).unwrap();
                    if !matches!(message, Message::Heartbeat { .. }) {
                        return message;
                    }
                    continue;
                }
                let chunk = self.body.next().await.unwrap().unwrap();
                self.buffer.extend_from_slice(&chunk);
            }
        })
        .await
    }
}

fn epoch_of(message: &Message) -> String {
    match message {
        Message::Snapshot { epoch, .. }
        | Message::Update { epoch, .. }
        | Message::Heartbeat { epoch, .. } => epoch.clone(),
    }
}

#[tokio::test]
async fn the_stream_sends_a_full_snapshot_then_per_service_updates() {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let server = Server::start(any_port(), config(Some(TOKEN)), rx);
    let a = service(1..3);
    publish(&tx, &[("a", a.clone()), ("b", service(3..4))]);
    let mut lines = Lines::subscribe(&server, "").await;
    let Message::Snapshot {
        version, services, ..
    } = lines.next().await
    else {
        panic!("the first message must be a snapshot")
    };
    assert_eq!(version, 1);
    assert_eq!(services.len(), 2);
    assert_eq!(services[&key("a")], a);

    publish(&tx, &[("a", a.clone()), ("b", service(3..5))]);
    let Message::Update {
        base,
        version,
        changed,
        removed,
        ..
    } = lines.next().await
    else {
        panic!("expected an update")
    };
    assert_eq!((base, version), (1, 2));
    assert_eq!(changed.keys().collect::<Vec<_>>(), vec![&key("b")]);
    assert!(removed.is_empty());

    publish(&tx, &[("b", service(3..5))]);
    let Message::Update {
        base,
        version,
        changed,
        removed,
        ..
    } = lines.next().await
    else {
        panic!("expected an update")
    };
    assert_eq!((base, version), (2, 3));
    assert!(changed.is_empty());
    assert_eq!(removed, vec![key("a")]);
}

#[tokio::test]
async fn a_subscriber_resumes_with_since() {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let server = Server::start(
        any_port(),
        ServerConfig {
            history: 2,
            ..config(Some(TOKEN))
        },
        rx,
    );
    publish(&tx, &[("a", service(1..2))]);
    let mut first = Lines::subscribe(&server, "").await;
    let epoch = epoch_of(&first.next().await);
    // One at a time: the server follows the latest snapshot, so two quick publishes
    // could reach it as one update.
    publish(&tx, &[("a", service(1..3))]);
    first.next().await;
    publish(&tx, &[("a", service(1..4))]);
    first.next().await;

    // From version 1: only the two updates, no snapshot.
    let mut resumed = Lines::subscribe(&server, &format!("?since=1&epoch={epoch}")).await;
    for expected in [(1, 2), (2, 3)] {
        match resumed.next().await {
            Message::Update { base, version, .. } => assert_eq!((base, version), expected),
            other => panic!("expected an update, got {other:?}"),
        }
    }
    // Up to date: nothing until the next change.
    let mut current = Lines::subscribe(&server, &format!("?since=3&epoch={epoch}")).await;
    publish(&tx, &[("a", service(1..5))]);
    match current.next().await {
        Message::Update { base, version, .. } => assert_eq!((base, version), (3, 4)),
        other => panic!("expected an update, got {other:?}"),
    }
    // Older than the history of 2 updates, another server run, or a future version:
    // a full snapshot.
    for query in [
        format!("?since=1&epoch={epoch}"),
        "?since=3&epoch=another-run".to_string(),
        format!("?since=99&epoch={epoch}"),
    ] {
        let mut lines = Lines::subscribe(&server, &query).await;
        match lines.next().await {
            Message::Snapshot { version, .. } => assert_eq!(version, 4, "{query}"),
            other => panic!("{query}: expected a snapshot, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_bearer_token_is_required_and_probes_are_open() {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let server = Server::start(any_port(), config(Some(TOKEN)), rx);
    let stream = format!("{}{STREAM_PATH}", server.url());
    for token in [None, Some("wrong"), Some("s3cret-token-but-longer")] {
        let response = Lines::open(&stream, token).await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let snapshot = format!("{}/v1/snapshot", server.url());
    assert_eq!(Lines::open(&snapshot, None).await.status(), 401);
    // Before the first snapshot: alive but not ready.
    assert_eq!(
        Lines::open(&format!("{}/healthz", server.url()), None)
            .await
            .status(),
        200
    );
    assert_eq!(
        Lines::open(&format!("{}/readyz", server.url()), None)
            .await
            .status(),
        503
    );
    assert_eq!(Lines::open(&snapshot, Some(TOKEN)).await.status(), 503);

    publish(&tx, &[("a", service(1..2))]);
    bounded("ready", async {
        while Lines::open(&format!("{}/readyz", server.url()), None)
            .await
            .status()
            != 200
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let response = Lines::open(&snapshot, Some(TOKEN)).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["version"], 1);
    let metrics = Lines::open(&format!("{}/metrics", server.url()), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("discovery_subscribers"), "{metrics}");
}

#[tokio::test]
async fn a_client_with_the_wrong_token_gets_nothing() {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let server = Server::start(any_port(), config(Some(TOKEN)), rx);
    publish(&tx, &[("a", service(1..2))]);
    let metrics = DiscoveryMetrics::unregistered().unwrap();
    let mut client = ClientConfig::new(server.url(), metrics.clone());
    client.token = Some("wrong".into());
    client.min_backoff = Duration::from_millis(10);
    client.max_backoff = Duration::from_millis(20);
    let rx = discovery::client::spawn(client);
    bounded("retries", async {
        while metrics.client_reconnects.get() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(rx.borrow().is_none());
}

async fn until_version(
    rx: &mut SnapshotReceiver,
    what: &str,
    cond: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    bounded(what, async {
        loop {
            if let Some(s) = rx.borrow_and_update().clone()
                && cond(&s)
            {
                return s;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn the_client_keeps_its_snapshot_while_the_server_is_down_and_catches_up() {
    let (tx, source) = tokio::sync::watch::channel(None);
    let server = Server::start(any_port(), config(Some(TOKEN)), source.clone());
    let addr = server.addr;
    let a = service(1..3);
    publish(&tx, &[("a", a.clone()), ("b", service(5..6))]);

    let metrics = DiscoveryMetrics::unregistered().unwrap();
    let mut client = ClientConfig::new(server.url(), metrics.clone());
    client.token = Some(TOKEN.into());
    client.min_backoff = Duration::from_millis(20);
    client.max_backoff = Duration::from_millis(100);
    client.idle_timeout = Duration::from_secs(5);
    let mut rx = discovery::client::spawn(client);
    let first = until_version(&mut rx, "first snapshot", |_| true).await;
    assert_eq!(first.services[&key("a")], a);

    publish(&tx, &[("a", a.clone()), ("b", service(5..7))]);
    let second = until_version(&mut rx, "update", |s| {
        s.services[&key("b")].backends["http"].len() == 2
    })
    .await;
    // The unchanged Service is the same Arc in the client's snapshots.
    assert!(Arc::ptr_eq(
        &first.services[&key("a")],
        &second.services[&key("a")]
    ));
    assert_eq!(metrics.client_connected.get(), 1);

    server.stop();
    bounded("the client notices", async {
        while metrics.client_connected.get() != 0 || metrics.client_reconnects.get() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Still serving the last snapshot.
    assert!(Arc::ptr_eq(rx.borrow().as_ref().unwrap(), &second));

    // Changes meanwhile; a new server run (new epoch) on the same address.
    publish(&tx, &[("a", a.clone()), ("c", service(9..10))]);
    let server = Server::start(addr, config(Some(TOKEN)), source);
    let third = until_version(&mut rx, "catch-up", |s| s.services.contains_key(&key("c"))).await;
    assert!(!third.services.contains_key(&key("b")));
    assert!(Arc::ptr_eq(
        &second.services[&key("a")],
        &third.services[&key("a")]
    ));
    assert_eq!(metrics.client_connected.get(), 1);
    drop(server);
}

#[tokio::test]
async fn a_slow_subscriber_does_not_hold_up_others_and_gets_a_fresh_snapshot() {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let server = Server::start(
        any_port(),
        ServerConfig {
            subscriber_buffer: 2,
            ..config(Some(TOKEN))
        },
        rx,
    );
    // Big updates, so that an unread connection fills its socket buffers.
    let big = |round: u8| -> Vec<(String, Arc<Service>)> {
        (0..400)
            .map(|i| (format!("svc-{i}"), service(round..round.saturating_add(40))))
            .collect()
    };
    let publish_big = |round: u8| {
        let services = big(round);
        let refs: Vec<(&str, Arc<Service>)> = services
            .iter()
            .map(|(n, s)| (n.as_str(), s.clone()))
            .collect();
        publish(&tx, &refs)
    };
    publish_big(1);
    let mut slow = Lines::subscribe(&server, "").await;
    assert!(matches!(slow.next().await, Message::Snapshot { .. }));

    let metrics = DiscoveryMetrics::unregistered().unwrap();
    let mut client = ClientConfig::new(server.url(), metrics);
    client.token = Some(TOKEN.into());
    let mut fast = discovery::client::spawn(client);
    until_version(&mut fast, "the fast client's first snapshot", |_| true).await;

    // The slow subscriber reads nothing while many updates go out.
    let mut last = 0;
    for round in 2..120u8 {
        last = publish_big(round).version;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = until_version(&mut fast, "the fast client's last version", |s| {
        s.version == last
    })
    .await;
    assert_eq!(done.services.len(), 400);

    // Now it reads: somewhere in its stream is a fresh full snapshot at a version
    // past the one it fell behind at, and it ends at the latest state.
    let mut saw_fresh_snapshot = false;
    loop {
        match slow.next().await {
            Message::Snapshot { version, .. } => {
                saw_fresh_snapshot = true;
                if version == last {
                    break;
                }
            }
            Message::Update { version, .. } if version == last => break,
            _ => {}
        }
    }
    assert!(saw_fresh_snapshot);
    assert!(server.metrics.subscriber_lagged.get() > 0);
}

/// Tokens kept in files (mounted Secrets) are read again on use: a rotation takes effect
/// on the server for the next request and on the client for the next connection, with
/// no restart of either.
#[tokio::test]
async fn a_rotated_token_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server_file = dir.path().join("server-token");
    std::fs::write(&server_file, "old-token\n").unwrap();
    let (tx, rx) = tokio::sync::watch::channel(None);
    let server = Server::start(
        any_port(),
        ServerConfig {
            token: Some("old-token".into()),
            token_file: Some(server_file.clone()),
            ..ServerConfig::default()
        },
        rx,
    );
    publish(&tx, &[("a", service(1..2))]);
    let snapshot = format!("{}/v1/snapshot", server.url());
    bounded("served with the old token", async {
        while Lines::open(&snapshot, Some("old-token")).await.status() != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    std::fs::write(&server_file, "new-token").unwrap();
    assert_eq!(
        Lines::open(&snapshot, Some("old-token")).await.status(),
        401
    );
    assert_eq!(
        Lines::open(&snapshot, Some("new-token")).await.status(),
        200
    );

    // A client still holding the old token is refused until its file is rotated too.
    let client_file = dir.path().join("client-token");
    std::fs::write(&client_file, "old-token").unwrap();
    let metrics = DiscoveryMetrics::unregistered().unwrap();
    let mut client = ClientConfig::new(server.url(), metrics.clone());
    client.token = Some("old-token".into());
    client.token_file = Some(client_file.clone());
    client.min_backoff = Duration::from_millis(10);
    client.max_backoff = Duration::from_millis(20);
    let mut rx = discovery::client::spawn(client);
    bounded("refused", async {
        while metrics.client_reconnects.get() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(rx.borrow().is_none());
    std::fs::write(&client_file, "new-token\n").unwrap();
    let snap = until_version(&mut rx, "snapshot after rotation", |_| true).await;
    assert!(snap.services.contains_key(&key("a")));
}
