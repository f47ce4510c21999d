//! The fake Kubernetes API server against real clients: the kube-rs client and
//! runtime watcher, raw HTTP for the wire shape, and the `kubectl` binary.

// Test helpers outside `#[test]` functions unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use discovery::fake::{FakeApiServer, Fault};
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Bounds every wait: a hang fails the test instead of blocking CI.
const WAIT: Duration = Duration::from_secs(20);

fn slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({
            "addresses": [ip],
            "conditions": {"ready": true},
        })).collect::<Vec<_>>(),
    })
}

fn service(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })
}

fn client(server: &FakeApiServer) -> kube::Client {
    kube::Client::try_from(server.kube_config()).unwrap()
}

fn names<'a>(items: impl IntoIterator<Item = &'a EndpointSlice>) -> BTreeSet<String> {
    items
        .into_iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn wait(server: &FakeApiServer, condition: impl FnMut(&FakeApiServer) -> bool) {
    tokio::time::timeout(WAIT, server.wait_for(condition))
        .await
        .expect("condition not reached in time");
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no event in time")
        .expect("stream ended")
}

fn api_code(error: kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("expected an API Status error, got {other:?}"),
    }
}

/// Runs the watcher until InitDone and returns the names it listed.
async fn init_names<S>(events: &mut S) -> BTreeSet<String>
where
    S: Stream<Item = Result<watcher::Event<EndpointSlice>, watcher::Error>> + Unpin,
{
    loop {
        if let Ok(watcher::Event::Init) = next(events).await {
            break;
        }
    }
    let mut listed = BTreeSet::new();
    loop {
        match next(events).await.unwrap() {
            watcher::Event::InitApply(s) => {
                listed.insert(s.metadata.name.unwrap());
            }
            watcher::Event::InitDone => return listed,
            other => panic!("unexpected event during init: {other:?}"),
        }
    }
}

#[tokio::test]
async fn kube_client_lists_gets_and_pages() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
    server.apply(slice("shop", "orders-b", "orders", &["10.0.0.2"]));
    server.apply(slice("shop", "carts-a", "carts", &["10.0.1.1"]));
    server.apply(slice("web", "front-a", "front", &["10.0.2.1"]));
    let last = server.apply(slice("web", "front-b", "front", &["10.0.2.2"]));
    let client = client(&server);
    let all: Api<EndpointSlice> = Api::all(client.clone());
    let shop: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");

    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 5);
    assert_eq!(list.metadata.resource_version, Some(last.to_string()));
    assert_eq!(
        names(&shop.list(&ListParams::default()).await.unwrap().items),
        set(&["carts-a", "orders-a", "orders-b"])
    );

    for (selector, want) in [
        (
            "kubernetes.io/service-name=orders",
            vec!["orders-a", "orders-b"],
        ),
        (
            "kubernetes.io/service-name!=orders",
            vec!["carts-a", "front-a", "front-b"],
        ),
        (
            "kubernetes.io/service-name in (carts,front)",
            vec!["carts-a", "front-a", "front-b"],
        ),
        (
            "kubernetes.io/service-name notin (carts,front)",
            vec!["orders-a", "orders-b"],
        ),
        (
            "kubernetes.io/service-name",
            vec!["carts-a", "front-a", "front-b", "orders-a", "orders-b"],
        ),
        ("!kubernetes.io/service-name", vec![]),
    ] {
        let got = all
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        assert_eq!(names(&got.items), set(&want), "{selector}");
    }
    let by_name = all
        .list(&ListParams::default().fields("metadata.name=front-b"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), set(&["front-b"]));

    // Pages of two: three requests, one consistent snapshot even with writes between.
    let first = all.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    server.apply(slice("shop", "orders-c", "orders", &["10.0.0.3"]));
    server.delete("discovery.k8s.io/v1", "EndpointSlice", "web", "front-b");
    let mut seen = names(&first.items);
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = all
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version, Some(last.to_string()));
        seen.extend(names(&page.items));
        token = page.metadata.continue_;
    }
    assert_eq!(
        seen,
        set(&["carts-a", "front-a", "front-b", "orders-a", "orders-b"])
    );

    // Once the history behind a continue token is compacted, it is 410 Expired.
    let page = all.list(&ListParams::default().limit(2)).await.unwrap();
    server.apply(slice("shop", "orders-d", "orders", &["10.0.0.4"]));
    server.compact();
    let err = all
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err), (410, "Expired".into()));

    let got = shop.get("orders-a").await.unwrap();
    assert_eq!(
        got.endpoints.unwrap()[0].addresses,
        vec!["10.0.0.1".to_string()]
    );
    assert!(got.metadata.uid.is_some() && got.metadata.creation_timestamp.is_some());
    let err = shop.get("nope").await.unwrap_err();
    assert_eq!(api_code(err), (404, "NotFound".into()));
    let bad = all.list(&ListParams::default().labels("a in b")).await;
    assert_eq!(api_code(bad.unwrap_err()).0, 400);
    assert_eq!(
        server.requests("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"),
        3
    );

    // Services are served too, and writes through the API reach the store.
    let services: Api<Service> = Api::namespaced(client, "shop");
    let created: Service =
        serde_json::from_value(service("shop", "orders", json!({"app": "orders"}))).unwrap();
    services
        .create(&Default::default(), &created)
        .await
        .unwrap();
    assert!(server.get("v1", "Service", "shop", "orders").is_some());
    let again = services.create(&Default::default(), &created).await;
    assert_eq!(api_code(again.unwrap_err()), (409, "AlreadyExists".into()));
}

