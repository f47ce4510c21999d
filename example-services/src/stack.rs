//! Owns the local stack: the five services (auth, users, catalog, orders, notifications)
//! started in one process, each on its own port with its own database, plus the orders
//! outbox relay and, with Redis, the notifications stream consumer. The `stack` binary
//! runs it on fixed ports for `.ci/local`; the end-to-end test runs the same code on free
//! ports.
//!
//! Without `redis_url` (the embedded default) the relay hands events straight to the
//! notifications store in this process; with it, they go through a Redis Stream and a
//! consumer group exactly as separate processes would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, AdminBootstrap, AuthConfig, AuthState, KeyEncryption, SigningAlg};
use crate::catalog::{self, CatalogState};
use crate::common::backup::{self, DbLock, Target};
use crate::common::ops::{self, BackupArgs, Ops};
use crate::common::{db, http::Metrics};
use crate::events::consumer::{ConsumerConfig, StreamConsumer};
use crate::events::outbox::{Publisher, Relay, RelayConfig};
use crate::events::redis::{Redis, StreamPublisher};
use crate::events::{EventSink, ORDERS_STREAM};
use crate::notifications::{self, NotificationsState, Store};
use crate::orders::{self, OrdersState};
use crate::users::{self, UsersState};

#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Port 0 picks a free port.
    pub auth: SocketAddr,
    pub users: SocketAddr,
    pub catalog: SocketAddr,
    pub orders: SocketAddr,
    pub notifications: SocketAddr,
    /// Directory for the database files; `None` keeps them in memory.
    pub data_dir: Option<PathBuf>,
    pub issuer: String,
    /// The first admin, created at start (registration only makes customers).
    pub admin: Option<AdminBootstrap>,
    /// Seals the auth service's signing keys at rest; `None` keeps them in clear.
    pub key_encryption: Option<Arc<KeyEncryption>>,
    /// Order events through this Redis (a stream and a consumer group); `None` delivers
    /// them in-process.
    pub redis_url: Option<String>,
    /// Backups of all five databases (schedule, admin port).
    pub backup: BackupArgs,
}

/// A running stack; `stop` shuts every service down gracefully.
#[derive(Debug)]
pub struct Stack {
    pub auth: SocketAddr,
    pub users: SocketAddr,
    pub catalog: SocketAddr,
    pub orders: SocketAddr,
    pub notifications: SocketAddr,
    /// The admin port (`POST /admin/backup`), when configured.
    pub admin: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _ops: Ops,
    _locks: Vec<DbLock>,
}

fn database(dir: &Option<PathBuf>, name: &str) -> String {
    match dir {
        Some(d) => d.join(format!("{name}.db")).display().to_string(),
        None => "sqlite::memory:".to_owned(),
    }
}

async fn spawn(
    name: &'static str,
    addr: SocketAddr,
    app: axum::Router,
    shutdown: &watch::Sender<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut stop = shutdown.subscribe();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(service = name, error = %e, "service stopped");
        }
    }));
    tracing::info!(service = name, address = %bound, "listening");
    Ok(bound)
}

/// Open one service's database (locked while the stack runs) and its metrics.
async fn open(
    cfg: &StackConfig,
    name: &'static str,
    schema: &str,
    locks: &mut Vec<DbLock>,
    targets: &mut Vec<Target>,
) -> anyhow::Result<(sqlx::SqlitePool, Arc<Metrics>)> {
    let location = database(&cfg.data_dir, name);
    locks.extend(backup::hold_lock(&location)?);
    let pool = db::open(&location, schema).await?;
    let metrics = Arc::new(Metrics::new(name)?);
    targets.push(Target::new(name, pool.clone(), &metrics)?);
    Ok((pool, metrics))
}

