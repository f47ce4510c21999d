//! Owns reading a Redis Stream as one member of a consumer group: `XREADGROUP` for new
//! entries, the sink ([`EventSink`]) for each, `XACK` only after the sink took it, and
//! `XAUTOCLAIM` for entries left pending longer than `claim_idle` by a consumer that
//! died between reading and acking (or by this one, when its sink failed).
//!
//! An entry that is not an event is copied to `<stream>.dead` with the reason and acked,
//! so one bad entry cannot block the group. When Redis restarts without its data the
//! group is created again (from the stream's start). Metrics: redeliveries, dead letters,
//! the group's lag (entries not yet read) and pending count (read, not acked).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoConsumersReply,
    StreamInfoGroupsReply, StreamReadOptions, StreamReadReply,
};
use tokio::sync::watch;

use super::redis::Redis;
use super::{Event, EventSink, SinkError};
use crate::common::http::Metrics;

/// Consumers of the group idle this long with nothing pending are removed (each
/// restart of a pod is a new consumer name).
const FORGET_IDLE_CONSUMERS: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub stream: String,
    pub group: String,
    /// This process's name in the group (unique among live consumers).
    pub consumer: String,
    /// Entries pending longer than this are taken over with `XAUTOCLAIM`.
    pub claim_idle: Duration,
    /// How long one `XREADGROUP` waits for new entries.
    pub block: Duration,
    /// Entries per read or claim.
    pub batch: usize,
}

#[derive(Debug, thiserror::Error)]
enum ConsumerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
}

#[derive(Clone, Debug)]
struct ConsumerMetrics {
    redeliveries: IntCounter,
    dead_letters: IntCounter,
    lag: IntGauge,
    pending: IntGauge,
    failures: IntCounter,
}

impl ConsumerMetrics {
    fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let m = Self {
            redeliveries: IntCounter::new(
                "stream_redeliveries_total",
                "Entries taken over with XAUTOCLAIM after another delivery was not acked",
            )?,
            dead_letters: IntCounter::new(
                "stream_dead_letters_total",
                "Entries that were not events, moved to the dead-letter stream",
            )?,
            lag: IntGauge::new(
                "stream_lag",
                "Entries in the stream the consumer group has not read yet",
            )?,
            pending: IntGauge::new(
                "stream_pending",
                "Entries the consumer group read but did not acknowledge yet",
            )?,
            failures: IntCounter::new(
                "stream_consumer_failures_total",
                "Consumer rounds that failed (Redis unreachable, sink failed)",
            )?,
        };
        let r = metrics.registry();
        r.register(Box::new(m.redeliveries.clone()))?;
        r.register(Box::new(m.dead_letters.clone()))?;
        r.register(Box::new(m.lag.clone()))?;
        r.register(Box::new(m.pending.clone()))?;
        r.register(Box::new(m.failures.clone()))?;
        Ok(m)
    }
}

/// One consumer of a stream's consumer group, feeding a sink.
pub struct StreamConsumer {
    redis: Redis,
    cfg: ConsumerConfig,
    sink: Arc<dyn EventSink>,
    metrics: ConsumerMetrics,
    group_ready: bool,
}

impl std::fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl StreamConsumer {
    pub fn new(
        url: &str,
        cfg: ConsumerConfig,
        sink: Arc<dyn EventSink>,
        metrics: &Metrics,
    ) -> Result<Self, anyhow::Error> {
        // A blocked read holds the connection for `block`; answers may take that long.
        let redis = Redis::new(url, cfg.block + Duration::from_secs(3))?;
        Ok(Self {
            redis,
            cfg,
            sink,
            metrics: ConsumerMetrics::new(metrics)?,
            group_ready: false,
        })
    }