#[tokio::test]
async fn runtime_watcher_lists_then_follows_changes() {
    for streaming in [false, true] {
        let server = FakeApiServer::start().await.unwrap();
        server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
        server.apply(slice("web", "front-a", "front", &["10.0.2.1"]));
        let api: Api<EndpointSlice> = Api::all(client(&server));
        let config = if streaming {
            watcher::Config::default().streaming_lists()
        } else {
            watcher::Config::default()
        };
        let mut events = watcher(api, config).boxed();
        assert_eq!(
            init_names(&mut events).await,
            set(&["front-a", "orders-a"]),
            "streaming: {streaming}"
        );
        // The watcher opens its watch when next polled, from the list's version, so
        // this change reaches it either way.

        server.apply(slice(
            "shop",
            "orders-a",
            "orders",
            &["10.0.0.1", "10.0.0.9"],
        ));
        match next(&mut events).await.unwrap() {
            watcher::Event::Apply(s) => assert_eq!(s.endpoints.unwrap().len(), 2),
            other => panic!("expected Apply, got {other:?}"),
        }
        server.apply(slice("shop", "orders-b", "orders", &["10.0.0.2"]));
        match next(&mut events).await.unwrap() {
            watcher::Event::Apply(s) => assert_eq!(s.metadata.name.unwrap(), "orders-b"),
            other => panic!("expected Apply, got {other:?}"),
        }
        assert!(server.delete("discovery.k8s.io/v1", "EndpointSlice", "web", "front-a"));
        match next(&mut events).await.unwrap() {
            watcher::Event::Delete(s) => assert_eq!(s.metadata.name.unwrap(), "front-a"),
            other => panic!("expected Delete, got {other:?}"),
        }
        let watches = server.requests("/apis/discovery.k8s.io/v1/endpointslices?&watch=true");
        assert_eq!(watches, 1, "{:?}", server.request_log());
    }
}

