//! Orders handlers against a real catalog on a loopback socket: validation through
//! catalog, catalog outages, the caller's own orders, and the v1/v2 representations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use example_services::catalog::{self, CatalogState};
use example_services::common::{db, http::Metrics};
use example_services::orders::{self, OrdersState};
use support::{ALICE, call};

async fn catalog_url() -> String {
    let pool = db::open("sqlite::memory:", catalog::SCHEMA).await.unwrap();
    catalog::seed(&pool).await.unwrap();
    let app = catalog::app(
        CatalogState { db: pool },
        Arc::new(Metrics::new("catalog").unwrap()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn app(catalog: &str) -> axum::Router {
    let pool = db::open("sqlite::memory:", orders::SCHEMA).await.unwrap();
    let state = OrdersState::new(pool, catalog, Duration::from_millis(500)).unwrap();
    orders::app(state, Arc::new(Metrics::new("orders").unwrap()))
}

#[tokio::test]
async fn orders_are_priced_by_catalog_and_listed_per_caller() {
    let app = app(&catalog_url().await).await;
    let body = r#"{"items": [{"product_id": 1, "quantity": 2}, {"product_id": 3, "quantity": 1}]}"#;
    let r = call(&app, "POST", "/v1/orders", &ALICE, Some(body)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let order = r.json();
    assert_eq!(order["total_cents"], 2 * 2_490 + 1_450);
    assert_eq!(r.header("location"), format!("/v1/orders/{}", order["id"]));

    let mine = call(&app, "GET", "/v1/orders", &ALICE, None).await.json();
    assert_eq!(mine["orders"].as_array().unwrap().len(), 1);
    let theirs = call(&app, "GET", "/v1/orders", &[("x-user-id", "bob")], None)
        .await
        .json();
    assert!(theirs["orders"].as_array().unwrap().is_empty());
    let r = call(&app, "GET", "/v1/orders/1", &[("x-user-id", "bob")], None).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "someone else's order is not found"
    );

    // v2: same order, new shape; v1 unchanged.
    let v2 = call(&app, "GET", "/v2/orders/1", &ALICE, None).await.json();
    assert_eq!(
        v2["total"],
        serde_json::json!({"amount_cents": 6430, "currency": "EUR"})
    );
    assert_eq!(v2["lines"][0]["product"]["name"], "Espresso beans, 1 kg");
    assert!(v2["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(v2.get("total_cents").is_none());
    let list = call(&app, "GET", "/v2/orders", &ALICE, None).await.json();
    assert_eq!(list["count"], 1);
    let v1 = call(&app, "GET", "/v1/orders/1", &ALICE, None).await.json();
    assert_eq!(v1["items"][1]["unit_price_cents"], 1_450);
}

#[tokio::test]
async fn bad_orders_get_4xx() {
    let app = app(&catalog_url().await).await;
    let cases: [(&str, StatusCode, &str); 5] = [
        (
            r#"{"items": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            r#"{"items": [{"product_id": 1, "quantity": 0}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            r#"{"items": [{"product_id": 99, "quantity": 1}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            r#"{"items": "many"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (r#"{"items": ["#, StatusCode::BAD_REQUEST, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let r = call(&app, "POST", "/v1/orders", &ALICE, Some(body)).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let r = call(
        &app,
        "POST",
        "/v1/orders",
        &[],
        Some(r#"{"items": [{"product_id": 1, "quantity": 1}]}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(&app, "GET", "/v1/orders/x", &ALICE, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn catalog_down_is_a_clear_503() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = app(&format!("http://127.0.0.1:{port}")).await;
    let r = call(
        &app,
        "POST",
        "/v1/orders",
        &ALICE,
        Some(r#"{"items": [{"product_id": 1, "quantity": 1}]}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "catalog_unavailable");
    // Nothing was stored.
    assert!(
        call(&app, "GET", "/v1/orders", &ALICE, None).await.json()["orders"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
