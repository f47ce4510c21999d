//! Owns the `notifications` service: what callers are told about their orders.
//!
//! Events arrive at least once (from the orders outbox, through a Redis Stream consumer
//! group or in-process; see [`crate::events`]) and are stored idempotently: the event id
//! is the primary key, so a redelivered event changes nothing. `GET /v1/notifications`
//! lists the caller's own (the gateway says who calls, as for every service).
//! `POST /v1/notifications` lets another *service* notify a user: it needs a
//! client-credentials token with the `notifications:send` scope, which the gateway
//! verifies and forwards as `X-Client-Id` / `X-Client-Scopes` (removed from client
//! requests like every identity header); an `Idempotency-Key` makes a retry safe.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{IntCounterVec, Opts};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};

use crate::common::error::{ApiError, FieldError, JsonBody, QueryParams};
use crate::common::http::{Metrics, finish};
use crate::common::identity::Caller;
use crate::common::validate::Page;
use crate::events::{Delivery, Event, EventSink, ORDER_CREATED, SinkError, SinkFuture};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    event_id    TEXT    PRIMARY KEY,
    user_id     TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id, occurred_at);
";

/// The kind of a notification another service sent directly.
pub const MESSAGE: &str = "message";
/// The scope a client-credentials token needs to send notifications.
pub const SEND_SCOPE: &str = "notifications:send";
pub const CLIENT_ID: &str = "x-client-id";
pub const CLIENT_SCOPES: &str = "x-client-scopes";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The notifications database as an idempotent event sink.
#[derive(Debug)]
pub struct Store {
    db: SqlitePool,
    events: IntCounterVec,
}

/// `1234` cents -> `12.34`.
fn amount(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", (cents / 100).abs(), (cents % 100).abs())
}

/// The user an event is for and what to tell them; `None` for events this service does
/// not turn into notifications.
fn render(event: &Event) -> Option<(String, String)> {
    let d = &event.data;
    let user = d["user_id"].as_str().filter(|u| !u.is_empty())?.to_owned();
    match event.kind.as_str() {
        ORDER_CREATED => {
            let id = d["order_id"].as_i64()?;
            let items: i64 = d["items"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i["quantity"].as_i64()).sum())
                .unwrap_or(0);
            let total = d["total_cents"].as_i64().unwrap_or(0);
            let currency = d["currency"].as_str().unwrap_or("EUR");
            let plural = if items == 1 { "" } else { "s" };
            Some((
                user,
                format!(
                    "Order {id} placed: {items} item{plural}, {} {currency}",
                    amount(total)
                ),
            ))
        }
        MESSAGE => Some((user, d["message"].as_str()?.to_owned())),
        _ => None,
    }
}

impl Store {
    pub fn new(db: SqlitePool, metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "events_total",
                "Events received, by result (stored, duplicate, ignored)",
            ),
            &["result"],
        )?;
        metrics.registry().register(Box::new(events.clone()))?;
        Ok(Self { db, events })
    }

    /// Store `event` once: a second delivery of the same id is a [`Delivery::Duplicate`].
    pub async fn store(&self, event: &Event) -> Result<Delivery, sqlx::Error> {
        let Some((user, message)) = render(event) else {
            self.events.with_label_values(&["ignored"]).inc();
            tracing::debug!(event = %event.id, kind = %event.kind, "event not for notifications");
            return Ok(Delivery::Ignored);
        };
        let inserted = sqlx::query(
            "INSERT INTO notifications (event_id, user_id, type, message, data, occurred_at, received_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(event_id) DO NOTHING",
        )
        .bind(&event.id)
        .bind(&user)
        .bind(&event.kind)
        .bind(&message)
        .bind(event.data.to_string())
        .bind(event.occurred_at)
        .bind(now_secs())
        .execute(&self.db)
        .await?
        .rows_affected();
        let result = if inserted == 1 {
            Delivery::Stored
        } else {
            Delivery::Duplicate
        };
        let label = if inserted == 1 { "stored" } else { "duplicate" };
        self.events.with_label_values(&[label]).inc();
        tracing::info!(event = %event.id, kind = %event.kind, result = label, "event received");
        Ok(result)
    }
}

impl EventSink for Store {
    fn deliver<'a>(&'a self, event: &'a Event) -> SinkFuture<'a> {
        Box::pin(async move {
            self.store(event)
                .await
                .map_err(|e| SinkError(format!("notifications database: {e}")))
        })
    }
}

#[derive(Clone, Debug)]
pub struct NotificationsState {
    pub store: Arc<Store>,
}

