//! The auth service's security properties through the real `auth` binary: registration
//! does not tell whether an email exists, the first admin comes only from the explicit
//! bootstrap, and signing keys are sealed at rest with the key-encryption key from the
//! environment (a wrong or missing key is a clear start-up error, never a panic).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod procs;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use example_services::auth;
use example_services::common::db;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use procs::{Service, free_port, run_to_exit};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_auth");

fn db_args(db: &Path) -> Vec<String> {
    vec!["--database".into(), db.display().to_string()]
}

/// Arguments for a start that is expected to fail (it needs its own `--listen`).
fn failing_args(db: &Path, more: &[&str]) -> Vec<String> {
    let mut a = vec!["--listen".into(), format!("127.0.0.1:{}", free_port())];
    a.extend(db_args(db));
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

async fn start(db: &Path, more: &[&str], envs: &[(&str, &str)], logs: &Path) -> Service {
    let mut args = db_args(db);
    args.extend(more.iter().map(|s| s.to_string()));
    Service::start_with_env("auth", BIN, free_port(), &args, envs, logs).await
}

/// `POST /v1/register`: status, content type and body.
async fn register(svc: &Service, email: &str, password: &str) -> (u16, String, Value) {
    let r = reqwest::Client::new()
        .post(svc.url("/v1/register"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
    (status, ctype, r.json().await.unwrap())
}

/// `POST /v1/login`: the status and the access token when there is one.
async fn login(svc: &Service, email: &str, password: &str) -> (u16, Option<String>) {
    let r = reqwest::Client::new()
        .post(svc.url("/v1/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["access_token"].as_str().map(str::to_owned))
}

fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Verify `token` against the service's JWKS; returns its `kid`.
async fn verify(svc: &Service, token: &str) -> String {
    let jwks: JwkSet = reqwest::get(svc.url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("kid published in the JWKS");
    let mut v = Validation::new(header.alg);
    v.set_audience(&["api"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).unwrap();
    kid
}

/// The stored private keys of the database at `path` (the service is stopped).
async fn stored_keys(path: &Path) -> Vec<(String, Vec<u8>)> {
    let pool = db::open(&path.display().to_string(), auth::SCHEMA)
        .await
        .unwrap();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT kid, private_der FROM signing_keys ORDER BY created_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert!(rows.len() >= 2, "an RSA and an Ed25519 key");
    rows
}

/// A PKCS#8 key in clear is a DER SEQUENCE; a sealed one is not readable as one.
fn in_clear(der: &[u8]) -> bool {
    der.first() == Some(&0x30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_answers_alike_for_new_and_taken_emails() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("auth.db"), &[], &[], dir.path()).await;

    let new = register(&svc, "ada@example.com", "correct horse").await;
    assert_eq!(new.0, 202, "{:?}", new.2);
    // The same address again (another spelling, another password): the very same answer,
    // so nobody learns that ada has an account.
    let taken = register(&svc, " ADA@example.com", "another password").await;
    assert_eq!(taken, new);
    assert!(
        new.2.get("id").is_none(),
        "no account id to tell the cases apart"
    );
    // The existing account is untouched: its password still works, the new one does not.
    assert_eq!(login(&svc, "ada@example.com", "correct horse").await.0, 200);
    assert_eq!(
        login(&svc, "ada@example.com", "another password").await.0,
        401
    );
    // Bad input still gets its 422.
    assert_eq!(register(&svc, "not an email", "short").await.0, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_comes_from_the_bootstrap_only() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("admin-password");
    std::fs::write(&password_file, "first admin password\n").unwrap();
    let pw_arg = password_file.display().to_string();
    let bootstrap = [
        "--bootstrap-admin-email",
        "admin@example.com",
        "--bootstrap-admin-password-file",
        pw_arg.as_str(),
    ];

    // Without a bootstrap, whoever registers admin@example.com is a customer like anyone.
    let open_db = dir.path().join("open.db");
    let mut svc = start(&open_db, &[], &[], dir.path()).await;
    assert_eq!(
        register(&svc, "admin@example.com", "squatter password")
            .await
            .0,
        202
    );
    let (status, token) = login(&svc, "admin@example.com", "squatter password").await;
    assert_eq!(status, 200);
    assert_eq!(claims(&token.unwrap())["roles"], json!(["customer"]));
    svc.stop();
    // ...and a bootstrap naming that account refuses to promote it.
    let (ok, out) = run_to_exit(BIN, &failing_args(&open_db, &bootstrap), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("refusing to promote"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    // The setting that made registration grant admin is refused, naming its replacement.
    let (ok, out) = run_to_exit(
        BIN,
        &failing_args(&open_db, &[]),
        &[("AUTH_ADMIN_EMAILS", "admin@example.com")],
    );
    assert!(!ok && out.contains("AUTH_BOOTSTRAP_ADMIN_EMAIL"), "{out}");
    // An email without a password is a clear error too.
    let (ok, out) = run_to_exit(
        BIN,
        &failing_args(&open_db, &["--bootstrap-admin-email", "root@example.com"]),
        &[],
    );
    assert!(!ok && out.contains("needs a password"), "{out}");

    // On a fresh database the bootstrap creates the admin with the file's password.
    let db = dir.path().join("auth.db");
    let mut svc = start(&db, &bootstrap, &[], dir.path()).await;
    let (status, token) = login(&svc, "admin@example.com", "first admin password").await;
    assert_eq!(status, 200);
    let c = claims(&token.unwrap());
    assert_eq!(c["roles"], json!(["admin", "customer"]));
    assert!(c["scope"].as_str().unwrap().contains("users:read"));
    // Registering the admin's email changes nothing (and answers like any registration).
    assert_eq!(
        register(&svc, "admin@example.com", "squatter password")
            .await
            .0,
        202
    );
    assert_eq!(
        login(&svc, "admin@example.com", "squatter password")
            .await
            .0,
        401
    );
    // Other registrations are customers.
    register(&svc, "root@example.com", "correct horse").await;
    let (_, token) = login(&svc, "root@example.com", "correct horse").await;
    assert_eq!(claims(&token.unwrap())["roles"], json!(["customer"]));
    svc.stop();

    // The secret is the source of truth: a rotated password file resets the password at
    // the next start; the password can also come from the environment.
    std::fs::write(&password_file, "second admin password").unwrap();
    let mut svc = start(&db, &bootstrap, &[], dir.path()).await;
    assert_eq!(
        login(&svc, "admin@example.com", "first admin password")
            .await
            .0,
        401
    );
    assert_eq!(
        login(&svc, "admin@example.com", "second admin password")
            .await
            .0,
        200
    );
    svc.stop();
    let svc = start(
        &db,
        &["--bootstrap-admin-email", "admin@example.com"],
        &[("AUTH_BOOTSTRAP_ADMIN_PASSWORD", "third admin password")],
        dir.path(),
    )
    .await;
    let (status, token) = login(&svc, "admin@example.com", "third admin password").await;
    assert_eq!(status, 200);
    assert_eq!(
        claims(&token.unwrap())["roles"],
        json!(["admin", "customer"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_are_sealed_at_rest_with_the_key_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("auth.db");
    let key = STANDARD.encode([7u8; 32]);
    let other = STANDARD.encode([9u8; 32]);
    let with_key = [("AUTH_KEY_ENCRYPTION_KEY", key.as_str())];

    // Without a key the keys are in clear, and the service says so at start.
    let mut svc = start(&db, &[], &[], dir.path()).await;
    register(&svc, "ada@example.com", "correct horse").await;
    let (_, token) = login(&svc, "ada@example.com", "correct horse").await;
    let first = token.unwrap();
    let kid = verify(&svc, &first).await;
    svc.stop();
    assert!(svc.logs().contains("stored unencrypted"), "{}", svc.logs());
    assert!(stored_keys(&db).await.iter().all(|(_, k)| in_clear(k)));

    // The next start with a key seals every stored key; they keep signing.
    let mut svc = start(&db, &[], &with_key, dir.path()).await;
    verify(&svc, &first).await;
    let (_, token) = login(&svc, "ada@example.com", "correct horse").await;
    assert_eq!(verify(&svc, &token.unwrap()).await, kid, "the same key");
    svc.stop();
    let keys = stored_keys(&db).await;
    for (k, stored) in &keys {
        assert!(!in_clear(stored), "key {k} is sealed");
        assert!(stored.starts_with(b"AKEK1"), "key {k}");
    }

    // A wrong key, no key, or not a key: a clear start-up error, not a panic.
    let wrong = [("AUTH_KEY_ENCRYPTION_KEY", other.as_str())];
    let short = STANDARD.encode([1u8; 16]);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&wrong, "sealed with a different AUTH_KEY_ENCRYPTION_KEY"),
        (&[], "no AUTH_KEY_ENCRYPTION_KEY is set"),
        (
            &[("AUTH_KEY_ENCRYPTION_KEY", "not base64!")],
            "AUTH_KEY_ENCRYPTION_KEY is not base64",
        ),
        (
            &[("AUTH_KEY_ENCRYPTION_KEY", short.as_str())],
            "must decode to 32 bytes",
        ),
    ];
    for (envs, message) in cases {
        let (ok, out) = run_to_exit(BIN, &failing_args(&db, &[]), envs);
        assert!(!ok, "{message}: {out}");
        assert!(out.contains(message), "{message}: {out}");
        assert!(!out.contains("panicked"), "{out}");
    }
    // A key rotation, and a new key generated while sealed, are sealed too.
    let mut svc = start(&db, &["--rotate"], &with_key, dir.path()).await;
    let (_, token) = login(&svc, "ada@example.com", "correct horse").await;
    assert_ne!(verify(&svc, &token.unwrap()).await, kid);
    verify(&svc, &first).await;
    svc.stop();
    let keys = stored_keys(&db).await;
    assert!(keys.len() > 2);
    assert!(keys.iter().all(|(_, k)| !in_clear(k)));

    // Rotating the key-encryption key: the new one current, the old one previous, reseals.
    let rotating = [
        ("AUTH_KEY_ENCRYPTION_KEY", other.as_str()),
        ("AUTH_KEY_ENCRYPTION_KEY_PREVIOUS", key.as_str()),
    ];
    let mut svc = start(&db, &[], &rotating, dir.path()).await;
    svc.stop();
    let mut svc = start(&db, &[], &wrong, dir.path()).await;
    let (status, token) = login(&svc, "ada@example.com", "correct horse").await;
    assert_eq!(status, 200);
    verify(&svc, &token.unwrap()).await;
    verify(&svc, &first).await;
    svc.stop();
    let (ok, out) = run_to_exit(BIN, &failing_args(&db, &[]), &with_key);
    assert!(
        !ok && out.contains("different AUTH_KEY_ENCRYPTION_KEY"),
        "the old key opens nothing now: {out}"
    );
}
