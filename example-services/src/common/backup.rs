//! Owns online backups and restores of a service's SQLite database.
//!
//! A backup is `VACUUM INTO` a new file while the service keeps serving: in WAL mode the
//! copy is one read transaction, so writers carry on and the copy is a consistent
//! snapshot of one moment. The copy only counts once `PRAGMA integrity_check` on it says
//! `ok`; it is then fsynced, renamed into place (never a half-written `*.db` in the
//! directory) and the oldest backups beyond the last N are removed.
//!
//! A restore replaces a stopped service's database with a checked backup. The service
//! holds an exclusive lock on `<database>.lock` while it runs ([`hold_lock`]), so a
//! restore under a running service is refused instead of corrupting it; the replaced file
//! (and its WAL) is kept aside, never deleted.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounterVec, IntGauge, Opts};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{ConnectOptions, Connection, Row};

use super::http::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{} failed its integrity check: {detail}", path.display())]
    Integrity { path: PathBuf, detail: String },
    #[error(
        "{} is in use: a running service holds {}; stop it before restoring",
        database.display(),
        lock.display()
    )]
    InUse { database: PathBuf, lock: PathBuf },
    #[error("{} does not look like a backup of the {service} database (its tables: {found})", path.display())]
    WrongDatabase {
        path: PathBuf,
        service: String,
        found: String,
    },
    #[error("{0} is an in-memory database: there is no file to restore into")]
    InMemory(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file behind a `db::open` location, or `None` for an in-memory database.
pub fn database_file(location: &str) -> Option<PathBuf> {
    if location.contains(":memory:") || location.contains("mode=memory") {
        return None;
    }
    let path = location
        .strip_prefix("sqlite://")
        .or_else(|| location.strip_prefix("sqlite:"))
        .unwrap_or(location);
    let path = path.split('?').next().unwrap_or(path);
    Some(PathBuf::from(path))
}

/// The lock a running service holds on its database (released when dropped).
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Take the exclusive lock on the database at `location` for as long as the returned
/// guard lives. `None` for in-memory databases. Fails when another process holds it:
/// two services sharing one database file, or a restore in progress.
pub fn hold_lock(location: &str) -> Result<Option<DbLock>, BackupError> {
    let Some(db) = database_file(location) else {
        return Ok(None);
    };
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let lock = lock_path(&db);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(io_err(&lock))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(DbLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Err(BackupError::InUse { database: db, lock }),
        Err(std::fs::TryLockError::Error(e)) => Err(BackupError::Io {
            path: lock,
            source: e,
        }),
    }
}

/// One finished, checked backup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Backup {
    pub database: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// What `PRAGMA integrity_check` said: always `ok` for a backup that exists.
    pub integrity: &'static str,
    pub seconds: f64,
}

/// A backup file found in the backup directory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupFile {
    pub database: String,
    pub path: PathBuf,
    pub bytes: u64,
}

/// `PRAGMA integrity_check` on the database file at `path`, opened read-only.
pub async fn integrity_check(path: &Path) -> Result<(), BackupError> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await?;
    let rows = sqlx::query("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await;
    conn.close().await?;
    let lines = rows?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(BackupError::Integrity {
            path: path.to_owned(),
            detail: lines.join("; "),
        })
    }
}

/// `20250301T101500.123Z`: sortable, and legal in every file system's names.
fn stamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn restrict(path: &Path) -> Result<(), BackupError> {
    // Backups hold everything the database does (the auth service's signing keys
    // included): owner-only, like the database should be.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))
}

