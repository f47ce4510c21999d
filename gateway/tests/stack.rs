//! The local stack end to end: the four sample services (started by the same code as the
//! `stack` binary that `.ci/local` runs, on free ports) behind the real gateway binary with
//! `config/local.yaml`, walked through the README's tour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Gateway;
use example_services::stack::{Stack, StackConfig};
use reqwest::Method;
use serde_json::{Value, json};

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// config/local.yaml with the stack's real addresses and the gateway's test ports.
fn local_config(stack: &Stack) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/local.yaml"))
            .unwrap();
    text.replace("127.0.0.1:8080", "127.0.0.1:{PORT}")
        .replace("127.0.0.1:9901", "127.0.0.1:{ADMIN}")
        .replace("127.0.0.1:3001", &stack.auth.to_string())
        .replace("127.0.0.1:3002", &stack.users.to_string())
        .replace("127.0.0.1:3003", &stack.catalog.to_string())
        .replace("127.0.0.1:3004", &stack.orders.to_string())
}

/// A request carrying the caller's identity the way `config/local.yaml` takes it for now.
async fn as_user(
    c: &reqwest::Client,
    method: Method,
    url: String,
    user: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = c.request(method, url).header("x-user-id", user);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

fn segment(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tour_through_the_gateway() {
    let stack = Stack::start(StackConfig {
        auth: any_port(),
        users: any_port(),
        catalog: any_port(),
        orders: any_port(),
        data_dir: None,
        issuer: "http://127.0.0.1/auth".into(),
        admin_emails: vec!["admin@example.com".into()],
    })
    .await
    .unwrap();
    let gw = Gateway::start(&local_config(&stack)).await;
    let c = reqwest::Client::new();

    // Register and log in through /auth.
    let creds = json!({"email": "ada@example.com", "password": "correct horse"});
    let r = c
        .post(gw.url("/auth/v1/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(gw.url("/auth/v1/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
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

    // A profile and an order for the logged-in caller (identity as the token says).
    let r = as_user(
        &c,
        Method::PUT,
        gw.url("/api/v1/users/me"),
        &sub,
        Some(json!({"display_name": "Ada", "email": "ada@example.com"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = as_user(
        &c,
        Method::POST,
        gw.url("/api/v1/orders"),
        &sub,
        Some(json!({"items": [{"product_id": 2, "quantity": 1}]})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let order: Value = r.json().await.unwrap();
    assert_eq!(order["total_cents"], 5_900);
    let id = order["id"].as_i64().unwrap();
    let r: Value = as_user(&c, Method::GET, gw.url("/api/v1/orders"), &sub, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["orders"][0]["id"], id);
    let r: Value = as_user(
        &c,
        Method::GET,
        gw.url(&format!("/api/v2/orders/{id}")),
        &sub,
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
        let r = as_user(&c, Method::GET, gw.url(path), &sub, None).await;
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
        &sub,
        Some(json!({"items": []})),
    )
    .await;
    assert_eq!(r.status(), 422);

    // The orders route is limited per user (burst 10): the 11th request in a row is
    // refused with the rate-limit headers; another user is unaffected.
    let orders = gw.url("/api/v1/orders");
    for i in 0..10 {
        let r = as_user(&c, Method::GET, orders.clone(), "busy", None).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert!(r.headers().contains_key("ratelimit"));
    }
    let r = as_user(&c, Method::GET, orders.clone(), "busy", None).await;
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
        as_user(&c, Method::GET, orders, "calm", None)
            .await
            .status(),
        200
    );

    cache_step(&c, &gw, &stack).await;

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