#[tokio::test]
async fn expired_watches_make_the_watcher_relist() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
    let api: Api<EndpointSlice> = Api::all(client(&server));
    let mut events = watcher(api, watcher::Config::default()).boxed();
    assert_eq!(init_names(&mut events).await, set(&["orders-a"]));
    let lists = || {
        server
            .request_log()
            .iter()
            .filter(|r| {
                r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?")
                    && !r.contains("watch=true")
            })
            .count()
    };
    assert_eq!(lists(), 1);

    // In-stream 410: the watcher reports it and relists.
    server.apply(slice("shop", "orders-b", "orders", &["10.0.0.2"]));
    assert!(matches!(
        next(&mut events).await,
        Ok(watcher::Event::Apply(_))
    ));
    server.expire_watches();
    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected the 410 watch error, got {other:?}"),
    }
    assert_eq!(
        init_names(&mut events).await,
        set(&["orders-a", "orders-b"])
    );
    assert_eq!(lists(), 2);

    // Resuming from a version older than the compacted history: 410 again, relist.
    server.set_fault(Fault::DropConnections);
    assert!(
        next(&mut events).await.is_err(),
        "the watch was not refused"
    );
    server.apply(slice("shop", "orders-c", "orders", &["10.0.0.3"]));
    server.compact();
    server.set_fault(Fault::None);
    let mut relisted = None;
    for _ in 0..10 {
        match next(&mut events).await {
            Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
            Err(_) => {} // the cut connection
            Ok(watcher::Event::Init) => {
                let mut listed = BTreeSet::new();
                loop {
                    match next(&mut events).await.unwrap() {
                        watcher::Event::InitApply(s) => {
                            listed.insert(s.metadata.name.unwrap());
                        }
                        watcher::Event::InitDone => break,
                        other => panic!("{other:?}"),
                    }
                }
                relisted = Some(listed);
                break;
            }
            Ok(other) => panic!("expected a relist, got {other:?}"),
        }
    }
    assert_eq!(relisted, Some(set(&["orders-a", "orders-b", "orders-c"])));
}

