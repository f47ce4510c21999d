//! Owns event-driven messaging between the sample services: at-least-once delivery with
//! no lost and no phantom events.
//!
//! A service writes an event in the *same* SQLite transaction as the change it describes
//! (the transactional outbox, [`outbox`]): the event exists if and only if the change
//! committed. A relay then publishes outbox rows in order and marks them sent; a crash
//! between publishing and marking publishes the row again, so consumers see every event
//! at least once and must be idempotent (the event id is the key). Where the events go:
//!
//! - a Redis Stream ([`redis`]: `XADD`), read by a consumer group ([`consumer`]:
//!   `XREADGROUP`, `XACK`, `XAUTOCLAIM` for what a crashed consumer left pending);
//! - or, without Redis (the local stack in one process), an [`EventSink`] called
//!   in-process with the same at-least-once contract.

pub mod consumer;
pub mod outbox;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The stream orders publishes to (and notifications reads), unless configured.
pub const ORDERS_STREAM: &str = "orders.events";
/// An order was placed: `data` is `{order_id, user_id, total_cents, currency, items,
/// created_at}`.
pub const ORDER_CREATED: &str = "order.created";

/// One event: `id` is unique and the consumers' idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds.
    pub occurred_at: i64,
    pub data: Value,
}

/// A stream entry that is not an event (missing or malformed fields).
#[derive(Debug, thiserror::Error)]
#[error("malformed event: {0}")]
pub struct Malformed(pub String);

impl Event {
    pub fn new(kind: &str, data: Value) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.to_owned(),
            occurred_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            data,
        }
    }

    /// The fields of the event's stream entry.
    pub fn fields(&self) -> [(&'static str, String); 4] {
        [
            ("id", self.id.clone()),
            ("type", self.kind.clone()),
            ("occurred_at", self.occurred_at.to_string()),
            ("data", self.data.to_string()),
        ]
    }

    /// Read an event back from its stream entry's fields.
    pub fn from_fields(fields: &HashMap<String, ::redis::Value>) -> Result<Self, Malformed> {
        let text = |name: &str| -> Result<String, Malformed> {
            let v = fields
                .get(name)
                .ok_or_else(|| Malformed(format!("no {name} field")))?;
            ::redis::from_redis_value::<String>(v)
                .map_err(|_| Malformed(format!("{name} is not text")))
        };
        let id = text("id")?;
        if id.is_empty() || id.len() > 128 {
            return Err(Malformed("id must be 1-128 characters".into()));
        }
        Ok(Self {
            id,
            kind: text("type")?,
            occurred_at: text("occurred_at")?
                .parse()
                .map_err(|_| Malformed("occurred_at is not a number".into()))?,
            data: serde_json::from_str(&text("data")?)
                .map_err(|e| Malformed(format!("data is not JSON: {e}")))?,
        })
    }
}

/// What a sink did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Stored for the first time.
    Stored,
    /// Seen before (same id): nothing changed.
    Duplicate,
    /// Not a kind this sink handles.
    Ignored,
}

/// The sink could not take the event now (its database is down): deliver it again later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivery, SinkError>> + Send + 'a>>;

/// Where events end up: must be idempotent per event id, because delivery is at least
/// once. Only `Ok` counts as delivered.
pub trait EventSink: Send + Sync {
    fn deliver<'a>(&'a self, event: &'a Event) -> SinkFuture<'a>;
}
