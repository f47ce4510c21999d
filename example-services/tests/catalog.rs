//! Catalog handlers without sockets: caching validators, admin writes, error shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use axum::http::StatusCode;
use example_services::catalog::{self, CatalogState};
use example_services::common::{db, http::Metrics};
use support::{ADMIN, ALICE, call};

async fn app() -> axum::Router {
    let pool = db::open("sqlite::memory:", catalog::SCHEMA).await.unwrap();
    catalog::seed(&pool).await.unwrap();
    catalog::app(
        CatalogState { db: pool },
        Arc::new(Metrics::new("catalog").unwrap()),
    )
}

#[tokio::test]
async fn list_and_detail_carry_validators_and_answer_304() {
    let app = app().await;
    let list = call(&app, "GET", "/v1/products", &[], None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json()["products"].as_array().unwrap().len(), 3);
    assert_eq!(list.header("cache-control"), "public, max-age=60");
    let etag = list.header("etag").to_owned();
    let again = call(
        &app,
        "GET",
        "/v1/products",
        &[("if-none-match", &etag)],
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), etag);

    let one = call(&app, "GET", "/v1/products/1", &[], None).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["id"], 1);
    let etag = one.header("etag").to_owned();
    let modified = one.header("last-modified").to_owned();
    for (h, v) in [
        ("if-none-match", etag.as_str()),
        ("if-none-match", "W/\"x\", *"),
        ("if-modified-since", modified.as_str()),
    ] {
        let r = call(&app, "GET", "/v1/products/1", &[(h, v)], None).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{h}: {v}");
    }
    let stale = call(
        &app,
        "GET",
        "/v1/products/1",
        &[("if-none-match", "\"p1-v0\"")],
        None,
    )
    .await;
    assert_eq!(stale.status, StatusCode::OK);
    let old = call(
        &app,
        "GET",
        "/v1/products/1",
        &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
        None,
    )
    .await;
    assert_eq!(old.status, StatusCode::OK);
}

#[tokio::test]
async fn admin_writes_change_the_etag() {
    let app = app().await;
    let before = call(&app, "GET", "/v1/products/2", &[], None).await;
    let etag = before.header("etag").to_owned();

    let r = call(
        &app,
        "PUT",
        "/v1/products/2",
        &[],
        Some(r#"{"price_cents": 100}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(
        &app,
        "PUT",
        "/v1/products/2",
        &ALICE,
        Some(r#"{"price_cents": 100}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );

    let r = call(
        &app,
        "PUT",
        "/v1/products/2",
        &ADMIN,
        Some(r#"{"price_cents": 100}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["price_cents"], 100);
    assert_ne!(r.header("etag"), etag);
    let r = call(
        &app,
        "GET",
        "/v1/products/2",
        &[("if-none-match", &etag)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the old ETag no longer matches");

    let r = call(
        &app,
        "POST",
        "/v1/products",
        &ADMIN,
        Some(r#"{"name": "Grinder", "price_cents": 9900}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location"), "/v1/products/4");
    assert_eq!(
        call(&app, "GET", "/v1/products/4", &[], None).await.json()["name"],
        "Grinder"
    );
}

#[tokio::test]
async fn bad_input_gets_4xx_json_never_500() {
    let app = app().await;
    let cases: [(&str, &str, Option<&str>, StatusCode, &str); 8] = [
        (
            "GET",
            "/v1/products/abc",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "GET",
            "/v1/products/99",
            None,
            StatusCode::NOT_FOUND,
            "product_not_found",
        ),
        (
            "GET",
            "/v1/products?limit=0",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "GET",
            "/v1/products?limit=x",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "POST",
            "/v1/products",
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/products",
            Some(r#"{"name": "", "price_cents": -1}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "POST",
            "/v1/products",
            Some(r#"{"name": 5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "PUT",
            "/v1/products/99",
            Some(r#"{"name": "x"}"#),
            StatusCode::NOT_FOUND,
            "product_not_found",
        ),
    ];
    for (method, uri, body, status, code) in cases {
        let r = call(
            &app,
            method,
            uri,
            &[ADMIN[0], ADMIN[1], ("x-request-id", "req-7")],
            body,
        )
        .await;
        assert_eq!(r.status, status, "{method} {uri}");
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{method} {uri}: {v}");
        assert_eq!(v["error"]["request_id"], "req-7");
        assert_eq!(r.header("x-request-id"), "req-7");
    }
    let r = call(
        &app,
        "POST",
        "/v1/products",
        &ADMIN,
        Some(r#"{"name": "", "price_cents": -1}"#),
    )
    .await;
    assert_eq!(r.field_errors(), ["name", "price_cents"]);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = app().await;
    assert_eq!(
        call(&app, "GET", "/healthz", &[], None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/readyz", &[], None).await.json()["status"],
        "ready"
    );
    call(&app, "GET", "/v1/products/1", &[], None).await;
    let m = call(&app, "GET", "/metrics", &[], None).await;
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.contains(
            r#"catalog_http_requests_total{method="GET",route="/v1/products/{id}",status="200"} 1"#
        ),
        "{text}"
    );
    let r = call(&app, "GET", "/nope", &[], None).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}
