//! The local stack end to end: the four sample services (started by the same code as the
//! `stack` binary that `.ci/local` runs, on free ports) behind the real gateway binary with
//! `config/local.yaml`, walked through the README's tour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Gateway;
use example_services::auth::AdminBootstrap;
use example_services::stack::{Stack, StackConfig};
use futures_util::FutureExt;
use reqwest::Method;
use serde_json::{Value, json};

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The `iss` of local.yaml's provider (and of `.ci/local`'s auth service): a name in
/// tokens, not an address, so the port rewrite below leaves it alone.
const ISSUER: &str = "http://127.0.0.1:8080/auth";

/// config/local.yaml with the stack's real addresses and the gateway's test ports.
fn local_config(stack: &Stack) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/local.yaml"))
            .unwrap();
    assert!(text.contains(ISSUER), "local.yaml trusts {ISSUER}");
    text.replace(ISSUER, "{ISSUER}")
        .replace("127.0.0.1:8080", "127.0.0.1:{PORT}")
        .replace("127.0.0.1:9901", "127.0.0.1:{ADMIN}")
        .replace("127.0.0.1:3001", &stack.auth.to_string())
        .replace("127.0.0.1:3002", &stack.users.to_string())
        .replace("127.0.0.1:3003", &stack.catalog.to_string())
        .replace("127.0.0.1:3004", &stack.orders.to_string())
        .replace("127.0.0.1:3005", &stack.notifications.to_string())
        .replace("{ISSUER}", ISSUER)
}

