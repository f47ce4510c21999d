//! OAuth 2.0 in the auth service, through its router: client registration (admins
//! only, secrets argon2-hashed), the client-credentials grant with both client
//! authentication methods and scopes, rotating refresh tokens with reuse detection that
//! revokes the family, revocation, and RFC 6749 5.2 error bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use example_services::auth::{self, AuthConfig, AuthState, SigningAlg};
use example_services::common::{db, http::Metrics};
use serde_json::{Value, json};
use sqlx::SqlitePool;
use support::{ADMIN, ALICE, Answer, call};
use tower::ServiceExt;

async fn app() -> (axum::Router, SqlitePool) {
    let pool = db::open("sqlite::memory:", auth::SCHEMA).await.unwrap();
    auth::ensure_keys(&pool, None).await.unwrap();
    let config = AuthConfig {
        issuer: "https://issuer.test".into(),
        audience: "api".into(),
        token_ttl: Duration::from_secs(600),
        signing_alg: SigningAlg::EdDsa,
        key_encryption: None,
        refresh_ttl: Duration::from_secs(3600),
    };
    let app = auth::app(
        AuthState {
            db: pool.clone(),
            config: Arc::new(config),
        },
        Arc::new(Metrics::new("auth").unwrap()),
    );
    (app, pool)
}

