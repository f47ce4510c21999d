//! Owns the first administrator: an account created at start from an explicit bootstrap
//! (`--bootstrap-admin-email` / `AUTH_BOOTSTRAP_ADMIN_EMAIL` with the password from
//! `--bootstrap-admin-password-file` or `AUTH_BOOTSTRAP_ADMIN_PASSWORD`), never granted
//! to whoever registers a particular address first. Registration only ever creates
//! customers.
//!
//! At each start: a missing account is created with `admin,customer`; an existing admin
//! gets the bootstrap password when it no longer matches (the secret is the source of
//! truth, so rotating it is how an operator resets the password); an existing account
//! that is *not* an admin is refused with an error, because promoting it would hand the
//! admin role to whoever registered that address.

use std::path::Path;

use sqlx::{Row, SqlitePool};

use super::{hash_password, now_secs, password_matches, validate_credentials};

/// The first administrator's credentials.
#[derive(Clone)]
pub struct AdminBootstrap {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for AdminBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("AdminBootstrap")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl AdminBootstrap {
    /// From an email and either a password file or a password (from the environment).
    /// `None` when no email is given; a password source without an email, or an email
    /// without one, is an error.
    pub fn from_sources(
        email: Option<&str>,
        password_file: Option<&Path>,
        password: Option<&str>,
    ) -> Result<Option<Self>, String> {
        let password = match (password_file, password) {
            (Some(_), Some(_)) => {
                return Err("give the bootstrap admin password once: --bootstrap-admin-password-file or AUTH_BOOTSTRAP_ADMIN_PASSWORD, not both".into());
            }
            (Some(path), None) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("bootstrap admin password file {}: {e}", path.display()))?
                    // A file written by `echo` or an editor ends with a newline.
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, p) => p.map(str::to_owned),
        };
        match (email, password) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(
                "a bootstrap admin password without --bootstrap-admin-email (AUTH_BOOTSTRAP_ADMIN_EMAIL)"
                    .into(),
            ),
            (Some(_), None) => Err(
                "--bootstrap-admin-email needs a password: --bootstrap-admin-password-file FILE or AUTH_BOOTSTRAP_ADMIN_PASSWORD"
                    .into(),
            ),
            (Some(email), Some(password)) => {
                let (email, password) = validate_credentials(Some(email), Some(&password))
                    .map_err(|e| {
                        let fields: Vec<String> = e
                            .fields
                            .iter()
                            .map(|f| format!("{} {}", f.field, f.message))
                            .collect();
                        format!("bootstrap admin: {}", fields.join(", "))
                    })?;
                Ok(Some(Self { email, password }))
            }
        }
    }
}

/// Make sure the bootstrap admin exists with the bootstrap password (see the module
/// docs); an existing non-admin account with that email is an error.
pub async fn ensure_admin(db: &SqlitePool, admin: &AdminBootstrap) -> anyhow::Result<()> {
    let row = sqlx::query("SELECT id, password_hash, roles FROM accounts WHERE email = ?")
        .bind(&admin.email)
        .fetch_optional(db)
        .await?;
    let Some(row) = row else {
        let id = uuid::Uuid::new_v4().to_string();
        let hash = hash_password(&admin.password)
            .map_err(|e| anyhow::anyhow!("hashing the bootstrap password: {}", e.message))?;
        sqlx::query(
            "INSERT INTO accounts (id, email, password_hash, roles, created_at) VALUES (?, ?, ?, 'admin,customer', ?)",
        )
        .bind(&id)
        .bind(&admin.email)
        .bind(hash)
        .bind(now_secs())
        .execute(db)
        .await?;
        tracing::info!(email = %admin.email, id = %id, "bootstrap admin created");
        return Ok(());
    };
    let roles: String = row.try_get("roles")?;
    if !roles.split(',').any(|r| r == "admin") {
        anyhow::bail!(
            "bootstrap admin {} is already registered as a non-admin account; refusing to promote it \
             (whoever registered it would become admin): pick another email or remove that account",
            admin.email
        );
    }
    let stored: String = row.try_get("password_hash")?;
    if !password_matches(&stored, &admin.password) {
        let hash = hash_password(&admin.password)
            .map_err(|e| anyhow::anyhow!("hashing the bootstrap password: {}", e.message))?;
        sqlx::query("UPDATE accounts SET password_hash = ? WHERE email = ?")
            .bind(hash)
            .bind(&admin.email)
            .execute(db)
            .await?;
        // A password reset ends the sessions the old password opened.
        let id: String = row.try_get("id")?;
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = ?, revoked_reason = 'password_reset' WHERE account_id = ? AND revoked_at IS NULL",
        )
        .bind(now_secs())
        .bind(&id)
        .execute(db)
        .await?;
        tracing::info!(email = %admin.email, "bootstrap admin password updated");
    } else {
        tracing::info!(email = %admin.email, "bootstrap admin present");
    }
    Ok(())
}
