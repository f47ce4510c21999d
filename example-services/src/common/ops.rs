//! Owns what every service binary shares for looking after its database: the backup
//! flags (`--backup-dir`, `--backup-interval`, `--backup-keep`, `--admin-listen`), the
//! schedule, the loopback-only admin port (`POST /admin/backup`, `GET /admin/backups`),
//! and the `backup`, `backups` and `restore` subcommands. The backups themselves are
//! [`super::backup`]'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::task::JoinHandle;

use super::backup::{self, Backups, Target};
use super::error::{ApiError, QueryParams};

/// Backup flags, the same on every service binary.
#[derive(clap::Args, Clone, Debug)]
pub struct BackupArgs {
    /// Directory for backups (`<service>-<time>.db`); needed by the schedule, the admin
    /// port and the `backup` subcommand.
    #[arg(long, env = "BACKUP_DIR", global = true)]
    pub backup_dir: Option<PathBuf>,
    /// Back up on this schedule (e.g. `1h`, `15m`); no scheduled backups without it.
    #[arg(long, env = "BACKUP_INTERVAL", value_parser = humantime::parse_duration)]
    pub backup_interval: Option<Duration>,
    /// How many backups of each database to keep; older ones are removed.
    #[arg(long, env = "BACKUP_KEEP", default_value_t = 24, global = true)]
    pub backup_keep: usize,
    /// Loopback address for the admin port (`POST /admin/backup`); off without it.
    #[arg(long, env = "ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

impl Default for BackupArgs {
    /// No backups, as without any flag.
    fn default() -> Self {
        Self {
            backup_dir: None,
            backup_interval: None,
            backup_keep: 24,
            admin_listen: None,
        }
    }
}

/// Subcommands for the service's database; without one, the binary serves.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum DbCommand {
    /// Back the database up once into --backup-dir, check it and exit. Online: the
    /// service may keep running.
    Backup,
    /// List the backups in --backup-dir, oldest first.
    Backups,
    /// Replace the database with a backup file, after checking it. Stop the service
    /// first; the replaced file is kept as `<database>.pre-restore-<time>`.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
    },
}

impl BackupArgs {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        self.backup_dir
            .clone()
            .context("--backup-dir (or BACKUP_DIR) is needed for backups")
    }

    /// Refuse flag combinations that cannot work, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.backup_keep == 0 {
            anyhow::bail!("--backup-keep must be at least 1");
        }
        if let Some(addr) = self.admin_listen
            && !addr.ip().is_loopback()
        {
            anyhow::bail!(
                "--admin-listen {addr}: the admin port takes no credentials, so it only listens on loopback (127.0.0.1 or ::1)"
            );
        }
        if (self.admin_listen.is_some() || self.backup_interval.is_some())
            && self.backup_dir.is_none()
        {
            anyhow::bail!("--backup-interval and --admin-listen need --backup-dir");
        }
        if self
            .backup_interval
            .is_some_and(|i| i < Duration::from_secs(1))
        {
            anyhow::bail!("--backup-interval must be at least 1s");
        }
        Ok(())
    }
}

/// Run a database subcommand for `service` (its database at `database`, with `schema`).
pub async fn run_command(
    cmd: DbCommand,
    service: &str,
    database: &str,
    schema: &str,
    args: &BackupArgs,
) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Backup => {
            let dir = args.dir()?;
            let file = backup::database_file(database)
                .context("an in-memory database has nothing to back up")?;
            // Read-only: the running service owns the schema and every write.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(SqliteConnectOptions::new().filename(&file).read_only(true))
                .await
                .with_context(|| format!("open {}", file.display()))?;
            let done = backup::backup(&pool, &dir, service, args.backup_keep).await;
            pool.close().await;
            let done = done?;
            println!(
                "{}",
                json!({"database": done.database, "path": done.path, "bytes": done.bytes, "integrity": done.integrity})
            );
        }
        DbCommand::Backups => {
            for b in backup::list(&args.dir()?, service)? {
                println!("{}\t{}", b.path.display(), b.bytes);
            }
        }
        DbCommand::Restore { from } => {
            let done = backup::restore(&from, database, service, schema).await?;
            println!(
                "restored {} from {}{}",
                done.database.display(),
                from.display(),
                done.kept
                    .map(|k| format!("; the replaced database is kept as {}", k.display()))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// The schedule and the admin port of a running service; both stop when dropped.
#[derive(Debug)]
pub struct Ops {
    pub backups: Option<Arc<Backups>>,
    pub admin: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Ops {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Start what `args` ask for over `targets`: scheduled backups and the admin port.
pub async fn start(args: &BackupArgs, targets: Vec<Target>) -> anyhow::Result<Ops> {
    args.check()?;
    let mut ops = Ops {
        backups: None,
        admin: None,
        tasks: Vec::new(),
    };
    let Some(dir) = args.backup_dir.clone() else {
        return Ok(ops);
    };
    let backups = Arc::new(Backups::new(dir, args.backup_keep, targets));
    if let Some(every) = args.backup_interval {
        let b = Arc::clone(&backups);
        ops.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // A failure is logged and counted (backups_total{result="failed"}); the
                // next tick tries again.
                let _ = b.run(None).await;
            }
        }));
        tracing::info!(every = %humantime::format_duration(every), "scheduled backups");
    }
    if let Some(addr) = args.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin port {addr}"))?;
        let bound = listener.local_addr()?;
        let app = admin_app(Arc::clone(&backups));
        ops.tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "admin port stopped");
            }
        }));
        tracing::info!(address = %bound, "admin port listening");
        ops.admin = Some(bound);
    }
    ops.backups = Some(backups);
    Ok(ops)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Which {
    database: Option<String>,
}

async fn backup_now(
    State(b): State<Arc<Backups>>,
    QueryParams(which): QueryParams<Which>,
) -> Result<Response, ApiError> {
    if let Some(name) = &which.database
        && !b.names().contains(&name.as_str())
    {
        return Err(ApiError::not_found(
            "unknown_database",
            format!("no database {name:?} here (have: {})", b.names().join(", ")),
        ));
    }
    match b.run(which.database.as_deref()).await {
        Ok(done) => Ok((StatusCode::CREATED, axum::Json(json!({"backups": done}))).into_response()),
        // The operator's own port: say what failed.
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup_failed",
            e.to_string(),
        )),
    }
}

async fn list_backups(State(b): State<Arc<Backups>>) -> Result<Response, ApiError> {
    let files = b.list().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup_dir_unreadable",
            e.to_string(),
        )
    })?;
    Ok(axum::Json(json!({"dir": b.dir, "keep": b.keep, "backups": files})).into_response())
}

/// The admin port's router (loopback only; see [`BackupArgs::check`]).
pub fn admin_app(backups: Arc<Backups>) -> Router {
    Router::new()
        .route("/admin/backup", post(backup_now))
        .route("/admin/backups", get(list_backups))
        .fallback(|| async { ApiError::not_found("not_found", "no such admin resource") })
        .with_state(backups)
}
