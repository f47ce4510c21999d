//! `orders`: run the orders service. Listen address, database and catalog URL from flags
//! or env.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use example_services::common::{db, http::Metrics, serve};
use example_services::orders;

#[derive(Parser)]
#[command(name = "orders", about = "The orders sample service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ORDERS_LISTEN", default_value = "127.0.0.1:3004")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(long, env = "ORDERS_DATABASE", default_value = "orders.db")]
    database: String,
    /// Base URL of the catalog service.
    #[arg(
        long,
        env = "ORDERS_CATALOG_URL",
        default_value = "http://127.0.0.1:3003"
    )]
    catalog_url: String,
    /// Timeout for each call to catalog, in milliseconds.
    #[arg(long, env = "ORDERS_CATALOG_TIMEOUT_MS", default_value_t = 2000)]
    catalog_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let args = Args::parse();
    let pool = db::open(&args.database, orders::SCHEMA).await?;
    let state = orders::OrdersState::new(
        pool.clone(),
        &args.catalog_url,
        Duration::from_millis(args.catalog_timeout_ms),
    )?;
    let metrics = Arc::new(Metrics::new("orders")?);
    serve::serve("orders", &args.listen, orders::app(state, metrics)).await?;
    pool.close().await;
    Ok(())
}
