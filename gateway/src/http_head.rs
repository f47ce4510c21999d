//! Owns small, pure readings of a request head that several features share: the
//! authority the request is for. Features take them from here so none has to import
//! another (or the proxy) for them.
//!
//! Bottom layer: imports nothing from the rest of the crate.

use pingora::http::RequestHeader;

/// The request's authority (absolute-form or HTTP/2), else its Host header: RFC 9112
/// section 3.2.2 has the target's authority win over Host.
pub fn raw_host(req: &RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}
