//! Owns the `orders` service: `POST /v1/orders` (products validated by calling catalog
//! over HTTP, with a timeout; 503 when catalog cannot be reached, 502 when it answers
//! nonsense) and `GET /v1/orders` for the caller. Each order placed writes an
//! `order.created` event into the outbox in the same transaction ([`crate::events`]).
//!
//! Versioning: `/v2/orders` serves the same orders in a changed representation (money as
//! `{amount_cents, currency}`, `lines` with the product's name, RFC 3339 times) while
//! `/v1` keeps working unchanged. Policy (README): a version never changes shape once
//! published; a new shape gets a new version, old versions stay until no caller uses them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;

use crate::common::error::{ApiError, FieldError, JsonBody, PathParam};
use crate::common::http::{Metrics, finish};
use crate::common::identity::Caller;
use crate::common::request_id::REQUEST_ID;
use crate::events::{Event, ORDER_CREATED, outbox};

pub const SCHEMA: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS orders (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    total_cents INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, id);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id         INTEGER NOT NULL REFERENCES orders(id),
    product_id       INTEGER NOT NULL,
    name             TEXT    NOT NULL,
    quantity         INTEGER NOT NULL,
    unit_price_cents INTEGER NOT NULL
);
",
    // `order.created` events, written in the order's own transaction.
    crate::outbox_schema!()
);

const MAX_LINES: usize = 50;
const CURRENCY: &str = "EUR";

#[derive(Clone, Debug)]
pub struct OrdersState {
    pub db: SqlitePool,
    /// Base URL of the catalog service, e.g. `http://127.0.0.1:3003`.
    pub catalog: String,
    /// Client with the catalog call's timeout.
    pub http: reqwest::Client,
    /// Notified after each commit that wrote an outbox row, so the relay publishes
    /// at once instead of at its next poll.
    pub outbox_wake: Arc<Notify>,
}

impl OrdersState {
    pub fn new(db: SqlitePool, catalog: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            db,
            catalog: catalog.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()?,
            outbox_wake: Arc::new(Notify::new()),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    pub items: Vec<ItemInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    pub product_id: i64,
    pub quantity: i64,
}

#[derive(Debug, Clone)]
struct Line {
    product_id: i64,
    name: String,
    quantity: i64,
    unit_price_cents: i64,
}

#[derive(Debug, Clone)]
struct Order {
    id: i64,
    status: String,
    total_cents: i64,
    created_at: i64,
    lines: Vec<Line>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn v1(o: &Order) -> Value {
    json!({
        "id": o.id,
        "status": o.status,
        "items": o.lines.iter().map(|l| json!({
            "product_id": l.product_id,
            "quantity": l.quantity,
            "unit_price_cents": l.unit_price_cents,
        })).collect::<Vec<_>>(),
        "total_cents": o.total_cents,
        "created_at": o.created_at,
    })
}

fn money(cents: i64) -> Value {
    json!({"amount_cents": cents, "currency": CURRENCY})
}

fn v2(o: &Order) -> Value {
    let created = UNIX_EPOCH + Duration::from_secs(o.created_at.max(0) as u64);
    json!({
        "id": o.id,
        "state": o.status,
        "lines": o.lines.iter().map(|l| json!({
            "product": {"id": l.product_id, "name": l.name},
            "quantity": l.quantity,
            "unit_price": money(l.unit_price_cents),
            "subtotal": money(l.unit_price_cents * l.quantity),
        })).collect::<Vec<_>>(),
        "total": money(o.total_cents),
        "created_at": humantime::format_rfc3339_seconds(created).to_string(),
    })
}

fn validate(input: &OrderInput) -> Result<(), ApiError> {
    let mut fields = Vec::new();
    if input.items.is_empty() || input.items.len() > MAX_LINES {
        fields.push(FieldError {
            field: "items",
            message: format!("must hold 1-{MAX_LINES} items"),
        });
    }
    if input.items.iter().any(|i| i.product_id <= 0) {
        fields.push(FieldError {
            field: "items.product_id",
            message: "must be a positive product id".into(),
        });
    }
    if input.items.iter().any(|i| !(1..=100).contains(&i.quantity)) {
        fields.push(FieldError {
            field: "items.quantity",
            message: "must be between 1 and 100".into(),
        });
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(fields))
    }
}

/// Look the products up in catalog: name and current price, or the right error.
async fn price_products(
    s: &OrdersState,
    ids: &[i64],
    request_id: Option<&HeaderValue>,
) -> Result<HashMap<i64, (String, i64)>, ApiError> {
    let mut found = HashMap::new();
    for id in ids {
        let mut req = s.http.get(format!("{}/v1/products/{id}", s.catalog));
        if let Some(rid) = request_id {
            req = req.header(REQUEST_ID, rid.clone());
        }
        let resp = req.send().await.map_err(|e| {
            tracing::warn!(error = %e, "catalog unreachable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog_unavailable",
                "the catalog service could not be reached; try again later",
            )
        })?;
        match resp.status() {
            StatusCode::OK => {
                let bad = |_| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "catalog_error",
                        "the catalog service answered nonsense",
                    )
                };
                let v: Value = resp.json().await.map_err(bad)?;
                let name = v["name"].as_str().unwrap_or_default().to_owned();
                let price = v["price_cents"].as_i64().ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "catalog_error",
                        "the catalog service answered nonsense",
                    )
                })?;
                found.insert(*id, (name, price));
            }
            StatusCode::NOT_FOUND => {
                return Err(ApiError::validation(vec![FieldError {
                    field: "items.product_id",
                    message: format!("product {id} does not exist"),
                }]));
            }
            other => {
                tracing::warn!(status = %other, "catalog error");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "catalog_error",
                    format!("the catalog service answered {other}"),
                ));
            }
        }
    }
    Ok(found)
}

