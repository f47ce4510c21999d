//! Owns the `catalog` service, the caching showcase: a public product list and detail
//! with `Cache-Control`, `ETag` and `Last-Modified`, answering `If-None-Match` /
//! `If-Modified-Since` with 304; admin-only create and update, which change the ETag.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

use crate::common::error::{ApiError, FieldError, JsonBody, PathParam, QueryParams};
use crate::common::http::{Metrics, finish};
use crate::common::identity::Caller;
use crate::common::validate::Page;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    price_cents INTEGER NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    updated_at  INTEGER NOT NULL
);
";

/// Products a fresh database starts with, so the local stack has something to show.
const SEED: [(&str, &str, i64); 3] = [
    ("Espresso beans, 1 kg", "Dark roast, whole beans", 2_490),
    ("Pour-over kettle", "1 l, gooseneck spout", 5_900),
    ("Ceramic cup", "Hand-glazed, 250 ml", 1_450),
];

/// How long clients and shared caches may reuse a product response.
const MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct CatalogState {
    pub db: SqlitePool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub version: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Product {
    fn etag(&self) -> String {
        format!("\"p{}-v{}\"", self.id, self.version)
    }

    fn last_modified(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.updated_at.max(0) as u64)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn validate(input: &ProductInput, partial: bool) -> Result<(), ApiError> {
    let mut fields = Vec::new();
    match &input.name {
        None if !partial => fields.push(FieldError {
            field: "name",
            message: "required".into(),
        }),
        Some(n) if n.trim().is_empty() || n.chars().count() > 200 => fields.push(FieldError {
            field: "name",
            message: "must be 1-200 characters".into(),
        }),
        _ => {}
    }
    if input
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 2000)
    {
        fields.push(FieldError {
            field: "description",
            message: "must be at most 2000 characters".into(),
        });
    }
    match input.price_cents {
        None if !partial => fields.push(FieldError {
            field: "price_cents",
            message: "required".into(),
        }),
        Some(p) if !(0..=100_000_000).contains(&p) => fields.push(FieldError {
            field: "price_cents",
            message: "must be between 0 and 100000000".into(),
        }),
        _ => {}
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(fields))
    }
}

fn row_to_product(row: &sqlx::sqlite::SqliteRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price_cents: row.try_get("price_cents")?,
        version: row.try_get("version")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn load(db: &SqlitePool, id: i64) -> Result<Option<Product>, ApiError> {
    let row = sqlx::query("SELECT * FROM products WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(row_to_product).transpose()?)
}

/// Seed an empty catalog (first start only).
pub async fn seed(db: &SqlitePool) -> Result<(), sqlx::Error> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
        .fetch_one(db)
        .await?;
    if count == 0 {
        for (name, description, price) in SEED {
            sqlx::query(
                "INSERT INTO products (name, description, price_cents, updated_at) VALUES (?, ?, ?, ?)",
            )
            .bind(name)
            .bind(description)
            .bind(price)
            .bind(now_secs())
            .execute(db)
            .await?;
        }
    }
    Ok(())
}

/// Does the request's `If-None-Match` (weak comparison) or, failing that,
/// `If-Modified-Since` say the client's copy is current?
fn not_modified(headers: &HeaderMap, etag: &str, last_modified: SystemTime) -> bool {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let bare = etag.trim_start_matches("W/");
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == bare);
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| last_modified <= since)
}

fn cache_headers(resp: &mut Response, etag: &str, last_modified: SystemTime) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(last_modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", MAX_AGE.as_secs())) {
        h.insert(header::CACHE_CONTROL, v);
    }
}

/// A cacheable JSON response, or 304 when the client's validators match.
fn conditional<T: Serialize>(
    headers: &HeaderMap,
    etag: &str,
    modified: SystemTime,
    body: &T,
) -> Response {
    let mut resp = if not_modified(headers, etag, modified) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        axum::Json(body).into_response()
    };
    cache_headers(&mut resp, etag, modified);
    resp
}

async fn list(
    State(s): State<CatalogState>,
    QueryParams(page): QueryParams<Page>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (limit, offset) = page.bounds()?;
    let rows = sqlx::query("SELECT * FROM products ORDER BY id LIMIT ? OFFSET ?")
        .bind(limit)
        .bind(offset)
        .fetch_all(&s.db)
        .await?;
    let products = rows
        .iter()
        .map(row_to_product)
        .collect::<Result<Vec<_>, _>>()?;
    // The list's validator changes whenever any listed product (or the page) does.
    let fingerprint: String = products
        .iter()
        .map(|p| format!("{}.{};", p.id, p.version))
        .collect();
    let etag = format!(
        "\"l{:016x}\"",
        fnv(format!("{fingerprint}|{limit}|{offset}").as_bytes())
    );
    let modified = products
        .iter()
        .map(Product::last_modified)
        .max()
        .unwrap_or(UNIX_EPOCH);
    Ok(conditional(
        &headers,
        &etag,
        modified,
        &serde_json::json!({ "products": products }),
    ))
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn detail(
    State(s): State<CatalogState>,
    PathParam(id): PathParam<i64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let product = load(&s.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("product_not_found", format!("no product {id}")))?;
    Ok(conditional(
        &headers,
        &product.etag(),
        product.last_modified(),
        &product,
    ))
}

async fn create(
    State(s): State<CatalogState>,
    caller: Caller,
    JsonBody(input): JsonBody<ProductInput>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    validate(&input, false)?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO products (name, description, price_cents, updated_at) VALUES (?, ?, ?, ?) RETURNING id",
    )
    .bind(input.name.as_deref().unwrap_or_default().trim())
    .bind(input.description.as_deref().unwrap_or_default())
    .bind(input.price_cents.unwrap_or_default())
    .bind(now_secs())
    .fetch_one(&s.db)
    .await?;
    let product = load(&s.db, id)
        .await?
        .ok_or_else(|| ApiError::internal("created product vanished"))?;
    let mut resp = (StatusCode::CREATED, axum::Json(&product)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/products/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&product.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn update(
    State(s): State<CatalogState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(input): JsonBody<ProductInput>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    validate(&input, true)?;
    let changed = sqlx::query(
        "UPDATE products SET name = COALESCE(?, name), description = COALESCE(?, description),
         price_cents = COALESCE(?, price_cents), version = version + 1, updated_at = ? WHERE id = ?",
    )
    .bind(input.name.as_deref().map(str::trim))
    .bind(input.description.as_deref())
    .bind(input.price_cents)
    .bind(now_secs())
    .bind(id)
    .execute(&s.db)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(ApiError::not_found(
            "product_not_found",
            format!("no product {id}"),
        ));
    }
    let product = load(&s.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("product_not_found", format!("no product {id}")))?;
    let mut resp = axum::Json(&product).into_response();
    if let Ok(v) = HeaderValue::from_str(&product.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// The catalog router, testable without sockets.
pub fn app(state: CatalogState, metrics: Arc<Metrics>) -> Router {
    let db = state.db.clone();
    let routes = Router::new()
        .route("/v1/products", get(list).post(create))
        .route("/v1/products/{id}", get(detail).put(update))
        .with_state(state);
    finish(routes, db, metrics)
}
