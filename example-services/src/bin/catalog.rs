//! `catalog`: run the catalog service. Listen address and database from flags or env.

use std::sync::Arc;

use clap::Parser;
use example_services::catalog;
use example_services::common::{db, http::Metrics, serve};

#[derive(Parser)]
#[command(name = "catalog", about = "The catalog sample service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CATALOG_LISTEN", default_value = "127.0.0.1:3003")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(long, env = "CATALOG_DATABASE", default_value = "catalog.db")]
    database: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let args = Args::parse();
    let pool = db::open(&args.database, catalog::SCHEMA).await?;
    catalog::seed(&pool).await?;
    let metrics = Arc::new(Metrics::new("catalog")?);
    let app = catalog::app(catalog::CatalogState { db: pool.clone() }, metrics);
    serve::serve("catalog", &args.listen, app).await?;
    pool.close().await;
    Ok(())
}
