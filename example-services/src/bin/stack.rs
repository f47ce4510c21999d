//! `stack`: run auth, users, catalog and orders in one process on fixed local ports
//! (3001-3004), each with its own SQLite file under `--data-dir`. Ctrl-C stops them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use example_services::common::serve;
use example_services::stack::{Stack, StackConfig};

#[derive(Parser)]
#[command(name = "stack", about = "Run the four sample services together")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:3001")]
    auth: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:3002")]
    users: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:3003")]
    catalog: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:3004")]
    orders: SocketAddr,
    /// Where the four database files live.
    #[arg(long, default_value = ".local-data")]
    data_dir: PathBuf,
    /// `iss` of issued tokens.
    #[arg(long, default_value = "http://127.0.0.1:8080/auth")]
    issuer: String,
    /// Emails that get the admin role when they register (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "admin@example.com")]
    admin_emails: Vec<String>,
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
        data_dir: Some(a.data_dir),
        issuer: a.issuer,
        admin_emails: a.admin_emails,
    })
    .await?;
    tracing::info!("stack ready");
    serve::shutdown_signal().await;
    stack.stop().await;
    Ok(())
}
