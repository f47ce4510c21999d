//! `users`: run the users service. Listen address and database from flags or env.

use std::sync::Arc;

use clap::Parser;
use example_services::common::{db, http::Metrics, serve};
use example_services::users;

#[derive(Parser)]
#[command(name = "users", about = "The users sample service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "USERS_LISTEN", default_value = "127.0.0.1:3002")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(long, env = "USERS_DATABASE", default_value = "users.db")]
    database: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let args = Args::parse();
    let pool = db::open(&args.database, users::SCHEMA).await?;
    let metrics = Arc::new(Metrics::new("users")?);
    let app = users::app(users::UsersState { db: pool.clone() }, metrics);
    serve::serve("users", &args.listen, app).await?;
    pool.close().await;
    Ok(())
}
