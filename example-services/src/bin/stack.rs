//! `stack`: run auth, users, catalog, orders and notifications in one process on fixed
//! local ports (3001-3005), each with its own SQLite file under `--data-dir`. Order events
//! go in-process, or through Redis with `--redis-url`. Ctrl-C stops them. The first admin
//! and the key-encryption key come as for `auth` (`--bootstrap-admin-email`, password
//! file or `AUTH_BOOTSTRAP_ADMIN_PASSWORD`; `AUTH_KEY_ENCRYPTION_KEY` or a key file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use example_services::auth::{self, AdminBootstrap, KeyEncryption};
use example_services::common::ops::BackupArgs;
use example_services::common::serve;
use example_services::stack::{Stack, StackConfig};

#[derive(Parser)]
#[command(name = "stack", about = "Run the five sample services together")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:3001")]
    auth: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:3002")]
    users: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:3003")]
    catalog: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:3004")]
    orders: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:3005")]
    notifications: SocketAddr,
    /// Where the database files live.
    #[arg(long, default_value = ".local-data")]
    data_dir: PathBuf,
    /// `iss` of issued tokens.
    #[arg(long, default_value = "http://127.0.0.1:8080/auth")]
    issuer: String,
    /// The first administrator, created (or checked) at start.
    #[arg(long, env = "AUTH_BOOTSTRAP_ADMIN_EMAIL")]
    bootstrap_admin_email: Option<String>,
    /// File holding the bootstrap admin's password (or the env
    /// `AUTH_BOOTSTRAP_ADMIN_PASSWORD`).
    #[arg(long, env = "AUTH_BOOTSTRAP_ADMIN_PASSWORD_FILE")]
    bootstrap_admin_password_file: Option<PathBuf>,
    /// File holding the key-encryption key for the auth signing keys (or the env
    /// `AUTH_KEY_ENCRYPTION_KEY`).
    #[arg(long, env = "AUTH_KEY_ENCRYPTION_KEY_FILE")]
    key_encryption_key_file: Option<PathBuf>,
    /// Order events through this Redis (stream `orders.events`); in-process without it.
    #[arg(long, env = "STACK_REDIS_URL")]
    redis_url: Option<String>,
    #[command(flatten)]
    backup: BackupArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let a = Args::parse();
    let admin = AdminBootstrap::from_sources(
        a.bootstrap_admin_email.as_deref(),
        a.bootstrap_admin_password_file.as_deref(),
        auth::env_secret("AUTH_BOOTSTRAP_ADMIN_PASSWORD").as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let key_encryption = KeyEncryption::from_env(a.key_encryption_key_file.as_deref())
        .map_err(anyhow::Error::msg)?
        .map(Arc::new);
    let stack = Stack::start(StackConfig {
        auth: a.auth,
        users: a.users,
        catalog: a.catalog,
        orders: a.orders,
        notifications: a.notifications,
        data_dir: Some(a.data_dir),
        issuer: a.issuer,
        admin,
        key_encryption,
        redis_url: a.redis_url,
        backup: a.backup,
    })
    .await?;
    tracing::info!("stack ready");
    serve::shutdown_signal().await;
    stack.stop().await;
    Ok(())
}
