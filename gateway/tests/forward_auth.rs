//! Forward auth end to end: the real gateway binary asks the sample `authz` service (in
//! this process, counting its checks) before proxying to an echo upstream. Allow (with
//! headers copied upstream), deny (the service's 401/403 as given), redirect (302 to the
//! login page), cached decisions, a body sent along, and the failure modes: a service
//! that hangs (timeout -> 503, or a pass with `on_error: allow`), one that answers
//! garbage, one that is not there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Gateway;
use example_services::authz::{self, AuthzConfig, AuthzState, Rule};
use example_services::common::db;
use example_services::common::http::Metrics;
use serde_json::Value;

const ADA: &str = "ada-session-0123456789";
const BOB: &str = "bob-session-0123456789";

struct Authz {
    addr: SocketAddr,
    checks: Arc<AtomicUsize>,
}

async fn authz_service() -> Authz {
    let pool = db::open("sqlite::memory:", authz::SCHEMA).await.unwrap();
    authz::add_session(&pool, ADA, "ada", &["admin", "staff"], 3600)
        .await
        .unwrap();
    authz::add_session(&pool, BOB, "bob", &["staff"], 3600)
        .await
        .unwrap();
    let state = AuthzState {
        db: pool,
        config: Arc::new(AuthzConfig {
            login_url: "https://login.example.com/start".into(),
            rules: vec![Rule::parse("admin=/app/admin").unwrap()],
        }),
    };
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&checks);
    let app = authz::app(state, Arc::new(Metrics::new("authz").unwrap())).layer(
        axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let counted = Arc::clone(&counted);
                async move {
                    if req.uri().path() == "/check" {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    next.run(req).await
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Authz { addr, checks }
}

/// Accepts connections and never answers.
async fn hanging_service() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Answers every connection with bytes that are not HTTP, then closes it.
async fn garbage_service() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"\x00\x01 definitely not http \xff\r\n\r\n")
                    .await;
            });
        }
    });
    addr
}

fn config(
    upstream: SocketAddr,
    authz: SocketAddr,
    hanging: SocketAddr,
    garbage: SocketAddr,
) -> String {
    let dead = common::free_port();
    format!(
        "
listeners: [{{name: main, address: '127.0.0.1:{{PORT}}'}}]
admin: {{address: '127.0.0.1:{{ADMIN}}'}}
upstreams:
  echo: {{endpoints: [{{address: '{upstream}'}}]}}
routes:
  - id: app
    match: {{path: {{prefix: /app}}}}
    auth:
      forward:
        url: http://{authz}/check
        send_headers: [authorization, cookie, accept]
        copy_response_headers: [X-Auth-User, X-Auth-Roles]
    upstream: echo
  - id: cached
    match: {{path: {{prefix: /cached}}}}
    auth:
      forward:
        url: http://{authz}/check
        copy_response_headers: [X-Auth-User]
        cache: {{ttl: 1h, key: ['header:authorization', 'cookie:session']}}
    upstream: echo
  - id: body
    match: {{path: {{prefix: /body}}}}
    auth:
      forward: {{url: 'http://{authz}/check', send_body: true, max_body: 1024}}
    upstream: echo
  - id: hangs
    match: {{path: {{prefix: /hangs}}}}
    auth: {{forward: {{url: 'http://{hanging}/check', timeout: 300ms}}}}
    upstream: echo
  - id: hangs-open
    match: {{path: {{prefix: /open-on-error}}}}
    auth: {{forward: {{url: 'http://{hanging}/check', timeout: 300ms, on_error: allow}}}}
    upstream: echo
  - id: garbage
    match: {{path: {{prefix: /garbage}}}}
    auth: {{forward: {{url: 'http://{garbage}/check', timeout: 2s}}}}
    upstream: echo
  - id: dead
    match: {{path: {{prefix: /dead}}}}
    auth: {{forward: {{url: 'http://127.0.0.1:{dead}/check'}}}}
    upstream: echo
"
    )
}

async fn start() -> (Gateway, Authz) {
    let upstream = common::echo_upstream("echo").await;
    let authz = authz_service().await;
    let gw = Gateway::start(&config(
        upstream,
        authz.addr,
        hanging_service().await,
        garbage_service().await,
    ))
    .await;
    (gw, authz)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test]
