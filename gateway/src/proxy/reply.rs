//! Owns the gateway's own answers: the JSON error bodies with stable codes, the request
//! id rules, and the mapping from Pingora errors to 4xx/5xx statuses.

use bytes::Bytes;
use pingora::{ErrorSource, ErrorType};

/// A response the gateway makes itself, with a stable machine-readable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

pub const NOT_FOUND: Reply = Reply {
    status: 404,
    code: "route_not_found",
    message: "no route matches this request",
};
pub const URI_TOO_LONG: Reply = Reply {
    status: 414,
    code: "uri_too_long",
    message: "the request target is longer than this gateway accepts",
};
pub const HEADERS_TOO_LARGE: Reply = Reply {
    status: 431,
    code: "request_header_too_large",
    message: "request headers are larger than this gateway accepts",
};
pub const BAD_PATH: Reply = Reply {
    status: 400,
    code: "bad_request_target",
    message: "request target must be an absolute path",
};
/// 400 for a path refused before routing (see `router::path`).
pub fn for_path(e: crate::router::PathError) -> Reply {
    Reply {
        status: 400,
        code: e.code(),
        message: e.message(),
    }
}
pub const BAD_REQUEST: Reply = Reply {
    status: 400,
    code: "bad_request",
    message: "malformed request",
};
pub const BAD_GATEWAY: Reply = Reply {
    status: 502,
    code: "upstream_unavailable",
    message: "the upstream refused or dropped the connection",
};
pub const GATEWAY_TIMEOUT: Reply = Reply {
    status: 504,
    code: "upstream_timeout",
    message: "the upstream did not answer in time",
};
pub const NO_ENDPOINT: Reply = Reply {
    status: 503,
    code: "no_upstream_endpoint",
    message: "the route's upstream has no endpoint to send to",
};
pub const RATE_LIMITED: Reply = Reply {
    status: 429,
    code: "rate_limited",
    message: "too many requests; retry after the time in Retry-After",
};
pub const RATE_LIMIT_UNAVAILABLE: Reply = Reply {
    status: 503,
    code: "rate_limit_unavailable",
    message: "the shared rate limiter is unreachable and this route fails closed",
};
pub const OVERLOADED: Reply = Reply {
    status: 503,
    code: "upstream_overloaded",
    message: "the upstream has too many requests in flight; retry later",
};
/// The error type of a try refused by the upstream's connection limit.
pub const UPSTREAM_OVERLOADED: ErrorType = ErrorType::Custom("upstream_overloaded");

pub const DEADLINE: Reply = Reply {
    status: 504,
    code: "deadline_exceeded",
    message: "the route's deadline passed before the upstream answered",
};
pub const UNAUTHENTICATED: Reply = Reply {
    status: 401,
    code: "unauthenticated",
    message: "this route needs a bearer token",
};
pub const INSUFFICIENT_SCOPE: Reply = Reply {
    status: 403,
    code: "insufficient_scope",
    message: "the token does not grant access to this route",
};
pub const AMBIGUOUS_CREDENTIALS: Reply = Reply {
    status: 400,
    code: "invalid_request",
    message: "the request carries more than one Authorization header or several different tokens",
};
pub const AUTH_UNAVAILABLE: Reply = Reply {
    status: 503,
    code: "auth_unavailable",
    message: "the keys to verify tokens are unavailable; retry after the time in Retry-After",
};

/// 401 for a token that failed verification; `message` says why in the words of
/// [`crate::auth::validate::Failure::description`] (static, JSON-safe).
pub fn invalid_token(message: &'static str) -> Reply {
    Reply {
        status: 401,
        code: "invalid_token",
        message,
    }
}

/// The reply for an auth rejection.
pub fn for_rejection(r: &crate::auth::Rejection) -> Reply {
    use crate::auth::Rejection;
    match r {
        Rejection::Missing { .. } => UNAUTHENTICATED,
        Rejection::Invalid { failure, .. } => invalid_token(failure.description()),
        Rejection::Forbidden { .. } => INSUFFICIENT_SCOPE,
        Rejection::Unavailable { .. } => AUTH_UNAVAILABLE,
        Rejection::Ambiguous { .. } => AMBIGUOUS_CREDENTIALS,
    }
}

pub const PLAIN_HTTP_ON_TLS: Reply = Reply {
    status: 400,
    code: "plain_http_on_tls_port",
    message: "this port speaks HTTPS; the request was sent as plain HTTP",
};
pub const MISDIRECTED: Reply = Reply {
    status: 421,
    code: "misdirected_request",
    message: "this connection's TLS certificate is not the one for the requested host; open a new connection for it",
};
pub const REQUEST_HEADER_TIMEOUT: Reply = Reply {
    status: 408,
    code: "request_header_timeout",
    message: "the request head did not arrive within the time this gateway waits",
};
pub const REQUEST_BODY_TIMEOUT: Reply = Reply {
    status: 408,
    code: "request_body_timeout",
    message: "the request body stalled for longer than this gateway waits",
};
pub const BODY_TOO_LARGE: Reply = Reply {
    status: 413,
    code: "request_body_too_large",
    message: "the request body is larger than this route accepts",
};
/// The error type that ends a request whose streamed body crossed its size limit.
pub const BODY_TOO_LARGE_ERROR: ErrorType = ErrorType::Custom("request_body_too_large");

