//! Notifications handlers without sockets: each caller sees only their own, events are
//! stored once per id, and direct sends need a service caller with the
//! `notifications:send` scope (as the gateway forwards a client-credentials token).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use axum::http::StatusCode;
use example_services::common::{db, http::Metrics};
use example_services::events::{Delivery, Event, ORDER_CREATED};
use example_services::notifications::{self, NotificationsState, Store};
use serde_json::json;
use support::{ALICE, call};

async fn app() -> (axum::Router, Arc<Store>) {
    let pool = db::open("sqlite::memory:", notifications::SCHEMA)
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new("notifications").unwrap());
    let store = Arc::new(Store::new(pool, &metrics).unwrap());
    let app = notifications::app(
        NotificationsState {
            store: Arc::clone(&store),
        },
        metrics,
    );
    (app, store)
}

const SERVICE: [(&str, &str); 2] = [
    ("x-client-id", "svc-shipping"),
    ("x-client-scopes", "notifications:send other:scope"),
];

#[tokio::test]
async fn events_are_stored_once_and_listed_per_caller() {
    let (app, store) = app().await;
    let e = Event::new(
        ORDER_CREATED,
        json!({"order_id": 3, "user_id": "alice", "total_cents": 1450, "currency": "EUR",
               "items": [{"quantity": 1}]}),
    );
    assert_eq!(store.store(&e).await.unwrap(), Delivery::Stored);
    assert_eq!(store.store(&e).await.unwrap(), Delivery::Duplicate);
    let other = Event::new("order.refunded", json!({"user_id": "alice"}));
    assert_eq!(store.store(&other).await.unwrap(), Delivery::Ignored);

    let r = call(&app, "GET", "/v1/notifications", &ALICE, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json()["notifications"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], e.id.as_str());
    assert_eq!(list[0]["message"], "Order 3 placed: 1 item, 14.50 EUR");
    assert!(list[0]["created_at"].as_str().unwrap().ends_with('Z'));
    let bob = call(
        &app,
        "GET",
        "/v1/notifications",
        &[("x-user-id", "bob")],
        None,
    )
    .await;
    assert!(bob.json()["notifications"].as_array().unwrap().is_empty());
    let r = call(&app, "GET", "/v1/notifications", &[], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(&app, "GET", "/v1/notifications?limit=0", &ALICE, None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn services_send_with_the_scope_and_an_idempotency_key() {
    let (app, _) = app().await;
    let body = r#"{"user_id": "alice", "message": "Your parcel left the warehouse"}"#;
    // A user (no service identity), and a service without the scope.
    let r = call(&app, "POST", "/v1/notifications", &ALICE, Some(body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let weak = [
        ("x-client-id", "svc-x"),
        ("x-client-scopes", "catalog:read"),
    ];
    let r = call(&app, "POST", "/v1/notifications", &weak, Some(body)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let mut keyed = SERVICE.to_vec();
    keyed.push(("idempotency-key", "parcel-17"));
    let r = call(&app, "POST", "/v1/notifications", &keyed, Some(body)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["id"], "svc-shipping:parcel-17");
    assert_eq!(r.json()["data"]["from"], "svc-shipping");
    // The retry is answered with the same notification, not a second one.
    let r = call(&app, "POST", "/v1/notifications", &keyed, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK);
    // Without a key every send is new.
    let r = call(&app, "POST", "/v1/notifications", &SERVICE, Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let list = call(&app, "GET", "/v1/notifications", &ALICE, None)
        .await
        .json();
    assert_eq!(list["notifications"].as_array().unwrap().len(), 2);

    let r = call(
        &app,
        "POST",
        "/v1/notifications",
        &SERVICE,
        Some(r#"{"user_id": "", "message": ""}"#),
    )
    .await;
    assert_eq!(r.field_errors(), ["user_id", "message"]);
}
