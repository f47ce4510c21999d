//! Owns refresh tokens: opaque random strings issued at login, stored only as SHA-256
//! hashes (they are 256 random bits, so a fast hash is enough; nothing to brute-force),
//! grouped in families. Every use rotates: the presented token is marked used and a new
//! one of the same family is returned. A used token presented again means two parties
//! hold it (one of them stole it), so the whole family is revoked and both must log in
//! again (the reuse detection of the OAuth 2.0 Security BCP, RFC 9700 4.14.2).
//!
//! A token lives `refresh_ttl` from its issue; a family at most [`FAMILY_MAX_AGE`] from
//! login. Expired and revoked families are deleted a day later.

use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use sqlx::{Row, SqlitePool};

use super::clients::random_b64;
use crate::auth::now_secs;
use crate::common::error::ApiError;

/// However often it is refreshed, a login lasts at most this long.
pub const FAMILY_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);
const KEEP_DEAD_FAMILIES: i64 = 24 * 3600;

fn hash(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Start a family for `account_id` (after a login) and return its first token.
pub async fn issue(
    db: &SqlitePool,
    account_id: &str,
    client_id: Option<&str>,
    scope: &str,
    ttl: Duration,
) -> Result<String, ApiError> {
    let now = now_secs();
    let family = uuid::Uuid::new_v4().to_string();
    let family_end = now + FAMILY_MAX_AGE.as_secs() as i64;
    let token = random_b64(32)?;
    let mut tx = db.begin().await?;
    // Housekeeping on the way: families that can no longer be used.
    sqlx::query("DELETE FROM refresh_families WHERE expires_at < ? OR revoked_at < ?")
        .bind(now - KEEP_DEAD_FAMILIES)
        .bind(now - KEEP_DEAD_FAMILIES)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO refresh_families (family_id, account_id, client_id, scope, created_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&family)
    .bind(account_id)
    .bind(client_id)
    .bind(scope)
    .bind(now)
    .bind(family_end)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, issued_at, expires_at) VALUES (?, ?, ?, ?)",
    )
    .bind(hash(&token))
    .bind(&family)
    .bind(now)
    .bind((now + ttl.as_secs() as i64).min(family_end))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(token)
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Unknown, expired, revoked or another client's: `invalid_grant`.
    #[error("{0}")]
    Invalid(&'static str),
    /// Used before: the family is now revoked.
    #[error("refresh token reused")]
    Reused,
    /// A requested scope beyond what the family was granted.
    #[error("scope {0} not granted")]
    Scope(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("{}", .0.message)]
    Internal(ApiError),
}

impl From<ApiError> for RefreshError {
    fn from(e: ApiError) -> Self {
        Self::Internal(e)
    }
}

/// A successful rotation.
#[derive(Debug)]
pub struct Rotated {
    pub account_id: String,
    pub family_id: String,
    /// The scope for the new access token: the requested one, else the family's.
    pub scope: String,
    /// The new refresh token.
    pub token: String,
}

/// Trade `presented` for a new token of its family. `client_id` is the authenticated
/// client, `None` for the public first-party client (login).
pub async fn rotate(
    db: &SqlitePool,
    presented: &str,
    client_id: Option<&str>,
    requested: Option<&[String]>,
    ttl: Duration,
) -> Result<Rotated, RefreshError> {
    let now = now_secs();
    let token_hash = hash(presented);
    let mut tx = db.begin().await?;
    // Writing first takes the write lock for the whole exchange, so two concurrent uses
    // of one token cannot both win: the second finds it used.
    let claimed = sqlx::query(
        "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
    )
    .bind(now)
    .bind(&token_hash)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let Some(row) = sqlx::query(
        "SELECT t.expires_at, f.family_id, f.account_id, f.client_id, f.scope,
                f.expires_at AS family_end, f.revoked_at
         FROM refresh_tokens t JOIN refresh_families f ON f.family_id = t.family_id
         WHERE t.token_hash = ?",
    )
    .bind(&token_hash)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Err(RefreshError::Invalid("unknown refresh token"));
    };
    let family: String = row.try_get("family_id")?;
    let owner: Option<String> = row.try_get("client_id")?;
    if owner.as_deref() != client_id {
        // Rolled back: the legitimate holder can still use it.
        return Err(RefreshError::Invalid(
            "the refresh token was issued to another client",
        ));
    }
    if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
        return Err(RefreshError::Invalid("the refresh token is revoked"));
    }
    if claimed == 0 {
        revoke_family_on(&mut tx, &family, "reuse", now).await?;
        tx.commit().await?;
        tracing::warn!(family = %family, "refresh token reused: family revoked");
        return Err(RefreshError::Reused);
    }
    let family_end: i64 = row.try_get("family_end")?;
    if row.try_get::<i64, _>("expires_at")? <= now || family_end <= now {
        return Err(RefreshError::Invalid("the refresh token expired"));
    }
    let granted: String = row.try_get("scope")?;
    let scope = match requested {
        None => granted,
        Some(asked) => {
            let have: Vec<&str> = granted.split(' ').collect();
            if let Some(extra) = asked.iter().find(|a| !have.contains(&a.as_str())) {
                return Err(RefreshError::Scope(extra.clone()));
            }
            asked.join(" ")
        }
    };
    let token = random_b64(32)?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, issued_at, expires_at) VALUES (?, ?, ?, ?)",
    )
    .bind(hash(&token))
    .bind(&family)
    .bind(now)
    .bind((now + ttl.as_secs() as i64).min(family_end))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Rotated {
        account_id: row.try_get("account_id")?,
        family_id: family,
        scope,
        token,
    })
}

async fn revoke_family_on(
    conn: &mut sqlx::SqliteConnection,
    family: &str,
    reason: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_families SET revoked_at = ?, revoked_reason = ?
         WHERE family_id = ? AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(family)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revoke every token of `family`.
pub async fn revoke_family(db: &SqlitePool, family: &str, reason: &str) -> Result<(), sqlx::Error> {
    let mut conn = db.acquire().await?;
    revoke_family_on(&mut conn, family, reason, now_secs()).await
}

/// What a revocation request found.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    Done,
    Unknown,
    OtherClient,
}

/// RFC 7009 revocation of a refresh token: its family goes.
pub async fn revoke_token(
    db: &SqlitePool,
    presented: &str,
    client_id: Option<&str>,
) -> Result<Revoked, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT f.family_id, f.client_id FROM refresh_tokens t
         JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = ?",
    )
    .bind(hash(presented))
    .fetch_optional(db)
    .await?
    else {
        return Ok(Revoked::Unknown);
    };
    let owner: Option<String> = row.try_get("client_id")?;
    if owner.as_deref() != client_id {
        return Ok(Revoked::OtherClient);
    }
    let family: String = row.try_get("family_id")?;
    revoke_family(db, &family, "revoked").await?;
    tracing::info!(family = %family, "refresh token family revoked on request");
    Ok(Revoked::Done)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            super::hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