/// The reply for a request head refused by the framing checks (`edge::framing`).
pub fn for_framing(e: crate::edge::framing::FramingError) -> Reply {
    use crate::edge::framing::FramingError::*;
    let (code, message) = match e {
        BadRequestLine => (
            "bad_request_line",
            "the request line must be METHOD SP TARGET SP HTTP/1.1",
        ),
        BadHeader => (
            "bad_header",
            "a header field is malformed (obs-fold, bad name or control character)",
        ),
        TooManyHeaders => return HEADERS_TOO_LARGE,
        MissingHost => ("missing_host", "an HTTP/1.1 request needs a Host header"),
        DuplicateHost => (
            "duplicate_host",
            "the request has more than one Host header",
        ),
        BadHost => ("bad_host", "the Host header is not a valid authority"),
        ContentLengthWithTransferEncoding => (
            "content_length_with_transfer_encoding",
            "Content-Length and Transfer-Encoding must not both be sent",
        ),
        BadContentLength => (
            "bad_content_length",
            "Content-Length must be one field holding one decimal number",
        ),
        BadTransferEncoding => (
            "bad_transfer_encoding",
            "Transfer-Encoding must end in a single chunked (and is not allowed in HTTP/1.0)",
        ),
        UnsupportedTransferEncoding => (
            "unsupported_transfer_encoding",
            "transfer codings other than chunked are not implemented",
        ),
        Connect => (
            "connect_not_supported",
            "CONNECT is not supported: this gateway does not open tunnels",
        ),
        HostMismatch => (
            "host_mismatch",
            "the Host header differs from the authority of the request target",
        ),
        UnsupportedExpectation => (
            "expectation_failed",
            "the only expectation this gateway meets is 100-continue",
        ),
    };
    Reply {
        status: e.status(),
        code,
        message,
    }
}

pub const IP_FORBIDDEN: Reply = Reply {
    status: 403,
    code: "ip_forbidden",
    message: "requests from this client address are not allowed",
};
pub const CORS_ORIGIN: Reply = Reply {
    status: 403,
    code: "cors_origin_not_allowed",
    message: "the CORS policy does not allow this origin",
};
pub const CORS_METHOD: Reply = Reply {
    status: 403,
    code: "cors_method_not_allowed",
    message: "the CORS policy does not allow the requested method",
};
pub const CORS_HEADERS: Reply = Reply {
    status: 403,
    code: "cors_headers_not_allowed",
    message: "the CORS policy does not allow a requested header",
};
pub const API_KEY_MISSING: Reply = Reply {
    status: 401,
    code: "api_key_missing",
    message: "this route needs an API key",
};
pub const API_KEY_INVALID: Reply = Reply {
    status: 401,
    code: "invalid_api_key",
    message: "the API key is not valid",
};
pub const API_KEY_AMBIGUOUS: Reply = Reply {
    status: 400,
    code: "ambiguous_api_key",
    message: "send one API key, in one place",
};
pub const CONSUMER_DISABLED: Reply = Reply {
    status: 403,
    code: "consumer_disabled",
    message: "the consumer of this API key is disabled",
};
pub const CONSUMER_FORBIDDEN: Reply = Reply {
    status: 403,
    code: "consumer_not_allowed",
    message: "the consumer's groups do not allow this route",
};
pub const CREDENTIALS_MISSING: Reply = Reply {
    status: 401,
    code: "unauthenticated",
    message: "this route needs a bearer token or an API key",
};
pub const FORWARD_AUTH_UNAVAILABLE: Reply = Reply {
    status: 503,
    code: "forward_auth_unavailable",
    message: "the authorization service could not be asked; retry later",
};
pub const AUTH_BODY_TOO_LARGE: Reply = Reply {
    status: 413,
    code: "auth_body_too_large",
    message: "the request body is larger than the authorization check accepts",
};

/// The reply for a refused API key, or `None` for a verified one.
pub fn for_key_outcome(o: &crate::apikey::KeyOutcome) -> Option<Reply> {
    use crate::apikey::KeyOutcome;
    Some(match o {
        KeyOutcome::Missing => API_KEY_MISSING,
        KeyOutcome::Invalid => API_KEY_INVALID,
        KeyOutcome::Ambiguous => API_KEY_AMBIGUOUS,
        KeyOutcome::Disabled(_) => CONSUMER_DISABLED,
        KeyOutcome::Forbidden(_) => CONSUMER_FORBIDDEN,
        KeyOutcome::Verified { .. } => return None,
    })
}

