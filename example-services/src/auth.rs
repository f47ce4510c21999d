//! Owns the `auth` service: accounts (passwords hashed with argon2), login issuing access
//! tokens signed RS256 or EdDSA (`kid`, `iss`, `aud`, `sub`, `exp`, `iat`, `nbf`, `scope`,
//! `roles`), and the JWKS at `/.well-known/jwks.json`.
//!
//! Signing keys are generated on first start and kept in the service's database (never
//! logged). Rotation (`POST /v1/admin/rotate`, or `--rotate` at start) adds a new key and
//! retires the old one, which stays in the JWKS until every token it signed has expired.
//!
//! OAuth2 (`POST /oauth/token`: client credentials for services, rotating refresh tokens
//! for users, issued at login) lives in [`oauth`].

pub mod oauth;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};

use crate::common::error::{ApiError, FieldError, JsonBody};
use crate::common::http::{Metrics, finish};
use crate::common::identity::Caller;
use crate::common::validate::email_ok;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id            TEXT    PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    roles         TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid          TEXT    PRIMARY KEY,
    alg          TEXT    NOT NULL,
    private_der  BLOB    NOT NULL,
    public_jwk   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    retired_at   INTEGER
);
";

/// Signing algorithms the service can issue with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningAlg {
    Rs256,
    EdDsa,
}

impl SigningAlg {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "RS256" => Ok(Self::Rs256),
            "EdDSA" => Ok(Self::EdDsa),
            other => Err(format!(
                "unknown signing algorithm {other:?}: use RS256 or EdDSA"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::EdDsa => "EdDSA",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub token_ttl: Duration,
    pub signing_alg: SigningAlg,
    /// Accounts registered with these emails get the `admin` role.
    pub admin_emails: Vec<String>,
    /// Lifetime of a refresh token (each use returns a new one with a fresh lifetime).
    pub refresh_ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct AuthState {
    pub db: SqlitePool,
    pub config: Arc<AuthConfig>,
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A fresh key pair: PKCS#8 private key and the public JWK (without `kid`).
fn generate(alg: SigningAlg) -> Result<(Vec<u8>, Value), ApiError> {
    match alg {
        SigningAlg::Rs256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| ApiError::internal("RSA key generation failed"))?;
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                .map_err(|_| ApiError::internal("RSA key export failed"))?;
            let public = pair.public_key();
            let jwk = json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            });
            Ok((der.as_ref().to_vec(), jwk))
        }
        SigningAlg::EdDsa => {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| ApiError::internal("Ed25519 key generation failed"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|_| ApiError::internal("Ed25519 key reload failed"))?;
            let jwk = json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            });
            Ok((doc.as_ref().to_vec(), jwk))
        }
    }
}

/// Add a new signing key for `alg` and retire the current one (returns the new `kid`).
pub async fn rotate(db: &SqlitePool, alg: SigningAlg) -> Result<String, ApiError> {
    let (der, mut jwk) = generate(alg)?;
    let kid = uuid::Uuid::new_v4().simple().to_string();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg.name());
    jwk["use"] = json!("sig");
    let now = now_secs();
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE alg = ? AND retired_at IS NULL")
        .bind(now)
        .bind(alg.name())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, private_der, public_jwk, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&kid)
    .bind(alg.name())
    .bind(der)
    .bind(jwk.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(kid = %kid, alg = alg.name(), "new signing key");
    Ok(kid)
}

/// Make sure both algorithms have an active key (first start).
pub async fn ensure_keys(db: &SqlitePool) -> Result<(), ApiError> {
    // The OAuth tables live with their module; every start comes through here.
    sqlx::raw_sql(oauth::SCHEMA).execute(db).await?;
    for alg in [SigningAlg::Rs256, SigningAlg::EdDsa] {
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM signing_keys WHERE alg = ? AND retired_at IS NULL",
        )
        .bind(alg.name())
        .fetch_one(db)
        .await?;
        if active == 0 {
            rotate(db, alg).await?;
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: Option<String>,
    pub password: Option<String>,
}

fn validate(c: &Credentials) -> Result<(String, String), ApiError> {
    let mut fields = Vec::new();
    let email = c
        .email
        .as_deref()
        .map(str::trim)
        .unwrap_or("")
        .to_ascii_lowercase();
    if !email_ok(&email) {
        fields.push(FieldError {
            field: "email",
            message: "must be an email address".into(),
        });
    }
    let password = c.password.clone().unwrap_or_default();
    if !(8..=128).contains(&password.chars().count()) {
        fields.push(FieldError {
            field: "password",
            message: "must be 8-128 characters".into(),
        });
    }
    if fields.is_empty() {
        Ok((email, password))
    } else {
        Err(ApiError::validation(fields))
    }
}

async fn register(
    State(s): State<AuthState>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let (email, password) = validate(&c)?;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut salt)
        .map_err(|_| ApiError::internal("no randomness for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(ApiError::internal)?
        .to_string();
    let roles = if s
        .config
        .admin_emails
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&email))
    {
        "admin,customer"
    } else {
        "customer"
    };
    let id = uuid::Uuid::new_v4().to_string();
    let inserted = sqlx::query(
        "INSERT INTO accounts (id, email, password_hash, roles, created_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(email) DO NOTHING",
    )
    .bind(&id)
    .bind(&email)
    .bind(&hash)
    .bind(roles)
    .bind(now_secs())
    .execute(&s.db)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "email_taken",
            "an account with this email exists",
        ));
    }
    let roles: Vec<&str> = roles.split(',').collect();
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "email": email, "roles": roles})),
    )
        .into_response())
}

