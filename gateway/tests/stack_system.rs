//! The system around the gateway, end to end through the real gateway binary with
//! `config/local.yaml` in front of the local stack: an order placed through the gateway
//! becomes the caller's notification (in-process events, and through a real Redis
//! Stream), a service calls the client-credentials route with a token from
//! `/auth/oauth/token`, a user refreshes a token (and a replayed one is refused), and the
//! stack's admin port backs all five databases up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, RedisServer, free_port};
use example_services::auth::AdminBootstrap;
use example_services::common::ops::BackupArgs;
use example_services::stack::{Stack, StackConfig};
use serde_json::{Value, json};

/// The `iss` local.yaml trusts (a name in tokens, left alone by the port rewrite).
const ISSUER: &str = "http://127.0.0.1:8080/auth";

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn local_config(stack: &Stack) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/local.yaml"))
            .unwrap();
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

async fn start(
    redis_url: Option<String>,
    backup: BackupArgs,
    data: Option<&std::path::Path>,
) -> (Stack, Gateway) {
    let stack = Stack::start(StackConfig {
        auth: any_port(),
        users: any_port(),
        catalog: any_port(),
        orders: any_port(),
        notifications: any_port(),
        data_dir: data.map(std::path::Path::to_path_buf),
        issuer: ISSUER.into(),
        // The first admin comes from the bootstrap, as in `.ci/local`.
        admin: Some(AdminBootstrap {
            email: "admin@example.com".into(),
            password: "correct horse".into(),
        }),
        key_encryption: None,
        redis_url,
        backup,
    })
    .await
    .unwrap();
    let gw = Gateway::start(&local_config(&stack)).await;
    (stack, gw)
}

/// Register and log in through the gateway: the token response.
async fn login(c: &reqwest::Client, gw: &Gateway, email: &str) -> Value {
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
    r.json().await.unwrap()
}

fn access(token: &Value) -> String {
    token["access_token"].as_str().unwrap().to_owned()
}

async fn place_order(c: &reqwest::Client, gw: &Gateway, token: &str) -> i64 {
    let r = c
        .post(gw.url("/api/v1/orders"))
        .bearer_auth(token)
        .json(&json!({"items": [{"product_id": 1, "quantity": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

/// The caller's notifications once there are at least `n`.
async fn notifications(c: &reqwest::Client, gw: &Gateway, token: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .get(gw.url("/api/v1/notifications"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let list = r.json::<Value>().await.unwrap()["notifications"]
            .as_array()
            .unwrap()
            .clone();
        if list.len() >= n {
            return list;
        }
        assert!(Instant::now() < deadline, "no notification arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_notify_services_use_client_credentials_and_users_refresh() {
    let data = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let backup = BackupArgs {
        backup_dir: Some(data.path().join("backups")),
        admin_listen: Some(format!("127.0.0.1:{admin_port}").parse().unwrap()),
        backup_keep: 3,
        ..BackupArgs::default()
    };
    let (stack, gw) = start(None, backup, Some(data.path())).await;
    let c = reqwest::Client::new();

    // An order through the gateway becomes the caller's notification.
    let ada = login(&c, &gw, "ada@example.com").await;
    let order = place_order(&c, &gw, &access(&ada)).await;
    let list = notifications(&c, &gw, &access(&ada), 1).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "order.created");
    assert_eq!(list[0]["data"]["order_id"], order);
    assert!(
        list[0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("Order {order} placed"))
    );
    let sub = list[0]["data"]["user_id"].as_str().unwrap().to_owned();

    // An admin registers a service client (through the gateway, with an admin token).
    let admin = login(&c, &gw, "admin@example.com").await;
    let r = c
        .post(gw.url("/auth/v1/admin/clients"))
        .bearer_auth(access(&admin))
        .json(&json!({"name": "shipping", "scopes": ["notifications:send"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let client: Value = r.json().await.unwrap();
    let (id, secret) = (
        client["client_id"].as_str().unwrap(),
        client["client_secret"].as_str().unwrap(),
    );
    let r = c
        .post(gw.url("/auth/v1/admin/clients"))
        .bearer_auth(access(&ada))
        .json(&json!({"name": "mine", "scopes": ["notifications:send"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a customer registers no clients");

    // The service gets a token from /oauth/token (client_secret_basic) through the gateway.
    let r = c
        .post(gw.url("/auth/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let service = r.json::<Value>().await.unwrap();
    assert_eq!(service["scope"], "notifications:send");
    let service = access(&service);
    let r = c
        .post(gw.url("/auth/oauth/token"))
        .basic_auth(id, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");

    // ...and calls the route that requires its scope; the gateway verified the token with
    // the JWKS and forwarded the client as X-Client-Id.
    let send = json!({"user_id": sub, "message": "Your parcel left the warehouse"});
    let r = c
        .post(gw.url("/api/v1/notifications"))
        .bearer_auth(&service)
        .header("idempotency-key", "parcel-1")
        .json(&send)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["data"]["from"], id);
    // A user's token lacks the scope; no token at all is 401; spoofed service headers
    // are removed before the service sees them.
    let r = c
        .post(gw.url("/api/v1/notifications"))
        .bearer_auth(access(&ada))
        .header("x-client-id", "svc-forged")
        .header("x-client-scopes", "notifications:send")
        .json(&send)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    let r = c
        .post(gw.url("/api/v1/notifications"))
        .json(&send)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A service's token is not a user's: no profile, no orders.
    for path in [
        "/api/v1/users/me",
        "/api/v1/orders",
        "/api/v1/notifications",
    ] {
        let r = c
            .get(gw.url(path))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let list = notifications(&c, &gw, &access(&ada), 2).await;
    assert_eq!(list.len(), 2);

    // Refresh through the gateway: a new pair; the old refresh token replayed is refused
    // and takes the new one with it.
    let old = ada["refresh_token"].as_str().unwrap();
    let r = c
        .post(gw.url("/auth/oauth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", old)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fresh: Value = r.json().await.unwrap();
    let r = c
        .get(gw.url("/api/v1/orders"))
        .bearer_auth(access(&fresh))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the refreshed access token works at the gateway"
    );
    let r = c
        .post(gw.url("/auth/oauth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", old)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let r = c
        .post(gw.url("/auth/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", fresh["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "the family is revoked");

    // The stack's admin port backs up all five databases, each checked.
    let r = c
        .post(format!("http://127.0.0.1:{admin_port}/admin/backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let done: Value = r.json().await.unwrap();
    let names: Vec<&str> = done["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["integrity"], "ok");
            b["database"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["auth", "users", "catalog", "notifications", "orders"]
    );

    drop(gw);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_notify_through_a_redis_stream() {
    let redis = RedisServer::start();
    let (stack, gw) = start(Some(redis.url()), BackupArgs::default(), None).await;
    let c = reqwest::Client::new();
    let ada = login(&c, &gw, "ada@example.com").await;
    let first = place_order(&c, &gw, &access(&ada)).await;
    let second = place_order(&c, &gw, &access(&ada)).await;
    let list = notifications(&c, &gw, &access(&ada), 2).await;
    let mut ids: Vec<i64> = list
        .iter()
        .map(|n| n["data"]["order_id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [first, second]);
    // They really went through the stream.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let len: usize = redis::cmd("XLEN")
        .arg("orders.events")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2);
    drop(gw);
    stack.stop().await;
}
