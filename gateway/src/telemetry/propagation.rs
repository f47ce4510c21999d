//! Owns W3C Trace Context (`traceparent`, `tracestate`) on the wire: reading the
//! client's (through the OTel SDK's `TraceContextPropagator`, which refuses a wrong
//! version, all-zero ids, bad hex and bad lengths) and writing the gateway's for the
//! upstream.
//!
//! A request with more than one `traceparent` field is treated as carrying none (the
//! W3C spec leaves a receiver free to do so, and guessing which one is meant is worse);
//! an invalid `traceparent` also discards `tracestate` (W3C section 3.3.1: tracestate
//! without a valid parent is meaningless).

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The client's valid remote parent, if it sent exactly one valid `traceparent`.
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    if headers.get_all(TRACEPARENT).iter().count() != 1 {
        return None;
    }
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(headers));
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_remote()).then_some(sc)
}

/// `traceparent` for `sc` (version 00).
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Replace the upstream request's trace headers with `sc`'s.
pub fn inject(req: &mut pingora::http::RequestHeader, sc: &SpanContext) -> pingora::Result<()> {
    req.insert_header(TRACEPARENT, traceparent(sc))?;
    let state = sc.trace_state().header();
    if state.is_empty() {
        req.remove_header(TRACESTATE);
    } else {
        req.insert_header(TRACESTATE, state)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn valid_parents_are_extracted_with_their_state() {
        let h = headers(&[
            (
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (TRACESTATE, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ]);
        let sc = extract(&h).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert_eq!(
            sc.trace_state().header(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        let unsampled = headers(&[(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert!(!extract(&unsampled).unwrap().is_sampled());
    }

    #[test]
    fn invalid_parents_are_refused() {
        for bad in [
            "",
            "garbage",
            // version ff is forbidden
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero trace id, all-zero span id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // bad hex, upper case, wrong lengths
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // version 00 has exactly four fields
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(
                extract(&headers(&[(TRACEPARENT, bad)])).is_none(),
                "{bad:?}"
            );
        }
        let twice = headers(&[
            (
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01",
            ),
        ]);
        assert!(extract(&twice).is_none());
    }

    #[test]
    fn traceparent_round_trips() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = extract(&headers(&[(TRACEPARENT, text)])).unwrap();
        assert_eq!(traceparent(&sc), text);
    }
}
