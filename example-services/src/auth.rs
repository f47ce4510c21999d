//! Owns the `auth` service: accounts (passwords hashed with argon2), login issuing access
//! tokens signed RS256 or EdDSA (`kid`, `iss`, `aud`, `sub`, `exp`, `iat`, `nbf`, `scope`,
//! `roles`), and the JWKS at `/.well-known/jwks.json`.
//!
//! Signing keys ([`keys`]) are generated on first start and kept in the service's database
//! (never logged; sealed with AES-256-GCM when a key-encryption key is given). Rotation
//! (`POST /v1/admin/rotate`, or `--rotate` at start) adds a new key and retires the old one,
//! which stays in the JWKS until every token it signed has expired.
//!
//! Registration never tells whether an email is taken: a new and an existing address get
//! the same `202 Accepted` body after the same work (the password is hashed and the same
//! insert runs in both cases). It only creates customers; the first admin comes from an
//! explicit bootstrap at start ([`bootstrap`]).
//!
//! OAuth2 (`POST /oauth/token`: client credentials for services, rotating refresh tokens
//! for users, issued at login) lives in [`oauth`].

pub mod bootstrap;
pub mod keys;
pub mod oauth;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::rand::SystemRandom;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};

use crate::common::error::{ApiError, FieldError, JsonBody};
use crate::common::http::{Metrics, finish};
use crate::common::identity::Caller;
use crate::common::validate::email_ok;
pub use bootstrap::AdminBootstrap;
pub use keys::{KeyEncryption, ensure_keys, rotate};

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

    pub(crate) fn name(self) -> &'static str {
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
    /// Seals the private signing keys at rest; `None` stores them in clear.
    pub key_encryption: Option<Arc<KeyEncryption>>,
    /// Lifetime of a refresh token (each use returns a new one with a fresh lifetime).
    pub refresh_ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct AuthState {
    pub db: SqlitePool,
    pub config: Arc<AuthConfig>,
}

/// A secret from the environment; an empty value counts as unset.
pub fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: Option<String>,
    pub password: Option<String>,
}

/// The normalized email (trimmed, lower case) and the password, or a 422 naming each
/// invalid field.
pub(crate) fn validate_credentials(
    email: Option<&str>,
    password: Option<&str>,
) -> Result<(String, String), ApiError> {
    let mut fields = Vec::new();
    let email = email.map(str::trim).unwrap_or("").to_ascii_lowercase();
    if !email_ok(&email) {
        fields.push(FieldError {
            field: "email",
            message: "must be an email address".into(),
        });
    }
    let password = password.unwrap_or_default().to_owned();
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

fn validate(c: &Credentials) -> Result<(String, String), ApiError> {
    validate_credentials(c.email.as_deref(), c.password.as_deref())
}

/// An argon2id hash of `password` with a fresh random salt.
pub(crate) fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut salt)
        .map_err(|_| ApiError::internal("no randomness for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(ApiError::internal)?
        .to_string())
}

/// Whether `password` matches the stored argon2 hash (a malformed hash matches nothing).
pub(crate) fn password_matches(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// `202 Accepted` with the same body whether or not the email was new: the answer, the
/// work (one argon2 hash, one insert) and so the time do not tell who has an account. A
/// new account is a customer and can log in at once; for a taken email nothing changes
/// (the existing account keeps its password, so logging in with the new one fails like
/// any wrong password).
async fn register(
    State(s): State<AuthState>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let (email, password) = validate(&c)?;
    let hash = hash_password(&password)?;
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO accounts (id, email, password_hash, roles, created_at) VALUES (?, ?, ?, 'customer', ?)
         ON CONFLICT(email) DO NOTHING",
    )
    .bind(&id)
    .bind(&email)
    .bind(&hash)
    .bind(now_secs())
    .execute(&s.db)
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "status": "accepted",
            "email": email,
            "message": "if this email was not registered yet, its account is ready: log in with this password",
        })),
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
    let verified = password_matches(&stored, &password);
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
    let (kid, der) = keys::active(&s.db, alg, s.config.key_encryption.as_deref()).await?;
    let encoding = match alg {
        SigningAlg::Rs256 => EncodingKey::from_rsa_pem(keys::pem("PRIVATE KEY", &der).as_bytes())
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
    let kid = rotate(
        &s.db,
        s.config.signing_alg,
        s.config.key_encryption.as_deref(),
    )
    .await?;
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
