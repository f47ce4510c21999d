//! `notifications`: run the notifications service and its consumer of the orders event
//! stream. Listen address, database and Redis from flags or env; `notifications restore
//! --from FILE` and `notifications backup` look after the database.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use example_services::common::backup::{self, Target};
use example_services::common::ops::{self, BackupArgs, DbCommand};
use example_services::common::{db, http::Metrics, serve};
use example_services::events::EventSink;
use example_services::events::consumer::{ConsumerConfig, StreamConsumer};
use example_services::notifications::{self, NotificationsState, Store};

#[derive(Parser)]
#[command(
    name = "notifications",
    about = "The notifications sample service: order events to per-user notifications"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "NOTIFICATIONS_LISTEN", default_value = "127.0.0.1:3005")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(
        long,
        env = "NOTIFICATIONS_DATABASE",
        default_value = "notifications.db",
        global = true
    )]
    database: String,
    /// Redis holding the event stream (`redis://host:port`). Without it, only direct
    /// sends (`POST /v1/notifications`) arrive.
    #[arg(long, env = "NOTIFICATIONS_REDIS_URL")]
    redis_url: Option<String>,
    /// The stream to consume.
    #[arg(long, env = "NOTIFICATIONS_STREAM", default_value = example_services::events::ORDERS_STREAM)]
    stream: String,
    /// The consumer group (every replica of this service joins the same one).
    #[arg(long, env = "NOTIFICATIONS_GROUP", default_value = "notifications")]
    group: String,
    /// This replica's consumer name; unique per live replica (default: $HOSTNAME, the
    /// pod name on Kubernetes, else notifications-PID).
    #[arg(long, env = "NOTIFICATIONS_CONSUMER")]
    consumer: Option<String>,
    /// Take over entries another consumer left unacknowledged this long.
    #[arg(long, env = "NOTIFICATIONS_CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    claim_idle: Duration,
    /// How long one read waits for new entries.
    #[arg(long, env = "NOTIFICATIONS_READ_BLOCK", default_value = "2s", value_parser = humantime::parse_duration)]
    read_block: Duration,
    #[command(flatten)]
    backup: BackupArgs,
    #[command(subcommand)]
    command: Option<DbCommand>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let _tracing = example_services::common::trace::init("notifications");
    let args = Args::parse();
    if let Some(cmd) = args.command {
        return ops::run_command(
            cmd,
            "notifications",
            &args.database,
            notifications::SCHEMA,
            &args.backup,
        )
        .await;
    }
    args.backup.check()?;
    let _lock = backup::hold_lock(&args.database)?;
    let pool = db::open(&args.database, notifications::SCHEMA).await?;
    let metrics = Arc::new(Metrics::new("notifications")?);
    let store = Arc::new(Store::new(pool.clone(), &metrics)?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = match &args.redis_url {
        Some(url) => {
            let name = args
                .consumer
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
                .unwrap_or_else(|| format!("notifications-{}", std::process::id()));
            let consumer = StreamConsumer::new(
                url,
                ConsumerConfig {
                    stream: args.stream.clone(),
                    group: args.group.clone(),
                    consumer: name,
                    claim_idle: args.claim_idle,
                    block: args.read_block,
                    batch: 100,
                },
                Arc::clone(&store) as Arc<dyn EventSink>,
                &metrics,
            )?;
            Some(tokio::spawn(consumer.run(stopped)))
        }
        None => {
            tracing::warn!("no --redis-url: no events are consumed, only direct sends arrive");
            None
        }
    };
    let _ops = ops::start(
        &args.backup,
        vec![Target::new("notifications", pool.clone(), &metrics)?],
    )
    .await?;
    let app = notifications::app(NotificationsState { store }, metrics);
    serve::serve("notifications", &args.listen, app).await?;
    let _ = stop.send(true);
    if let Some(c) = consumer {
        let _ = c.await;
    }
    pool.close().await;
    Ok(())
}