/// POST a form to `uri` with extra headers.
async fn form(app: &axum::Router, uri: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// RFC 6749 5.2: the status, the `error` code and a description; never cached.
fn assert_error(r: &Answer, status: u16, code: &str) {
    assert_eq!(
        r.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
        "error_description uses only the characters RFC 6749 allows: {description}"
    );
    assert_eq!(r.header("cache-control"), "no-store");
}

async fn register_client(app: &axum::Router, scopes: &[&str]) -> (String, String) {
    let body = json!({"name": "shipping", "scopes": scopes}).to_string();
    let r = call(app, "POST", "/v1/admin/clients", &ADMIN, Some(&body)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    (
        v["client_id"].as_str().unwrap().to_owned(),
        v["client_secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn only_admins_register_clients_and_secrets_are_hashed() {
    let (app, pool) = app().await;
    let body = r#"{"name": "shipping", "scopes": ["notifications:send"]}"#;
    let r = call(&app, "POST", "/v1/admin/clients", &ALICE, Some(body)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(&app, "POST", "/v1/admin/clients", &[], Some(body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for bad in [
        r#"{"name": "", "scopes": ["a"]}"#,
        r#"{"name": "x", "scopes": []}"#,
        r#"{"name": "x", "scopes": ["has space"]}"#,
        r#"{"name": "x", "scopes": ["quote\""]}"#,
    ] {
        let r = call(&app, "POST", "/v1/admin/clients", &ADMIN, Some(bad)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }

    let (id, secret) = register_client(&app, &["notifications:send"]).await;
    let stored: String = sqlx::query_scalar("SELECT secret_hash FROM oauth_clients")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains(&secret));
    let list = call(&app, "GET", "/v1/admin/clients", &ADMIN, None)
        .await
        .json();
    assert_eq!(list["clients"][0]["client_id"], id.as_str());
    assert!(
        !list.to_string().contains(&secret) && !list.to_string().contains("argon2"),
        "a listing shows no secrets: {list}"
    );
}

#[tokio::test]
async fn client_credentials_with_basic_and_post_authentication() {
    let (app, _) = app().await;
    let (id, secret) = register_client(&app, &["notifications:send", "catalog:read"]).await;

    // client_secret_basic
    let auth = basic(&id, &secret);
    let r = form(
        &app,
        "/oauth/token",
        &[("authorization", &auth)],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(r.header("pragma"), "no-cache");
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 600);
    assert_eq!(v["scope"], "notifications:send catalog:read");
    assert!(
        v.get("refresh_token").is_none(),
        "no refresh token for clients"
    );
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], id.as_str());
    assert_eq!(c["client_id"], id.as_str());
    assert_eq!(c["iss"], "https://issuer.test");
    assert_eq!(c["aud"], "api");
    assert!(c.get("roles").is_none());

    // client_secret_post, narrowing the scope
    let body = format!(
        "grant_type=client_credentials&client_id={id}&client_secret={secret}&scope=notifications%3Asend"
    );
    let r = form(&app, "/oauth/token", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["scope"], "notifications:send");
    assert_eq!(
        claims(r.json()["access_token"].as_str().unwrap())["scope"],
        "notifications:send"
    );

    // A scope the client does not have.
    let body = format!(
        "grant_type=client_credentials&client_id={id}&client_secret={secret}&scope=orders:write"
    );
    assert_error(
        &form(&app, "/oauth/token", &[], &body).await,
        400,
        "invalid_scope",
    );
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc6749() {
    let (app, _) = app().await;
    let (id, secret) = register_client(&app, &["notifications:send"]).await;
    let good = basic(&id, &secret);

    // Wrong secret and unknown client: the same 401 with a Basic challenge.
    for auth in [basic(&id, "nope"), basic("svc-unknown", &secret)] {
        let r = form(
            &app,
            "/oauth/token",
            &[("authorization", &auth)],
            "grant_type=client_credentials",
        )
        .await;
        assert_error(&r, 401, "invalid_client");
        assert!(r.header("www-authenticate").starts_with("Basic "));
    }
    let body = format!("grant_type=client_credentials&client_id={id}&client_secret=nope");
    assert_error(
        &form(&app, "/oauth/token", &[], &body).await,
        401,
        "invalid_client",
    );
    // No client at all for client_credentials.
    assert_error(
        &form(&app, "/oauth/token", &[], "grant_type=client_credentials").await,
        401,
        "invalid_client",
    );
    // Two authentication methods at once.
    let body = format!("grant_type=client_credentials&client_secret={secret}");
    assert_error(
        &form(&app, "/oauth/token", &[("authorization", &good)], &body).await,
        400,
        "invalid_request",
    );
    let cases = [
        ("", "invalid_request"),
        (
            "grant_type=password&username=a&password=b",
            "unsupported_grant_type",
        ),
        ("grant_type=\"x\"", "unsupported_grant_type"),
        (
            "grant_type=client_credentials&grant_type=client_credentials",
            "invalid_request",
        ),
        ("grant_type=refresh_token", "invalid_request"),
        (
            "grant_type=client_credentials&scope=caf%C3%A9",
            "invalid_scope",
        ),
    ];
    for (body, code) in cases {
        let r = form(&app, "/oauth/token", &[("authorization", &good)], body).await;
        assert_error(&r, 400, code);
    }
    // Not a form.
    let r = call(
        &app,
        "POST",
        "/oauth/token",
        &[],
        Some(r#"{"grant_type": "client_credentials"}"#),
    )
    .await;
    assert_error(&r, 400, "invalid_request");
    // Garbage Basic credentials.
    let r = form(
        &app,
        "/oauth/token",
        &[("authorization", "Basic %%%")],
        "grant_type=client_credentials",
    )
    .await;
    assert_error(&r, 401, "invalid_client");
}

#[tokio::test]
async fn revoked_clients_and_replaced_secrets_stop_working() {
    let (app, _) = app().await;
    let (id, secret) = register_client(&app, &["notifications:send"]).await;
    let r = call(
        &app,
        "POST",
        &format!("/v1/admin/clients/{id}/secret"),
        &ADMIN,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let fresh = r.json()["client_secret"].as_str().unwrap().to_owned();
    let old = basic(&id, &secret);
    let new = basic(&id, &fresh);
    let token = |auth: String| {
        let app = app.clone();
        async move {
            form(
                &app,
                "/oauth/token",
                &[("authorization", &auth)],
                "grant_type=client_credentials",
            )
            .await
        }
    };
    assert_error(&token(old).await, 401, "invalid_client");
    assert_eq!(token(new.clone()).await.status, StatusCode::OK);
    let r = call(
        &app,
        "DELETE",
        &format!("/v1/admin/clients/{id}"),
        &ADMIN,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_error(&token(new).await, 401, "invalid_client");
    let r = call(
        &app,
        "DELETE",
        &format!("/v1/admin/clients/{id}"),
        &ADMIN,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn login(app: &axum::Router) -> Value {
    let creds = r#"{"email": "ada@example.com", "password": "correct horse"}"#;
    let r = call(app, "POST", "/v1/register", &[], Some(creds)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = call(app, "POST", "/v1/login", &[], Some(creds)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("cache-control"), "no-store");
    r.json()
}

async fn refresh(app: &axum::Router, token: &str) -> Answer {
    form(
        app,
        "/oauth/token",
        &[],
        &format!("grant_type=refresh_token&refresh_token={token}"),
    )
    .await
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let (app, pool) = app().await;
    let first = login(&app).await;
    let r0 = first["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(first["scope"], "profile orders:read orders:write");
    let sub = claims(first["access_token"].as_str().unwrap())["sub"].clone();

    // Stored hashed: the token itself is nowhere in the database.
    let hashes: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(hashes.len(), 1);
    assert!(!hashes[0].contains(&r0) && hashes[0].len() == 64);

    // Each use rotates.
    let r = refresh(&app, &r0).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("cache-control"), "no-store");
    let second = r.json();
    let r1 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r0);
    let c = claims(second["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], sub);
    assert_eq!(c["email"], "ada@example.com");
    assert_eq!(c["roles"], json!(["customer"]));
    let r = refresh(&app, &r1).await;
    assert_eq!(r.status, StatusCode::OK);
    let r2 = r.json()["refresh_token"].as_str().unwrap().to_owned();

    // r0 again: someone replayed an old token. Refused, and the family (r2 too) is dead.
    assert_error(&refresh(&app, &r0).await, 400, "invalid_grant");
    assert_error(&refresh(&app, &r2).await, 400, "invalid_grant");

    // A new login starts a new family.
    let fresh = login(&app).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(refresh(&app, &fresh).await.status, StatusCode::OK);
    assert_error(&refresh(&app, "not-a-token").await, 400, "invalid_grant");
}

#[tokio::test]
async fn refresh_scopes_and_revocation() {
    let (app, _) = app().await;
    let r0 = login(&app).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Wider than granted: refused, and the token still works afterwards.
    let r = form(
        &app,
        "/oauth/token",
        &[],
        &format!("grant_type=refresh_token&refresh_token={r0}&scope=profile+catalog:write"),
    )
    .await;
    assert_error(&r, 400, "invalid_scope");
    // Narrower: fine.
    let r = form(
        &app,
        "/oauth/token",
        &[],
        &format!("grant_type=refresh_token&refresh_token={r0}&scope=orders:read"),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["scope"], "orders:read");
    let r1 = r.json()["refresh_token"].as_str().unwrap().to_owned();

    // A client cannot use a user's refresh token (it was issued to the login, not to it).
    let (id, secret) = register_client(&app, &["notifications:send"]).await;
    let auth = basic(&id, &secret);
    let r = form(
        &app,
        "/oauth/token",
        &[("authorization", &auth)],
        &format!("grant_type=refresh_token&refresh_token={r1}"),
    )
    .await;
    assert_error(&r, 400, "invalid_grant");

    // RFC 7009: revoked (logout), then unusable; unknown tokens are fine to revoke.
    let r = form(&app, "/oauth/revoke", &[], &format!("token={r1}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_error(&refresh(&app, &r1).await, 400, "invalid_grant");
    let r = form(&app, "/oauth/revoke", &[], "token=unknown").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_error(
        &form(&app, "/oauth/revoke", &[], "").await,
        400,
        "invalid_request",
    );
}

/// Two concurrent uses of one refresh token: one wins, the other is reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_use_of_one_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let pool = db::open(
        &dir.path().join("auth.db").display().to_string(),
        auth::SCHEMA,
    )
    .await
    .unwrap();
    auth::ensure_keys(&pool, None).await.unwrap();
    let app = auth::app(
        AuthState {
            db: pool,
            config: Arc::new(AuthConfig {
                issuer: "https://issuer.test".into(),
                audience: "api".into(),
                token_ttl: Duration::from_secs(600),
                signing_alg: SigningAlg::EdDsa,
                key_encryption: None,
                refresh_ttl: Duration::from_secs(3600),
            }),
        },
        Arc::new(Metrics::new("auth").unwrap()),
    );
    let r0 = login(&app).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (a, b) = tokio::join!(refresh(&app, &r0), refresh(&app, &r0));
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400]);
    // The winner's new token died with the family.
    let winner = if a.status == StatusCode::OK { a } else { b };
    let r1 = winner.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_error(&refresh(&app, &r1).await, 400, "invalid_grant");
}
