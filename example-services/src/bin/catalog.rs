//! `catalog`: run the catalog service. Listen address and database from flags or env;
//! `catalog restore --from FILE` and `catalog backup` look after the database.

use std::sync::Arc;

use clap::Parser;
use example_services::catalog;
use example_services::common::backup::{self, Target};
use example_services::common::ops::{self, BackupArgs, DbCommand};
use example_services::common::{db, http::Metrics, serve};

#[derive(Parser)]
#[command(name = "catalog", about = "The catalog sample service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CATALOG_LISTEN", default_value = "127.0.0.1:3003")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(
        long,
        env = "CATALOG_DATABASE",
        default_value = "catalog.db",
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
    let _tracing = example_services::common::trace::init("catalog");
    let args = Args::parse();
    if let Some(cmd) = args.command {
        return ops::run_command(
            cmd,
            "catalog",
            &args.database,
            catalog::SCHEMA,
            &args.backup,
        )
        .await;
    }
    args.backup.check()?;
    let _lock = backup::hold_lock(&args.database)?;
    let pool = db::open(&args.database, catalog::SCHEMA).await?;
    catalog::seed(&pool).await?;
    let metrics = Arc::new(Metrics::new("catalog")?);
    let _ops = ops::start(
        &args.backup,
        vec![Target::new("catalog", pool.clone(), &metrics)?],
    )
    .await?;
    let app = catalog::app(catalog::CatalogState { db: pool.clone() }, metrics);
    serve::serve("catalog", &args.listen, app).await?;
    pool.close().await;
    Ok(())
}
