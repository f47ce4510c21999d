//! Owns OAuth 2.0 (RFC 6749) in the auth service: the token endpoint
//! `POST /oauth/token` and revocation `POST /oauth/revoke` (RFC 7009).
//!
//! - `grant_type=client_credentials`: a service authenticates as a registered client
//!   ([`clients`]: `client_secret_basic` or `client_secret_post`, secrets stored as
//!   argon2 hashes) and gets an access token for its own scopes (`sub` = `client_id`).
//! - `grant_type=refresh_token`: a user trades the refresh token issued at login for a
//!   new access token *and* a new refresh token ([`refresh`]); presenting a used one
//!   again revokes its whole family.
//!
//! Requests are `application/x-www-form-urlencoded`; a parameter given twice is an
//! `invalid_request`, one without a value counts as absent (RFC 6749 3.1). Answers carry
//! `Cache-Control: no-store`; errors are RFC 6749 5.2 bodies (`{"error",
//! "error_description"}`), 401 with `WWW-Authenticate: Basic` for `invalid_client`.

pub mod clients;
pub mod refresh;

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::json;
use sqlx::Row;

use super::{AuthState, now_secs, sign, user_scope, user_token};
use crate::common::error::ApiError;
use clients::Client;
use refresh::RefreshError;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS oauth_clients (
    client_id   TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    secret_hash TEXT    NOT NULL,
    scopes      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE IF NOT EXISTS refresh_families (
    family_id      TEXT    PRIMARY KEY,
    account_id     TEXT    NOT NULL,
    client_id      TEXT,
    scope          TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
);
CREATE INDEX IF NOT EXISTS refresh_families_by_account ON refresh_families (account_id);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT    PRIMARY KEY,
    family_id  TEXT    NOT NULL REFERENCES refresh_families(family_id) ON DELETE CASCADE,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX IF NOT EXISTS refresh_tokens_by_family ON refresh_tokens (family_id);
";

/// `Cache-Control: no-store` and `Pragma: no-cache` on an answer that holds tokens
/// (RFC 6749 5.1).
pub fn no_store(body: impl IntoResponse) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// An RFC 6749 5.2 error answer.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<ApiError> for OAuthError {
    fn from(e: ApiError) -> Self {
        // The service's own failure (database, keys): the detail is already logged.
        let code = if e.status == StatusCode::SERVICE_UNAVAILABLE {
            "temporarily_unavailable"
        } else {
            "server_error"
        };
        Self::new(e.status, code, e.message)
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut resp = no_store((
            self.status,
            axum::Json(json!({"error": self.code, "error_description": self.description})),
        ));
        if self.code == "invalid_client" {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"oauth\", charset=\"UTF-8\""),
            );
        }
        resp
    }
}

/// Client input fit for `error_description`, which allows only `%x20-21 / %x23-5B /
/// %x5D-7E` (RFC 6749 5.2): anything else becomes `?`, and it is cut at 40 characters.
fn echo(input: &str) -> String {
    input
        .chars()
        .take(40)
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect()
}

/// The form body: each parameter at most once; empty values are absent.
fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut params = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if params.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter {} is given more than once",
                echo(&k)
            )));
        }
    }
    params.retain(|_, v| !v.is_empty());
    Ok(params)
}

/// One part of a Basic credential: form-urlencoded before base64 (RFC 6749 2.3.1).
fn form_decode(part: &str) -> Option<String> {
    let plus = part.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// `(client_id, client_secret)` from `Authorization: Basic`, if that is the scheme.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError::invalid_client("malformed Basic credentials");
    let text = value.to_str().map_err(|_| bad())?.trim();
    let Some((scheme, rest)) = text.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        // A Bearer token sent along (say, by a browser session) is not client auth.
        return Ok(None);
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    match (form_decode(id), form_decode(secret)) {
        (Some(id), Some(secret)) if !id.is_empty() => Ok(Some((id, secret))),
        _ => Err(bad()),
    }
}