async fn load_orders(db: &SqlitePool, user: &str, id: Option<i64>) -> Result<Vec<Order>, ApiError> {
    let rows = crate::common::trace::db_span(
        "SELECT orders",
        sqlx::query("SELECT * FROM orders WHERE user_id = ? AND (? IS NULL OR id = ?) ORDER BY id")
            .bind(user)
            .bind(id)
            .bind(id)
            .fetch_all(db),
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let order_id: i64 = row.try_get("id")?;
        let lines = sqlx::query("SELECT * FROM order_lines WHERE order_id = ? ORDER BY rowid")
            .bind(order_id)
            .fetch_all(db)
            .await?
            .iter()
            .map(|l| {
                Ok(Line {
                    product_id: l.try_get("product_id")?,
                    name: l.try_get("name")?,
                    quantity: l.try_get("quantity")?,
                    unit_price_cents: l.try_get("unit_price_cents")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.push(Order {
            id: order_id,
            status: row.try_get("status")?,
            total_cents: row.try_get("total_cents")?,
            created_at: row.try_get("created_at")?,
            lines,
        });
    }
    Ok(out)
}

async fn create(
    s: &OrdersState,
    caller: &Caller,
    headers: &HeaderMap,
    input: OrderInput,
) -> Result<Order, ApiError> {
    validate(&input)?;
    let mut ids: Vec<i64> = input.items.iter().map(|i| i.product_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let prices = price_products(s, &ids, headers.get(REQUEST_ID)).await?;
    let lines: Vec<Line> = input
        .items
        .iter()
        .filter_map(|i| {
            prices.get(&i.product_id).map(|(name, price)| Line {
                product_id: i.product_id,
                name: name.clone(),
                quantity: i.quantity,
                unit_price_cents: *price,
            })
        })
        .collect();
    let total: i64 = lines.iter().map(|l| l.unit_price_cents * l.quantity).sum();
    let now = now_secs();
    let mut tx = s.db.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO orders (user_id, status, total_cents, created_at) VALUES (?, 'placed', ?, ?) RETURNING id",
    )
    .bind(&caller.user_id)
    .bind(total)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    for l in &lines {
        sqlx::query(
            "INSERT INTO order_lines (order_id, product_id, name, quantity, unit_price_cents) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(l.product_id)
        .bind(&l.name)
        .bind(l.quantity)
        .bind(l.unit_price_cents)
        .execute(&mut *tx)
        .await?;
    }
    // The event commits with the order or not at all (events::outbox).
    let event = Event::new(
        ORDER_CREATED,
        json!({
            "order_id": id,
            "user_id": caller.user_id,
            "total_cents": total,
            "currency": CURRENCY,
            "items": lines.iter().map(|l| json!({
                "product_id": l.product_id,
                "name": l.name,
                "quantity": l.quantity,
                "unit_price_cents": l.unit_price_cents,
            })).collect::<Vec<_>>(),
            "created_at": now,
        }),
    );
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    s.outbox_wake.notify_one();
    load_orders(&s.db, &caller.user_id, Some(id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("created order vanished"))
}

fn created(body: Value, location: String) -> Response {
    let mut resp = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An API version: each handler below serves every version, rendering with its shape.
#[derive(Clone, Copy, Debug)]
enum Version {
    V1,
    V2,
}

impl Version {
    const fn of(n: u8) -> Self {
        if n == 1 { Self::V1 } else { Self::V2 }
    }

    fn one(self, o: &Order) -> Value {
        match self {
            Self::V1 => v1(o),
            Self::V2 => v2(o),
        }
    }

    fn many(self, orders: &[Order]) -> Value {
        let items: Vec<Value> = orders.iter().map(|o| self.one(o)).collect();
        match self {
            Self::V1 => json!({ "orders": items }),
            Self::V2 => json!({ "data": items, "count": orders.len() }),
        }
    }

    fn base(self) -> &'static str {
        match self {
            Self::V1 => "/v1/orders",
            Self::V2 => "/v2/orders",
        }
    }
}

async fn post_order<const V: u8>(
    State(s): State<OrdersState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(input): JsonBody<OrderInput>,
) -> Result<Response, ApiError> {
    let version = Version::of(V);
    let order = create(&s, &caller, &headers, input).await?;
    Ok(created(
        version.one(&order),
        format!("{}/{}", version.base(), order.id),
    ))
}

async fn list_orders<const V: u8>(
    State(s): State<OrdersState>,
    caller: Caller,
) -> Result<axum::Json<Value>, ApiError> {
    let orders = load_orders(&s.db, &caller.user_id, None).await?;
    Ok(axum::Json(Version::of(V).many(&orders)))
}

async fn get_order<const V: u8>(
    State(s): State<OrdersState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> Result<axum::Json<Value>, ApiError> {
    let order = load_orders(&s.db, &caller.user_id, Some(id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("order_not_found", format!("no order {id} for you")))?;
    Ok(axum::Json(Version::of(V).one(&order)))
}

/// The orders router, testable without sockets (catalog calls still need a catalog).
pub fn app(state: OrdersState, metrics: Arc<Metrics>) -> Router {
    let db = state.db.clone();
    let routes = Router::new()
        .route("/v1/orders", get(list_orders::<1>).post(post_order::<1>))
        .route("/v1/orders/{id}", get(get_order::<1>))
        .route("/v2/orders", get(list_orders::<2>).post(post_order::<2>))
        .route("/v2/orders/{id}", get(get_order::<2>))
        .with_state(state);
    finish(routes, db, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_times_are_rfc3339() {
        let order = Order {
            id: 1,
            status: "placed".into(),
            total_cents: 0,
            created_at: 1_709_251_199,
            lines: Vec::new(),
        };
        assert_eq!(v2(&order)["created_at"], "2024-02-29T23:59:59Z");
        let epoch = Order {
            created_at: 0,
            ..order
        };
        assert_eq!(v2(&epoch)["created_at"], "1970-01-01T00:00:00Z");
    }
}