impl Stack {
    pub async fn start(cfg: StackConfig) -> anyhow::Result<Stack> {
        cfg.backup.check()?;
        if let Some(dir) = &cfg.data_dir {
            std::fs::create_dir_all(dir)?;
        }
        let (shutdown, _) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut locks = Vec::new();
        let mut targets = Vec::new();

        let (pool, metrics) = open(&cfg, "auth", auth::SCHEMA, &mut locks, &mut targets).await?;
        auth::ensure_keys(&pool, cfg.key_encryption.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("signing keys: {e}"))?;
        if let Some(admin) = &cfg.admin {
            auth::bootstrap::ensure_admin(&pool, admin).await?;
        }
        let auth_state = AuthState {
            db: pool,
            config: Arc::new(AuthConfig {
                issuer: cfg.issuer.clone(),
                audience: "api".into(),
                token_ttl: Duration::from_secs(900),
                signing_alg: SigningAlg::Rs256,
                key_encryption: cfg.key_encryption.clone(),
                refresh_ttl: Duration::from_secs(14 * 24 * 3600),
            }),
        };
        let auth = spawn(
            "auth",
            cfg.auth,
            auth::app(auth_state, metrics),
            &shutdown,
            &mut tasks,
        )
        .await?;

        let (pool, metrics) = open(&cfg, "users", users::SCHEMA, &mut locks, &mut targets).await?;
        let users = spawn(
            "users",
            cfg.users,
            users::app(UsersState { db: pool }, metrics),
            &shutdown,
            &mut tasks,
        )
        .await?;

        let (pool, metrics) =
            open(&cfg, "catalog", catalog::SCHEMA, &mut locks, &mut targets).await?;
        catalog::seed(&pool).await?;
        let catalog = spawn(
            "catalog",
            cfg.catalog,
            catalog::app(CatalogState { db: pool }, metrics),
            &shutdown,
            &mut tasks,
        )
        .await?;

        let (pool, metrics) = open(
            &cfg,
            "notifications",
            notifications::SCHEMA,
            &mut locks,
            &mut targets,
        )
        .await?;
        let store = Arc::new(Store::new(pool, &metrics)?);
        if let Some(url) = &cfg.redis_url {
            let consumer = StreamConsumer::new(
                url,
                ConsumerConfig {
                    stream: ORDERS_STREAM.into(),
                    group: "notifications".into(),
                    consumer: format!("stack-{}", std::process::id()),
                    claim_idle: Duration::from_secs(30),
                    block: Duration::from_secs(2),
                    batch: 100,
                },
                Arc::clone(&store) as Arc<dyn EventSink>,
                &metrics,
            )?;
            tasks.push(tokio::spawn(consumer.run(shutdown.subscribe())));
        }
        let notifications = spawn(
            "notifications",
            cfg.notifications,
            notifications::app(
                NotificationsState {
                    store: Arc::clone(&store),
                },
                metrics,
            ),
            &shutdown,
            &mut tasks,
        )
        .await?;

        let (pool, metrics) =
            open(&cfg, "orders", orders::SCHEMA, &mut locks, &mut targets).await?;
        let state = OrdersState::new(
            pool.clone(),
            &format!("http://{catalog}"),
            Duration::from_secs(2),
        )?;
        let publisher = match &cfg.redis_url {
            Some(url) => Publisher::Stream(StreamPublisher::new(
                Redis::new(url, Duration::from_secs(2))?,
                ORDERS_STREAM,
                1_000_000,
            )),
            None => Publisher::InProcess(store),
        };
        let relay = Relay::new(
            pool,
            publisher,
            Arc::clone(&state.outbox_wake),
            &metrics,
            RelayConfig::default(),
        )?;
        tasks.push(tokio::spawn(relay.run(shutdown.subscribe())));
        let orders = spawn(
            "orders",
            cfg.orders,
            orders::app(state, metrics),
            &shutdown,
            &mut tasks,
        )
        .await?;

        let ops = ops::start(&cfg.backup, targets).await?;
        Ok(Stack {
            auth,
            users,
            catalog,
            orders,
            notifications,
            admin: ops.admin,
            shutdown,
            tasks,
            _ops: ops,
            _locks: locks,
        })
    }

    /// Stop accepting, let in-flight requests finish, and wait for every service.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