/// The authenticated client, `None` when the request names none (a user's own
/// refresh, the public first-party client). Exactly one method may be used.
async fn authenticate(
    s: &AuthState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Option<Client>, OAuthError> {
    let basic = basic_credentials(headers)?;
    let post_id = params.get("client_id");
    let post_secret = params.get("client_secret");
    let (id, secret) = match (basic, post_id, post_secret) {
        (Some(_), _, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use one client authentication method: Basic or client_secret in the body, not both",
            ));
        }
        (Some((id, _)), Some(other), None) if *other != id => {
            return Err(OAuthError::invalid_request(
                "client_id in the body differs from the Basic credentials",
            ));
        }
        (Some((id, secret)), _, None) => (id, secret),
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        (None, Some(_), None) => {
            return Err(OAuthError::invalid_client(
                "client authentication failed: no client secret",
            ));
        }
        (None, None, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "client_secret without client_id",
            ));
        }
        (None, None, None) => return Ok(None),
    };
    match clients::authenticate(&s.db, &id, &secret).await? {
        Some(c) => Ok(Some(c)),
        None => Err(OAuthError::invalid_client("client authentication failed")),
    }
}

/// RFC 6749 3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn scope_token_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// The requested scopes (space-separated), if any.
fn requested_scope(params: &HashMap<String, String>) -> Result<Option<Vec<String>>, OAuthError> {
    let Some(raw) = params.get("scope") else {
        return Ok(None);
    };
    let mut out: Vec<String> = Vec::new();
    for t in raw.split(' ').filter(|t| !t.is_empty()) {
        if !scope_token_ok(t) {
            return Err(OAuthError::invalid_scope(format!(
                "{} is not a valid scope token",
                echo(t)
            )));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

#[derive(Debug, Serialize)]
struct ClientClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    client_id: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    scope: &'a str,
}

async fn client_credentials(
    s: &AuthState,
    client: Option<Client>,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let client = client.ok_or_else(|| {
        OAuthError::invalid_client("client_credentials needs client authentication")
    })?;
    let scopes = match requested_scope(params)? {
        None => client.scopes.clone(),
        Some(asked) => {
            if let Some(extra) = asked.iter().find(|a| !client.scopes.contains(a)) {
                return Err(OAuthError::invalid_scope(format!(
                    "scope {extra} is not granted to this client"
                )));
            }
            asked
        }
    };
    let scope = scopes.join(" ");
    let now = now_secs();
    let ttl = s.config.token_ttl.as_secs() as i64;
    let claims = ClientClaims {
        iss: &s.config.issuer,
        aud: &s.config.audience,
        sub: &client.id,
        client_id: &client.id,
        exp: now + ttl,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        scope: &scope,
    };
    let token = sign(s, &claims).await?;
    tracing::info!(client_id = %client.id, scope = %scope, "client credentials token issued");
    // No refresh token: the client can always authenticate again (RFC 6749 4.4.3).
    Ok(no_store(axum::Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scope,
    }))))
}