#[tokio::test]
async fn raw_watch_resumes_translates_selectors_and_bookmarks() {
    let server = FakeApiServer::start().await.unwrap();
    server.set_bookmark_interval(Duration::from_millis(50));
    let start = server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
    let api: Api<EndpointSlice> = Api::namespaced(client(&server), "shop");
    let params = WatchParams::default()
        .labels("kubernetes.io/service-name=orders")
        .timeout(30);
    let mut stream = api
        .watch(&params, &start.to_string())
        .await
        .unwrap()
        .boxed();

    // An object leaving the selector is DELETED for this watch, entering it ADDED.
    server.apply(slice("shop", "orders-a", "carts", &["10.0.0.1"]));
    server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
    server.apply(slice("web", "orders-x", "orders", &["10.0.9.9"]));
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(s) => kinds.push(format!("ADDED {}", s.metadata.name.unwrap())),
            WatchEvent::Deleted(s) => kinds.push(format!("DELETED {}", s.metadata.name.unwrap())),
            WatchEvent::Modified(s) => kinds.push(format!("MODIFIED {}", s.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(kinds, ["DELETED orders-a", "ADDED orders-a"]);
    // Bookmarks carry the latest version.
    let latest = server.resource_version().to_string();
    loop {
        if let WatchEvent::Bookmark(b) = next(&mut stream).await.unwrap() {
            assert_eq!(b.metadata.resource_version, latest);
            break;
        }
    }

    // Silent hang: nothing arrives while it lasts, everything after.
    server.set_fault(Fault::Hang);
    server.apply(slice("shop", "orders-b", "orders", &["10.0.0.2"]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err(),
        "a hung watch delivered an event"
    );
    server.set_fault(Fault::None);
    loop {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(s) => {
                assert_eq!(s.metadata.name.unwrap(), "orders-b");
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("{other:?}"),
        }
    }

    // A dropped connection ends the stream (kube-rs reads the cut as its end; the
    // wire test checks the cut itself).
    server.set_fault(Fault::DropConnections);
    let ended = async {
        while let Some(item) = stream.next().await {
            if item.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, ended)
        .await
        .expect("the watch outlived the dropped connection");
}

/// Raw HTTP/1.1 so the bytes on the wire are checked, not a client's reading of them.
async fn raw_get(server: &FakeApiServer, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, conn.read_to_string(&mut out))
        .await
        .expect("response did not end")
        .unwrap();
    out
}

#[tokio::test]
async fn wire_format_of_watches_errors_and_discovery() {
    let server = FakeApiServer::start().await.unwrap();
    let old = server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
    server.apply(slice("shop", "orders-a", "orders", &["10.0.0.2"]));

    // Chunked newline-delimited events, replayed after `old`, ended by timeoutSeconds.
    let text = raw_get(
        &server,
        &format!("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?watch=1&resourceVersion={old}&timeoutSeconds=1"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    let events: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0]["type"], "MODIFIED");
    assert_eq!(events[0]["object"]["kind"], "EndpointSlice");
    assert_eq!(
        events[0]["object"]["endpoints"][0]["addresses"][0],
        "10.0.0.2"
    );
    assert!(
        text.ends_with("0\r\n\r\n"),
        "the stream did not end cleanly: {text}"
    );

    // Too old after compaction: 200, then one ERROR event carrying a 410 Status.
    server.compact();
    let text = raw_get(
        &server,
        &format!("/apis/discovery.k8s.io/v1/endpointslices?watch=true&resourceVersion={old}"),
    )
    .await;
    let body_line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no event in {text}"));
    let event: Value = serde_json::from_str(body_line).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["kind"], "Status");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");

    // Errors are Status objects; faults answer with their status.
    let text = raw_get(&server, "/api/v1/namespaces/shop/services/nope").await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains(r#""reason":"NotFound""#), "{text}");
    for (code, reason) in [
        (500, "InternalError"),
        (403, "Forbidden"),
        (429, "TooManyRequests"),
    ] {
        server.set_fault(Fault::Status(code));
        let text = raw_get(&server, "/api/v1/services").await;
        assert!(text.starts_with(&format!("HTTP/1.1 {code}")), "{text}");
        assert!(text.contains(&format!(r#""reason":"{reason}""#)), "{text}");
        if code == 429 {
            assert!(
                text.to_ascii_lowercase().contains("retry-after: 1"),
                "{text}"
            );
        }
    }
    server.set_fault(Fault::None);

    // Discovery documents name every served resource with its scope and verbs.
    for (path, needle) in [
        ("/version", r#""gitVersion""#),
        ("/api", r#""versions":["v1"]"#),
        ("/api/v1", r#""name":"endpoints""#),
        ("/apis", r#""groupVersion":"discovery.k8s.io/v1""#),
        ("/apis/discovery.k8s.io", r#""kind":"APIGroup""#),
        ("/apis/discovery.k8s.io/v1", r#""kind":"EndpointSlice""#),
    ] {
        let text = raw_get(&server, path).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        assert!(text.contains(needle), "{path}: {text}");
    }
    assert!(
        raw_get(&server, "/apis/nope/v1")
            .await
            .starts_with("HTTP/1.1 404")
    );

    // Parameter rules the API server enforces.
    for path in [
        "/api/v1/services?resourceVersionMatch=NotOlderThan",
        "/api/v1/services?resourceVersion=1&resourceVersionMatch=Newest",
        "/api/v1/services?watch=1&sendInitialEvents=true&allowWatchBookmarks=true",
        "/api/v1/services?watch=1&resourceVersion=0&resourceVersionMatch=NotOlderThan",
    ] {
        let text = raw_get(&server, path).await;
        assert!(text.starts_with("HTTP/1.1 422"), "{path}: {text}");
        assert!(text.contains(r#""reason":"Invalid""#), "{path}: {text}");
    }

    // A dropped connection cuts an open watch: no terminating chunk.
    let mut conn = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    conn.write_all(
        b"GET /apis/discovery.k8s.io/v1/endpointslices?watch=true HTTP/1.1\r\nHost: fake\r\n\r\n",
    )
    .await
    .unwrap();
    wait(&server, |s| s.open_watches() == 1).await;
    server.set_fault(Fault::DropConnections);
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut out))
        .await
        .expect("the connection stayed open")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""type":"ADDED""#), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the watch ended cleanly: {text}"
    );
}

#[tokio::test]
async fn faults_fail_hang_delay_and_retry() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
    let api: Api<EndpointSlice> = Api::all(client(&server));
    let lp = ListParams::default();

    for (code, reason) in [(500, "InternalError"), (403, "Forbidden")] {
        server.set_fault(Fault::Status(code));
        assert_eq!(
            api_code(api.list(&lp).await.unwrap_err()),
            (code, reason.into())
        );
    }

    server.set_fault(Fault::DropConnections);
    match api.list(&lp).await {
        Err(kube::Error::Api(s)) => panic!("a dropped connection gave a Status: {s:?}"),
        Err(_) => {}
        Ok(_) => panic!("a dropped connection gave a list"),
    }

    // The client retries 429 after Retry-After; it succeeds once the fault clears.
    server.set_fault(Fault::Status(429));
    let before = server.requests("/apis/discovery.k8s.io/v1/endpointslices");
    let retrying = tokio::spawn({
        let api = api.clone();
        async move { api.list(&ListParams::default()).await }
    });
    wait(&server, |s| {
        s.requests("/apis/discovery.k8s.io/v1/endpointslices") >= before + 2
    })
    .await;
    server.set_fault(Fault::None);
    let list = tokio::time::timeout(WAIT, retrying)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(list.items.len(), 1);

    // A hung request is accepted and never answered until the fault clears.
    server.set_fault(Fault::Hang);
    let before = server.requests("/apis/discovery.k8s.io/v1/endpointslices");
    let hung = tokio::spawn({
        let api = api.clone();
        async move { api.list(&ListParams::default()).await }
    });
    wait(&server, |s| {
        s.requests("/apis/discovery.k8s.io/v1/endpointslices") > before
    })
    .await;
    tokio::task::yield_now().await;
    assert!(!hung.is_finished());
    server.set_fault(Fault::None);
    assert_eq!(
        tokio::time::timeout(WAIT, hung)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .items
            .len(),
        1
    );

    // A delay answers, but not before the delay.
    server.set_fault(Fault::Delay(Duration::from_millis(200)));
    let started = std::time::Instant::now();
    assert_eq!(api.list(&lp).await.unwrap().items.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

// ------------------------------------------------------------------ kubectl

/// The `kubectl` binary; the project's `.ci/deps` installs it. Missing, the test
/// fails with instructions instead of passing without checking anything.
fn kubectl() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "kubectl is not installed: it checks that the fake API server matches the real \
             API's shape. Run .ci/deps (Debian package kubernetes-client) or put kubectl on PATH."
        )
    })
}

struct Kubectl {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

impl Kubectl {
    fn new(server: &FakeApiServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig_yaml()).unwrap();
        Self {
            dir,
            bin: kubectl(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("HOME", self.dir.path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--request-timeout=10s")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(WAIT, self.command(args).output())
            .await
            .expect("kubectl did not finish")
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test]
async fn kubectl_lists_filters_and_watches() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
    server.apply(slice("web", "front-a", "front", &["10.0.2.1"]));
    server.apply(service("x", "y", json!({"app": "y"})));
    server.apply(service("x", "z", json!({"app": "z"})));
    let kubectl = Kubectl::new(&server);

    let list: Value = serde_json::from_str(
        &kubectl
            .run(&["get", "endpointslices", "-A", "-o", "json"])
            .await,
    )
    .unwrap();
    let mut listed: Vec<(String, String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_owned(),
                i["metadata"]["namespace"].as_str().unwrap().to_owned(),
                i["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("EndpointSlice".into(), "shop".into(), "orders-a".into()),
            ("EndpointSlice".into(), "web".into(), "front-a".into()),
        ]
    );
    assert_eq!(list["items"][0]["endpoints"][0]["addresses"][0], "10.0.0.1");

    // Short name from discovery, label selector, namespace.
    assert_eq!(
        kubectl
            .run(&["get", "svc", "-n", "x", "-l", "app=y", "-o", "name"])
            .await,
        "service/y\n"
    );
    // Server-side printing: the real API server's columns.
    let table = kubectl.run(&["get", "svc", "-n", "x", "-l", "app=y"]).await;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{table}"
    );
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        rows[1][..5],
        ["y", "ClusterIP", "<none>", "<none>", "80/TCP"],
        "{table}"
    );
    let table = kubectl.run(&["get", "endpointslices", "-A"]).await;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAMESPACE",
            "NAME",
            "ADDRESSTYPE",
            "PORTS",
            "ENDPOINTS",
            "AGE"
        ],
        "{table}"
    );
    assert_eq!(
        rows[1][..5],
        ["shop", "orders-a", "IPv4", "8080", "10.0.0.1"],
        "{table}"
    );

    // `get -w` sees a change made after it started watching.
    let mut child = kubectl
        .command(&["get", "endpointslices", "-n", "shop", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("kubectl printed nothing")
        .unwrap();
    assert_eq!(
        first.as_deref(),
        Some("endpointslice.discovery.k8s.io/orders-a")
    );
    wait(&server, |s| s.open_watches() == 1).await;
    server.apply(slice("shop", "orders-b", "orders", &["10.0.0.2"]));
    let seen = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("kubectl -w did not show the change")
        .unwrap();
    assert_eq!(
        seen.as_deref(),
        Some("endpointslice.discovery.k8s.io/orders-b")
    );
    child.kill().await.unwrap();
    assert!(server.requests("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?") >= 2);
}

#[tokio::test]
async fn dev_binary_serves_loaded_objects_through_its_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Service\nmetadata: {name: orders, namespace: shop}\n\
         spec: {ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: orders-a, namespace: shop, labels: {kubernetes.io/service-name: orders}}\n\
         addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n",
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg(&objects)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The kubeconfig is written once the objects are loaded; stderr then names the URL.
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .expect("the binary did not start")
            .unwrap()
            .expect("the binary exited");
        if line.starts_with("fake Kubernetes API server on http://127.0.0.1:") {
            break;
        }
    }
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&text).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let api: Api<EndpointSlice> = Api::default_namespaced(kube::Client::try_from(config).unwrap());
    // The kubeconfig's default namespace is `default`: empty there, the slice in `shop`.
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let shop: Api<EndpointSlice> = Api::namespaced(api.into_client(), "shop");
    assert_eq!(
        names(&shop.list(&ListParams::default()).await.unwrap().items),
        set(&["orders-a"])
    );
    child.kill().await.unwrap();

    // An object of a kind the fake does not serve is an error, not a panic.
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n",
    )
    .unwrap();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
            .args(["--port", "0"])
            .arg(&objects)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not serve v1 Widget"), "{stderr}");
}

/// `restart_with`: open watches end, a watch resumed from a version handed out before
/// the restart replays nothing of the new state (the version is still valid: no 410),
/// and only a list shows it.
#[tokio::test]
async fn a_restart_with_drift_changes_lists_but_not_watches() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(slice("shop", "orders-a", "orders", &["10.0.0.1"]));
    let before = server.apply(slice("shop", "orders-b", "orders", &["10.0.0.2"]));
    let api: Api<EndpointSlice> = Api::namespaced(client(&server), "shop");
    let mut open = api
        .watch(&WatchParams::default().timeout(30), &before.to_string())
        .await
        .unwrap()
        .boxed();

    server
        .restart_with(
            vec![slice("shop", "orders-a", "orders", &["10.0.0.9"])],
            &[("discovery.k8s.io/v1", "EndpointSlice", "shop", "orders-b")],
        )
        .unwrap();
    // The open watch ends without having seen anything.
    let seen = tokio::time::timeout(WAIT, async {
        let mut seen = Vec::new();
        while let Some(item) = open.next().await {
            match item {
                Ok(WatchEvent::Bookmark(_)) => {}
                Ok(other) => seen.push(format!("{other:?}")),
                Err(_) => break,
            }
        }
        seen
    })
    .await
    .expect("the watch outlived the restart");
    assert!(seen.is_empty(), "{seen:?}");

    // Resuming from the old version is accepted and replays nothing.
    let mut resumed = api
        .watch(&WatchParams::default().timeout(1), &before.to_string())
        .await
        .unwrap()
        .boxed();
    while let Some(item) = tokio::time::timeout(WAIT, resumed.next()).await.unwrap() {
        match item.unwrap() {
            WatchEvent::Bookmark(_) => {}
            other => panic!("a resumed watch saw the drift: {other:?}"),
        }
    }
    // A list shows the new state.
    let listed = api.list(&Default::default()).await.unwrap();
    assert_eq!(names(&listed.items), set(&["orders-a"]));
    let addresses = &listed.items[0].endpoints.as_ref().unwrap()[0].addresses;
    assert_eq!(addresses, &vec!["10.0.0.9".to_owned()]);
    assert!(server.resource_version() > before);
}
