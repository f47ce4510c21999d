//! Owns the transactional outbox: the `outbox` table a service writes events into inside
//! the transaction of the change they describe ([`enqueue`]), and the [`Relay`] that
//! publishes unsent rows in order and then marks them sent.
//!
//! Why this gives no lost and no phantom events: the event row commits or rolls back
//! with the order, so there is never an order without its event or an event without its
//! order; a row is marked sent only after the publisher accepted it, so a crash at any
//! point leaves it unsent and it is published again (a duplicate, which consumers absorb
//! by event id) rather than never.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{Notify, watch};

use super::redis::StreamPublisher;
use super::{Event, EventSink};
use crate::common::http::Metrics;

/// The outbox table, as a literal so that a service's own schema literal can include it
/// (`concat!(..., outbox_schema!())`): the table lives in the service's database, next
/// to the rows it describes.
#[macro_export]
macro_rules! outbox_schema {
    () => {
        "
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL,
    data        TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    sent_at     INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
"
    };
}

pub const SCHEMA: &str = outbox_schema!();

/// Write `event` into the outbox on `tx`, the transaction of the change it describes.
pub async fn enqueue(tx: &mut SqliteConnection, event: &Event) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (event_id, type, occurred_at, data) VALUES (?, ?, ?, ?)")
        .bind(&event.id)
        .bind(&event.kind)
        .bind(event.occurred_at)
        .bind(event.data.to_string())
        .execute(tx)
        .await?;
    Ok(())
}

/// Where the relay hands events.
#[derive(Clone)]
pub enum Publisher {
    /// `XADD` to a Redis Stream.
    Stream(StreamPublisher),
    /// Straight to a sink in this process (the one-process local stack, without Redis).
    InProcess(Arc<dyn EventSink>),
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stream(p) => write!(f, "Publisher::Stream({})", p.stream()),
            Self::InProcess(_) => f.write_str("Publisher::InProcess"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("publishing event {event}: {reason}")]
    Publish { event: String, reason: String },
}

impl Publisher {
    async fn publish(&mut self, event: &Event) -> Result<(), RelayError> {
        let failed = |reason: String| RelayError::Publish {
            event: event.id.clone(),
            reason,
        };
        match self {
            Self::Stream(p) => p
                .publish(event)
                .await
                .map(drop)
                .map_err(|e| failed(e.to_string())),
            Self::InProcess(sink) => sink
                .deliver(event)
                .await
                .map(drop)
                .map_err(|e| failed(e.to_string())),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Look for unsent rows at least this often (a commit also wakes the relay).
    pub poll: Duration,
    /// Rows per query.
    pub batch: i64,
    /// Sent rows older than this are deleted.
    pub retention: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            batch: 100,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Clone, Debug)]
struct OutboxMetrics {
    backlog: IntGauge,
    oldest_age: IntGauge,
    published: IntCounter,
    failures: IntCounter,
}

impl OutboxMetrics {
    fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let m = Self {
            backlog: IntGauge::new("outbox_backlog", "Outbox rows not yet published")?,
            oldest_age: IntGauge::new(
                "outbox_oldest_unsent_age_seconds",
                "Age of the oldest unpublished outbox row (0 when none)",
            )?,
            published: IntCounter::new("outbox_published_total", "Outbox rows published")?,
            failures: IntCounter::new(
                "outbox_publish_failures_total",
                "Relay rounds that stopped on a publish or database failure",
            )?,
        };
        let r = metrics.registry();
        r.register(Box::new(m.backlog.clone()))?;
        r.register(Box::new(m.oldest_age.clone()))?;
        r.register(Box::new(m.published.clone()))?;
        r.register(Box::new(m.failures.clone()))?;
        Ok(m)
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Publishes the outbox, in order, until stopped.
#[derive(Debug)]
pub struct Relay {
    db: SqlitePool,
    publisher: Publisher,
    wake: Arc<Notify>,
    metrics: OutboxMetrics,
    cfg: RelayConfig,
}

impl Relay {
    /// `wake` is notified after each commit that enqueued events.
    pub fn new(
        db: SqlitePool,
        publisher: Publisher,
        wake: Arc<Notify>,
        metrics: &Metrics,
        cfg: RelayConfig,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            db,
            publisher,
            wake,
            metrics: OutboxMetrics::new(metrics)?,
            cfg,
        })
    }

    /// Publish every unsent row, oldest first; stops at the first failure so events
    /// leave in the order they were written. Returns how many were published.
    pub async fn drain(&mut self) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            let rows = sqlx::query(
                "SELECT seq, event_id, type, occurred_at, data FROM outbox
                 WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
            )
            .bind(self.cfg.batch)
            .fetch_all(&self.db)
            .await?;
            let full = rows.len() as i64 == self.cfg.batch;
            let mut sent = Vec::with_capacity(rows.len());
            let mut failure = None;
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let data: String = row.try_get("data")?;
                let event = Event {
                    id: row.try_get("event_id")?,
                    kind: row.try_get("type")?,
                    occurred_at: row.try_get("occurred_at")?,
                    data: serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data)),
                };
                match self.publisher.publish(&event).await {
                    Ok(()) => sent.push(seq),
                    Err(e) => {
                        failure = Some((seq, e));
                        break;
                    }
                }
            }
            // Published but not yet marked: a crash here publishes these again.
            self.mark_sent(&sent).await?;
            self.metrics.published.inc_by(sent.len() as u64);
            total += sent.len();
            if let Some((seq, e)) = failure {
                let _ = sqlx::query("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?")
                    .bind(seq)
                    .execute(&self.db)
                    .await;
                return Err(e);
            }
            if !full {
                return Ok(total);
            }
        }
    }

    async fn mark_sent(&self, seqs: &[i64]) -> Result<(), sqlx::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        let now = now_secs();
        let mut tx = self.db.begin().await?;
        for seq in seqs {
            sqlx::query("UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE seq = ?")
                .bind(now)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    async fn refresh_gauges(&self) -> Result<(), sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(occurred_at) AS oldest FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&self.db)
        .await?;
        let n: i64 = row.try_get("n")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        self.metrics.backlog.set(n);
        self.metrics
            .oldest_age
            .set(oldest.map_or(0, |t| (now_secs() - t).max(0)));
        Ok(())
    }

    async fn prune(&self) -> Result<u64, sqlx::Error> {
        let cutoff = now_secs() - self.cfg.retention.as_secs() as i64;
        Ok(
            sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?")
                .bind(cutoff)
                .execute(&self.db)
                .await?
                .rows_affected(),
        )
    }

    /// Relay until `stop` turns true (or its sender goes). Failures back off from
    /// 100 ms to 5 s; rows wait in the outbox meanwhile.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(publisher = ?self.publisher, "outbox relay running");
        let mut backoff = Duration::ZERO;
        let mut pruned = Instant::now();
        loop {
            let wait = match self.drain().await {
                Ok(_) => {
                    if !backoff.is_zero() {
                        tracing::info!("outbox relay recovered");
                    }
                    backoff = Duration::ZERO;
                    self.cfg.poll
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay: rows wait");
                    backoff
                }
            };
            if let Err(e) = self.refresh_gauges().await {
                tracing::warn!(error = %e, "outbox gauges");
            }
            if pruned.elapsed() >= Duration::from_secs(60) {
                pruned = Instant::now();
                match self.prune().await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "sent outbox rows pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "outbox prune"),
                }
            }
            let healthy = backoff.is_zero();
            tokio::select! {
                // While failing, commits do not cut the back-off short.
                () = self.wake.notified(), if healthy => {}
                () = tokio::time::sleep(wait) => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }
}
