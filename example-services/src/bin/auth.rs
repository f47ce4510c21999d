//! `auth`: run the auth service. Listen address, database, token settings from flags
//! or env; `auth restore --from FILE` and `auth backup` look after the database.
//! Secrets come from the environment or files, never from flags (which `ps` shows): the
//! bootstrap admin's password (`AUTH_BOOTSTRAP_ADMIN_PASSWORD` or
//! `--bootstrap-admin-password-file`) and the key-encryption key
//! (`AUTH_KEY_ENCRYPTION_KEY`, or `--key-encryption-key-file`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use example_services::auth::{
    self, AdminBootstrap, AuthConfig, AuthState, KeyEncryption, SigningAlg,
};
use example_services::common::backup::{self, Target};
use example_services::common::ops::{self, BackupArgs, DbCommand};
use example_services::common::{db, http::Metrics, serve};

#[derive(Parser)]
#[command(
    name = "auth",
    about = "The auth sample service: accounts, JWTs and a JWKS"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "AUTH_LISTEN", default_value = "127.0.0.1:3001")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(long, env = "AUTH_DATABASE", default_value = "auth.db", global = true)]
    database: String,
    /// `iss` of issued tokens.
    #[arg(
        long,
        env = "AUTH_ISSUER",
        default_value = "http://127.0.0.1:8080/auth"
    )]
    issuer: String,
    /// `aud` of issued tokens.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "api")]
    audience: String,
    /// Token lifetime in seconds.
    #[arg(long, env = "AUTH_TOKEN_TTL_SECONDS", default_value_t = 900)]
    token_ttl_seconds: u64,
    /// Signing algorithm for new tokens: RS256 or EdDSA.
    #[arg(long, env = "AUTH_SIGNING_ALG", default_value = "RS256")]
    signing_alg: String,
    /// The first administrator, created (or checked) at start; its password comes from
    /// `--bootstrap-admin-password-file` or the env `AUTH_BOOTSTRAP_ADMIN_PASSWORD`.
    #[arg(long, env = "AUTH_BOOTSTRAP_ADMIN_EMAIL")]
    bootstrap_admin_email: Option<String>,
    /// File holding the bootstrap admin's password (one trailing newline is ignored).
    #[arg(long, env = "AUTH_BOOTSTRAP_ADMIN_PASSWORD_FILE")]
    bootstrap_admin_password_file: Option<PathBuf>,
    /// File holding the key-encryption key (base64 of 32 bytes) that seals the signing
    /// keys at rest; or the key itself in the env `AUTH_KEY_ENCRYPTION_KEY`.
    #[arg(long, env = "AUTH_KEY_ENCRYPTION_KEY_FILE")]
    key_encryption_key_file: Option<PathBuf>,
    /// Rotate the signing key before serving.
    #[arg(long)]
    rotate: bool,
    /// Refresh-token lifetime in seconds (each use issues a new one).
    #[arg(long, env = "AUTH_REFRESH_TOKEN_TTL_SECONDS", default_value_t = 14 * 24 * 3600)]
    refresh_token_ttl_seconds: u64,
    #[command(flatten)]
    backup: BackupArgs,
    #[command(subcommand)]
    command: Option<DbCommand>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let _tracing = example_services::common::trace::init("auth");
    let args = Args::parse();
    let signing_alg = SigningAlg::parse(&args.signing_alg).map_err(anyhow::Error::msg)?;
    if let Some(cmd) = args.command {
        return ops::run_command(cmd, "auth", &args.database, auth::SCHEMA, &args.backup).await;
    }
    args.backup.check()?;
    if std::env::var_os("AUTH_ADMIN_EMAILS").is_some() {
        anyhow::bail!(
            "AUTH_ADMIN_EMAILS is no longer read (registering one of those emails made anyone an admin): \
             create the first admin with AUTH_BOOTSTRAP_ADMIN_EMAIL and AUTH_BOOTSTRAP_ADMIN_PASSWORD(_FILE)"
        );
    }
    let admin = AdminBootstrap::from_sources(
        args.bootstrap_admin_email.as_deref(),
        args.bootstrap_admin_password_file.as_deref(),
        auth::env_secret("AUTH_BOOTSTRAP_ADMIN_PASSWORD").as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let kek = KeyEncryption::from_env(args.key_encryption_key_file.as_deref())
        .map_err(anyhow::Error::msg)?
        .map(Arc::new);
    let _lock = backup::hold_lock(&args.database)?;
    let pool = db::open(&args.database, auth::SCHEMA).await?;
    auth::ensure_keys(&pool, kek.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("signing keys: {e}"))?;
    if args.rotate {
        auth::rotate(&pool, signing_alg, kek.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("rotation: {}", e.message))?;
    }
    if let Some(admin) = &admin {
        auth::bootstrap::ensure_admin(&pool, admin).await?;
    }
    let state = AuthState {
        db: pool.clone(),
        config: Arc::new(AuthConfig {
            issuer: args.issuer,
            audience: args.audience,
            token_ttl: Duration::from_secs(args.token_ttl_seconds.max(1)),
            signing_alg,
            key_encryption: kek,
            refresh_ttl: Duration::from_secs(args.refresh_token_ttl_seconds.max(1)),
        }),
    };
    let metrics = Arc::new(Metrics::new("auth")?);
    let _ops = ops::start(
        &args.backup,
        vec![Target::new("auth", pool.clone(), &metrics)?],
    )
    .await?;
    serve::serve("auth", &args.listen, auth::app(state, metrics)).await?;
    pool.close().await;
    Ok(())
}
