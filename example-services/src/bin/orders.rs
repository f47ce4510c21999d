//! `orders`: run the orders service and its outbox relay. Listen address, database,
//! catalog URL and Redis from flags or env; `orders restore --from FILE` and `orders
//! backup` look after the database.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use example_services::common::backup::{self, Target};
use example_services::common::ops::{self, BackupArgs, DbCommand};
use example_services::common::{db, http::Metrics, serve};
use example_services::events::outbox::{Publisher, Relay, RelayConfig};
use example_services::events::redis::{Redis, StreamPublisher};
use example_services::orders;

#[derive(Parser)]
#[command(name = "orders", about = "The orders sample service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ORDERS_LISTEN", default_value = "127.0.0.1:3004")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(
        long,
        env = "ORDERS_DATABASE",
        default_value = "orders.db",
        global = true
    )]
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
    /// Redis for order events (`redis://host:port`): the outbox relay `XADD`s them to
    /// `--stream`. Without it events wait in the outbox.
    #[arg(long, env = "ORDERS_REDIS_URL")]
    redis_url: Option<String>,
    /// The stream order events go to.
    #[arg(long, env = "ORDERS_STREAM", default_value = example_services::events::ORDERS_STREAM)]
    stream: String,
    /// Trim the stream to about this many entries (keep it far above any backlog a
    /// consumer may build up).
    #[arg(long, env = "ORDERS_STREAM_MAX_LEN", default_value_t = 1_000_000)]
    stream_max_len: usize,
    /// Timeout of each Redis command.
    #[arg(long, env = "ORDERS_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    redis_timeout: Duration,
    /// How often the relay looks for unsent events (each order also wakes it).
    #[arg(long, env = "ORDERS_OUTBOX_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    outbox_poll: Duration,
    /// Sent outbox rows are deleted after this long.
    #[arg(long, env = "ORDERS_OUTBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    outbox_retention: Duration,
    #[command(flatten)]
    backup: BackupArgs,
    #[command(subcommand)]
    command: Option<DbCommand>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let _tracing = example_services::common::trace::init("orders");
    let args = Args::parse();
    if let Some(cmd) = args.command {
        return ops::run_command(cmd, "orders", &args.database, orders::SCHEMA, &args.backup).await;
    }
    args.backup.check()?;
    let _lock = backup::hold_lock(&args.database)?;
    let pool = db::open(&args.database, orders::SCHEMA).await?;
    let state = orders::OrdersState::new(
        pool.clone(),
        &args.catalog_url,
        Duration::from_millis(args.catalog_timeout_ms),
    )?;
    let metrics = Arc::new(Metrics::new("orders")?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = match &args.redis_url {
        Some(url) => {
            let publisher = StreamPublisher::new(
                Redis::new(url, args.redis_timeout)?,
                &args.stream,
                args.stream_max_len,
            );
            let relay = Relay::new(
                pool.clone(),
                Publisher::Stream(publisher),
                Arc::clone(&state.outbox_wake),
                &metrics,
                RelayConfig {
                    poll: args.outbox_poll,
                    retention: args.outbox_retention,
                    ..RelayConfig::default()
                },
            )?;
            Some(tokio::spawn(relay.run(stopped)))
        }
        None => {
            tracing::warn!(
                "no --redis-url: order events wait in the outbox until a relay can publish them"
            );
            None
        }
    };
    let _ops = ops::start(
        &args.backup,
        vec![Target::new("orders", pool.clone(), &metrics)?],
    )
    .await?;
    serve::serve("orders", &args.listen, orders::app(state, metrics)).await?;
    let _ = stop.send(true);
    if let Some(r) = relay {
        let _ = r.await;
    }
    pool.close().await;
    Ok(())
}
