//! Owns OAuth clients: services registered by an admin (`POST /v1/admin/clients`), each
//! with its scopes and a secret shown once and stored only as an argon2 hash. Admins
//! list them, issue a new secret (the old one stops working at once) and revoke them;
//! tokens already issued stay valid until they expire (the access-token lifetime).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};

use super::no_store;
use super::scope_token_ok;
use crate::auth::{AuthState, now_secs};
use crate::common::error::{ApiError, FieldError, JsonBody, PathParam};
use crate::common::identity::Caller;

/// Verified against when the client id is unknown, so unknown and wrong-secret take
/// the same time and give the same answer.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Tm9wZU5vcGVOb3BlTm9wZU5vcGVOb3BlTm9wZU5vcGU";

const MAX_SCOPES: usize = 20;

/// An authenticated (or listed) client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub scopes: Vec<String>,
}

pub(crate) fn random_b64(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| ApiError::internal("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

fn hash_secret(secret: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| ApiError::internal("no randomness for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    Ok(Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(ApiError::internal)?
        .to_string())
}

/// The client `id` if `secret` is its current secret and it is not revoked.
pub async fn authenticate(
    db: &SqlitePool,
    id: &str,
    secret: &str,
) -> Result<Option<Client>, ApiError> {
    let row = sqlx::query(
        "SELECT secret_hash, scopes FROM oauth_clients WHERE client_id = ? AND revoked_at IS NULL",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let (stored, scopes) = match &row {
        Some(r) => (
            r.try_get::<String, _>("secret_hash")?,
            Some(r.try_get::<String, _>("scopes")?),
        ),
        None => (DUMMY_HASH.to_owned(), None),
    };
    let secret = secret.to_owned();
    // Deliberately slow (that is argon2's point): off the async workers.
    let verified = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|h| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(match scopes {
        Some(scopes) if verified => Some(Client {
            id: id.to_owned(),
            scopes: scopes.split(' ').map(str::to_owned).collect(),
        }),
        _ => None,
    })
}

/// Register a client; returns it and its secret (which is not stored).
pub async fn register(
    db: &SqlitePool,
    name: &str,
    scopes: &[String],
    created_by: &str,
) -> Result<(Client, String), ApiError> {
    let id = format!("svc-{}", uuid::Uuid::new_v4().simple());
    let secret = random_b64(32)?;
    let hash = hash_secret(&secret)?;
    sqlx::query(
        "INSERT INTO oauth_clients (client_id, name, secret_hash, scopes, created_at, created_by)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(name)
    .bind(hash)
    .bind(scopes.join(" "))
    .bind(now_secs())
    .bind(created_by)
    .execute(db)
    .await?;
    tracing::info!(client_id = %id, name, scopes = %scopes.join(" "), by = created_by, "OAuth client registered");
    Ok((
        Client {
            id,
            scopes: scopes.to_vec(),
        },
        secret,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientInput {
    name: Option<String>,
    scopes: Option<Vec<String>>,
}

fn validate(input: &ClientInput) -> Result<(String, Vec<String>), ApiError> {
    let mut fields = Vec::new();
    let name = input.name.as_deref().map(str::trim).unwrap_or("");
    if name.is_empty() || name.chars().count() > 100 {
        fields.push(FieldError {
            field: "name",
            message: "required, 1-100 characters".into(),
        });
    }
    let mut scopes: Vec<String> = Vec::new();
    match &input.scopes {
        Some(list) if !list.is_empty() && list.len() <= MAX_SCOPES => {
            if list.iter().all(|s| scope_token_ok(s)) {
                for s in list {
                    if !scopes.contains(s) {
                        scopes.push(s.clone());
                    }
                }
            } else {
                fields.push(FieldError {
                    field: "scopes",
                    message: "each scope is 1-64 printable ASCII characters without spaces, quotes or backslashes".into(),
                });
            }
        }
        _ => fields.push(FieldError {
            field: "scopes",
            message: format!("required, 1-{MAX_SCOPES} scopes"),
        }),
    }
    if fields.is_empty() {
        Ok((name.to_owned(), scopes))
    } else {
        Err(ApiError::validation(fields))
    }
}

async fn create(
    State(s): State<AuthState>,
    caller: Caller,
    JsonBody(input): JsonBody<ClientInput>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (name, scopes) = validate(&input)?;
    let (client, secret) = register(&s.db, &name, &scopes, &caller.user_id).await?;
    let mut resp = no_store((
        StatusCode::CREATED,
        axum::Json(json!({
            "client_id": client.id,
            "client_secret": secret,
            "name": name,
            "scopes": client.scopes,
            "token_endpoint_auth_methods": ["client_secret_basic", "client_secret_post"],
        })),
    ));
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/admin/clients/{}", client.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn view(r: &sqlx::sqlite::SqliteRow) -> Result<Value, sqlx::Error> {
    let scopes: String = r.try_get("scopes")?;
    Ok(json!({
        "client_id": r.try_get::<String, _>("client_id")?,
        "name": r.try_get::<String, _>("name")?,
        "scopes": scopes.split(' ').collect::<Vec<_>>(),
        "created_at": r.try_get::<i64, _>("created_at")?,
        "created_by": r.try_get::<String, _>("created_by")?,
        "revoked_at": r.try_get::<Option<i64>, _>("revoked_at")?,
    }))
}

async fn list(State(s): State<AuthState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let rows = sqlx::query("SELECT * FROM oauth_clients ORDER BY created_at, client_id")
        .fetch_all(&s.db)
        .await?;
    let clients = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(json!({ "clients": clients })).into_response())
}

fn no_client(id: &str) -> ApiError {
    ApiError::not_found("client_not_found", format!("no active client {id}"))
}

async fn revoke(
    State(s): State<AuthState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let done = sqlx::query(
        "UPDATE oauth_clients SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
    )
    .bind(now_secs())
    .bind(&id)
    .execute(&s.db)
    .await?
    .rows_affected();
    if done == 0 {
        return Err(no_client(&id));
    }
    tracing::info!(client_id = %id, by = %caller.user_id, "OAuth client revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn new_secret(
    State(s): State<AuthState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let secret = random_b64(32)?;
    let done = sqlx::query(
        "UPDATE oauth_clients SET secret_hash = ? WHERE client_id = ? AND revoked_at IS NULL",
    )
    .bind(hash_secret(&secret)?)
    .bind(&id)
    .execute(&s.db)
    .await?
    .rows_affected();
    if done == 0 {
        return Err(no_client(&id));
    }
    tracing::info!(client_id = %id, by = %caller.user_id, "OAuth client secret replaced");
    Ok(no_store(axum::Json(
        json!({"client_id": id, "client_secret": secret}),
    )))
}

/// The admin API for clients (admins only, as the gateway forwards the caller).
pub fn routes() -> Router<AuthState> {
    Router::new()
        .route("/v1/admin/clients", get(list).post(create))
        .route("/v1/admin/clients/{id}", delete(revoke))
        .route("/v1/admin/clients/{id}/secret", post(new_secret))
}
