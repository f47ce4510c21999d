//! Owns the request body size limit: `server.max_request_body_bytes` (10 MiB by default)
//! or a route's own `max_request_body_bytes` (0 = unlimited). A declared
//! `Content-Length` over the limit is refused before anything is forwarded; a body
//! without one (chunked, or HTTP/2 DATA frames) is counted as it streams, and the
//! request is cut off once it crosses the limit.

use http::HeaderMap;

/// The default `server.max_request_body_bytes`.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 10 << 20;

/// The limit a route with `route_limit` has under `server_limit`: the route's own when it
/// sets one (`Some(0)` = unlimited), else the server's. `None`: unlimited.
pub fn effective(route_limit: Option<u64>, server_limit: Option<u64>) -> Option<u64> {
    match route_limit {
        Some(0) => None,
        Some(n) => Some(n),
        None => server_limit,
    }
}

/// The request's declared body length, when it declares exactly one valid one (HTTP/1
/// framing is checked before this; an HTTP/2 request may declare none).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

/// Body bytes seen so far against the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyBudget {
    limit: Option<u64>,
    seen: u64,
}

impl BodyBudget {
    pub fn new(limit: Option<u64>) -> Self {
        Self { limit, seen: 0 }
    }

    /// Count `n` more bytes; `false` once the body is over the limit.
    pub fn take(&mut self, n: usize) -> bool {
        self.seen = self.seen.saturating_add(n as u64);
        self.limit.is_none_or(|l| self.seen <= l)
    }

    /// Would a body of `n` bytes be over the limit?
    pub fn refuses(&self, n: u64) -> bool {
        self.limit.is_some_and(|l| n > l)
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}
