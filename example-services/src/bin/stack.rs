//! `stack`: run auth, users, catalog, orders and notifications in one process on fixed
//! local ports (3001-3005), each with its own SQLite file under `--data-dir`. Order events
//! go in-process, or through Redis with `--redis-url`. Ctrl-C stops them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
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
    /// Emails that get the admin role when they register (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "admin@example.com")]
    admin_emails: Vec<String>,
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
    let stack = Stack::start(StackConfig {
        auth: a.auth,
        users: a.users,
        catalog: a.catalog,
        orders: a.orders,
        notifications: a.notifications,
        data_dir: Some(a.data_dir),
        issuer: a.issuer,
        admin_emails: a.admin_emails,
        redis_url: a.redis_url,
        backup: a.backup,
    })
    .await?;
    tracing::info!("stack ready");
    serve::shutdown_signal().await;
    stack.stop().await;
    Ok(())
}
