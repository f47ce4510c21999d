//! End-to-end behaviour of the proxy: the real gateway binary in front of real Axum
//! upstreams on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::{Gateway, echo_upstream, free_port};
use serde_json::Value;

const CONFIG: &str = r#"
server:
  shutdown_grace_period: 5s
  reload_debounce: 20ms
listeners:
  - {name: public, address: "127.0.0.1:{PORT}"}
admin:
  address: "127.0.0.1:{ADMIN}"
upstreams:
  one: {endpoints: [{address: "{U1}"}]}
  two: {endpoints: [{address: "{U2}"}]}
  both:
    load_balancing: weighted_round_robin
    endpoints: [{address: "{U1}", weight: 3}, {address: "{U2}", weight: 1}]
  dead: {endpoints: [{address: "127.0.0.1:{DEAD}"}], connect_timeout: 1s}
routes:
  - id: api
    match: {path: {prefix: /api}}
    rewrite: {strip_prefix: /api}
    request_headers:
      set: {x-env: test}
      add: {x-added: yes}
      remove: [x-remove-me]
    response_headers:
      set: {x-route: api}
      remove: [x-served-by]
    upstream: one
  - id: user
    match: {path: {template: "/users/{id}/files/{*rest}"}, methods: [GET]}
    rewrite: {path: "/v2/files/{rest}/owner/{id}"}
    upstream: one
  - id: legacy
    match: {path: {regex: "/legacy/([a-z]+)"}}
    rewrite: {regex: {pattern: "^/legacy/(?P<name>[a-z]+)$", replacement: "/modern/$name"}}
    upstream: two
  - id: tenant
    match:
      hosts: ["*.tenants.test"]
      path: {prefix: /}
      headers: [{name: x-tenant, present: true}]
    upstream: two
  - id: split
    match: {path: {prefix: /split}}
    split: [{upstream: one, weight: 1}, {upstream: two, weight: 1}]
  - id: lb
    match: {path: {prefix: /lb}}
    upstream: both
  - id: old
    match: {path: {prefix: /old}}
    redirect: {status: 301, scheme: https, host: new.example.com}
  - id: ping
    match: {path: {exact: /ping}}
    direct_response: {status: 200, body: pong, content_type: text/plain}
    response_headers: {set: {cache-control: no-cache}}
  - id: down
    match: {path: {prefix: /down}}
    upstream: dead
  - id: slow
    match: {path: {prefix: /delay}}
    timeout: 300ms
    upstream: one
"#;