/// The reply for a refused CORS preflight.
pub fn for_cors_refusal(r: crate::cors::Refusal) -> Reply {
    use crate::cors::Refusal;
    match r {
        Refusal::Origin => CORS_ORIGIN,
        Refusal::Method => CORS_METHOD,
        Refusal::Headers => CORS_HEADERS,
    }
}

pub const INTERNAL: Reply = Reply {
    status: 500,
    code: "internal_error",
    message: "the gateway failed to handle this request",
};

impl Reply {
    /// `{"error":{"code":..,"message":..,"request_id":..,"trace_id":..}}` (`trace_id`
    /// only on traced requests); the request id is checked (or generated) by
    /// [`request_id`] and the trace id is hex, so neither needs JSON escaping.
    pub fn body(&self, request_id: &str, trace_id: Option<&str>) -> Bytes {
        let trace = match trace_id {
            Some(t) => format!(r#","trace_id":"{t}""#),
            None => String::new(),
        };
        Bytes::from(format!(
            r#"{{"error":{{"status":{},"code":"{}","message":"{}","request_id":"{}"{trace}}}}}"#,
            self.status, self.code, self.message, request_id
        ))
    }
}

/// Longest client-supplied request id we keep.
const MAX_REQUEST_ID: usize = 128;

/// Keep a client's `X-Request-Id` when it is well formed (1-128 of `A-Za-z0-9._:-`),
/// otherwise make a new random one. Well-formed ids are safe in JSON and in logs.
pub fn request_id(client: Option<&[u8]>) -> String {
    match client {
        Some(v)
            if !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.iter().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                }) =>
        {
            // All bytes are ASCII, so this cannot fail.
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// The answer for a Pingora error, or `None` when the client is gone (nothing to send).
pub fn for_error(etype: &ErrorType, source: &ErrorSource) -> Option<Reply> {
    use ErrorType::*;
    match (source, etype) {
        (_, HTTPStatus(400)) => Some(BAD_REQUEST),
        (_, HTTPStatus(503)) => Some(NO_ENDPOINT),
        (_, Custom("upstream_overloaded")) => Some(OVERLOADED),
        (_, HTTPStatus(504)) => Some(DEADLINE),
        (_, Custom("request_body_too_large")) => Some(BODY_TOO_LARGE),
        // Reading the body is the only downstream read with a timeout (request heads
        // are read by `listener`): `request_body_idle` ran out.
        (ErrorSource::Downstream, ReadTimedout) => Some(REQUEST_BODY_TIMEOUT),
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => None,
        (ErrorSource::Downstream, WriteTimedout) => None,
        (ErrorSource::Downstream, _) => Some(BAD_REQUEST),
        (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout) => {
            Some(GATEWAY_TIMEOUT)
        }
        (ErrorSource::Upstream, _) => Some(BAD_GATEWAY),
        (_, ConnectTimedout | ReadTimedout | WriteTimedout) => Some(GATEWAY_TIMEOUT),
        (_, ConnectRefused | ConnectNoRoute | ConnectError | ConnectionClosed) => Some(BAD_GATEWAY),
        _ => Some(INTERNAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some(b"abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in [
            &b""[..],
            b"has space",
            b"quote\"",
            &[b'a'; 129][..],
            b"\xff",
        ] {
            let id = request_id(Some(bad));
            assert_eq!(id.len(), 32, "generated for {bad:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(request_id(None), request_id(None));
    }

    #[test]
    fn body_is_json() {
        let v: serde_json::Value = serde_json::from_slice(&NOT_FOUND.body("r1", None)).unwrap();
        assert_eq!(v["error"]["code"], "route_not_found");
        assert_eq!(v["error"]["status"], 404);
        assert_eq!(v["error"]["request_id"], "r1");
        assert!(v["error"].get("trace_id").is_none());
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let v: serde_json::Value = serde_json::from_slice(&NOT_FOUND.body("r1", Some(t))).unwrap();
        assert_eq!(v["error"]["trace_id"], t);
    }

    #[test]
    fn error_mapping() {
        use ErrorSource::*;
        use ErrorType::*;
        let cases = [
            (ConnectRefused, Upstream, Some(502)),
            (ConnectTimedout, Upstream, Some(504)),
            (ReadTimedout, Upstream, Some(504)),
            (ConnectionClosed, Upstream, Some(502)),
            (ReadError, Downstream, None),
            (ReadTimedout, Downstream, Some(408)),
            (WriteTimedout, Downstream, None),
            (ConnectionClosed, Downstream, None),
            (BODY_TOO_LARGE_ERROR, Internal, Some(413)),
            (BODY_TOO_LARGE_ERROR, Unset, Some(413)),
            (InvalidHTTPHeader, Downstream, Some(400)),
            (H1Error, Downstream, Some(400)),
            (InternalError, Internal, Some(500)),
        ];
        for (etype, source, want) in cases {
            assert_eq!(
                for_error(&etype, &source).map(|r| r.status),
                want,
                "{etype:?}"
            );
        }
    }
}
