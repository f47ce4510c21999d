//! JWT authentication end to end: the real gateway binary in front of a loopback upstream,
//! with the sample auth service as the JWKS server (rotation, storms, outages, readiness)
//! and an HMAC provider for the RFC 6750 answers, claim requirements and identity headers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::response::IntoResponse;
use common::Gateway;
use example_services::auth::{self, AuthConfig, AuthState, SigningAlg};
use example_services::common::db;
use example_services::common::http::Metrics;
use serde_json::{Value, json};

const ISS: &str = "https://issuer.test/auth";

/// The sample auth service on loopback, counting JWKS fetches; `down` makes its JWKS
/// answer 503 (the rest keeps working, so tokens can still be issued).
struct Issuer {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    client: reqwest::Client,
}

impl Issuer {
    async fn start() -> Issuer {
        let pool = db::open("sqlite::memory:", auth::SCHEMA).await.unwrap();
        auth::ensure_keys(&pool, None).await.unwrap();
        let state = AuthState {
            db: pool,
            config: Arc::new(AuthConfig {
                issuer: ISS.into(),
                audience: "api".into(),
                token_ttl: Duration::from_secs(900),
                signing_alg: SigningAlg::Rs256,
                key_encryption: None,
                refresh_ttl: Duration::from_secs(3600),
            }),
        };
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (f, d) = (fetches.clone(), down.clone());
        let app = auth::app(state, Arc::new(Metrics::new("auth").unwrap())).layer(
            axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let (f, d) = (f.clone(), d.clone());
                    async move {
                        if req.uri().path() == "/.well-known/jwks.json" {
                            f.fetch_add(1, Ordering::SeqCst);
                            if d.load(Ordering::SeqCst) {
                                return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                            }
                        }
                        next.run(req).await
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer {
            addr,
            fetches,
            down,
            client: reqwest::Client::new(),
        }
    }

    fn jwks_url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Register `email` (once) and log in, straight at the service.
    async fn token(&self, email: &str) -> String {
        let creds = json!({"email": email, "password": "correct horse"});
        let base = format!("http://{}", self.addr);
        self.client
            .post(format!("{base}/v1/register"))
            .json(&creds)
            .send()
            .await
            .unwrap();
        let r = self
            .client
            .post(format!("{base}/v1/login"))
            .json(&creds)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A new signing key (the old one stays published until its tokens expire).
    async fn rotate(&self) {
        let r = self
            .client
            .post(format!("http://{}/v1/admin/rotate", self.addr))
            .header("x-user-id", "ops")
            .header("x-user-roles", "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
}

/// An upstream that reports the identity headers it received and whether a token came
/// along (the echo service never shows credentials).
async fn identity_upstream() -> SocketAddr {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let h = |n: &str| {
            headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        };
        axum::Json(json!({
            "x-user-id": h("x-user-id"),
            "x-user-roles": h("x-user-roles"),
            "authorization": headers.contains_key("authorization"),
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn jwks_config(jwks_url: &str, upstream: SocketAddr, start_timeout: &str) -> String {
    format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
jwt_providers:
  idp:
    algorithms: [RS256, EdDSA]
    jwks: {{url: "{jwks_url}", refresh_min: 1ms, start_timeout: {start_timeout}}}
    issuer: {ISS}
    audiences: [api]
upstreams:
  app: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - id: api
    match: {{path: {{prefix: /api}}}}
    auth: {{jwt: {{providers: [idp], claims_to_headers: {{sub: X-User-Id, roles: X-User-Roles}}}}}}
    upstream: app
"#
    )
}

async fn get(gw: &Gateway, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(gw.url("/api/thing"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_costs_exactly_one_extra_fetch() {
    let issuer = Issuer::start().await;
    let up = identity_upstream().await;
    let gw = Gateway::start(&jwks_config(&issuer.jwks_url(), up, "10s")).await;
    assert_eq!(issuer.fetches(), 1, "fetched once at start");

    let before = issuer.token("ada@example.com").await;
    assert_eq!(get(&gw, &before).await.status(), 200);
    assert_eq!(issuer.fetches(), 1);

    issuer.rotate().await;
    let after = issuer.token("ada@example.com").await;
    assert_ne!(before, after);
    let r = get(&gw, &after).await;
    assert_eq!(r.status(), 200);
    assert_eq!(issuer.fetches(), 2, "the new kid caused one fetch");
    // More tokens with the new key, and the old token (its key is still published):
    // no more fetches.
    let other = issuer.token("grace@example.com").await;
    assert_eq!(get(&gw, &other).await.status(), 200);
    assert_eq!(get(&gw, &before).await.status(), 200);
    assert_eq!(issuer.fetches(), 2);
    // `before` was verified again (the key change emptied the token cache); a repeat of
    // `other` is answered from the cache.
    assert_eq!(get(&gw, &other).await.status(), 200);

    gw.wait_metrics(&[
        "gateway_jwks_refresh_total{provider=\"idp\",result=\"success\"} 2",
        "gateway_jwks_keys{provider=\"idp\"} 3",
        "gateway_jwt_validations_total{provider=\"idp\",result=\"valid\"} 4",
        "gateway_jwt_validations_total{provider=\"idp\",result=\"cached\"} 1",
        "gateway_jwks_last_success_timestamp_seconds{provider=\"idp\"}",
    ])
    .await;
    let admin: Value = gw.admin_json("/admin/jwt").await;
    let p = &admin["providers"][0];
    assert_eq!(p["name"], "idp");
    assert_eq!(p["key_ids"].as_array().unwrap().len(), 3);
    assert!(p["last_fetch"]["succeeded_at"].is_string());
    // The next refresh follows the JWKS's `Cache-Control: max-age=300` (within the
    // default bounds of 30s..1h).
    let next = p["last_fetch"]["next_in_seconds"].as_u64().unwrap();
    assert!((250..=300).contains(&next), "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_new_kids_fetches_once() {
    let issuer = Issuer::start().await;
    let up = identity_upstream().await;
    let gw = Gateway::start(&jwks_config(&issuer.jwks_url(), up, "10s")).await;
    assert_eq!(issuer.fetches(), 1);
    issuer.rotate().await;
    let token = issuer.token("storm@example.com").await;
    let client = reqwest::Client::new();
    let requests = (0..1000).map(|_| client.get(gw.url("/api/thing")).bearer_auth(&token).send());
    let responses = futures_util::future::join_all(requests).await;
    for r in responses {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(
        issuer.fetches(),
        2,
        "1,000 requests with a new kid: one fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_last_good_keys() {
    let issuer = Issuer::start().await;
    let up = identity_upstream().await;
    let gw = Gateway::start(&jwks_config(&issuer.jwks_url(), up, "10s")).await;
    issuer.down.store(true, Ordering::SeqCst);

    // A token never seen before, signed with a known key: verified with the cached keys.
    let fresh = issuer.token("ada@example.com").await;
    assert_eq!(get(&gw, &fresh).await.status(), 200);

    // A new key while the JWKS is down: the refresh fails, the new kid is refused,
    // tokens of the known keys keep working.
    issuer.rotate().await;
    let unknown = issuer.token("grace@example.com").await;
    let r = get(&gw, &unknown).await;
    assert_eq!(r.status(), 401);
    assert_eq!(issuer.fetches(), 2);
    assert_eq!(get(&gw, &fresh).await.status(), 200);
    gw.wait_metrics(&[
        "gateway_jwks_refresh_total{provider=\"idp\",result=\"error\"} 1",
        "gateway_jwks_keys{provider=\"idp\"} 2",
    ])
    .await;

    // The admin API shows the failed fetch.
    let admin: Value = gw.admin_json("/admin/jwt").await;
    assert!(admin["providers"][0]["last_fetch"]["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_jwks_and_no_keys_is_503() {
    let issuer = Issuer::start().await;
    issuer.down.store(true, Ordering::SeqCst);
    let up = identity_upstream().await;

    // Start timeout far away: not ready, and /readyz says why.
    let gw = Gateway::launch(&jwks_config(&issuer.jwks_url(), up, "1h"), &[]);
    let client = reqwest::Client::new();
    let body = loop {
        if let Ok(r) = client.get(gw.admin_url("/readyz")).send().await {
            assert_eq!(r.status(), 503);
            break r.json::<Value>().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["jwt_providers"], json!(["idp"]));
    assert!(body["reason"].as_str().unwrap().contains("JWKS"));
    // The JWKS comes back: the retry (with backoff) fetches it and the gateway is ready.
    issuer.down.store(false, Ordering::SeqCst);
    gw.wait_ready().await;
    let token = issuer.token("ada@example.com").await;
    assert_eq!(get(&gw, &token).await.status(), 200);
    drop(gw);

    // Start timeout short and the JWKS down: ready after the timeout, and a request with
    // a token gets 503 with Retry-After (not 401: the token may be fine).
    issuer.down.store(true, Ordering::SeqCst);
    let gw = Gateway::start(&jwks_config(&issuer.jwks_url(), up, "200ms")).await;
    let r = get(&gw, &token).await;
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert!(!r.headers().contains_key("www-authenticate"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "auth_unavailable");
    assert!(body["error"]["request_id"].is_string());
}

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn hmac_config(upstream: SocketAddr) -> String {
    format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
jwt_providers:
  hmac:
    algorithms: [HS256]
    secret: "{SECRET}"
    issuer: {ISS}
    realm: example
    token_sources: [bearer, "cookie:session"]
upstreams:
  app: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - id: writes
    match: {{path: {{prefix: /orders}}}}
    auth:
      jwt:
        providers: [hmac]
        claims: [{{claim: scope, contains: "orders:write"}}]
        claims_to_headers: {{sub: X-User-Id, roles: X-User-Roles}}
        strip_authorization: true
    upstream: app
  - id: optional
    match: {{path: {{prefix: /public}}}}
    auth: {{jwt: {{providers: [hmac], required: false, claims_to_headers: {{sub: X-User-Id}}}}}}
    upstream: app
  - id: open
    match: {{path: {{prefix: /open}}}}
    upstream: app
  - id: cached
    match: {{path: {{prefix: /cached}}}}
    auth: {{jwt: {{providers: [hmac], required: false, claims_to_headers: {{sub: X-User-Id}}, strip_authorization: true}}}}
    cache: {{default_ttl: 60s}}
    upstream: app
"#
    )
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_6750_answers_and_identity_headers() {
    let up = identity_upstream().await;
    let gw = Gateway::start(&hmac_config(up)).await;
    let c = reqwest::Client::new();
    let good = hs256(
        json!({"iss": ISS, "sub": "u-42", "exp": now() + 600, "scope": "orders:read orders:write", "roles": ["customer", "beta"]}),
    );

    // No token on a required route: 401 without an error code.
    let r = c
        .get(gw.url("/orders"))
        .header("x-user-id", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"example\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(body["error"]["request_id"].is_string());

    // Expired, forged, malformed: 401 invalid_token, saying what (not which key).
    let expired =
        hs256(json!({"iss": ISS, "sub": "u-42", "exp": now() - 3600, "scope": "orders:write"}));
    let forged = format!("{}AAAA", &good[..good.rfind('.').unwrap() + 1]);
    let cases = [
        (expired.as_str(), "the token expired"),
        (forged.as_str(), "the token signature is invalid"),
        ("not-a-jwt", "the token is malformed"),
        ("e30.e30.e30", "the token is malformed"),
    ];
    for (token, description) in cases {
        let r = c
            .get(gw.url("/orders"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{token}");
        assert_eq!(
            r.headers()["www-authenticate"].to_str().unwrap(),
            format!(
                "Bearer realm=\"example\", error=\"invalid_token\", error_description=\"{description}\""
            )
        );
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_token"
        );
    }

    // Valid token without the scope: 403 insufficient_scope.
    let reader =
        hs256(json!({"iss": ISS, "sub": "u-7", "exp": now() + 600, "scope": "orders:read"}));
    let r = c
        .get(gw.url("/orders"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "insufficient_scope"
    );

    // Valid: the identity comes from the token, never from the client, and the token
    // itself is not forwarded (strip_authorization).
    for _ in 0..2 {
        let r = c
            .get(gw.url("/orders"))
            .bearer_auth(&good)
            .header("x-user-id", "mallory")
            .header("X-User-Roles", "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen: Value = r.json().await.unwrap();
        assert_eq!(seen["x-user-id"], json!(["u-42"]));
        assert_eq!(seen["x-user-roles"], json!(["customer,beta"]));
        assert_eq!(seen["authorization"], false);
    }
    // From a cookie too.
    let r = c
        .get(gw.url("/orders"))
        .header("cookie", format!("theme=dark; session={good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Optional route: no token passes, but a spoofed identity is still removed; a bad
    // token is still refused; a good one sets the identity and keeps Authorization.
    let r = c
        .get(gw.url("/public"))
        .header("x-user-id", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["x-user-id"], json!([]));
    let r = c
        .get(gw.url("/public"))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(gw.url("/public"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["x-user-id"], json!(["u-42"]));
    assert_eq!(seen["authorization"], true);

    // A route without auth: identity headers that any route derives from tokens are
    // still never taken from the client, and no token is looked at.
    let r = c
        .get(gw.url("/open"))
        .header("x-user-id", "mallory")
        .header("X-User-Roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["x-user-id"], json!([]));
    assert_eq!(seen["x-user-roles"], json!([]));

    gw.wait_metrics(&[
        "gateway_jwt_validations_total{provider=\"hmac\",result=\"missing\"} 1",
        "gateway_jwt_validations_total{provider=\"hmac\",result=\"expired\"} 2",
        "gateway_jwt_validations_total{provider=\"hmac\",result=\"bad_signature\"} 1",
        "gateway_jwt_validations_total{provider=\"hmac\",result=\"malformed\"} 2",
        "gateway_jwt_validations_total{provider=\"hmac\",result=\"forbidden\"} 1",
        "gateway_jwt_validations_total{provider=\"hmac\",result=\"valid\"} 1",
        "gateway_jwt_validations_total{provider=\"hmac\",result=\"cached\"} 3",
        "gateway_jwks_keys{provider=\"hmac\"} 1",
    ])
    .await;
    let routes: Value = gw.admin_json("/admin/routes").await;
    assert_eq!(routes["routes"][0]["jwt"]["providers"], json!(["hmac"]));
    assert_eq!(routes["routes"][0]["jwt"]["strip_authorization"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_keys() {
    let issuer = Issuer::start().await;
    let up = identity_upstream().await;
    let template = jwks_config(&issuer.jwks_url(), up, "10s");
    let gw = Gateway::start(&template).await;
    let token = issuer.token("ada@example.com").await;
    assert_eq!(get(&gw, &token).await.status(), 200);
    assert_eq!(issuer.fetches(), 1);

    // Change the provider's validation rules (not its key source) and add a route.
    let changed = template.replace("audiences: [api]", "audiences: [api, other]")
        + "  - id: ping\n    match: {path: {exact: /ping}}\n    direct_response: {status: 200}\n";
    common::write_atomic(
        &gw.config,
        &common::render(&changed, gw.port, gw.admin_port),
    );
    gw.wait_config("reload", |v| v["version"] == 2).await;
    assert_eq!(get(&gw, &token).await.status(), 200);
    assert_eq!(issuer.fetches(), 1, "the reloaded provider kept its keys");
}

/// A caching route behind JWT auth that strips `Authorization`: the shared cache still
/// treats the request as authorized (RFC 9111 section 3.5), whether the token came in
/// `Authorization` or a cookie, so one caller's answer never reaches another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_keep_answers_out_of_the_shared_cache() {
    let up = identity_upstream().await;
    let gw = Gateway::start(&hmac_config(up)).await;
    let c = reqwest::Client::new();
    let token = |sub: &str| hs256(json!({"iss": ISS, "sub": sub, "exp": now() + 600}));
    let seen = |r: reqwest::Response| async move {
        let status = r
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body: Value = r.json().await.unwrap();
        (body["x-user-id"].clone(), status)
    };

    // Anonymous answers are shared: the route really caches.
    let (_, first) = seen(c.get(gw.url("/cached/a")).send().await.unwrap()).await;
    let (_, second) = seen(c.get(gw.url("/cached/a")).send().await.unwrap()).await;
    assert!(
        first.contains("fwd=") && first.contains("stored"),
        "{first}"
    );
    assert!(second.contains("hit"), "{second}");

    // Authorized answers are neither stored nor served from the cache.
    for sub in ["u-1", "u-2"] {
        let r = c
            .get(gw.url("/cached/b"))
            .bearer_auth(token(sub))
            .send()
            .await
            .unwrap();
        let (who, status) = seen(r).await;
        assert_eq!(who, json!([sub]), "{status}");
    }
    for sub in ["u-3", "u-4"] {
        let r = c
            .get(gw.url("/cached/c"))
            .header("cookie", format!("session={}", token(sub)))
            .send()
            .await
            .unwrap();
        let (who, status) = seen(r).await;
        assert_eq!(who, json!([sub]), "{status}");
    }
    // And an authorized request is not answered with the anonymous entry either.
    let r = c
        .get(gw.url("/cached/a"))
        .bearer_auth(token("u-5"))
        .send()
        .await
        .unwrap();
    assert_eq!(seen(r).await.0, json!(["u-5"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_fetches_are_spans() {
    use common::otlp::{receiver, wait_spans};
    const TRACE: &str = "6bf92f3577b34da6a3ce929d0e0e4736";
    let (recv, store) = receiver().await;
    let issuer = Issuer::start().await;
    let up = identity_upstream().await;
    let cfg = format!(
        "{}tracing: {{sample_ratio: 0, batch_interval: 50ms, otlp: {{endpoint: 'http://{recv}'}}}}\n",
        jwks_config(&issuer.jwks_url(), up, "10s")
    );
    let gw = Gateway::start(&cfg).await;
    // The fetch at start is a trace of its own, recorded although the ratio is 0.
    let got = wait_spans(&store, "the start-up JWKS fetch", |g| {
        g.iter().any(|s| s.span.name == "GET jwks")
    })
    .await;
    let start = got.iter().find(|s| s.span.name == "GET jwks").unwrap();
    assert_eq!(start.parent_id(), "", "a root span");
    assert_eq!(start.span.kind, 3, "client");
    assert_eq!(
        start.attr("gateway.jwks.trigger").as_deref(),
        Some("schedule")
    );
    assert_eq!(start.attr("gateway.jwt.provider").as_deref(), Some("idp"));
    assert_eq!(
        start.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    let keys: u32 = start.attr("gateway.jwks.keys").unwrap().parse().unwrap();
    assert!(keys >= 1);
    assert_eq!(start.attr("url.full"), Some(issuer.jwks_url()));

    // A new key: the traced request that meets its kid fetches, inside its trace.
    issuer.rotate().await;
    let token = issuer.token("ada@example.com").await;
    let r = reqwest::Client::new()
        .get(gw.url("/api/thing"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log());
    assert_eq!(issuer.fetches(), 2);
    let got = wait_spans(&store, "the request's JWKS fetch and server span", |g| {
        g.iter()
            .any(|s| s.trace_id() == TRACE && s.span.name == "GET jwks")
            && g.iter().any(|s| s.trace_id() == TRACE && s.span.kind == 2)
    })
    .await;
    let server = got
        .iter()
        .find(|s| s.trace_id() == TRACE && s.span.kind == 2)
        .unwrap();
    let fetch = got
        .iter()
        .find(|s| s.trace_id() == TRACE && s.span.name == "GET jwks")
        .unwrap();
    assert_eq!(fetch.parent_id(), server.span_id());
    assert_eq!(
        fetch.attr("gateway.jwks.trigger").as_deref(),
        Some("unknown_kid")
    );
    assert_eq!(
        fetch.attr("gateway.jwks.keys"),
        Some((keys + 1).to_string())
    );
    assert_eq!(server.attr("gateway.auth.outcome").as_deref(), Some("jwt"));
    for s in &got {
        assert!(!s.all_values().contains(&token), "no token in {s:?}");
    }

    // A failing fetch is an error span.
    issuer.down.store(true, Ordering::SeqCst);
    issuer.rotate().await;
    let token = issuer.token("grace@example.com").await;
    let r = get(&gw, &token).await;
    assert_eq!(
        r.status(),
        401,
        "the new kid cannot be verified while the JWKS is down"
    );
    let got = wait_spans(&store, "a failed JWKS fetch span", |g| {
        g.iter()
            .any(|s| s.span.name == "GET jwks" && s.attr("error.type").is_some())
    })
    .await;
    let failed = got
        .iter()
        .find(|s| s.span.name == "GET jwks" && s.attr("error.type").is_some())
        .unwrap();
    assert_eq!(failed.attr("error.type").as_deref(), Some("503"));
    assert_eq!(failed.span.status.as_ref().map(|s| s.code), Some(2));
}