async fn start() -> Gateway {
    let u1 = echo_upstream("one").await;
    let u2 = echo_upstream("two").await;
    let text = CONFIG
        .replace("{U1}", &u1.to_string())
        .replace("{U2}", &u2.to_string())
        .replace("{DEAD}", &free_port().to_string());
    Gateway::start(&text).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Send raw bytes and read until the gateway closes the connection.
fn raw_request(port: u16, bytes: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    // A reset after the response is fine; what was read is what we check.
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn json(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_rewrites_and_headers() {
    let gw = start().await;
    let c = client();

    let r = c
        .get(gw.url("/api/things?x=1"))
        .header("x-remove-me", "1")
        .header("x-request-id", "client-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-route"], "api");
    assert!(
        r.headers().get("x-served-by").is_none(),
        "response header removed"
    );
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    let v = json(r).await;
    assert_eq!(v["service"], "one");
    assert_eq!(v["path"], "/things");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["headers"]["x-env"], "test");
    assert_eq!(v["headers"]["x-added"], "yes");
    assert_eq!(v["headers"]["x-request-id"], "client-id-1");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
    assert!(v["headers"].get("x-remove-me").is_none());

    // Template captures feed the rewrite; the catch-all keeps its slashes.
    let v = json(
        c.get(gw.url("/users/42/files/a/b.txt"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["path"], "/v2/files/a/b.txt/owner/42");
    // Wrong method for the template route: nothing else matches.
    let r = c.post(gw.url("/users/42/files/a")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let v = json(c.get(gw.url("/legacy/abc")).send().await.unwrap()).await;
    assert_eq!(
        (v["service"].as_str(), v["path"].as_str()),
        (Some("two"), Some("/modern/abc"))
    );

    // Dot segments are resolved before routing and forwarding.
    let v = json(c.get(gw.url("/legacy/../api/./x")).send().await.unwrap()).await;
    assert_eq!(v["path"], "/x");

    // Wildcard host plus header matcher.
    let r = c
        .get(gw.url("/anything"))
        .header("host", "acme.tenants.test")
        .header("x-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        json(r).await["headers"]["x-forwarded-host"],
        "acme.tenants.test"
    );
    let r = c
        .get(gw.url("/anything"))
        .header("host", "acme.tenants.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_direct_responses_and_not_found() {
    let gw = start().await;
    let c = client();

    let r = c.get(gw.url("/old/page?q=1")).send().await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"],
        "https://new.example.com/old/page?q=1"
    );

    let r = c.get(gw.url("/ping")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().await.unwrap(), "pong");

    let r = c
        .get(gw.url("/nope"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "a malformed client id is replaced");
    let v = json(r).await;
    assert_eq!(v["error"]["code"], "route_not_found");
    assert_eq!(v["error"]["request_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_weighted_round_robin() {
    let gw = start().await;
    let c = client();
    let mut split: HashMap<String, usize> = HashMap::new();
    let mut lb: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let v = json(c.get(gw.url("/split")).send().await.unwrap()).await;
        *split
            .entry(v["service"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let v = json(c.get(gw.url("/lb")).send().await.unwrap()).await;
        *lb.entry(v["service"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!((split["one"], split["two"]), (20, 20), "{split:?}");
    assert_eq!((lb["one"], lb["two"]), (30, 10), "{lb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_and_bad_requests_get_json_errors() {
    let gw = start().await;
    let c = client();

    let r = c.get(gw.url("/down")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v = json(r).await;
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert!(
        v["error"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    let r = c.get(gw.url("/delay/2000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(json(r).await["error"]["code"], "upstream_timeout");
    // Under the route timeout the same route answers.
    assert_eq!(
        c.get(gw.url("/delay/10")).send().await.unwrap().status(),
        200
    );

    let big = "x".repeat(40 * 1024);
    let r = c
        .get(gw.url("/api/x"))
        .header("x-big", big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(json(r).await["error"]["code"], "request_header_too_large");

    // A request target that is not an absolute path.
    let out = raw_request(
        gw.port,
        b"GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("\"code\":\"bad_request_target\""), "{out}");

    // Garbage that is not HTTP at all: Pingora answers 400 before our code runs.
    let out = raw_request(gw.port, b"\x16\x03\x01 not http\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // The gateway is still serving.
    assert_eq!(c.get(gw.url("/ping")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_and_metrics() {
    let gw = start().await;
    let c = client();
    assert_eq!(c.get(gw.url("/api/a")).send().await.unwrap().status(), 200);
    assert_eq!(
        c.get(gw.url("/missing")).send().await.unwrap().status(),
        404
    );

    let r = c.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(json(r).await["config_version"], 1);

    gw.wait_metrics(&[
        r#"gateway_requests_total{method="GET",route="api",status_class="2xx"} 1"#,
        r#"gateway_requests_total{method="GET",route="-",status_class="4xx"} 1"#,
        r#"gateway_request_duration_seconds_count{route="api"} 1"#,
        r#"gateway_upstream_duration_seconds_count{upstream="one"} 1"#,
        "gateway_config_version 1",
        "gateway_config_reloads_total 0",
        "gateway_config_reload_failures_total 0",
    ])
    .await;

    let cfg = json(c.get(gw.admin_url("/admin/config")).send().await.unwrap()).await;
    assert_eq!(cfg["version"], 1);
    assert_eq!(cfg["last_reload"]["ok"], true);
    assert!(cfg["source"].as_str().unwrap().ends_with("gateway.yaml"));

    let routes = json(c.get(gw.admin_url("/admin/routes")).send().await.unwrap()).await;
    let ids: Vec<&str> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "api", "user", "legacy", "tenant", "split", "lb", "old", "ping", "down", "slow"
        ]
    );
    assert_eq!(routes["routes"][0]["action"]["upstreams"][0]["name"], "one");

    let r = c.post(gw.admin_url("/admin/config")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // The access log is JSON, one line per request, without credentials.
    c.get(gw.url("/api/secret"))
        .header("authorization", "Bearer top-secret-token")
        .header("cookie", "session=top-secret-cookie")
        .send()
        .await
        .unwrap();
    // The access log is written after the response went out: poll for the line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (log, line) = loop {
        let log = gw.log();
        let line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["path"] == "/api/secret");
        if let Some(line) = line {
            break (log, line);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        !log.contains("top-secret"),
        "credentials leaked into the log"
    );
    assert_eq!(line["route"], "api");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], "one");
    assert!(line["request_id"].as_str().is_some_and(|s| s.len() == 32));
    assert!(line["duration_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled() {
    let (addr, accepted) = common::counting_echo_upstream("pooled").await;
    let text = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams: {{pooled: {{endpoints: [{{address: "{addr}"}}]}}}}
routes: [{{id: all, upstream: pooled}}]
"#
    );
    let gw = Gateway::start(&text).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    // Without upstream keepalive this would be 50; a request may still open a second or
    // third connection when it arrives before the previous one is back in the pool.
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=5).contains(&n),
        "{n} upstream connections for 50 sequential requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_forwarded() {
    let gw = start().await;
    let c = client();
    let body = "0123456789".repeat(30_000);
    let v = json(
        c.post(gw.url("/api/upload"))
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_bytes"], body.len());
    // Chunked upload (no content-length).
    let stream =
        futures_util::stream::iter((0..10).map(|i| Ok::<_, std::io::Error>(format!("chunk-{i};"))));
    let v = json(
        c.put(gw.url("/api/upload"))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        v["body"],
        (0..10).map(|i| format!("chunk-{i};")).collect::<String>()
    );
    // A body sent to a route that answers itself does not poison the connection.
    let r = c
        .post(gw.url("/ping"))
        .body("ignored")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "pong");
    assert_eq!(c.get(gw.url("/ping")).send().await.unwrap().status(), 200);
}
