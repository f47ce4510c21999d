//! Owns the Redis side of event delivery for publishers: a lazily (re)established
//! connection, so a service starts and keeps serving while Redis is down, and `XADD` of
//! one event to a stream, trimmed approximately to a maximum length.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAddOptions, StreamTrimStrategy, StreamTrimmingMode};

use super::Event;

/// A Redis connection made on first use and remade after a failure; commands time out
/// after `timeout` (a paused or unreachable Redis fails fast instead of hanging).
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: Option<ConnectionManager>,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("connected", &self.conn.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Parse `url` (`redis://host:port/db`); nothing is connected yet.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: None,
            timeout,
        })
    }

    /// The connection, connecting first when there is none.
    pub async fn conn(&mut self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1_000);
        let c = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        self.conn = Some(c.clone());
        Ok(c)
    }
}

/// Publishes events to one stream with `XADD`.
#[derive(Clone, Debug)]
pub struct StreamPublisher {
    redis: Redis,
    stream: String,
    max_len: usize,
}

impl StreamPublisher {
    /// `max_len` bounds the stream (approximately, `MAXLEN ~`): keep it well above the
    /// most events consumers may fall behind by, or they miss the trimmed ones.
    pub fn new(redis: Redis, stream: &str, max_len: usize) -> Self {
        Self {
            redis,
            stream: stream.to_owned(),
            max_len,
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// `XADD` the event; the stream entry id on success.
    pub async fn publish(&mut self, event: &Event) -> Result<String, redis::RedisError> {
        let mut conn = self.redis.conn().await?;
        let options = StreamAddOptions::default().trim(StreamTrimStrategy::maxlen(
            StreamTrimmingMode::Approx,
            self.max_len,
        ));
        let id: Option<String> = conn
            .xadd_options(&self.stream, "*", &event.fields(), &options)
            .await?;
        // Only `NOMKSTREAM` (not used) makes XADD answer nil.
        Ok(id.unwrap_or_default())
    }
}
