//! Owns one request's spans: the server span (started when the request head is read,
//! ended in `logging` with the HTTP semantic-convention attributes and the gateway's
//! own: route, upstream, cache, rate-limit and auth outcomes, never a credential), a
//! client span per upstream attempt (so retries show as siblings) and internal spans
//! for calls made on the request's behalf (forward auth, rate limits).
//!
//! An unsampled request still gets a span context (ids for `traceparent` and the access
//! log) but records nothing: no SDK span, child span or attribute is built for it. If it ends in a 5xx and
//! `sample_errors` is on, its server span is built then, after the fact, with the same
//! ids, parent and start time (`promote_error`): the failure is exported without
//! recording, or buffering, anything for the requests that succeed. Its child spans
//! were never recorded, so such a trace holds the server span alone.
//!
//! Calls that features make on a request's behalf (Redis, JWKS fetches) start their
//! spans from OpenTelemetry's current context: the proxy runs them inside
//! [`RequestTrace::scope`] / [`scope_of`], which is only set for sampled requests.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    SamplingDecision, SamplingResult, Span as _, SpanContext, SpanKind, Status, TraceContextExt,
    TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Span};

use super::{TraceSettings, Tracer, propagation};

/// The spans of one request.
#[derive(Debug)]
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    /// The recorded server span; `None` for an unsampled request, which has only
    /// `context` (no SDK span is built for it at all).
    server: Option<Span>,
    /// The server span's ids, flags and trace state.
    context: SpanContext,
    /// The current upstream attempt, ended when its outcome is known.
    attempt: Option<Span>,
    trace_id: String,
    /// What an after-the-fact server span needs (`promote_error`).
    parent: Option<SpanContext>,
    started: SystemTime,
    sample_errors: bool,
}

/// How an upstream attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum AttemptOutcome<'a> {
    /// The upstream answered with this status.
    Status(u16),
    /// No usable answer: connect failure, timeout, broken connection (the error type).
    Failed(&'a str),
}

fn sampling(sampled: bool, trace_state: TraceState) -> SamplingResult {
    SamplingResult {
        decision: if sampled {
            SamplingDecision::RecordAndSample
        } else {
            SamplingDecision::Drop
        },
        attributes: Vec::new(),
        trace_state,
    }
}

/// The OTel ratio rule (as `TraceIdRatioBased`): the lower 64 bits of the id, halved,
/// below `ratio` * 2^63.
fn ratio_says(trace_id: opentelemetry::trace::TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..16]);
    (u64::from_be_bytes(low) >> 1) < bound
}

impl RequestTrace {
    /// Start the server span of a request: continue a valid incoming trace (its
    /// sampled flag decides) or start a new one (the ratio decides).
    pub fn begin(
        tracer: &Arc<Tracer>,
        settings: &TraceSettings,
        headers: &http::HeaderMap,
        method: &str,
        started: SystemTime,
    ) -> RequestTrace {
        let parent = propagation::extract(headers);
        let ids = RandomIdGenerator::default();
        let (trace_id, sampled, state) = match &parent {
            Some(sc) => (sc.trace_id(), sc.is_sampled(), sc.trace_state().clone()),
            None => {
                let trace_id = ids.new_trace_id();
                let sampled = ratio_says(trace_id, settings.sample_ratio);
                (trace_id, sampled, TraceState::default())
            }
        };
        let span_id = ids.new_span_id();
        let context = SpanContext::new(trace_id, span_id, TraceFlags::default(), false, state);
        let mut trace = RequestTrace {
            tracer: Arc::clone(tracer),
            server: None,
            context,
            attempt: None,
            trace_id: propagation::trace_id_hex(trace_id),
            parent,
            started,
            sample_errors: settings.sample_errors,
        };
        if sampled {
            trace.record_server(Cow::Owned(method.to_owned()));
        }
        trace
    }

    /// Build the recorded server span with the ids already handed out (`context`).
    fn record_server(&mut self, name: Cow<'static, str>) {
        let tracer = self.tracer.tracer();
        let mut builder = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(self.started)
            .with_trace_id(self.context.trace_id())
            .with_span_id(self.context.span_id());
        builder.sampling_result = Some(sampling(true, self.context.trace_state().clone()));
        let cx = match &self.parent {
            Some(p) => Context::new().with_remote_span_context(p.clone()),
            None => Context::new(),
        };
        let server = tracer.build_with_context(builder, &cx);
        self.context = server.span_context().clone();
        self.server = Some(server);
    }

    /// The context to run calls made for this request in (their spans become children
    /// of the server span); `None` when the request is not sampled.
    pub fn scope(&self) -> Option<Context> {
        self.server.as_ref().and_then(scope_of)
    }

    /// A request about to be answered with `status` that was not sampled: if it is a
    /// 5xx and `sample_errors` is on, record its server span from now on (same trace
    /// and span id, parent and start time), so the attributes set next are exported.
    pub fn promote_error(&mut self, status: u16) {
        if status < 500 || !self.sample_errors || self.server.is_some() {
            return;
        }
        self.record_server(Cow::Borrowed("request"));
        if let Some(server) = self.server.as_mut() {
            // Tells a reader why a trace of one span exists (the rest was never recorded).
            server.set_attribute(KeyValue::new("gateway.trace.sampled_by", "server_error"));
        }
    }

    /// The trace id (32 lower-case hex digits), for the access log and error bodies.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// Whether this request's spans are recorded and exported.
    pub fn sampled(&self) -> bool {
        self.server.is_some()
    }