async fn refresh_token(
    s: &AuthState,
    client: Option<Client>,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let presented = params
        .get("refresh_token")
        .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
    let asked = requested_scope(params)?;
    let client_id = client.as_ref().map(|c| c.id.as_str());
    let rotated = refresh::rotate(&s.db, presented, client_id, asked.as_deref(), s.config.refresh_ttl)
        .await
        .map_err(|e| match e {
            RefreshError::Invalid(why) => OAuthError::invalid_grant(why),
            RefreshError::Reused => OAuthError::invalid_grant(
                "the refresh token was already used: every token of its family is revoked, log in again",
            ),
            RefreshError::Scope(extra) => OAuthError::invalid_scope(format!(
                "scope {extra} was not granted to this refresh token"
            )),
            RefreshError::Db(e) => e.into(),
            RefreshError::Internal(e) => e.into(),
        })?;
    let Some(account) = sqlx::query("SELECT email, roles FROM accounts WHERE id = ?")
        .bind(&rotated.account_id)
        .fetch_optional(&s.db)
        .await?
    else {
        refresh::revoke_family(&s.db, &rotated.family_id, "account gone").await?;
        return Err(OAuthError::invalid_grant("the account no longer exists"));
    };
    let email: String = account.try_get("email")?;
    let roles: String = account.try_get("roles")?;
    let roles: Vec<&str> = roles.split(',').collect();
    // Never more than the roles grant today (a lost admin role is lost at the next
    // refresh), nor more than was granted at login.
    let now_granted: Vec<&str> = user_scope(&roles).split(' ').collect();
    let scope = rotated
        .scope
        .split(' ')
        .filter(|t| now_granted.contains(t))
        .collect::<Vec<_>>()
        .join(" ");
    let token = user_token(s, &rotated.account_id, &email, &roles, &scope).await?;
    Ok(no_store(axum::Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": s.config.token_ttl.as_secs(),
        "refresh_token": rotated.token,
        "scope": scope,
    }))))
}

async fn token(State(s): State<AuthState>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = async {
        let params = parse_form(&headers, &body)?;
        let client = authenticate(&s, &headers, &params).await?;
        match params.get("grant_type").map(String::as_str) {
            None => Err(OAuthError::invalid_request("grant_type is required")),
            Some("client_credentials") => client_credentials(&s, client, &params).await,
            Some("refresh_token") => refresh_token(&s, client, &params).await,
            // Not echoed: error_description allows only a narrow set of characters.
            Some(_) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "this grant_type is not supported: use client_credentials or refresh_token",
            )),
        }
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// RFC 7009: revoke a refresh token (and its family). Unknown tokens, and access tokens
/// (self-contained JWTs that expire on their own), answer 200 as the RFC asks.
async fn revoke(State(s): State<AuthState>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = async {
        let params = parse_form(&headers, &body)?;
        let client = authenticate(&s, &headers, &params).await?;
        let presented = params
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let client_id = client.as_ref().map(|c| c.id.as_str());
        match refresh::revoke_token(&s.db, presented, client_id).await? {
            refresh::Revoked::OtherClient => Err(OAuthError::invalid_request(
                "the token was not issued to this client",
            )),
            refresh::Revoked::Done | refresh::Revoked::Unknown => Ok(no_store(StatusCode::OK)),
        }
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// The OAuth endpoints and the admin API for clients.
pub fn routes() -> Router<AuthState> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .merge(clients::routes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Result<HashMap<String, String>, OAuthError> {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8"),
        );
        parse_form(&h, body.as_bytes())
    }

    #[test]
    fn forms() {
        let p = form("grant_type=client_credentials&scope=a+b&empty=").unwrap();
        assert_eq!(p["scope"], "a b");
        assert!(!p.contains_key("empty"), "no value is absent");
        assert_eq!(form("a=1&a=2").unwrap_err().code(), "invalid_request");
        assert_eq!(
            parse_form(&HeaderMap::new(), b"a=1").unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let raw = STANDARD.encode("my%3Aclient:s%2Bcr+t");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {raw}")).unwrap(),
        );
        assert_eq!(
            basic_credentials(&h).unwrap(),
            Some(("my:client".into(), "s+cr t".into()))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&h).unwrap_err().code(), "invalid_client");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x.y.z"),
        );
        assert_eq!(basic_credentials(&h).unwrap(), None);
    }

    #[test]
    fn descriptions_echo_only_allowed_characters() {
        assert_eq!(echo("caf\u{e9} \"x\"\\"), "caf? ?x??");
        assert_eq!(echo(&"a".repeat(100)).len(), 40);
    }

    #[test]
    fn scope_tokens() {
        assert!(scope_token_ok("notifications:send"));
        for bad in ["", "a\"b", "a\\b", "caf\u{e9}"] {
            assert!(!scope_token_ok(bad), "{bad}");
        }
    }
}