#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    scope: &'a str,
    roles: Vec<&'a str>,
    email: &'a str,
}

/// A fixed argon2 hash to verify against when the email is unknown, so both failures
/// take the same time and say the same thing.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Tm9wZU5vcGVOb3BlTm9wZU5vcGVOb3BlTm9wZU5vcGU";

async fn login(
    State(s): State<AuthState>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let (email, password) = validate(&c)?;
    let row = sqlx::query("SELECT id, password_hash, roles FROM accounts WHERE email = ?")
        .bind(&email)
        .fetch_optional(&s.db)
        .await?;
    let stored: String = match &row {
        Some(r) => r.try_get("password_hash")?,
        None => DUMMY_HASH.to_owned(),
    };
    let verified = PasswordHash::new(&stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false);
    let Some(row) = row.filter(|_| verified) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "email or password is wrong",
        ));
    };
    let id: String = row.try_get("id")?;
    let roles: String = row.try_get("roles")?;
    let roles: Vec<&str> = roles.split(',').collect();
    let scope = user_scope(&roles);
    let token = user_token(&s, &id, &email, &roles, scope).await?;
    let refresh = oauth::refresh::issue(&s.db, &id, None, scope, s.config.refresh_ttl).await?;
    Ok(oauth::no_store(axum::Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": s.config.token_ttl.as_secs(),
        "refresh_token": refresh,
        "scope": scope,
    }))))
}

/// The scopes an account's roles grant.
pub(crate) fn user_scope(roles: &[&str]) -> &'static str {
    if roles.contains(&"admin") {
        "profile orders:read orders:write catalog:write users:read"
    } else {
        "profile orders:read orders:write"
    }
}

/// Sign `claims` with the active key of the configured algorithm (`kid` in the header).
pub(crate) async fn sign<C: Serialize>(s: &AuthState, claims: &C) -> Result<String, ApiError> {
    let alg = s.config.signing_alg;
    let key = sqlx::query(
        "SELECT kid, private_der FROM signing_keys WHERE alg = ? AND retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .bind(alg.name())
    .fetch_optional(&s.db)
    .await?
    .ok_or_else(|| ApiError::internal("no active signing key"))?;
    let kid: String = key.try_get("kid")?;
    let der: Vec<u8> = key.try_get("private_der")?;
    let encoding = match alg {
        SigningAlg::Rs256 => EncodingKey::from_rsa_pem(pem("PRIVATE KEY", &der).as_bytes())
            .map_err(ApiError::internal)?,
        SigningAlg::EdDsa => EncodingKey::from_ed_der(&der),
    };
    let mut header = Header::new(alg.jwt());
    header.kid = Some(kid);
    jsonwebtoken::encode(&header, claims, &encoding).map_err(ApiError::internal)
}

/// An access token for account `id` with `scope`.
pub(crate) async fn user_token(
    s: &AuthState,
    id: &str,
    email: &str,
    roles: &[&str],
    scope: &str,
) -> Result<String, ApiError> {
    let now = now_secs();
    let ttl = s.config.token_ttl.as_secs() as i64;
    let claims = Claims {
        iss: &s.config.issuer,
        aud: &s.config.audience,
        sub: id,
        exp: now + ttl,
        iat: now,
        nbf: now,
        scope,
        roles: roles.to_vec(),
        email,
    };
    sign(s, &claims).await
}

async fn jwks(State(s): State<AuthState>) -> Result<Response, ApiError> {
    // Retired keys stay published until the last token they signed has expired.
    let oldest = now_secs() - s.config.token_ttl.as_secs() as i64;
    let rows = sqlx::query(
        "SELECT public_jwk FROM signing_keys WHERE retired_at IS NULL OR retired_at >= ? ORDER BY created_at",
    )
    .bind(oldest)
    .fetch_all(&s.db)
    .await?;
    let keys = rows
        .iter()
        .map(|r| {
            let text: String = r.try_get("public_jwk")?;
            Ok(serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let mut resp = axum::Json(json!({ "keys": keys })).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(resp)
}

async fn rotate_handler(State(s): State<AuthState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let kid = rotate(&s.db, s.config.signing_alg).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"kid": kid, "alg": s.config.signing_alg.name()})),
    )
        .into_response())
}

/// The auth router, testable without sockets.
pub fn app(state: AuthState, metrics: Arc<Metrics>) -> Router {
    let db = state.db.clone();
    let routes = Router::new()
        .route("/v1/register", post(register))
        .route("/v1/login", post(login))
        .route("/v1/admin/rotate", post(rotate_handler))
        .route("/.well-known/jwks.json", get(jwks))
        .merge(oauth::routes())
        .with_state(state);
    finish(routes, db, metrics)
}
