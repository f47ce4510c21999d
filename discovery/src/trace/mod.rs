//! Owns the control plane's tracing of snapshot builds (OpenTelemetry): the typed
//! `tracing:` settings ([`TraceConfig`], parsed by `config`), the export pipeline
//! ([`export`]: a bounded queue that never blocks the engine, drained by one thread
//! into OTLP over HTTP/protobuf or gRPC) and the spans the engine records, one
//! `discovery.snapshot` per build with a child per real step ([`BuildSpan`]).
//!
//! Snapshot builds are rare, so every one is recorded (no sampling). Without a
//! tracer the engine holds `None`: no span is built, nothing here runs.

pub mod export;

use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

pub use export::{Tracer, start};

/// The span names, for dashboards and tests.
pub const SNAPSHOT_SPAN: &str = "discovery.snapshot";
pub const BUILD_STEP_SPAN: &str = "discovery.snapshot.build";
pub const RELIST_SPAN: &str = "discovery.relist";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`POST {endpoint}/v1/traces`), port 4318.
    Http,
    /// OTLP/gRPC (plaintext), port 4317.
    Grpc,
}

/// `tracing:` as validated (or as the `OTEL_EXPORTER_OTLP_*` variables ask for).
#[derive(Clone, PartialEq)]
pub struct TraceConfig {
    /// `service.name` of the spans (default `discovery`).
    pub service_name: String,
    /// `None`: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`, or
    /// the protocol's localhost default.
    pub endpoint: Option<String>,
    /// `None`: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else HTTP.
    pub protocol: Option<Protocol>,
    /// Sent with every export (a hosted backend's API key); merged with
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: Vec<(String, String)>,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            service_name: DEFAULT_SERVICE_NAME.into(),
            endpoint: None,
            protocol: None,
            headers: Vec::new(),
        }
    }
}

pub const DEFAULT_SERVICE_NAME: &str = "discovery";

// Header values may be credentials: they never reach a log line.
impl std::fmt::Debug for TraceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceConfig")
            .field("service_name", &self.service_name)
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| (k.as_str(), "<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TraceConfig {
    /// Tracing asked for by the environment alone (no `tracing:` section): the
    /// standard OTLP endpoint variables switch it on, as they do for other OTel
    /// programs; `OTEL_SERVICE_NAME` names the service.
    pub fn from_env() -> Option<Self> {
        let on = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        on.then(|| Self {
            service_name: std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
            ..Self::default()
        })
    }
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
                    "{var}={other:?}: discovery exports grpc or http/protobuf"
                )),
            };
        }
    }
    Ok(None)
}

/// What the engine and the watch streams start spans with (cheap to clone).
#[derive(Clone, Debug)]
pub struct SnapshotTracer(SdkTracer);

impl SnapshotTracer {
    pub fn new(tracer: SdkTracer) -> Self {
        Self(tracer)
    }

    /// One span around a complete list of `resource` (the API server calls of a
    /// relist), ended by the returned guard; `objects` is set by [`Step::objects`].
    pub fn relist(&self, resource: &'static str, reason: &'static str) -> Step {
        let span = self
            .0
            .span_builder(RELIST_SPAN)
            .with_kind(opentelemetry::trace::SpanKind::Client)
            .with_attributes([
                KeyValue::new("discovery.resource", resource),
                KeyValue::new("discovery.relist.reason", reason),
            ])
            .start(&self.0);
        Step(Some(Context::new().with_span(span)))
    }
}

/// What led to a build since the previous one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trigger {
    /// Watch events (adds, changes, deletions) coalesced into this build.
    pub watch_events: u64,
    /// Complete lists applied.
    pub relists: u64,
    /// Objects those relists found different from what the watch had delivered.
    pub repaired: u64,
}

impl Trigger {
    fn kind(&self, first: bool, confirmed: bool) -> &'static str {
        if confirmed {
            "confirmation"
        } else if first {
            "initial_sync"
        } else if self.repaired > 0 {
            "relist_repair"
        } else if self.watch_events > 0 || self.relists == 0 {
            "watch"
        } else {
            // A relist that repaired nothing yet led to a build (a stream's first
            // list after the initial sync).
            "relist"
        }
    }
}

/// A span ended when dropped (a step of a build, or a relist).
pub struct Step(Option<Context>);

impl Step {
    /// How many objects the step handled.
    pub fn objects(&self, n: usize) {
        if let Some(cx) = &self.0 {
            cx.span()
                .set_attribute(KeyValue::new("discovery.objects", n as i64));
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// The `discovery.snapshot` span of one build: started before the candidate is
/// computed, given its outcome by one of the consuming methods (dropped without
/// one, it ends with what it has).
pub struct BuildSpan(Option<(Context, SdkTracer)>);

/// The numbers a build ends with.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub version: u64,
    pub services: usize,
    pub endpoints: usize,
    pub changed_services: usize,
    pub removed_endpoints: usize,
}

impl BuildSpan {
    pub fn start(
        tracer: Option<&SnapshotTracer>,
        epoch: &str,
        trigger: Trigger,
        first: bool,
        confirmed: bool,
    ) -> Self {
        let Some(SnapshotTracer(tracer)) = tracer else {
            return Self(None);
        };
        let span = tracer
            .span_builder(SNAPSHOT_SPAN)
            .with_attributes([
                KeyValue::new("discovery.snapshot.epoch", epoch.to_owned()),
                KeyValue::new("discovery.trigger", trigger.kind(first, confirmed)),
                KeyValue::new(
                    "discovery.trigger.watch_events",
                    trigger.watch_events as i64,
                ),
                KeyValue::new("discovery.trigger.relists", trigger.relists as i64),
                KeyValue::new(
                    "discovery.trigger.repaired_objects",
                    trigger.repaired as i64,
                ),
            ])
            .start(tracer);
        Self(Some((Context::new().with_span(span), tracer.clone())))
    }

    /// A child span for one step of the build, ended when the guard drops.
    pub fn step(&self, name: &'static str) -> Step {
        Step(
            self.0
                .as_ref()
                .map(|(cx, tracer)| cx.with_span(tracer.start_with_context(name, cx))),
        )
    }

    fn finish(self, outcome: &'static str, held: bool, o: Outcome) {
        let Some((cx, _)) = &self.0 else { return };
        let span = cx.span();
        span.set_attributes([
            KeyValue::new("discovery.snapshot.outcome", outcome),
            KeyValue::new("discovery.snapshot.version", o.version as i64),
            KeyValue::new("discovery.snapshot.services", o.services as i64),
            KeyValue::new("discovery.snapshot.endpoints", o.endpoints as i64),
            KeyValue::new(
                "discovery.snapshot.changed_services",
                o.changed_services as i64,
            ),
            KeyValue::new(
                "discovery.snapshot.removed_endpoints",
                o.removed_endpoints as i64,
            ),
            KeyValue::new("discovery.mass_deletion.held", held),
        ]);
        span.end();
    }

    /// A new snapshot went out.
    pub fn published(self, o: Outcome) {
        self.finish("published", false, o);
    }

    /// The candidate equals the last snapshot: nothing went out.
    pub fn unchanged(self, o: Outcome) {
        self.finish("unchanged", false, o);
    }

    /// The mass-deletion guard held the candidate back (the last snapshot stays).
    pub fn held(self, o: Outcome) {
        self.finish("held", true, o);
    }
}

impl Drop for BuildSpan {
    fn drop(&mut self) {
        if let Some((cx, _)) = &self.0 {
            cx.span().end();
        }
    }
}
