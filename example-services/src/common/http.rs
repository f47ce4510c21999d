//! Owns the HTTP plumbing every service wraps its routes in: per-route Prometheus
//! metrics, the `/healthz`, `/readyz` (database reachable) and `/metrics` endpoints, the
//! JSON 404 fallback, and the layering of request-id propagation
//! ([`super::request_id`]) outermost.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use serde_json::json;
use sqlx::SqlitePool;

use super::error::ApiError;
use super::request_id;

/// Per-service HTTP metrics; the route label is the matched route template, never the
/// raw path.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl Metrics {
    pub fn new(service: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some(service.replace('-', "_")), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "Requests handled, by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Handling time, by route"),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
        })
    }

    /// The service's registry, for metrics other modules own (outbox, stream consumer,
    /// backups) to register in, so one `/metrics` shows them all.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

async fn record(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    metrics
        .duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

#[derive(Clone, Debug)]
struct Probes {
    db: SqlitePool,
    metrics: Arc<Metrics>,
}

async fn readyz(State(p): State<Probes>) -> Response {
    match sqlx::query("SELECT 1").execute(&p.db).await {
        Ok(_) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "database not reachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"status": "not_ready", "reason": "database unreachable"})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(p): State<Probes>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        p.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such resource")
}

/// Wrap a service's routes with health endpoints, metrics and request ids.
pub fn finish(routes: Router, db: SqlitePool, metrics: Arc<Metrics>) -> Router {
    let probes = Probes {
        db,
        metrics: Arc::clone(&metrics),
    };
    let ops = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(probes);
    routes
        .merge(ops)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(metrics, record))
        .layer(middleware::from_fn(request_id::propagate))
        .layer(middleware::from_fn(super::trace::trace_request))
}
