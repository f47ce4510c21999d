//! Owns the `users` service: the caller's own profile (`GET`/`PUT /v1/users/me`) and an
//! admin listing (`GET /v1/users`). The caller is whoever the gateway says it is
//! (`X-User-Id`, `X-User-Roles`; see `common::identity` for the trust boundary).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{Row, SqlitePool};

use crate::common::error::{ApiError, FieldError, JsonBody, QueryParams};
use crate::common::http::{Metrics, finish};
use crate::common::identity::Caller;
use crate::common::validate::Page;
use crate::common::validate::email_ok;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS profiles (
    user_id      TEXT    PRIMARY KEY,
    display_name TEXT    NOT NULL,
    email        TEXT    NOT NULL,
    bio          TEXT    NOT NULL DEFAULT '',
    updated_at   INTEGER NOT NULL
);
";

#[derive(Clone, Debug)]
pub struct UsersState {
    pub db: SqlitePool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub user_id: String,
    pub display_name: String,
    pub email: String,
    pub bio: String,
    pub updated_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub bio: Option<String>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn validate(input: &ProfileInput) -> Result<(String, String, String), ApiError> {
    let mut fields = Vec::new();
    let name = input.display_name.as_deref().map(str::trim).unwrap_or("");
    if name.is_empty() || name.chars().count() > 100 {
        fields.push(FieldError {
            field: "display_name",
            message: "required, 1-100 characters".into(),
        });
    }
    let email = input.email.as_deref().map(str::trim).unwrap_or("");
    if !email_ok(email) {
        fields.push(FieldError {
            field: "email",
            message: "must be an email address".into(),
        });
    }
    let bio = input.bio.as_deref().unwrap_or("");
    if bio.chars().count() > 1000 {
        fields.push(FieldError {
            field: "bio",
            message: "must be at most 1000 characters".into(),
        });
    }
    if fields.is_empty() {
        Ok((name.to_owned(), email.to_owned(), bio.to_owned()))
    } else {
        Err(ApiError::validation(fields))
    }
}

fn row_to_profile(row: &sqlx::sqlite::SqliteRow) -> Result<Profile, sqlx::Error> {
    Ok(Profile {
        user_id: row.try_get("user_id")?,
        display_name: row.try_get("display_name")?,
        email: row.try_get("email")?,
        bio: row.try_get("bio")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn me(State(s): State<UsersState>, caller: Caller) -> Result<axum::Json<Profile>, ApiError> {
    let row = sqlx::query("SELECT * FROM profiles WHERE user_id = ?")
        .bind(&caller.user_id)
        .fetch_optional(&s.db)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "profile_not_found",
                "no profile yet: PUT /v1/users/me creates it",
            )
        })?;
    Ok(axum::Json(row_to_profile(&row)?))
}

async fn put_me(
    State(s): State<UsersState>,
    caller: Caller,
    JsonBody(input): JsonBody<ProfileInput>,
) -> Result<axum::Json<Profile>, ApiError> {
    let (name, email, bio) = validate(&input)?;
    sqlx::query(
        "INSERT INTO profiles (user_id, display_name, email, bio, updated_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(user_id) DO UPDATE SET display_name = excluded.display_name,
           email = excluded.email, bio = excluded.bio, updated_at = excluded.updated_at",
    )
    .bind(&caller.user_id)
    .bind(&name)
    .bind(&email)
    .bind(&bio)
    .bind(now_secs())
    .execute(&s.db)
    .await?;
    me(State(s), caller).await
}

async fn list(
    State(s): State<UsersState>,
    caller: Caller,
    QueryParams(page): QueryParams<Page>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let (limit, offset) = page.bounds()?;
    let rows = sqlx::query("SELECT * FROM profiles ORDER BY user_id LIMIT ? OFFSET ?")
        .bind(limit)
        .bind(offset)
        .fetch_all(&s.db)
        .await?;
    let users = rows
        .iter()
        .map(row_to_profile)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(json!({ "users": users })))
}

/// The users router, testable without sockets.
pub fn app(state: UsersState, metrics: Arc<Metrics>) -> Router {
    let db = state.db.clone();
    let routes = Router::new()
        .route("/v1/users/me", get(me).put(put_me))
        .route("/v1/users", get(list))
        .with_state(state);
    finish(routes, db, metrics)
}