    /// Set attributes of the server span (computed only when it records).
    pub fn annotate(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(server) = self.server.as_mut() {
            server.set_attributes(attributes());
        }
    }

    /// Rename the server span (`{method} {route}` once the route is known).
    pub fn rename(&mut self, name: impl FnOnce() -> String) {
        if let Some(server) = self.server.as_mut() {
            server.update_name(name());
        }
    }

    /// A child span of the server span, started now; `None` when the request is not
    /// sampled (nothing of it would be recorded: not even an unrecorded span is built).
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Option<Span> {
        self.server.as_ref()?;
        let sc = &self.context;
        let tracer = self.tracer.tracer();
        let mut builder = tracer.span_builder(Cow::Borrowed(name)).with_kind(kind);
        builder.sampling_result = Some(sampling(true, sc.trace_state().clone()));
        Some(tracer.build_with_context(
            builder,
            &Context::new().with_remote_span_context(sc.clone()),
        ))
    }

    /// The context a call made for this request carries (in `traceparent`): `child`'s
    /// when it was recorded, else the server span's.
    pub fn context_of<'a>(&'a self, child: Option<&'a Span>) -> &'a SpanContext {
        child.map_or(&self.context, |c| c.span_context())
    }

    /// Start the span of upstream attempt `try_no` (1-based) to `endpoint`; an attempt
    /// still open (its outcome never reported) is ended first.
    pub fn begin_attempt(&mut self, method: &str, upstream: &str, endpoint: &str, try_no: u32) {
        self.end_attempt(AttemptOutcome::Failed("abandoned"));
        let Some(mut span) = self.child("upstream", SpanKind::Client) else {
            return;
        };
        span.update_name(format!("{method} {upstream}"));
        let (host, port) = split_host_port(endpoint);
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("server.address", host.to_owned()),
            KeyValue::new("gateway.upstream", upstream.to_owned()),
            KeyValue::new("gateway.upstream.endpoint", endpoint.to_owned()),
            KeyValue::new("gateway.attempt", i64::from(try_no)),
        ];
        if let Some(p) = port {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
        if try_no > 1 {
            // Semantic conventions: the ordinal of a resent request.
            attrs.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(try_no - 1),
            ));
        }
        span.set_attributes(attrs);
        self.attempt = Some(span);
    }

    /// End the current attempt's span with its outcome.
    pub fn end_attempt(&mut self, outcome: AttemptOutcome<'_>) {
        let Some(mut span) = self.attempt.take() else {
            return;
        };
        if span.is_recording() {
            match outcome {
                AttemptOutcome::Status(s) => {
                    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
                    if s >= 500 {
                        span.set_attribute(KeyValue::new("error.type", s.to_string()));
                        span.set_status(Status::error(""));
                    }
                }
                AttemptOutcome::Failed(kind) => {
                    span.set_attribute(KeyValue::new("error.type", kind.to_owned()));
                    span.set_status(Status::error(kind.to_owned()));
                }
            }
        }
        span.end();
    }

    /// What the upstream request carries: the attempt's context (the server span's
    /// before any attempt).
    pub fn upstream_context(&self) -> &SpanContext {
        self.attempt
            .as_ref()
            .map_or(&self.context, |a| a.span_context())
    }

    /// Write this request's `traceparent`/`tracestate` into the upstream request.
    pub fn inject(&self, req: &mut pingora::http::RequestHeader) -> pingora::Result<()> {
        propagation::inject(req, self.upstream_context())
    }

    /// End the server span with the response status (5xx: error, as the semantic
    /// conventions say for server spans).
    pub fn finish(mut self, status: u16, error: Option<&str>) {
        self.end_attempt(AttemptOutcome::Failed(error.unwrap_or("abandoned")));
        let Some(mut server) = self.server.take() else {
            return;
        };
        server.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            server.set_attribute(KeyValue::new("error.type", status.to_string()));
            server.set_status(Status::error(""));
        } else if let Some(e) = error {
            server.set_attribute(KeyValue::new("error.type", e.to_owned()));
        }
        server.end();
    }
}

/// The context that makes `span` the parent of spans started in it; `None` when
/// `span` is not sampled (nothing started in it would be recorded either).
pub fn scope_of(span: &Span) -> Option<Context> {
    let sc = span.span_context();
    sc.is_sampled()
        .then(|| Context::new().with_remote_span_context(sc.clone()))
}

/// `host:port` (or `[v6]:port`) into its parts.
fn split_host_port(endpoint: &str) -> (&str, Option<u16>) {
    match endpoint.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => match p.parse() {
            Ok(port) => (h.trim_start_matches('[').trim_end_matches(']'), Some(port)),
            Err(_) => (endpoint, None),
        },
        _ => (endpoint, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceId;

    #[test]
    fn ratio_rule_matches_the_extremes_and_the_boundary() {
        let id = |low: u64| TraceId::from_bytes(((1u128 << 64) | u128::from(low)).to_be_bytes());
        assert!(!ratio_says(id(0), 0.0));
        assert!(ratio_says(id(u64::MAX), 1.0));
        // low >> 1 = 2^62: sampled at 0.5 + anything, not at 0.5.
        assert!(!ratio_says(id(1 << 63), 0.5));
        assert!(ratio_says(id((1 << 63) - 2), 0.5));
    }

    #[test]
    fn endpoints_split() {
        assert_eq!(split_host_port("127.0.0.1:8080"), ("127.0.0.1", Some(8080)));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("orders"), ("orders", None));
    }
}