fn view(row: &sqlx::sqlite::SqliteRow) -> Result<Value, sqlx::Error> {
    let data: String = row.try_get("data")?;
    let at: i64 = row.try_get("occurred_at")?;
    let created = UNIX_EPOCH + Duration::from_secs(at.max(0) as u64);
    Ok(json!({
        "id": row.try_get::<String, _>("event_id")?,
        "type": row.try_get::<String, _>("type")?,
        "message": row.try_get::<String, _>("message")?,
        "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
        "created_at": humantime::format_rfc3339_seconds(created).to_string(),
    }))
}

async fn list(
    State(s): State<NotificationsState>,
    caller: Caller,
    QueryParams(page): QueryParams<Page>,
) -> Result<axum::Json<Value>, ApiError> {
    let (limit, offset) = page.bounds()?;
    let rows = sqlx::query(
        "SELECT * FROM notifications WHERE user_id = ?
         ORDER BY occurred_at DESC, rowid DESC LIMIT ? OFFSET ?",
    )
    .bind(&caller.user_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.store.db)
    .await?;
    let items = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(
        json!({"notifications": items, "limit": limit, "offset": offset}),
    ))
}

/// A service calling with a client-credentials token, as the gateway forwards it.
#[derive(Clone, Debug)]
pub struct ServiceCaller {
    pub client_id: String,
    pub scopes: Vec<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let client_id = header(CLIENT_ID)
            .filter(|v| v.len() <= 128)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "no calling service: call through the gateway with a client-credentials token",
                )
            })?
            .to_owned();
        let scopes = header(CLIENT_SCOPES)
            .map(|v| {
                v.split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { client_id, scopes })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendInput {
    user_id: Option<String>,
    message: Option<String>,
}

async fn send(
    State(s): State<NotificationsState>,
    caller: ServiceCaller,
    headers: axum::http::HeaderMap,
    JsonBody(input): JsonBody<SendInput>,
) -> Result<Response, ApiError> {
    if !caller.scopes.iter().any(|sc| sc == SEND_SCOPE) {
        return Err(ApiError::forbidden(format!(
            "sending notifications needs the {SEND_SCOPE} scope"
        )));
    }
    let user = input.user_id.as_deref().map(str::trim).unwrap_or("");
    let message = input.message.as_deref().map(str::trim).unwrap_or("");
    let mut fields = Vec::new();
    if user.is_empty() || user.len() > 128 {
        fields.push(FieldError {
            field: "user_id",
            message: "required, 1-128 characters".into(),
        });
    }
    if message.is_empty() || message.chars().count() > 500 {
        fields.push(FieldError {
            field: "message",
            message: "required, 1-500 characters".into(),
        });
    }
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 64)
                .ok_or_else(|| FieldError {
                    field: "Idempotency-Key",
                    message: "must be 1-64 visible characters".into(),
                })
        })
        .transpose();
    let key = match key {
        Ok(k) => k,
        Err(f) => {
            fields.push(f);
            None
        }
    };
    if !fields.is_empty() {
        return Err(ApiError::validation(fields));
    }
    let mut event = Event::new(
        MESSAGE,
        json!({"user_id": user, "message": message, "from": caller.client_id}),
    );
    if let Some(k) = key {
        // Scoped by the calling client: two clients' keys never collide.
        event.id = format!("{}:{k}", caller.client_id);
    }
    let delivery = s.store.store(&event).await?;
    let row = sqlx::query("SELECT * FROM notifications WHERE event_id = ?")
        .bind(&event.id)
        .fetch_one(&s.store.db)
        .await?;
    let status = if delivery == Delivery::Duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(view(&row)?)).into_response())
}

/// The notifications router, testable without sockets.
pub fn app(state: NotificationsState, metrics: Arc<Metrics>) -> Router {
    let db = state.store.db.clone();
    let routes = Router::new()
        .route("/v1/notifications", get(list).post(send))
        .with_state(state);
    finish(routes, db, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(amount(6430), "64.30");
        assert_eq!(amount(5), "0.05");
        assert_eq!(amount(-250), "-2.50");
    }

    #[test]
    fn orders_become_messages() {
        let e = Event::new(
            ORDER_CREATED,
            json!({"order_id": 7, "user_id": "u1", "total_cents": 6430, "currency": "EUR",
                   "items": [{"quantity": 2}, {"quantity": 1}]}),
        );
        assert_eq!(
            render(&e),
            Some(("u1".into(), "Order 7 placed: 3 items, 64.30 EUR".into()))
        );
        let other = Event::new("order.shipped", json!({"user_id": "u1"}));
        assert_eq!(render(&other), None);
        let no_user = Event::new(ORDER_CREATED, json!({"order_id": 7}));
        assert_eq!(render(&no_user), None);
    }
}
