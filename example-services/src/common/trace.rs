//! Owns the services' side of distributed tracing: continuing the W3C trace the gateway
//! started (`traceparent`/`tracestate`), one server span per request, child spans for
//! database calls (`db_span`), and sending them over OTLP/HTTP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) variable is
//! set. Without it the global tracer is OTel's no-op one: the middleware costs a header
//! read per request.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;

const SCOPE: &str = "example-services";

/// Install an OTLP/HTTP tracer provider for `service` when the environment names an
/// endpoint; returns it so `main` can flush it on exit. Call inside the Tokio runtime.
pub fn init(service: &str) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if !configured {
        return None;
    }
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(reqwest::Client::new())
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "tracing off: cannot build the OTLP exporter");
            return None;
        }
    };
    let provider = provider(service, exporter);
    global::set_tracer_provider(provider.clone());
    tracing::info!(service, "tracing on (OTLP/HTTP)");
    Some(provider)
}

/// A tracer provider for `service` that batches into `exporter` on the Tokio runtime
/// (the bounded queue drops rather than blocks a request).
pub fn provider<E>(service: &str, exporter: E) -> opentelemetry_sdk::trace::SdkTracerProvider
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build()
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Middleware: a server span per request, child of the caller's `traceparent` (a new
/// trace without one), current while the handler runs so `db_span` finds it.
pub async fn trace_request(req: Request, next: Next) -> Response {
    let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let tracer = global::tracer(SCOPE);
    let span = tracer
        .span_builder(match &route {
            Some(r) => format!("{method} {r}"),
            None => method.clone(),
        })
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", req.uri().path().to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let resp = next.run(req).with_context(cx.clone()).await;
    let span = cx.span();
    let status = resp.status().as_u16();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if let Some(r) = route {
        span.set_attribute(KeyValue::new("http.route", r));
    }
    if status >= 500 {
        span.set_status(Status::error(""));
    }
    span.end();
    resp
}

/// Run `query` (a database call) inside a client span named `operation`, child of the
/// request's span.
pub async fn db_span<F: std::future::Future>(operation: &'static str, query: F) -> F::Output {
    let tracer = global::tracer(SCOPE);
    let span = tracer
        .span_builder(operation)
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("db.system.name", "sqlite"),
            KeyValue::new("db.operation.name", operation),
        ])
        .start_with_context(&tracer, &Context::current());
    let cx = Context::current_with_span(span);
    let out = query.with_context(cx.clone()).await;
    cx.span().end();
    out
}
