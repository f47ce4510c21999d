//! Owns getting finished spans out of the process without ever slowing the engine:
//! the span processor only `try_send`s into a bounded queue (a full queue drops the
//! span and counts it in `discovery_trace_spans_dropped_total{reason="queue_full"}`),
//! and one thread, with its own single-threaded Tokio runtime, drains it in batches
//! into the OTLP exporter. A collector that is down or slow only makes that thread
//! wait (each export call is bounded by the exporter's timeout) while the queue fills
//! and drops.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};

use super::{Protocol, SnapshotTracer, TraceConfig};
use crate::metrics::TraceMetrics;

/// Finished spans waiting for export at most: builds are rare, so this only fills
/// while the collector is unreachable.
const QUEUE_SIZE: usize = 1024;
/// Spans sent in one export call at most...
const BATCH_SIZE: usize = 128;
/// ...or whatever arrived within this long of a batch's first span.
const BATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The process's tracer provider. Dropping it stops nothing (the export thread runs
/// for the life of the process).
#[derive(Debug)]
pub struct Tracer {
    tracer: SnapshotTracer,
    _provider: SdkTracerProvider,
}

impl Tracer {
    /// What the engine and the watch streams start their spans with.
    pub fn snapshot_tracer(&self) -> SnapshotTracer {
        self.tracer.clone()
    }
}

/// Start the export thread and the tracer for `config`. Fails on what only start-up
/// can know (an endpoint from the environment the exporter refuses, an unknown
/// protocol in `OTEL_EXPORTER_OTLP_PROTOCOL`).
pub fn start(config: &TraceConfig, metrics: TraceMetrics) -> Result<Tracer, String> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_SIZE);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let exporter_config = config.clone();
    let thread_metrics = metrics.clone();
    let thread_resource = resource.clone();
    std::thread::Builder::new()
        .name("trace-export".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("trace export runtime: {e}")));
                    return;
                }
            };
            // Built inside the runtime: the gRPC channel needs one.
            let mut exporter = match runtime.block_on(async { build(&exporter_config) }) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            exporter.set_resource(&thread_resource);
            let _ = ready_tx.send(Ok(()));
            drain(&runtime, &exporter, &rx, &thread_metrics);
        })
        .map_err(|e| format!("cannot start the trace export thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the trace export thread stopped".to_owned())??;
    // Every span is recorded: the SDK's default sampler is parent-based always-on,
    // and these spans have no parent.
    let provider = SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_span_processor(QueueProcessor { tx, metrics })
        .with_resource(resource)
        .build();
    Ok(Tracer {
        tracer: SnapshotTracer::new(provider.tracer("discovery")),
        _provider: provider,
    })
}

/// OTLP/HTTP wants the signal path; `endpoint: http://collector:4318` means the
/// collector, so `/v1/traces` is added when no path is given (as the OTel spec does
/// for `OTEL_EXPORTER_OTLP_ENDPOINT`).
fn http_traces_url(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(u) if u.path() == "/" || u.path().is_empty() => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_owned(),
    }
}

fn build(c: &TraceConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let protocol = match c.protocol {
        Some(p) => p,
        None => super::protocol_from_env()?.unwrap_or(Protocol::Http),
    };
    let built = match protocol {
        Protocol::Http => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = &c.endpoint {
                b = b.with_endpoint(http_traces_url(e));
            }
            if !c.headers.is_empty() {
                b = b.with_headers(c.headers.iter().cloned().collect::<HashMap<_, _>>());
            }
            b.build()
        }
        Protocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc);
            if let Some(e) = &c.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if !c.headers.is_empty() {
                let mut headers = http::HeaderMap::new();
                for (k, v) in &c.headers {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("tracing.otlp.headers: {k:?} is not a header name"))?;
                    let value = http::HeaderValue::from_str(v)
                        .map_err(|_| format!("tracing.otlp.headers.{k}: not a header value"))?;
                    headers.insert(name, value);
                }
                let map =
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
                b = b.with_metadata(map);
            }
            b.build()
        }
    };
    built.map_err(|e| format!("tracing.otlp: {e}"))
}

/// The export loop: batches of up to `BATCH_SIZE` spans, sent when full or
/// `BATCH_INTERVAL` after the batch's first span.
fn drain(
    runtime: &tokio::runtime::Runtime,
    exporter: &opentelemetry_otlp::SpanExporter,
    rx: &Receiver<SpanData>,
    metrics: &TraceMetrics,
) {
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    loop {
        match rx.recv() {
            Ok(span) => batch.push(span),
            Err(_) => return,
        }
        let due = Instant::now() + BATCH_INTERVAL;
        while batch.len() < BATCH_SIZE {
            match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_SIZE));
        match runtime.block_on(exporter.export(spans)) {
            Ok(()) => metrics.spans_exported.inc_by(n),
            Err(e) => {
                metrics.export_failures.inc();
                metrics
                    .spans_dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(n);
                tracing::debug!(error = %e, spans = n, "trace export failed");
            }
        }
    }
}

/// Hands finished spans to the export thread without waiting.
#[derive(Debug)]
struct QueueProcessor {
    tx: SyncSender<SpanData>,
    metrics: TraceMetrics,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let reason = match self.tx.try_send(span) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue_full",
            Err(TrySendError::Disconnected(_)) => "exporter_stopped",
        };
        self.metrics
            .spans_dropped
            .with_label_values(&[reason])
            .inc();
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_get_the_traces_path() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("https://otlp.example/custom/v1/traces"),
            "https://otlp.example/custom/v1/traces"
        );
    }
}
