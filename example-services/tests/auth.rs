//! Auth handlers without sockets: accounts, tokens verified against the published JWKS
//! (RS256 and EdDSA), rotation that keeps old tokens valid, and error shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use example_services::auth::{self, AdminBootstrap, AuthConfig, AuthState, SigningAlg};
use example_services::common::{db, http::Metrics};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;
use support::{ADMIN, ALICE, call};

async fn app(alg: SigningAlg) -> axum::Router {
    let pool = db::open("sqlite::memory:", auth::SCHEMA).await.unwrap();
    auth::ensure_keys(&pool, None).await.unwrap();
    let root = AdminBootstrap {
        email: "root@example.com".into(),
        password: "correct horse".into(),
    };
    auth::bootstrap::ensure_admin(&pool, &root).await.unwrap();
    let config = AuthConfig {
        issuer: "https://issuer.test".into(),
        audience: "api".into(),
        token_ttl: Duration::from_secs(600),
        signing_alg: alg,
        key_encryption: None,
        refresh_ttl: Duration::from_secs(3600),
    };
    auth::app(
        AuthState {
            db: pool,
            config: Arc::new(config),
        },
        Arc::new(Metrics::new("auth").unwrap()),
    )
}

async fn token(app: &axum::Router, email: &str) -> String {
    let creds = format!(r#"{{"email": "{email}", "password": "correct horse"}}"#);
    let r = call(app, "POST", "/v1/register", &[], Some(&creds)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = call(app, "POST", "/v1/login", &[], Some(&creds)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["access_token"].as_str().unwrap().to_owned()
}

/// Verify `token` against the service's JWKS the way a gateway would.
async fn verify(app: &axum::Router, token: &str) -> Value {
    let jwks: JwkSet = serde_json::from_slice(
        &call(app, "GET", "/.well-known/jwks.json", &[], None)
            .await
            .body,
    )
    .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("kid published in the JWKS");
    let mut v = Validation::new(header.alg);
    v.set_issuer(&["https://issuer.test"]);
    v.set_audience(&["api"]);
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .unwrap()
        .claims
}

#[tokio::test]
async fn tokens_verify_against_the_jwks_for_both_algorithms() {
    for (alg, name) in [(SigningAlg::Rs256, "RS256"), (SigningAlg::EdDsa, "EdDSA")] {
        let app = app(alg).await;
        let t = token(&app, "alice@example.com").await;
        assert_eq!(
            format!("{:?}", jsonwebtoken::decode_header(&t).unwrap().alg),
            name
        );
        let claims = verify(&app, &t).await;
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["roles"], serde_json::json!(["customer"]));
        assert!(claims["scope"].as_str().unwrap().contains("orders:write"));
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            600
        );
        let admin = verify(&app, &token(&app, "root@example.com").await).await;
        assert_eq!(admin["roles"], serde_json::json!(["admin", "customer"]));
        let jwks = call(&app, "GET", "/.well-known/jwks.json", &[], None).await;
        assert_eq!(jwks.header("cache-control"), "public, max-age=300");
        assert_eq!(
            jwks.json()["keys"].as_array().unwrap().len(),
            2,
            "one RSA and one Ed25519 key"
        );
    }
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid() {
    let app = app(SigningAlg::Rs256).await;
    let old = token(&app, "alice@example.com").await;
    let old_kid = jsonwebtoken::decode_header(&old).unwrap().kid.unwrap();
    assert_eq!(
        call(&app, "POST", "/v1/admin/rotate", &ALICE, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = call(&app, "POST", "/v1/admin/rotate", &ADMIN, None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let new_kid = r.json()["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    let fresh = token(&app, "alice@example.com").await;
    assert_eq!(
        jsonwebtoken::decode_header(&fresh).unwrap().kid.unwrap(),
        new_kid
    );
    // Both verify: the retired key stays published until its tokens expire.
    verify(&app, &old).await;
    verify(&app, &fresh).await;
    let jwks = call(&app, "GET", "/.well-known/jwks.json", &[], None)
        .await
        .json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 3);
    // Private key material never appears in the JWKS.
    let text = jwks.to_string();
    assert!(!text.contains("\"d\"") && !text.contains("private"));
}

#[tokio::test]
async fn bad_input_and_bad_credentials() {
    let app = app(SigningAlg::Rs256).await;
    token(&app, "alice@example.com").await;
    let cases: [(&str, &str, StatusCode, &str); 5] = [
        (
            "/v1/register",
            r#"{"email": "nope", "password": "short"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/v1/register",
            r#"{"email": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/login",
            r#"{"email": "alice@example.com", "password": "wrong password"}"#,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        ),
        (
            "/v1/login",
            r#"{"email": "nobody@example.com", "password": "correct horse"}"#,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        ),
        (
            "/v1/login",
            "not json",
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (path, body, status, code) in cases {
        let r = call(&app, "POST", path, &[], Some(body)).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {body}"
        );
    }
    let r = call(
        &app,
        "POST",
        "/v1/register",
        &[],
        Some(r#"{"email": "nope", "password": "short"}"#),
    )
    .await;
    assert_eq!(r.field_errors(), ["email", "password"]);
}