/// Back `db` up into `dir` as `<name>-<time>.db`, check it, and keep the newest `keep`.
pub async fn backup(
    db: &SqlitePool,
    dir: &Path,
    name: &str,
    keep: usize,
) -> Result<Backup, BackupError> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (partial, path) = loop {
        let file = format!("{name}-{}.db", stamp());
        let path = dir.join(&file);
        let partial = dir.join(format!(".{file}.partial"));
        if !path.exists() && !partial.exists() {
            break (partial, path);
        }
        // Two backups in one millisecond: the next name is a millisecond away.
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let result = async {
        sqlx::query("VACUUM INTO ?")
            .bind(partial.to_string_lossy().as_ref())
            .execute(db)
            .await?;
        restrict(&partial)?;
        integrity_check(&partial).await?;
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&partial))?;
        std::fs::rename(&partial, &path).map_err(io_err(&path))?;
        sync_dir(dir)
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let bytes = std::fs::metadata(&path).map_err(io_err(&path))?.len();
    prune(dir, name, keep)?;
    tracing::info!(database = name, path = %path.display(), bytes, "backup written and checked");
    Ok(Backup {
        database: name.to_owned(),
        path,
        bytes,
        integrity: "ok",
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The backups of `name` in `dir`, oldest first.
pub fn list(dir: &Path, name: &str) -> Result<Vec<BackupFile>, BackupError> {
    let prefix = format!("{name}-");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        // `<name>-<stamp>.db` where the stamp starts with a digit: `orders-...` never
        // matches a service named `orders-archive`.
        let ours = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".db"))
            .is_some_and(|stamp| stamp.starts_with(|c: char| c.is_ascii_digit()));
        if ours {
            let bytes = entry.metadata().map_err(io_err(&entry.path()))?.len();
            out.push(BackupFile {
                database: name.to_owned(),
                path: entry.path(),
                bytes,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn prune(dir: &Path, name: &str, keep: usize) -> Result<(), BackupError> {
    let all = list(dir, name)?;
    let excess = all.len().saturating_sub(keep.max(1));
    for old in &all[..excess] {
        std::fs::remove_file(&old.path).map_err(io_err(&old.path))?;
        tracing::info!(path = %old.path.display(), "old backup removed");
    }
    Ok(())
}

/// Table names a schema creates (`CREATE TABLE IF NOT EXISTS name`).
fn schema_tables(schema: &str) -> Vec<String> {
    schema
        .split("CREATE TABLE IF NOT EXISTS")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|t| t.trim_end_matches('(').to_owned())
        .collect()
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub database: PathBuf,
    /// Where the replaced database went, if there was one.
    pub kept: Option<PathBuf>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Replace the (stopped) service's database at `location` with the backup `from`, after
/// checking the backup's integrity and that it holds the service's tables (`schema`).
pub async fn restore(
    from: &Path,
    location: &str,
    service: &str,
    schema: &str,
) -> Result<Restored, BackupError> {
    let db = database_file(location).ok_or_else(|| BackupError::InMemory(location.to_owned()))?;
    if !from.is_file() {
        return Err(BackupError::Io {
            path: from.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such backup file"),
        });
    }
    integrity_check(from).await?;
    let mut conn = SqliteConnectOptions::new()
        .filename(from)
        .read_only(true)
        .connect()
        .await?;
    let found: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await?;
    conn.close().await?;
    // A backup from an older version may lack newer tables (the schema adds them at
    // start); one sharing none of them is another service's.
    if !schema_tables(schema).iter().any(|t| found.contains(t)) {
        return Err(BackupError::WrongDatabase {
            path: from.to_owned(),
            service: service.to_owned(),
            found: found.join(", "),
        });
    }
    let _lock = hold_lock(location)?;
    let staged = with_suffix(&db, ".restoring");
    std::fs::copy(from, &staged).map_err(io_err(&staged))?;
    restrict(&staged)?;
    File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&staged))?;
    let kept = if db.exists() {
        let aside = with_suffix(&db, &format!(".pre-restore-{}", stamp()));
        std::fs::rename(&db, &aside).map_err(io_err(&aside))?;
        // The old database's WAL belongs to it: applied to the restored file it would
        // corrupt it, so it moves along (and the index of it goes).
        let wal = with_suffix(&db, "-wal");
        if wal.exists() {
            let to = with_suffix(&aside, "-wal");
            std::fs::rename(&wal, &to).map_err(io_err(&to))?;
        }
        Some(aside)
    } else {
        None
    };
    let shm = with_suffix(&db, "-shm");
    if shm.exists() {
        std::fs::remove_file(&shm).map_err(io_err(&shm))?;
    }
    std::fs::rename(&staged, &db).map_err(io_err(&db))?;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    tracing::info!(database = %db.display(), from = %from.display(), "database restored");
    Ok(Restored { database: db, kept })
}

/// One database a process backs up, with the metrics it reports in its service's
/// registry.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub db: SqlitePool,
    runs: IntCounterVec,
    last_success: IntGauge,
    last_bytes: IntGauge,
}

impl Target {
    pub fn new(name: &str, db: SqlitePool, metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let runs = IntCounterVec::new(
            Opts::new("backups_total", "Database backups, by result"),
            &["result"],
        )?;
        let last_success = IntGauge::new(
            "last_backup_success_timestamp_seconds",
            "When the last good backup finished (Unix time)",
        )?;
        let last_bytes = IntGauge::new("last_backup_bytes", "Size of the last good backup")?;
        let registry = metrics.registry();
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(last_bytes.clone()))?;
        Ok(Self {
            name: name.to_owned(),
            db,
            runs,
            last_success,
            last_bytes,
        })
    }
}

/// The backups one process makes: its databases, where they go, how many are kept.
/// Scheduled and on-demand backups share it, one at a time.
#[derive(Debug)]
pub struct Backups {
    pub dir: PathBuf,
    pub keep: usize,
    targets: Vec<Target>,
    running: tokio::sync::Mutex<()>,
}

impl Backups {
    pub fn new(dir: PathBuf, keep: usize, targets: Vec<Target>) -> Self {
        Self {
            dir,
            keep: keep.max(1),
            targets,
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn names(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.name.as_str()).collect()
    }

    /// Back up every database, or only the one named `only`; stops at the first failure.
    pub async fn run(&self, only: Option<&str>) -> Result<Vec<Backup>, BackupError> {
        let _one_at_a_time = self.running.lock().await;
        let mut done = Vec::new();
        for t in self
            .targets
            .iter()
            .filter(|t| only.is_none_or(|o| o == t.name))
        {
            match backup(&t.db, &self.dir, &t.name, self.keep).await {
                Ok(b) => {
                    t.runs.with_label_values(&["ok"]).inc();
                    t.last_success.set(
                        SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64),
                    );
                    t.last_bytes.set(b.bytes as i64);
                    done.push(b);
                }
                Err(e) => {
                    t.runs.with_label_values(&["failed"]).inc();
                    tracing::error!(database = %t.name, error = %e, "backup failed");
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    /// Every backup in the directory, per database, oldest first.
    pub fn list(&self) -> Result<Vec<BackupFile>, BackupError> {
        let mut out = Vec::new();
        for t in &self.targets {
            out.extend(list(&self.dir, &t.name)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_map_to_files() {
        assert_eq!(database_file("sqlite::memory:"), None);
        assert_eq!(database_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(
            database_file("sqlite://data/a.db?mode=rwc"),
            Some("data/a.db".into())
        );
        assert_eq!(database_file("sqlite:a.db"), Some("a.db".into()));
        assert_eq!(database_file("/var/lib/a.db"), Some("/var/lib/a.db".into()));
    }

    #[test]
    fn tables_of_a_schema() {
        let s = "CREATE TABLE IF NOT EXISTS a (x); CREATE INDEX IF NOT EXISTS i ON a (x);\nCREATE TABLE IF NOT EXISTS b(\n y)";
        assert_eq!(schema_tables(s), ["a", "b"]);
    }
}
