//! Builds the `tracing:` section into the telemetry feature's `TracingSpec`: the ratio
//! in 0-1, the exporter (OTLP endpoint as an http(s) URL, protocol, header names and
//! values that can travel in a request; or a span file), queue and batch sizes.

use std::time::Duration;

use super::{Errors, opt_duration, wire};
use crate::telemetry::{ExporterSpec, OtlpSpec, Protocol, TracingSpec};

const DEFAULT_RATIO: f64 = 0.01;
const MAX_QUEUE: usize = 1 << 20;

pub(super) fn tracing_spec(e: &mut Errors, t: &wire::Tracing) -> Option<TracingSpec> {
    let before = e.len();
    let sample_ratio = t.sample_ratio.unwrap_or(DEFAULT_RATIO);
    if !(0.0..=1.0).contains(&sample_ratio) {
        e.push(
            "tracing.sample_ratio",
            format!("sample_ratio {sample_ratio} must be between 0 and 1"),
        );
    }
    let service_name = t.service_name.clone().unwrap_or_else(|| "gateway".into());
    if service_name.trim().is_empty() {
        e.push("tracing.service_name", "service_name must not be empty");
    }
    let exporter = match (&t.otlp, &t.file) {
        (Some(_), Some(_)) => {
            e.push("tracing.file", "set otlp or file, not both");
            None
        }
        (_, Some(f)) if f.trim().is_empty() => {
            e.push("tracing.file", "file must be a file path");
            None
        }
        (_, Some(f)) => Some(ExporterSpec::File(f.into())),
        (Some(o), None) => otlp(e, o).map(ExporterSpec::Otlp),
        (None, None) => otlp(e, &wire::Otlp::default()).map(ExporterSpec::Otlp),
    };
    let size = |e: &mut Errors, path: &str, v: Option<usize>, default: usize| match v {
        None => default,
        Some(n) if (1..=MAX_QUEUE).contains(&n) => n,
        Some(n) => {
            e.push(path, format!("{n} must be between 1 and {MAX_QUEUE}"));
            default
        }
    };
    let queue_size = size(e, "tracing.queue_size", t.queue_size, 2048);
    let batch_size = size(e, "tracing.batch_size", t.batch_size, 512);
    if batch_size > queue_size {
        e.push(
            "tracing.batch_size",
            format!("batch_size {batch_size} is larger than queue_size {queue_size}"),
        );
    }
    let batch_interval = opt_duration(
        e,
        "tracing.batch_interval",
        t.batch_interval.as_deref(),
        Duration::from_secs(1),
    );
    let exporter = exporter?;
    (e.len() == before).then_some(TracingSpec {
        sample_ratio,
        sample_errors: t.sample_errors.unwrap_or(true),
        service_name,
        exporter,
        queue_size,
        batch_size,
        batch_interval,
    })
}

fn otlp(e: &mut Errors, o: &wire::Otlp) -> Option<OtlpSpec> {
    let before = e.len();
    let protocol = match o.protocol.as_deref() {
        None => None,
        Some("http") | Some("http/protobuf") => Some(Protocol::Http),
        Some("grpc") => Some(Protocol::Grpc),
        Some(other) => {
            e.push(
                "tracing.otlp.protocol",
                format!("unknown protocol {other:?}: use http or grpc"),
            );
            None
        }
    };
    if let Some(raw) = &o.endpoint {
        match raw.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some_and(|h| !h.is_empty()) =>
            {
                if u.authority().is_some_and(|a| a.as_str().contains('@')) {
                    e.push(
                        "tracing.otlp.endpoint",
                        "credentials go in tracing.otlp.headers, not in the URL",
                    );
                }
                if protocol == Some(Protocol::Grpc) && u.scheme_str() == Some("https") {
                    e.push(
                        "tracing.otlp.endpoint",
                        "gRPC export is plaintext here: use http:// or protocol: http with https://",
                    );
                }
            }
            _ => e.push(
                "tracing.otlp.endpoint",
                format!("invalid endpoint {raw:?}: expected an http:// or https:// URL"),
            ),
        }
    }
    let mut headers = Vec::new();
    for (k, v) in &o.headers {
        let path = format!("tracing.otlp.headers.{k}");
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            e.push(&path, format!("invalid header name {k:?}"));
        } else if http::HeaderValue::from_str(v).is_err() {
            // The value may be a secret: name the header, never echo the value.
            e.push(
                &path,
                "the header value has characters a header cannot carry",
            );
        } else {
            headers.push((k.to_ascii_lowercase(), v.clone()));
        }
    }
    let timeout = o
        .timeout
        .as_deref()
        .and_then(|raw| e.take("tracing.otlp.timeout", crate::units::duration(raw)));
    (e.len() == before).then(|| OtlpSpec {
        endpoint: o.endpoint.clone(),
        protocol,
        headers,
        timeout,
    })
}
