//! Owns what the gateway knows of gRPC (the "gRPC over HTTP/2" protocol): which
//! requests are gRPC calls (their content type), the status the gateway gives a call
//! it answers itself (HTTP 200, `grpc-status` and `grpc-message` in a trailers-only
//! response; never a JSON body), reading `grpc-timeout` (which bounds the upstream
//! wait), reading `grpc-status` from an upstream's trailers-only answer (for the
//! `grpc_unavailable` retry), and the syntax of service and method names for
//! `match.grpc`. gRPC bodies are streamed like any other: the cache (POST is never
//! cached), compression (gRPC compresses its own messages) and the default body limit
//! leave gRPC calls alone.

use std::time::Duration;

use http::HeaderMap;

/// gRPC status codes (grpc/doc/statuscodes.md) the gateway produces or reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    /// The decimal text of the code, for the `grpc-status` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeadlineExceeded => "4",
            Self::PermissionDenied => "7",
            Self::ResourceExhausted => "8",
            Self::Unimplemented => "12",
            Self::Internal => "13",
            Self::Unavailable => "14",
            Self::Unauthenticated => "16",
        }
    }

    /// The gRPC status of an answer the gateway would give with HTTP `status`:
    /// 404 (no route) -> UNIMPLEMENTED, 401 -> UNAUTHENTICATED, 403 ->
    /// PERMISSION_DENIED, 429 and 413/431 (a limit) -> RESOURCE_EXHAUSTED, 502/503 ->
    /// UNAVAILABLE, 504/408 -> DEADLINE_EXCEEDED; anything else (400 included) ->
    /// INTERNAL, as gRPC's own HTTP-to-gRPC mapping says.
    pub fn for_http(status: u16) -> Self {
        match status {
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 | 405 | 501 => Self::Unimplemented,
            408 | 504 => Self::DeadlineExceeded,
            413 | 429 | 431 => Self::ResourceExhausted,
            502 | 503 => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

/// Is this request a gRPC call (`application/grpc`, `application/grpc+proto`,
/// `application/grpc-web...`)? Its errors are then gRPC statuses.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

/// `application/grpc` alone or followed by `+`, `-` (grpc-web) or `;` parameters,
/// ASCII case-insensitive.
pub fn is_grpc_content_type(v: &[u8]) -> bool {
    const BASE: &[u8] = b"application/grpc";
    v.len() >= BASE.len()
        && v[..BASE.len()].eq_ignore_ascii_case(BASE)
        && matches!(v.get(BASE.len()), None | Some(b'+' | b'-' | b';'))
}

/// The content type of the gateway's own answer to a call with these headers.
pub fn reply_content_type(headers: &HeaderMap) -> &'static str {
    let web = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().len() > 16 && v.as_bytes()[16] == b'-');
    if web {
        "application/grpc-web+proto"
    } else {
        "application/grpc"
    }
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%` itself
/// (gRPC over HTTP/2, "Responses").
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Longest `grpc-timeout` honoured; longer ones (up to 99999999 hours) are capped so
/// that deadline arithmetic cannot overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `grpc-timeout`: 1-8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). A
/// malformed value is ignored, as gRPC servers do.
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let d = match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(MAX_TIMEOUT))
}

/// The call's `grpc-timeout`, if it sent a valid one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("grpc-timeout")
        .and_then(|v| parse_timeout(v.as_bytes()))
}

/// The `grpc-status` of an upstream response head: set only in a trailers-only
/// response (an error before any message), the one kind a retry may replace.
pub fn head_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// One protobuf identifier: a letter or `_`, then letters, digits or `_`.
fn identifier_ok(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A fully qualified service name: dot-separated identifiers (`shop.Inventory`).
pub fn service_name_ok(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(identifier_ok)
}

/// A method name: one identifier (`Get`).
pub fn method_name_ok(s: &str) -> bool {
    identifier_ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        for (v, want) in [
            (&b"application/grpc"[..], true),
            (b"application/grpc+proto", true),
            (b"Application/GRPC+json", true),
            (b"application/grpc-web-text", true),
            (b"application/grpc;charset=utf-8", true),
            (b"application/grpcx", false),
            (b"application/json", false),
            (b"application/grp", false),
        ] {
            assert_eq!(
                is_grpc_content_type(v),
                want,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn timeouts() {
        for (v, want) in [
            ("1S", Some(Duration::from_secs(1))),
            ("250m", Some(Duration::from_millis(250))),
            ("3M", Some(Duration::from_secs(180))),
            ("2H", Some(Duration::from_secs(7200))),
            ("100u", Some(Duration::from_micros(100))),
            ("5n", Some(Duration::from_nanos(5))),
            ("99999999H", Some(MAX_TIMEOUT)),
            ("123456789S", None),
            ("S", None),
            ("1s", None),
            ("-1S", None),
            ("1.5S", None),
            ("", None),
        ] {
            assert_eq!(parse_timeout(v.as_bytes()), want, "{v:?}");
        }
    }

    #[test]
    fn statuses_for_gateway_answers() {
        for (http, code) in [
            (404, 12),
            (401, 16),
            (403, 7),
            (429, 8),
            (503, 14),
            (502, 14),
            (504, 4),
            (413, 8),
            (400, 13),
            (500, 13),
        ] {
            assert_eq!(Code::for_http(http) as u8, code, "{http}");
            assert_eq!(Code::for_http(http).as_str(), code.to_string());
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no route, 100%"), "no route, 100%25");
        assert_eq!(encode_message("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[test]
    fn names() {
        assert!(service_name_ok("shop.Inventory"));
        assert!(service_name_ok("Inventory"));
        assert!(service_name_ok("a_b.c1.D"));
        for bad in ["", ".x", "x.", "a..b", "1a.B", "a/b", "a b"] {
            assert!(!service_name_ok(bad), "{bad:?}");
        }
        assert!(method_name_ok("Get"));
        assert!(!method_name_ok("Get/x"));
        assert!(!method_name_ok(""));
    }
}