async fn allow_deny_and_redirect() {
    let (gw, _authz) = start().await;
    let c = client();
    // Allowed: the service's headers go upstream, client copies of them do not.
    let (s, _, body) = send(
        c.get(gw.url("/app/page?x=1"))
            .bearer_auth(BOB)
            .header("x-auth-user", "mallory"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-auth-user"], "bob");
    assert_eq!(v["headers"]["x-auth-roles"], "staff");
    // Same through the session cookie.
    let (s, _, body) = send(
        c.get(gw.url("/app/page"))
            .header("cookie", format!("session={ADA}")),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["headers"]["x-auth-user"],
        "ada"
    );

    // A rule refuses bob under /app/admin: the service's 403, body and all.
    let (s, h, body) = send(c.get(gw.url("/app/admin/users")).bearer_auth(BOB)).await;
    assert_eq!(s, 403);
    assert!(body.contains("needs the admin role"), "{body}");
    assert!(h.contains_key("x-request-id"));
    let (s, _, _) = send(c.get(gw.url("/app/admin/users")).bearer_auth(ADA)).await;
    assert_eq!(s, 200);

    // No session: an API client gets the 401 (with its challenge); a browser the 302.
    let (s, h, body) = send(c.get(gw.url("/app/page"))).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(h["www-authenticate"], "Bearer realm=\"authz\"");
    assert!(body.contains("no_session"));
    let (s, h, _) = send(
        c.get(gw.url("/app/page?q=a b"))
            .header("accept", "text/html"),
    )
    .await;
    assert_eq!(s, 302);
    assert_eq!(
        h["location"],
        "https://login.example.com/start?rd=/app/page%3Fq%3Da%2520b"
    );
    gw.wait_metrics(&[
        "gateway_forward_auth_total{result=\"allowed\",route=\"app\"} 3",
        "gateway_forward_auth_total{result=\"denied\",route=\"app\"} 3",
    ])
    .await;
}

#[tokio::test]
async fn decisions_are_cached_per_key() {
    let (gw, authz) = start().await;
    let c = client();
    let checks = || authz.checks.load(Ordering::SeqCst);
    for _ in 0..5 {
        let (s, _, body) = send(c.get(gw.url("/cached/a")).bearer_auth(BOB)).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["headers"]["x-auth-user"],
            "bob"
        );
    }
    assert_eq!(
        checks(),
        1,
        "one check for five requests with the same credentials"
    );
    let (s, _, _) = send(c.get(gw.url("/cached/other-path")).bearer_auth(BOB)).await;
    assert_eq!(s, 200);
    assert_eq!(checks(), 1, "the path is not part of this route's key");
    let (s, _, _) = send(c.get(gw.url("/cached/a")).bearer_auth(ADA)).await;
    assert_eq!(s, 200);
    assert_eq!(checks(), 2, "other credentials, another decision");
    // Refusals are cached too.
    for _ in 0..3 {
        let (s, _, _) = send(
            c.get(gw.url("/cached/a"))
                .bearer_auth("unknown-session-000000"),
        )
        .await;
        assert_eq!(s, 401);
    }
    assert_eq!(checks(), 3);
    gw.wait_metrics(&[
        "gateway_forward_auth_total{result=\"cached_allowed\",route=\"cached\"} 5",
        "gateway_forward_auth_total{result=\"cached_denied\",route=\"cached\"} 2",
    ])
    .await;
}

#[tokio::test]
async fn failures_follow_on_error() {
    let (gw, _authz) = start().await;
    let c = client();
    for path in ["/hangs", "/garbage", "/dead"] {
        let (s, h, body) = send(c.get(gw.url(path)).bearer_auth(BOB)).await;
        assert_eq!(s, 503, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "forward_auth_unavailable", "{path}");
        assert_eq!(h["retry-after"], "1");
    }
    let (s, _, body) = send(c.get(gw.url("/open-on-error")).bearer_auth(BOB)).await;
    assert_eq!(s, 200, "on_error: allow lets it through: {body}");
    assert!(
        serde_json::from_str::<Value>(&body).unwrap()["headers"]
            .get("x-auth-user")
            .is_none()
    );
    gw.wait_metrics(&[
        "gateway_forward_auth_total{result=\"error_denied\",route=\"hangs\"} 1",
        "gateway_forward_auth_total{result=\"error_allowed\",route=\"hangs-open\"} 1",
    ])
    .await;
}

#[tokio::test]
async fn the_body_goes_to_both() {
    let (gw, _authz) = start().await;
    let c = client();
    let (s, _, body) = send(
        c.post(gw.url("/body/x"))
            .bearer_auth(BOB)
            .body("hello auth"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["body"], "hello auth", "the upstream still gets the body");
    let (s, _, body) = send(
        c.post(gw.url("/body/x"))
            .bearer_auth(BOB)
            .body(vec![b'x'; 4096]),
    )
    .await;
    assert_eq!(s, 413, "{body}");
    assert!(body.contains("auth_body_too_large"));
}
