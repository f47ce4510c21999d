//! Owns W3C Trace Context (`traceparent`, `tracestate`) on the wire: reading the
//! client's, strictly as the W3C grammar says (version 2 lower-case hex and not `ff`,
//! exactly four fields for version 00, a 32-digit trace id and a 16-digit parent id,
//! both lower-case hex and not all zeros, 2-digit flags; the OTel SDK's own parser
//! accepts short ids), and writing the gateway's for the upstream. A `tracestate` that
//! does not parse (OTel's `TraceState` rules) is dropped, the parent kept.
//!
//! A request with more than one `traceparent` field is treated as carrying none (the
//! W3C spec leaves a receiver free to do so, and guessing which one is meant is worse);
//! an invalid `traceparent` also discards `tracestate` (W3C section 3.3.1: tracestate
//! without a valid parent is meaningless).

use std::str::FromStr;

use http::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The parts of a valid `traceparent` value: trace id, parent id, sampled.
fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, bool)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    if !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    // Version 00 has exactly four fields; a later version may append more.
    if version == "00" && rest.is_some() {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, span_id, flags & 1 == 1))
}

/// The client's valid remote parent, if it sent exactly one valid `traceparent`.
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let (trace_id, span_id, sampled) = parse_traceparent(value.to_str().ok()?)?;
    // Several tracestate lines are one list (W3C 3.3.1.1); a bad one is dropped.
    let state: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let trace_state = TraceState::from_str(&state.join(",")).unwrap_or_default();
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        trace_state,
    ))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes` appended to `out` (every request formats ids for its
/// headers and log line: this costs a fraction of `format!`).
fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// A trace id as the 32 lower-case hex digits W3C and the access log use.
pub fn trace_id_hex(id: TraceId) -> String {
    let mut out = String::with_capacity(32);
    push_hex(&mut out, &id.to_bytes());
    out
}

/// `traceparent` for `sc` (version 00).
pub fn traceparent(sc: &SpanContext) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &sc.trace_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &sc.span_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &[sc.trace_flags().to_u8()]);
    out
}

/// Replace the upstream request's trace headers with `sc`'s.
pub fn inject(req: &mut pingora::http::RequestHeader, sc: &SpanContext) -> pingora::Result<()> {
    // Prebuilt names: inserting by `&str` would parse the name on every request.
    const PARENT: http::HeaderName = http::HeaderName::from_static(TRACEPARENT);
    const STATE: http::HeaderName = http::HeaderName::from_static(TRACESTATE);
    let value = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(traceparent(sc)))
        .map_err(|_| pingora::Error::new_str("traceparent is not a header value"))?;
    req.insert_header(PARENT, value)?;
    if sc.trace_state() == &TraceState::NONE {
        req.remove_header(&STATE);
    } else {
        let state = sc.trace_state().header();
        if state.is_empty() {
            req.remove_header(&STATE);
        } else {
            req.insert_header(STATE, state)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_format_as_w3c_says() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(
            traceparent(&sc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(trace_id_hex(sc.trace_id()), sc.trace_id().to_string());
    }

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
        // A later version may carry more fields; the first four are read.
        let future = headers(&[(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes",
        )]);
        assert!(extract(&future).unwrap().is_sampled());
        // A bad tracestate is dropped, the parent kept.
        let bad_state = headers(&[
            (
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (TRACESTATE, "no equals sign here"),
        ]);
        assert_eq!(extract(&bad_state).unwrap().trace_state().header(), "");
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