/// A request with the caller's access token.
async fn as_user(
    c: &reqwest::Client,
    method: Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = c.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

fn segment(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Register `email` through the gateway and log in; returns the access token.
async fn login(c: &reqwest::Client, gw: &Gateway, email: &str) -> String {
    let creds = json!({"email": email, "password": "correct horse"});
    let r = c
        .post(gw.url("/auth/v1/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    // The same answer for a new and a taken email (the bootstrap admin's is taken).
    assert_eq!(r.status(), 202);
    let r = c
        .post(gw.url("/auth/v1/login"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tour_through_the_gateway() {
    let stack = Stack::start(StackConfig {
        auth: any_port(),
        users: any_port(),
        catalog: any_port(),
        orders: any_port(),
        notifications: any_port(),
        data_dir: None,
        issuer: ISSUER.into(),
        // The first admin comes from the bootstrap, as in `.ci/local`.
        admin: Some(AdminBootstrap {
            email: "admin@example.com".into(),
            password: "correct horse".into(),
        }),
        key_encryption: None,
        redis_url: None,
        backup: Default::default(),
    })
    .await
    .unwrap();
    let gw = Gateway::start(&local_config(&stack)).await;
    let c = reqwest::Client::new();

    // Register and log in through /auth.
    let token = login(&c, &gw, "ada@example.com").await;
    let header = segment(&token, 0);
    let claims = segment(&token, 1);
    let kid = header["kid"].as_str().expect("kid in the token header");
    let jwks: Value = c
        .get(gw.url("/auth/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid),
        "kid {kid} in the JWKS"
    );
    let sub = claims["sub"].as_str().unwrap().to_owned();

    // Products, and a 304 through the gateway.
    let r = c
        .get(gw.url("/api/v1/catalog/products"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(
        r.json::<Value>().await.unwrap()["products"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let r = c
        .get(gw.url("/api/v1/catalog/products"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // A profile and an order for the logged-in caller: the gateway verified the token and
    // handed the service its `sub` as X-User-Id.
    let r = as_user(
        &c,
        Method::PUT,
        gw.url("/api/v1/users/me"),
        &token,
        Some(json!({"display_name": "Ada", "email": "ada@example.com"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["user_id"], sub.as_str());

    // A client-sent X-User-Id never reaches the service: replaced with the token's...
    let r = c
        .get(gw.url("/api/v1/users/me"))
        .bearer_auth(&token)
        .header("x-user-id", "mallory")
        .header("x-user-roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["user_id"], sub.as_str());
    // ...and without a token the request is refused before it gets there.
    for path in ["/api/v1/users/me", "/api/v1/orders"] {
        let r = c
            .get(gw.url(path))
            .header("x-user-id", "mallory")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"auth-service\""
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated");
        assert!(body["error"]["request_id"].is_string());
    }
    // A forged token (valid shape, wrong signature) is 401 invalid_token.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let r = as_user(&c, Method::GET, gw.url("/api/v1/orders"), &forged, None).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );

    let r = as_user(
        &c,
        Method::POST,
        gw.url("/api/v1/orders"),
        &token,
        Some(json!({"items": [{"product_id": 2, "quantity": 1}]})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let order: Value = r.json().await.unwrap();
    assert_eq!(order["total_cents"], 5_900);
    let id = order["id"].as_i64().unwrap();
    let r: Value = as_user(&c, Method::GET, gw.url("/api/v1/orders"), &token, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["orders"][0]["id"], id);
    let r: Value = as_user(
        &c,
        Method::GET,
        gw.url(&format!("/api/v2/orders/{id}")),
        &token,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(r["total"]["amount_cents"], 5_900);

    // 404s and 400s keep their JSON shape through the gateway.
    let cases: [(&str, u16, &str); 4] = [
        ("/api/v1/catalog/products/999", 404, "product_not_found"),
        ("/nowhere", 404, "route_not_found"),
        ("/api/v1/catalog/products/abc", 400, "invalid_path"),
        ("/api/v1/orders/xyz", 400, "invalid_path"),
    ];
    for (path, status, code) in cases {
        let r = as_user(&c, Method::GET, gw.url(path), &token, None).await;
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            code,
            "{path}"
        );
    }
    let r = as_user(
        &c,
        Method::POST,
        gw.url("/api/v1/orders"),
        &token,
        Some(json!({"items": []})),
    )
    .await;
    assert_eq!(r.status(), 422);

    // The orders route is limited per user (burst 10, keyed on the X-User-Id the gateway
    // set from the token): the 11th request in a row is refused with the rate-limit
    // headers; another user is unaffected.
    let busy = login(&c, &gw, "busy@example.com").await;
    let calm = login(&c, &gw, "calm@example.com").await;
    let orders = gw.url("/api/v1/orders");
    for i in 0..10 {
        let r = as_user(&c, Method::GET, orders.clone(), &busy, None).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert!(r.headers().contains_key("ratelimit"));
    }
    let r = as_user(&c, Method::GET, orders.clone(), &busy, None).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"orders-per-user\";q=30;w=60"
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    assert_eq!(
        as_user(&c, Method::GET, orders, &calm, None).await.status(),
        200
    );

    cache_step(&c, &gw, &stack).await;

    // Admin actions through the gateway need an admin's token: a client claiming the
    // admin role by header gets nowhere (the gateway removes it), an admin token works.
    let product = json!({"name": "Lamp", "description": "A desk lamp", "price_cents": 2_500});
    let r = c
        .post(gw.url("/api/v1/catalog/products"))
        .header("x-user-id", "mallory")
        .header("x-user-roles", "admin")
        .json(&product)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = as_user(
        &c,
        Method::POST,
        gw.url("/api/v1/catalog/products"),
        &token,
        Some(product.clone()),
    )
    .await;
    assert_eq!(r.status(), 403, "a customer is not an admin");
    let admin = login(&c, &gw, "admin@example.com").await;
    let r = as_user(
        &c,
        Method::POST,
        gw.url("/api/v1/catalog/products"),
        &admin,
        Some(product),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = c
        .post(gw.url("/auth/v1/admin/rotate"))
        .header("x-user-id", "mallory")
        .header("x-user-roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "key rotation is not open to a spoofed header"
    );

    drop(gw);
    stack.stop().await;
}

/// A client whose requests come from `source` (another loopback address is another
/// client to the gateway's per-client limits).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Send `send` until the first 429 (at most `max` requests): the number that passed, each
/// answered `expect`, and the 429.
async fn until_limited<F, Fut>(max: usize, expect: u16, mut send: F) -> (usize, reqwest::Response)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    for i in 0..max {
        let r = send(i).await;
        if r.status() == 429 {
            return (i, r);
        }
        assert_eq!(r.status().as_u16(), expect, "request {i}");
    }
    panic!("no 429 within {max} requests");
}

/// local.yaml limits the auth routes per client (issue 20 item 8): login and registration
/// share one budget per client IP (burst 20), then 429 `rate_limited`, whatever the
/// credentials; another client is not affected, and the rest of /auth has its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_routes_are_rate_limited_per_client() {
    let stack = Stack::start(StackConfig {
        auth: any_port(),
        users: any_port(),
        catalog: any_port(),
        orders: any_port(),
        notifications: any_port(),
        data_dir: None,
        issuer: ISSUER.into(),
        admin: Some(AdminBootstrap {
            email: "admin@example.com".into(),
            password: "correct horse".into(),
        }),
        key_encryption: None,
        redis_url: None,
        backup: Default::default(),
    })
    .await
    .unwrap();
    let gw = Gateway::start(&local_config(&stack)).await;
    let c = reqwest::Client::new();

    // Invalid bodies (cheap for the service) count like any try; login and registration
    // alternate and share the budget. The bucket refills at 10/min, so on a slow machine
    // one or two more may pass, never fewer than the burst.
    let (passed, r) = until_limited(40, 422, |i| {
        let path = if i % 2 == 0 {
            "/auth/v1/login"
        } else {
            "/auth/v1/register"
        };
        c.post(gw.url(path))
            .json(&json!({"email": "x"}))
            .send()
            .map(Result::unwrap)
    })
    .await;
    assert!(passed >= 20, "only {passed} passed before the 429");
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        r.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"auth-credentials-per-client\""),
        "{:?}",
        r.headers()
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    // Right credentials do not help: the client is limited, not the account.
    let creds = json!({"email": "admin@example.com", "password": "correct horse"});
    let r = c
        .post(gw.url("/auth/v1/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    // Another client (another loopback source address) logs in.
    let other = client_from("127.0.0.2");
    let r = other
        .post(gw.url("/auth/v1/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("ratelimit"));

    // The rest of /auth is limited on its own budget per client and route (burst 60).
    let jwks = gw.url("/auth/.well-known/jwks.json");
    let (passed, r) = until_limited(300, 200, |_| c.get(&jwks).send().map(Result::unwrap)).await;
    assert!(passed >= 60, "only {passed} passed before the 429");
    assert!(
        r.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"auth-per-client\"")
    );
    let r = other.get(&jwks).send().await.unwrap();
    assert_eq!(r.status(), 200);

    drop(gw);
    stack.stop().await;
}

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn purge_catalog(c: &reqwest::Client, gw: &Gateway) -> u64 {
    let r = c
        .post(gw.admin_url("/admin/cache/purge"))
        .json(&json!({"prefix": "/api/v1/catalog/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["purged"].as_u64().unwrap()
}

async fn price_of_2(r: reqwest::Response) -> i64 {
    let v: Value = r.json().await.unwrap();
    v["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == 2)
        .unwrap()["price_cents"]
        .as_i64()
        .unwrap()
}

/// Response caching (issue 6): the catalog list is served from the gateway's cache,
/// and a purge after an admin change shows the new data. The update goes straight to
/// the catalog's admin API, so only the purge can make the gateway see it.
async fn cache_step(c: &reqwest::Client, gw: &Gateway, stack: &Stack) {
    purge_catalog(c, gw).await;
    let products = gw.url("/api/v1/catalog/products");
    let r = c.get(&products).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    let before = price_of_2(r).await;
    let r = c.get(&products).send().await.unwrap();
    assert!(
        cache_status(&r).contains("gateway; hit"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(price_of_2(r).await, before);

    let r = c
        .put(format!("http://{}/v1/products/2", stack.catalog))
        .header("x-user-id", "catalog-admin")
        .header("x-user-roles", "admin")
        .json(&json!({"price_cents": before + 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Still fresh in the cache: the old price.
    let r = c.get(&products).send().await.unwrap();
    assert!(cache_status(&r).contains("hit"));
    assert_eq!(price_of_2(r).await, before);

    assert!(purge_catalog(c, gw).await >= 1);
    let r = c.get(&products).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(price_of_2(r).await, before + 100);
}
