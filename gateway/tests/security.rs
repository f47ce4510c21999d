//! Security review findings (issue 20) through the real binary: tokens in query strings
//! never logged nor forwarded, the cache keyed on forwarded identity claims, trusted-
//! looking headers dropped, duplicate credentials refused, weak Ed25519 keys refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::{Gateway, free_port};
use serde_json::{Value, json};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";
const ISS: &str = "https://issuer.test";

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(sub: &str) -> String {
    hs256(json!({"sub": sub, "iss": ISS, "exp": now() + 600}))
}

/// An upstream that answers every request with its target and every header line as
/// received (repeats and credentials included), and counts requests.
async fn raw_echo() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let headers: Vec<Value> = req
                .headers()
                .iter()
                .map(|(k, v)| json!([k.as_str(), v.to_str().unwrap_or("<binary>")]))
                .collect();
            let user = req
                .headers()
                .get("x-user-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("anonymous")
                .to_owned();
            let body =
                json!({"target": req.uri().to_string(), "headers": headers, "user": user, "n": n});
            (
                [
                    ("cache-control", "public, max-age=60"),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn header_values<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

fn provider(sources: &str) -> String {
    format!(
        r#"
jwt_providers:
  hmac:
    algorithms: [HS256]
    secret: "{SECRET}"
    issuer: {ISS}
    token_sources: {sources}
    allow_query_token: true
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_tokens_are_neither_logged_nor_forwarded() {
    let (up, _) = raw_echo().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
{}
upstreams:
  app: {{endpoints: [{{address: "{up}"}}]}}
  dead: {{endpoints: [{{address: "{dead}"}}]}}
routes:
  - id: app
    match: {{path: {{prefix: /app}}}}
    rewrite: {{strip_prefix: /app}}
    auth: {{jwt: {{providers: [hmac], strip_authorization: true}}}}
    upstream: app
  - id: dead
    match: {{path: {{prefix: /dead}}}}
    auth: {{jwt: {{providers: [hmac]}}}}
    upstream: dead
"#,
        provider(r#"[bearer, "query:access_token"]"#)
    );
    let gw = Gateway::start(&config).await;
    let t = token("alice");
    // Forwarded without the token parameter; the other parameters stay, in order.
    let echo: Value = reqwest::get(gw.url(&format!("/app/x?a=1&access_token={t}&b=2")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["target"], "/x?a=1&b=2", "{echo}");
    let echo: Value = reqwest::get(gw.url(&format!("/app/y?access_token={t}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["target"], "/y", "{echo}");

    // An upstream failure: Pingora's own "Fail to proxy" lines and the access log.
    let r = reqwest::get(gw.url(&format!("/dead/z?access_token={t}&q=secret-query")))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    gw.wait_metrics(&[
        "gateway_requests_total{method=\"GET\",route=\"dead\",status_class=\"5xx\"} 1",
    ])
    .await;
    let log = gw.log();
    assert!(log.contains("Fail to proxy"), "{log}");
    assert!(log.contains("GET /dead/z, route: dead"), "{log}");
    let signature = t.rsplit('.').next().unwrap();
    assert!(
        !log.contains(signature),
        "the token reached the log:\n{log}"
    );
    assert!(
        !log.contains("secret-query"),
        "a query reached the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keys_on_the_identity_it_forwards() {
    let (up, hits) = raw_echo().await;
    let config = format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
{}
upstreams:
  app: {{endpoints: [{{address: "{up}"}}]}}
routes:
  - id: profile
    match: {{path: {{prefix: /profile}}}}
    auth: {{jwt: {{providers: [hmac], required: false, claims_to_headers: {{sub: X-User-Id}}, strip_authorization: true}}}}
    cache: {{}}
    upstream: app
"#,
        provider("[bearer]")
    );
    let gw = Gateway::start(&config).await;
    let client = reqwest::Client::new();
    let get = |t: Option<String>| {
        let mut req = client.get(gw.url("/profile"));
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.headers()["cache-status"].to_str().unwrap().to_owned();
            let body: Value = r.json().await.unwrap();
            (body["user"].as_str().unwrap().to_owned(), status)
        }
    };
    // The origin personalizes on X-User-Id and still says `public, max-age=60`.
    assert_eq!(get(Some(token("alice"))).await.0, "alice");
    let (user, status) = get(None).await;
    assert_eq!(
        user, "anonymous",
        "an anonymous caller got alice's answer ({status})"
    );
    assert_eq!(get(Some(token("bob"))).await.0, "bob");
    // Each identity still has its own cached entry.
    let (user, status) = get(Some(token("alice"))).await;
    assert_eq!(user, "alice");
    assert!(status.contains("hit"), "{status}");
    let (user, status) = get(None).await;
    assert_eq!(user, "anonymous");
    assert!(status.contains("hit"), "{status}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    // The admin view says what the key is made of.
    let routes = gw.admin_json("/admin/routes").await;
    assert_eq!(
        routes["routes"][0]["cache"]["key"]["claims"],
        json!(["sub"])
    );
}