    /// Consume until `stop` turns true; failures back off from 100 ms to 5 s.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(stream = %self.cfg.stream, group = %self.cfg.group, consumer = %self.cfg.consumer, "stream consumer running");
        let claim_every =
            (self.cfg.claim_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
        let mut next_claim = Instant::now();
        let mut next_observe = Instant::now();
        let mut backoff = Duration::ZERO;
        loop {
            if *stop.borrow() {
                return;
            }
            let round = self.round(&mut next_claim, claim_every, &mut next_observe);
            let result = tokio::select! {
                r = round => r,
                _ = stop.changed() => return,
            };
            match result {
                Ok(()) => {
                    if !backoff.is_zero() {
                        tracing::info!("stream consumer recovered");
                    }
                    backoff = Duration::ZERO;
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    if let ConsumerError::Redis(r) = &e
                        && r.code() == Some("NOGROUP")
                    {
                        // Redis lost the stream or the group (a restart without
                        // persistence): make it again.
                        self.group_ready = false;
                    }
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?backoff, "stream consumer");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    async fn round(
        &mut self,
        next_claim: &mut Instant,
        claim_every: Duration,
        next_observe: &mut Instant,
    ) -> Result<(), ConsumerError> {
        let mut conn = self.redis.conn().await?;
        if !self.group_ready {
            self.create_group(&mut conn).await?;
            self.group_ready = true;
            *next_claim = Instant::now();
        }
        if Instant::now() >= *next_claim {
            self.claim(&mut conn).await?;
            *next_claim = Instant::now() + claim_every;
        }
        if Instant::now() >= *next_observe {
            if let Err(e) = self.observe(&mut conn).await {
                tracing::debug!(error = %e, "stream metrics");
            }
            *next_observe = Instant::now() + Duration::from_secs(5);
        }
        let options = StreamReadOptions::default()
            .group(&self.cfg.group, &self.cfg.consumer)
            .count(self.cfg.batch)
            .block(self.cfg.block.as_millis() as usize);
        let reply: Option<StreamReadReply> = conn
            .xread_options(&[&self.cfg.stream], &[">"], &options)
            .await?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            self.handle(&mut conn, key.ids, false).await?;
        }
        Ok(())
    }

    async fn create_group(&self, conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
        // From "0", not "$": events published before the group existed are read too
        // (the sink absorbs any it has seen).
        let made: Result<(), _> = conn
            .xgroup_create_mkstream(&self.cfg.stream, &self.cfg.group, "0")
            .await;
        match made {
            Ok(()) => {
                tracing::info!(stream = %self.cfg.stream, group = %self.cfg.group, "consumer group created");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Take over entries pending longer than `claim_idle`, whoever holds them.
    async fn claim(&mut self, conn: &mut ConnectionManager) -> Result<(), ConsumerError> {
        let mut cursor = "0-0".to_owned();
        // Bounded per round, so new entries are not starved behind a long pending list.
        for _ in 0..10 {
            let reply: StreamAutoClaimReply = conn
                .xautoclaim_options(
                    &self.cfg.stream,
                    &self.cfg.group,
                    &self.cfg.consumer,
                    self.cfg.claim_idle.as_millis() as u64,
                    &cursor,
                    StreamAutoClaimOptions::default().count(self.cfg.batch),
                )
                .await?;
            if !reply.deleted_ids.is_empty() {
                // Trimmed from the stream before anyone acked them: gone for good.
                tracing::warn!(entries = ?reply.deleted_ids, "pending entries were trimmed from the stream before they were processed");
            }
            if !reply.claimed.is_empty() {
                tracing::info!(
                    entries = reply.claimed.len(),
                    "claimed entries another delivery left pending"
                );
            }
            self.handle(conn, reply.claimed, true).await?;
            cursor = reply.next_stream_id;
            if cursor == "0-0" {
                break;
            }
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        conn: &mut ConnectionManager,
        entries: Vec<StreamId>,
        redelivered: bool,
    ) -> Result<(), ConsumerError> {
        for entry in entries {
            if redelivered {
                self.metrics.redeliveries.inc();
            }
            match Event::from_fields(&entry.map) {
                Ok(event) => {
                    // Not acked when the sink fails: it stays pending and is claimed
                    // again after `claim_idle`.
                    self.sink.deliver(&event).await?;
                }
                Err(bad) => {
                    self.dead_letter(conn, &entry, &bad.to_string()).await?;
                }
            }
            let _: i64 = conn
                .xack(&self.cfg.stream, &self.cfg.group, &[&entry.id])
                .await?;
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        conn: &mut ConnectionManager,
        entry: &StreamId,
        reason: &str,
    ) -> Result<(), redis::RedisError> {
        let mut fields: Vec<(String, Vec<u8>)> = vec![
            ("dead_reason".into(), reason.as_bytes().to_vec()),
            ("dead_source_id".into(), entry.id.as_bytes().to_vec()),
        ];
        for (k, v) in &entry.map {
            if let Ok(bytes) = redis::from_redis_value::<Vec<u8>>(v) {
                fields.push((k.clone(), bytes));
            }
        }
        let dead = format!("{}.dead", self.cfg.stream);
        let _: Option<String> = conn.xadd(&dead, "*", &fields).await?;
        self.metrics.dead_letters.inc();
        tracing::warn!(entry = %entry.id, reason, stream = %dead, "entry moved to the dead-letter stream");
        Ok(())
    }

    /// Lag and pending count of the group, and removal of long-idle empty consumers.
    async fn observe(&self, conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
        let groups: StreamInfoGroupsReply = conn.xinfo_groups(&self.cfg.stream).await?;
        if let Some(g) = groups.groups.iter().find(|g| g.name == self.cfg.group) {
            self.metrics.pending.set(g.pending as i64);
            // Redis reports no lag when it cannot tell (after deletions); keep the last.
            if let Some(lag) = g.lag {
                self.metrics.lag.set(lag as i64);
            }
        }
        let consumers: StreamInfoConsumersReply = conn
            .xinfo_consumers(&self.cfg.stream, &self.cfg.group)
            .await?;
        for c in consumers.consumers {
            if c.name != self.cfg.consumer
                && c.pending == 0
                && c.idle as u128 > FORGET_IDLE_CONSUMERS.as_millis()
            {
                let _: i64 = conn
                    .xgroup_delconsumer(&self.cfg.stream, &self.cfg.group, &c.name)
                    .await?;
                tracing::info!(consumer = %c.name, "idle consumer removed from the group");
            }
        }
        Ok(())
    }
}
