//! Users handlers without sockets: identity from the gateway's headers, validation,
//! admin listing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use axum::http::StatusCode;
use example_services::common::{db, http::Metrics};
use example_services::users::{self, UsersState};
use support::{ADMIN, ALICE, call};

async fn app() -> axum::Router {
    let pool = db::open("sqlite::memory:", users::SCHEMA).await.unwrap();
    users::app(
        UsersState { db: pool },
        Arc::new(Metrics::new("users").unwrap()),
    )
}

#[tokio::test]
async fn profile_lifecycle() {
    let app = app().await;
    let r = call(&app, "GET", "/v1/users/me", &[], None).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let r = call(&app, "GET", "/v1/users/me", &ALICE, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = call(
        &app,
        "PUT",
        "/v1/users/me",
        &ALICE,
        Some(r#"{"display_name": " ", "email": "nope"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.field_errors(), ["display_name", "email"]);

    let r = call(
        &app,
        "PUT",
        "/v1/users/me",
        &ALICE,
        Some(r#"{"display_name": "Alice", "email": "alice@example.com"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["user_id"], "alice");
    let r = call(&app, "GET", "/v1/users/me", &ALICE, None).await;
    assert_eq!(r.json()["email"], "alice@example.com");
    // Another caller sees their own (missing) profile, not Alice's.
    let r = call(&app, "GET", "/v1/users/me", &[("x-user-id", "bob")], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn listing_is_for_admins() {
    let app = app().await;
    call(
        &app,
        "PUT",
        "/v1/users/me",
        &ALICE,
        Some(r#"{"display_name": "Alice", "email": "alice@example.com"}"#),
    )
    .await;
    let r = call(&app, "GET", "/v1/users", &ALICE, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(&app, "GET", "/v1/users", &ADMIN, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["users"][0]["user_id"], "alice");
    let r = call(&app, "GET", "/v1/users?limit=500", &ADMIN, None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = call(
        &app,
        "PUT",
        "/v1/users/me",
        &ALICE,
        Some(r#"{"display_name": "A", "email": "a@b.co", "admin": true}"#),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );
}
