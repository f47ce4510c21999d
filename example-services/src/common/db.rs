//! Owns a service's SQLite database: opened (and created) from a path or `sqlite:` URL,
//! with its schema applied at start. Each service has its own file; tests use memory.

use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// Open `location` (`sqlite::memory:`, a `sqlite:` URL or a file path) and run
/// `schema` (idempotent `CREATE ... IF NOT EXISTS` statements).
pub async fn open(location: &str, schema: &str) -> Result<SqlitePool, sqlx::Error> {
    let memory = location.contains(":memory:");
    let options = if location.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(location)?
    } else {
        SqliteConnectOptions::new().filename(location)
    }
    .create_if_missing(true)
    .foreign_keys(true);
    let options = if memory {
        options
    } else {
        options.journal_mode(SqliteJournalMode::Wal)
    };
    // An in-memory database lives in one connection; files take a small pool.
    let pool = SqlitePoolOptions::new()
        .max_connections(if memory { 1 } else { 8 })
        .connect_with(options)
        .await?;
    sqlx::raw_sql(schema).execute(&pool).await?;
    Ok(pool)
}
