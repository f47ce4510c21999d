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
    let log = gw.wait_log("\"path\":\"/dead/z\"").await;
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

/// Ed25519 points of small order: the identity, and one of order 8.
const IDENTITY: [u8; 32] = {
    let mut p = [0u8; 32];
    p[0] = 1;
    p
};
const ORDER_8: &str = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a";
/// The base point: a key of prime order, as honest keys are.
const BASE_POINT: &str = "5866666666666666666666666666666666666666666666666666666666666666";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn okp(kid: &str, x: &[u8]) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "x": b64url(x)})
}

fn ed_pem(point: &[u8]) -> String {
    use base64::Engine;
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(point);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// A token "signed" with R = identity and S = 0: it verifies under a small-order key.
fn forged(kid: &str) -> String {
    let header = b64url(
        json!({"alg": "EdDSA", "typ": "JWT", "kid": kid})
            .to_string()
            .as_bytes(),
    );
    let claims = b64url(
        json!({"sub": "mallory", "iss": ISS, "exp": now() + 600})
            .to_string()
            .as_bytes(),
    );
    let mut sig = IDENTITY.to_vec();
    sig.extend_from_slice(&[0u8; 32]);
    format!("{header}.{claims}.{}", b64url(&sig))
}

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn small_order_ed25519_keys_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let provider = |source: &str| {
        format!(
            "listeners: [{{name: a, address: '127.0.0.1:8080'}}]\n\
             jwt_providers:\n  ed: {{algorithms: [EdDSA], issuer: {ISS}, {source}}}\n\
             routes: [{{id: r, auth: {{jwt: {{providers: [ed]}}}}, direct_response: {{status: 200}}}}]\n"
        )
    };
    for (name, point) in [
        ("identity", IDENTITY.to_vec()),
        ("order8", unhex(ORDER_8)),
        ("good", unhex(BASE_POINT)),
    ] {
        let pem = dir.path().join(format!("{name}.pem"));
        std::fs::write(&pem, ed_pem(&point)).unwrap();
        let jwks = dir.path().join(format!("{name}.json"));
        std::fs::write(&jwks, json!({"keys": [okp(name, &point)]}).to_string()).unwrap();
        for source in [
            format!("pem_file: {}", pem.display()),
            format!("jwks_file: {}", jwks.display()),
        ] {
            let (ok, err) = check(&provider(&source));
            if name == "good" {
                assert!(ok, "{source}: {err}");
            } else {
                assert!(!ok, "{name} via {source} was accepted");
                assert!(err.contains("small order"), "{source}: {err}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_order_keys_in_a_fetched_jwks_are_skipped_and_counted() {
    let jwks = json!({"keys": [okp("weak", &IDENTITY), okp("honest", &unhex(BASE_POINT))]});
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let body = jwks.to_string();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (up, hits) = raw_echo().await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
jwt_providers:
  ed: {{algorithms: [EdDSA], issuer: {ISS}, jwks: {{url: "http://{idp}/jwks.json", refresh_min: 1s}}}}
upstreams:
  app: {{endpoints: [{{address: "{up}"}}]}}
routes:
  - {{id: r, match: {{path: {{prefix: /}}}}, auth: {{jwt: {{providers: [ed]}}}}, upstream: app}}
"#
    ))
    .await;
    for kid in ["weak", "honest"] {
        let r = reqwest::Client::new()
            .get(gw.url("/x"))
            .bearer_auth(forged(kid))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a forged token passed with kid {kid}");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    gw.wait_metrics(&[
        "gateway_jwks_keys_skipped_total{provider=\"ed\",reason=\"weak_key\"}",
        "gateway_jwks_keys{provider=\"ed\"} 1",
    ])
    .await;
    let v = gw.admin_json("/admin/jwt").await;
    assert_eq!(v["providers"][0]["key_ids"], json!(["honest"]), "{v}");
    assert!(
        v["providers"][0]["skipped_keys"][0]
            .as_str()
            .unwrap()
            .contains("small order"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_one_credential_is_a_bad_request() {
    let (up, _) = raw_echo().await;
    let config = format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
{}
upstreams:
  app: {{endpoints: [{{address: "{up}"}}]}}
routes:
  - id: app
    match: {{path: {{prefix: /}}}}
    auth: {{jwt: {{providers: [hmac], required: false}}}}
    upstream: app
"#,
        provider(r#"[bearer, "cookie:session", "query:access_token"]"#)
    );
    let gw = Gateway::start(&config).await;
    let (alice, bob) = (token("alice"), token("bob"));
    let send = |headers: Vec<(&'static str, String)>, query: &str| {
        let mut req = reqwest::Client::new().get(gw.url(&format!("/x{query}")));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let www = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            (status, www, body)
        }
    };
    // Two Authorization lines: the upstream might read the other one.
    let (status, www, body) = send(
        vec![
            ("authorization", format!("Bearer {alice}")),
            ("authorization", format!("Bearer {bob}")),
        ],
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(www.unwrap().contains("error=\"invalid_request\""));
    // Even a second line that is not a bearer token.
    let (status, _, _) = send(
        vec![
            ("authorization", format!("Bearer {alice}")),
            ("authorization", "Basic Ym9iOnB3".to_owned()),
        ],
        "",
    )
    .await;
    assert_eq!(status, 400);
    // Different tokens in two sources, or twice in one.
    let (status, _, _) = send(
        vec![
            ("authorization", format!("Bearer {alice}")),
            ("cookie", format!("session={bob}")),
        ],
        "",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = send(
        vec![("cookie", format!("session={alice}; session={bob}"))],
        "",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = send(vec![], &format!("?access_token={alice}&access_token={bob}")).await;
    assert_eq!(status, 400);
    // One token, even in two places, is fine.
    let (status, _, body) = send(
        vec![
            ("authorization", format!("Bearer {alice}")),
            ("cookie", format!("session={alice}; theme=dark")),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = send(vec![("authorization", format!("Bearer {alice}"))], "").await;
    assert_eq!(status, 200);
}
