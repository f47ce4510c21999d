//! The client address behind trusted proxies and the forwarding headers (issue 20,
//! findings 4 and 6), through the real binary: one configured source walked from the
//! right, `ip:port` hops read, a client-sent `Forwarded` never preferred to the load
//! balancer's `X-Forwarded-For`; the same value keys rate limits, consistent hashing and
//! the access log; untrusted peers cannot forward chains, rewrite URLs or spoof
//! identity headers through `_` folding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Gateway, Member, echo_upstream};
use serde_json::Value;

fn config(upstream: &str, server: &str) -> String {
    format!(
        r#"
server: {{{server}}}
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
jwt_providers:
  hmac: {{algorithms: [HS256], secret: "an-hmac-secret-of-at-least-32-bytes!!", issuer: https://issuer.test}}
rate_limit_policies:
  one-a-minute: {{rate: 1/m, burst: 1}}
upstreams:
  app: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - id: limited
    match: {{path: {{prefix: /limited}}}}
    rate_limits: [one-a-minute]
    upstream: app
  - id: identity
    match: {{path: {{prefix: /me}}}}
    auth: {{jwt: {{providers: [hmac], required: false, claims_to_headers: {{sub: X-User-Id}}}}}}
    upstream: app
  - id: echo
    match: {{path: {{prefix: /}}}}
    upstream: app
"#
    )
}

async fn status(gw: &Gateway, path: &str, headers: &[(&str, String)]) -> u16 {
    let mut req = reqwest::Client::new().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn echo(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = reqwest::Client::new().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_the_load_balancer_cannot_pick_its_address() {
    let up = echo_upstream("app").await.to_string();
    // The test client (127.0.0.1) plays the load balancer: it is trusted.
    let gw = Gateway::start(&config(&up, "trusted_proxies: [127.0.0.0/8]")).await;
    // The load balancer appended the real client; the client wrote its own Forwarded.
    let mut passed = 0;
    for i in 0..3 {
        let headers = [
            ("forwarded", format!("for=198.51.100.{i}")),
            ("x-forwarded-for", "203.0.113.9".to_owned()),
        ];
        if status(&gw, "/limited", &headers).await == 200 {
            passed += 1;
        }
    }
    assert_eq!(passed, 1, "a client-sent Forwarded chose a fresh bucket");

    // An `ip:port` hop is the client; the entries a client wrote left of it never win.
    let mut passed = 0;
    for i in 0..3 {
        let headers = [("x-forwarded-for", format!("198.51.100.{i}, 192.0.2.7:4711"))];
        if status(&gw, "/limited", &headers).await == 200 {
            passed += 1;
        }
    }
    assert_eq!(passed, 1, "the hop with a port was skipped");
    // The access log names the same client.
    gw.wait_metrics(&[
        "gateway_requests_total{method=\"GET\",route=\"limited\",status_class=\"4xx\"} 4",
    ])
    .await;
    gw.wait_log("\"client_ip\":\"192.0.2.7\"").await;
    let log = gw.wait_log("\"client_ip\":\"203.0.113.9\"").await;
    assert!(log.contains("\"client_ip\":\"192.0.2.7\""), "{log}");
    assert!(log.contains("\"client_ip\":\"203.0.113.9\""), "{log}");
    assert!(!log.contains("\"client_ip\":\"198.51.100."), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_is_read_on_its_own() {
    let up = echo_upstream("app").await.to_string();
    let gw = Gateway::start(&config(
        &up,
        "client_ip: {source: forwarded, trusted_proxies: [127.0.0.1]}",
    ))
    .await;
    let mut passed = 0;
    for i in 0..3 {
        // With source forwarded, X-Forwarded-For is not read at all.
        let headers = [
            ("forwarded", "for=\"[2001:db8::7]:443\"".to_owned()),
            ("x-forwarded-for", format!("198.51.100.{i}")),
        ];
        if status(&gw, "/limited", &headers).await == 200 {
            passed += 1;
        }
    }
    assert_eq!(passed, 1);
    drop(gw);

    let gw = Gateway::start(&config(
        &up,
        "client_ip: {source: peer, trusted_proxies: [127.0.0.1]}",
    ))
    .await;
    let mut passed = 0;
    for i in 0..3 {
        let headers = [("x-forwarded-for", format!("198.51.100.{i}"))];
        if status(&gw, "/limited", &headers).await == 200 {
            passed += 1;
        }
    }
    assert_eq!(passed, 1, "source peer ignores every header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keys_on_the_client_behind_the_proxy() {
    let a = Member::start("a");
    let b = Member::start("b");
    let gw = Gateway::start(&format!(
        r#"
server: {{trusted_proxies: [127.0.0.0/8]}}
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  pair:
    load_balancing: consistent_hash
    hash_on: client_ip
    endpoints: [{{address: "{}"}}, {{address: "{}"}}]
routes:
  - {{id: r, match: {{path: {{prefix: /}}}}, upstream: pair}}
"#,
        a.addr, b.addr
    ))
    .await;
    // Twenty clients behind one proxy address: the peer is the same for all of them,
    // the client is not, so both endpoints get some. Each client sticks to one.
    for i in 0..20 {
        let xff = [("x-forwarded-for", format!("198.51.100.{i}"))];
        let first = status(&gw, "/x", &xff).await;
        assert_eq!(first, 200);
    }
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a: {}, b: {}",
        a.hits(),
        b.hits()
    );
    let (before_a, before_b) = (a.hits(), b.hits());
    for _ in 0..5 {
        let xff = [("x-forwarded-for", "198.51.100.3".to_owned())];
        assert_eq!(status(&gw, "/x", &xff).await, 200);
    }
    assert!(
        a.hits() == before_a + 5 || b.hits() == before_b + 5,
        "one client, one endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peers_cannot_forward_rewrite_or_spoof() {
    let up = echo_upstream("app").await.to_string();
    // 127.0.0.1 is not among the trusted proxies.
    let gw = Gateway::start(&config(&up, "trusted_proxies: [10.0.0.0/8]")).await;
    let sent = [
        ("x-forwarded-for", "1.1.1.1"),
        ("forwarded", "for=1.1.1.1;host=evil.example"),
        ("x-real-ip", "1.1.1.1"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/evil"),
        ("x_forwarded_for", "1.1.1.1"),
    ];
    let v = echo(&gw, "/x", &sent).await;
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    for name in [
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x_forwarded_for",
    ] {
        assert!(h[name].is_null(), "{name} reached the upstream: {h}");
    }
    // Identity headers spelled with underscores (CGI/WSGI/PHP/Rack read X_User_Id as
    // X-User-Id) are dropped on every route.
    for path in ["/x", "/me"] {
        let v = echo(&gw, path, &[("X_User_Id", "admin"), ("x_user-id", "admin")]).await;
        let h = &v["headers"];
        assert!(
            h["x_user_id"].is_null() && h["x_user-id"].is_null(),
            "{path}: {h}"
        );
        assert!(h["x-user-id"].is_null(), "{path}: {h}");
    }
    drop(gw);

    // From a trusted proxy, its chain is kept and the gateway appends the peer.
    let gw = Gateway::start(&config(&up, "trusted_proxies: [127.0.0.1]")).await;
    let v = echo(&gw, "/x", &sent).await;
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "1.1.1.1, 127.0.0.1", "{h}");
    assert_eq!(
        h["forwarded"], "for=1.1.1.1;host=evil.example, for=127.0.0.1",
        "{h}"
    );
    assert_eq!(h["x-forwarded-port"], "443");
    assert!(h["x_forwarded_for"].is_null(), "{h}");
}

#[test]
fn check_validates_the_client_ip_section() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.yaml");
    let run = |server: &str| {
        std::fs::write(
            &file,
            format!(
                "server: {{{server}}}\nlisteners: [{{name: a, address: '127.0.0.1:8080'}}]\nroutes: [{{id: r, direct_response: {{status: 200}}}}]\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("check")
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(run("client_ip: {source: x_real_ip, trusted_proxies: [10.0.0.0/8]}").0);
    assert!(run("client_ip: {source: peer}").0);
    let (ok, err) = run("client_ip: {source: x_forwarded}");
    assert!(!ok && err.contains("server.client_ip.source"), "{err}");
    let (ok, err) = run("client_ip: {source: forwarded}");
    assert!(!ok && err.contains("needs trusted_proxies"), "{err}");
    let (ok, err) =
        run("trusted_proxies: [10.0.0.0/8], client_ip: {trusted_proxies: [10.0.0.0/8]}");
    assert!(!ok && err.contains("not both"), "{err}");
}
