//! Owns the `authz` service: a forward-auth check endpoint of the kind oauth2-proxy or
//! an OPA sidecar puts behind a gateway's forward auth. `GET /check` (any method) reads
//! the caller's session (`Authorization: Bearer <token>` or the `session` cookie) and the
//! request the gateway describes (`X-Forwarded-Uri`, `X-Forwarded-Method`), and answers:
//! - 200 with `X-Auth-User` and `X-Auth-Roles` for a known session allowed there;
//! - 302 to the login page (`?rd=` the original URI) for a browser without a session
//!   (`Accept: text/html`), 401 JSON otherwise;
//! - 403 JSON when a rule (`ROLE=PREFIX`: paths under PREFIX need ROLE) refuses it.
//!
//! Sessions live in its SQLite database as SHA-256 digests of the token, never the token.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::json;
use sqlx::{Row, SqlitePool};

use crate::common::error::ApiError;
use crate::common::http::{Metrics, finish};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL,
    roles        TEXT    NOT NULL DEFAULT '',
    expires_at   INTEGER NOT NULL
);
";

/// Paths under `prefix` need `role`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub role: String,
    pub prefix: String,
}

impl Rule {
    /// `ROLE=PREFIX`, e.g. `admin=/api/admin`.
    pub fn parse(raw: &str) -> Result<Rule, String> {
        match raw.split_once('=') {
            Some((role, prefix)) if !role.is_empty() && prefix.starts_with('/') => Ok(Rule {
                role: role.to_owned(),
                prefix: prefix.to_owned(),
            }),
            _ => Err(format!("invalid rule {raw:?}: expected ROLE=/path/prefix")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthzConfig {
    /// Where browsers without a session are sent (`?rd=` is appended).
    pub login_url: String,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
pub struct AuthzState {
    pub db: SqlitePool,
    pub config: Arc<AuthzConfig>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn token_digest(token: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Store a session for `token` (kept as its digest) that lasts `ttl_secs`.
pub async fn add_session(
    db: &SqlitePool,
    token: &str,
    user_id: &str,
    roles: &[&str],
    ttl_secs: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR REPLACE INTO sessions (token_sha256, user_id, roles, expires_at) VALUES (?, ?, ?, ?)",
    )
    .bind(token_digest(token))
    .bind(user_id)
    .bind(roles.join(","))
    .bind(now_secs() + ttl_secs)
    .execute(db)
    .await?;
    Ok(())
}

/// `TOKEN=USER[:ROLE,ROLE]` as given on the command line.
pub fn parse_session(raw: &str) -> Result<(String, String, Vec<String>), String> {
    let bad = || format!("invalid session {raw:?}: expected TOKEN=USER[:ROLE,ROLE]");
    let (token, rest) = raw.split_once('=').ok_or_else(bad)?;
    let (user, roles) = rest.split_once(':').unwrap_or((rest, ""));
    if token.len() < 16 || user.is_empty() {
        return Err(format!("{} (tokens are at least 16 characters)", bad()));
    }
    let roles = roles
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((token.to_owned(), user.to_owned(), roles))
}

fn session_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == "session").then_some(v)
            })
    })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn check(State(state): State<AuthzState>, req: Request) -> Response {
    let headers = req.headers();
    let uri = headers
        .get("x-forwarded-uri")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/")
        .to_owned();
    let session = match session_token(headers) {
        Some(t) if !t.is_empty() && t.len() <= 512 => sqlx::query(
            "SELECT user_id, roles FROM sessions WHERE token_sha256 = ? AND expires_at > ?",
        )
        .bind(token_digest(t))
        .bind(now_secs())
        .fetch_optional(&state.db)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "session lookup failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "sessions unavailable",
            )
        }),
        _ => Ok(None),
    };
    let row = match session {
        Ok(row) => row,
        Err(e) => return e.into_response(),
    };
    let Some(row) = row else {
        let browser = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        if browser {
            let location = format!("{}?rd={}", state.config.login_url, percent_encode(&uri));
            let mut resp = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return resp;
        }
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no_session",
            "sign in first: no valid session",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"authz\""),
        );
        return resp;
    };
    let user: String = row.get("user_id");
    let roles: String = row.get("roles");
    let has = |role: &str| roles.split(',').any(|r| r == role);
    let path = uri.split('?').next().unwrap_or("/");
    if let Some(rule) = state
        .config
        .rules
        .iter()
        .find(|r| path.starts_with(&r.prefix) && !has(&r.role))
    {
        return ApiError::forbidden(format!("{} needs the {} role", rule.prefix, rule.role))
            .into_response();
    }
    let mut resp = axum::Json(json!({"user": user})).into_response();
    for (name, value) in [("x-auth-user", &user), ("x-auth-roles", &roles)] {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// The service's router: `/check` plus health, readiness and metrics.
pub fn app(state: AuthzState, metrics: Arc<Metrics>) -> Router {
    let db = state.db.clone();
    let routes = Router::new().route("/check", any(check)).with_state(state);
    finish(routes, db, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(
            parse_session("0123456789abcdef=ada:admin,ops").unwrap(),
            (
                "0123456789abcdef".into(),
                "ada".into(),
                vec!["admin".into(), "ops".into()]
            )
        );
        assert!(parse_session("short=ada").is_err());
        assert!(parse_session("0123456789abcdef=").is_err());
        assert_eq!(Rule::parse("admin=/admin").unwrap().prefix, "/admin");
        assert!(Rule::parse("admin").is_err());
        assert_eq!(percent_encode("/a b?c=1&d"), "/a%20b%3Fc%3D1%26d");
    }
}
