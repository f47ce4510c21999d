//! Owns distributed tracing (OpenTelemetry): the `tracing:` settings (`TracingSpec`,
//! built by `config/spec/tracing.rs`), their compiled, reloadable part
//! (`TraceSettings`: the sampling ratio), W3C Trace Context extraction and injection
//! (`propagation`), the request's spans (`RequestTrace`: one server span, a client
//! span per upstream attempt, internal spans for forward auth and rate limits) and the
//! export pipeline (`export`: a bounded queue drained by one thread, batches to OTLP
//! over HTTP/protobuf or gRPC, or to a JSON-lines file; never blocking a request).
//!
//! The tracer provider is also installed as OpenTelemetry's global one, so that the
//! features that make calls of their own (JWKS fetches in `auth`, Redis calls in
//! `ratelimit`) start spans through `opentelemetry::global` in the current context,
//! without depending on this module. Requests that end in a 5xx are exported even when
//! not sampled (`sample_errors`, see `span`).
//!
//! Sampling is parent-based: a valid incoming `traceparent` decides (its sampled
//! flag), otherwise the trace id is compared with `sample_ratio` (the W3C/OTel
//! ratio rule on its lower 64 bits), so every service of one trace agrees. Without a
//! `tracing:` section nothing here runs and `traceparent`/`tracestate` pass through
//! untouched.

mod export;
mod file;
pub mod propagation;
mod span;

use std::path::PathBuf;
use std::time::Duration;

pub use export::{Tracer, start};
pub use span::{AttemptOutcome, RequestTrace, scope_of};

/// `tracing:` as validated.
#[derive(Clone, PartialEq)]
pub struct TracingSpec {
    /// Share of new traces recorded, 0.0-1.0 (reloadable).
    pub sample_ratio: f64,
    /// Export the server span of a request answered with a 5xx even when its trace
    /// was not sampled (reloadable).
    pub sample_errors: bool,
    /// `service.name` of the gateway's spans.
    pub service_name: String,
    pub exporter: ExporterSpec,
    /// Finished spans waiting for export at most; more are dropped (and counted).
    pub queue_size: usize,
    /// Spans sent in one export call at most.
    pub batch_size: usize,
    /// How long a partly filled batch waits before it is sent.
    pub batch_interval: Duration,
}

/// Where finished spans go.
#[derive(Clone, Debug, PartialEq)]
pub enum ExporterSpec {
    Otlp(OtlpSpec),
    /// One JSON object per span and line (`tracing.file`), for a machine without a
    /// collector.
    File(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`POST {endpoint}/v1/traces`), port 4318.
    Http,
    /// OTLP/gRPC (plaintext), port 4317.
    Grpc,
}

#[derive(Clone, PartialEq)]
pub struct OtlpSpec {
    /// `None`: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`, or
    /// the protocol's localhost default.
    pub endpoint: Option<String>,
    /// `None`: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else HTTP.
    pub protocol: Option<Protocol>,
    /// Sent with every export (an API key of a hosted backend); merged with
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: Vec<(String, String)>,
    /// Per export call; `None`: `OTEL_EXPORTER_OTLP_TIMEOUT` or 10 s.
    pub timeout: Option<Duration>,
}

// Header values may be credentials: they never reach a log line or an admin view.
impl std::fmt::Debug for OtlpSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSpec")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| (k.as_str(), crate::redact::REDACTED))
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl std::fmt::Debug for TracingSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ratio is reloadable; what needs a restart is the rest (see
        // `TracingSpec::restart_key`).
        f.debug_struct("TracingSpec")
            .field("sample_ratio", &self.sample_ratio)
            .field("sample_errors", &self.sample_errors)
            .field("service_name", &self.service_name)
            .field("exporter", &self.exporter)
            .field("queue_size", &self.queue_size)
            .field("batch_size", &self.batch_size)
            .field("batch_interval", &self.batch_interval)
            .finish()
    }
}

impl TracingSpec {
    /// What only takes effect at process start (the exporter and its queue), as
    /// comparable text: a reload that changes it is reported as needing a restart.
    pub fn restart_key(&self) -> String {
        format!(
            "{}|{:?}|{}|{}|{:?}",
            self.service_name, self.exporter, self.queue_size, self.batch_size, self.batch_interval
        )
    }
}

/// The reloadable part of `tracing:`, held by the runtime.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceSettings {
    pub sample_ratio: f64,
    pub sample_errors: bool,
}

/// Compile step: what a runtime keeps of `tracing:`.
pub fn compile(spec: Option<&TracingSpec>) -> Option<TraceSettings> {
    spec.map(|s| TraceSettings {
        sample_ratio: s.sample_ratio,
        sample_errors: s.sample_errors,
    })
}

/// Protocol named by the OTel environment variables (`grpc`, `http/protobuf`).
pub fn protocol_from_env() -> Result<Option<Protocol>, String> {
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(v) = std::env::var(var) {
            return match v.trim() {
                "grpc" => Ok(Some(Protocol::Grpc)),
                "http/protobuf" => Ok(Some(Protocol::Http)),
                other => Err(format!(
                    "{var}={other:?}: this gateway exports grpc or http/protobuf"
                )),
            };
        }
    }
    Ok(None)
}
