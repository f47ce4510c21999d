//! `users`: run the users service. Listen address and database from flags or env;
//! `users restore --from FILE` and `users backup` look after the database.

use std::sync::Arc;

use clap::Parser;
use example_services::common::backup::{self, Target};
use example_services::common::ops::{self, BackupArgs, DbCommand};
use example_services::common::{db, http::Metrics, serve};
use example_services::users;

#[derive(Parser)]
#[command(name = "users", about = "The users sample service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "USERS_LISTEN", default_value = "127.0.0.1:3002")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(
        long,
        env = "USERS_DATABASE",
        default_value = "users.db",
        global = true
    )]
    database: String,
    #[command(flatten)]
    backup: BackupArgs,
    #[command(subcommand)]
    command: Option<DbCommand>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let _tracing = example_services::common::trace::init("users");
    let args = Args::parse();
    if let Some(cmd) = args.command {
        return ops::run_command(cmd, "users", &args.database, users::SCHEMA, &args.backup).await;
    }
    args.backup.check()?;
    let _lock = backup::hold_lock(&args.database)?;
    let pool = db::open(&args.database, users::SCHEMA).await?;
    let metrics = Arc::new(Metrics::new("users")?);
    let _ops = ops::start(
        &args.backup,
        vec![Target::new("users", pool.clone(), &metrics)?],
    )
    .await?;
    let app = users::app(users::UsersState { db: pool.clone() }, metrics);
    serve::serve("users", &args.listen, app).await?;
    pool.close().await;
    Ok(())
}
