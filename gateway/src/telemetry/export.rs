//! Owns getting finished spans out of the process without ever slowing a request: the
//! span processor only `try_send`s into a bounded queue (`tracing.queue_size`; a full
//! queue drops the span and counts it in `gateway_trace_spans_dropped_total`), and one
//! thread, with its own single-threaded Tokio runtime, drains it in batches
//! (`batch_size`, or whatever arrived within `batch_interval`) into the exporter. A
//! collector that is down or slow only makes that thread wait (each export call is
//! bounded by the exporter's timeout) while the queue fills and drops.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};

use super::file::FileExporter;
use super::{ExporterSpec, OtlpSpec, Protocol, TracingSpec};
use crate::metrics::TelemetryMetrics;

/// The process's tracer: what the proxy starts spans with. Dropping it stops nothing
/// (the export thread runs for the life of the process).
#[derive(Debug)]
pub struct Tracer {
    tracer: SdkTracer,
    _provider: SdkTracerProvider,
}

impl Tracer {
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }
}

/// Start the export thread and the tracer for `spec`. Fails on what only start-up can
/// know (an endpoint from the environment that is not a URL, a file that cannot be
/// opened).
pub fn start(spec: &TracingSpec, metrics: TelemetryMetrics) -> Result<Tracer, String> {
    let resource = Resource::builder()
        .with_service_name(spec.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let (tx, rx) = std::sync::mpsc::sync_channel(spec.queue_size);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let exporter = spec.exporter.clone();
    let batch = (spec.batch_size, spec.batch_interval);
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
            let built = runtime.block_on(async { build_exporter(&exporter) });
            let mut exporter = match built {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            exporter.set_resource(&thread_resource);
            let _ = ready_tx.send(Ok(()));
            drain(&runtime, &exporter, &rx, batch, &thread_metrics);
        })
        .map_err(|e| format!("cannot start the trace export thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the trace export thread stopped".to_owned())??;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(QueueProcessor { tx, metrics })
        .with_resource(resource)
        .build();
    // Features start spans for their own calls through the global provider (their
    // root spans, e.g. a scheduled JWKS fetch, are always sampled: they are rare).
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("gateway");
    Ok(Tracer {
        tracer,
        _provider: provider,
    })
}

/// The exporters the gateway can send to (one per process, so the size difference of
/// the variants does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum AnyExporter {
    Otlp(opentelemetry_otlp::SpanExporter),
    File(FileExporter),
}

impl AnyExporter {
    fn set_resource(&mut self, r: &Resource) {
        match self {
            AnyExporter::Otlp(e) => e.set_resource(r),
            AnyExporter::File(e) => e.set_resource(r),
        }
    }

    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            AnyExporter::Otlp(e) => e.export(batch).await,
            AnyExporter::File(e) => e.export(batch).await,
        }
    }
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

fn build_otlp(o: &OtlpSpec) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let protocol = match o.protocol {
        Some(p) => p,
        None => super::protocol_from_env()?.unwrap_or(Protocol::Http),
    };
    let built = match protocol {
        Protocol::Http => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = &o.endpoint {
                b = b.with_endpoint(http_traces_url(e));
            }
            if let Some(t) = o.timeout {
                b = b.with_timeout(t);
            }
            if !o.headers.is_empty() {
                b = b.with_headers(o.headers.iter().cloned().collect::<HashMap<_, _>>());
            }
            b.build()
        }
        Protocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc);
            if let Some(e) = &o.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Some(t) = o.timeout {
                b = b.with_timeout(t);
            }
            if !o.headers.is_empty() {
                let mut headers = http::HeaderMap::new();
                for (k, v) in &o.headers {
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

fn build_exporter(spec: &ExporterSpec) -> Result<AnyExporter, String> {
    match spec {
        ExporterSpec::Otlp(o) => build_otlp(o).map(AnyExporter::Otlp),
        ExporterSpec::File(path) => FileExporter::open(path).map(AnyExporter::File),
    }
}

/// How often the export thread looks for more spans while a batch fills. The queue
/// must hold what arrives meanwhile: 10 ms at 100,000 spans a second is 1,000 spans,
/// under the default `queue_size` of 2048.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// The export loop: batches of up to `size` spans, sent when full or `interval` after
/// the batch's first span.
fn drain(
    runtime: &tokio::runtime::Runtime,
    exporter: &AnyExporter,
    rx: &Receiver<SpanData>,
    (size, interval): (usize, Duration),
    metrics: &TelemetryMetrics,
) {
    let mut batch = Vec::with_capacity(size);
    let mut open = true;
    while open {
        match rx.recv() {
            Ok(span) => batch.push(span),
            Err(_) => return,
        }
        let due = Instant::now() + interval;
        // Collect what is queued, then sleep a tick: waiting on the channel instead
        // would wake this thread once per span (a context switch each, at every
        // sampled request), where this wakes it at most once per `DRAIN_TICK`.
        loop {
            while batch.len() < size {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let now = Instant::now();
            if !open || batch.len() >= size || now >= due {
                break;
            }
            std::thread::sleep(DRAIN_TICK.min(due - now));
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(size));
        match runtime.block_on(exporter.export(spans)) {
            Ok(()) => metrics.exported.inc_by(n),
            Err(e) => {
                metrics.export_failures.inc();
                metrics
                    .dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(n);
                tracing::debug!(error = %e, spans = n, "trace export failed");
            }
        }
    }
}

/// Hands finished, sampled spans to the export thread without waiting.
#[derive(Debug)]
struct QueueProcessor {
    tx: SyncSender<SpanData>,
    metrics: TelemetryMetrics,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics
                    .dropped
                    .with_label_values(&["queue_full"])
                    .inc();
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics
                    .dropped
                    .with_label_values(&["exporter_stopped"])
                    .inc();
            }
        }
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
