//! Owns the local stack: all four services (auth, users, catalog, orders) started in one
//! process, each on its own port with its own database. The `stack` binary runs it on
//! fixed ports for `.ci/local`; the end-to-end test runs the same code on free ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, AuthConfig, AuthState, SigningAlg};
use crate::catalog::{self, CatalogState};
use crate::common::{db, http::Metrics};
use crate::orders::{self, OrdersState};
use crate::users::{self, UsersState};

#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Port 0 picks a free port.
    pub auth: SocketAddr,
    pub users: SocketAddr,
    pub catalog: SocketAddr,
    pub orders: SocketAddr,
    /// Directory for the four database files; `None` keeps them in memory.
    pub data_dir: Option<PathBuf>,
    pub issuer: String,
    pub admin_emails: Vec<String>,
}

/// A running stack; `stop` shuts every service down gracefully.
#[derive(Debug)]
pub struct Stack {
    pub auth: SocketAddr,
    pub users: SocketAddr,
    pub catalog: SocketAddr,
    pub orders: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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

impl Stack {
    pub async fn start(cfg: StackConfig) -> anyhow::Result<Stack> {
        if let Some(dir) = &cfg.data_dir {
            std::fs::create_dir_all(dir)?;
        }
        let (shutdown, _) = watch::channel(false);
        let mut tasks = Vec::new();

        let pool = db::open(&database(&cfg.data_dir, "auth"), auth::SCHEMA).await?;
        auth::ensure_keys(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("signing keys: {}", e.message))?;
        let auth_state = AuthState {
            db: pool,
            config: Arc::new(AuthConfig {
                issuer: cfg.issuer.clone(),
                audience: "api".into(),
                token_ttl: Duration::from_secs(900),
                signing_alg: SigningAlg::Rs256,
                admin_emails: cfg.admin_emails.clone(),
            }),
        };
        let auth = spawn(
            "auth",
            cfg.auth,
            auth::app(auth_state, Arc::new(Metrics::new("auth")?)),
            &shutdown,
            &mut tasks,
        )
        .await?;

        let pool = db::open(&database(&cfg.data_dir, "users"), users::SCHEMA).await?;
        let users = spawn(
            "users",
            cfg.users,
            users::app(UsersState { db: pool }, Arc::new(Metrics::new("users")?)),
            &shutdown,
            &mut tasks,
        )
        .await?;

        let pool = db::open(&database(&cfg.data_dir, "catalog"), catalog::SCHEMA).await?;
        catalog::seed(&pool).await?;
        let catalog = spawn(
            "catalog",
            cfg.catalog,
            catalog::app(
                CatalogState { db: pool },
                Arc::new(Metrics::new("catalog")?),
            ),
            &shutdown,
            &mut tasks,
        )
        .await?;

        let pool = db::open(&database(&cfg.data_dir, "orders"), orders::SCHEMA).await?;
        let state = OrdersState::new(pool, &format!("http://{catalog}"), Duration::from_secs(2))?;
        let orders = spawn(
            "orders",
            cfg.orders,
            orders::app(state, Arc::new(Metrics::new("orders")?)),
            &shutdown,
            &mut tasks,
        )
        .await?;

        Ok(Stack {
            auth,
            users,
            catalog,
            orders,
            shutdown,
            tasks,
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
