//! Owns the `request_filter` decision: from a request head and a pinned runtime to one
//! of reject / redirect / direct response / proxy. Pure, so it is tested without
//! sockets and reused by `gateway explain`.

use std::sync::Arc;

use http::StatusCode;
use pingora::http::RequestHeader;

use super::reply::{self, Reply};
use crate::actions::{RequestTarget, Scheme};
pub use crate::http_head::raw_host;
use crate::router::matchers::MAX_HOST_LEN;
use crate::router::path::{self, Findings, PathError};
use crate::router::{RequestView, normalize_host};
use crate::runtime::{RouteAction, Runtime};
use crate::tls::TlsConnection;
use crate::upstream::UpstreamPool;

#[derive(Debug)]
pub enum Decision {
    Reject(Reply),
    Redirect {
        route: usize,
        status: StatusCode,
        location: String,
    },
    Direct {
        route: usize,
    },
    Proxy {
        route: usize,
        pool: Arc<UpstreamPool>,
        /// New path-and-query for the upstream, when rewriting or normalizing changed it.
        upstream_target: Option<String>,
    },
}

impl Decision {
    /// The matched route, if any.
    pub fn route(&self) -> Option<usize> {
        match self {
            Decision::Reject(_) => None,
            Decision::Redirect { route, .. }
            | Decision::Direct { route }
            | Decision::Proxy { route, .. } => Some(*route),
        }
    }
}

/// Bytes of the request head as the client sent it (request line and headers).
fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

pub fn decide(runtime: &Runtime, req: &RequestHeader) -> Decision {
    decide_on(runtime, req, None)
}

/// [`decide`] for a request on a connection: on TLS, a request without a host is
/// matched by the connection's SNI, a request for a host another of the listener's
/// certificates serves gets 421, and redirects keep `https`.
pub fn decide_on(runtime: &Runtime, req: &RequestHeader, tls: Option<&TlsConnection>) -> Decision {
    if head_size(req) > runtime.max_request_header_bytes {
        return Decision::Reject(reply::HEADERS_TOO_LARGE);
    }
    let normal = match path::normalize(req.uri.path()) {
        Ok(n) => n,
        Err(e) => return Decision::Reject(reply::for_path(e)),
    };
    let findings = normal.findings;
    // Nothing to match when no route accepts what the path holds.
    if !findings.is_empty() && !runtime.table.some_route_allows(findings) {
        return Decision::Reject(reply::for_path(PathError::for_findings(findings)));
    }
    let path = normal.path;
    let raw_host = raw_host(req);
    let mut buf = [0u8; MAX_HOST_LEN];
    let mut host = normalize_host(raw_host, &mut buf);
    if let Some(t) = tls {
        if host.is_empty() {
            host = t.sni.as_deref().unwrap_or("");
        } else if t.misdirected(host) {
            return Decision::Reject(reply::MISDIRECTED);
        }
    }
    let query = req.uri.query();
    let view = RequestView {
        method: &req.method,
        host,
        path: &path,
        query,
        headers: &req.headers,
    };
    let Some(hit) = runtime.table.find(&view) else {
        return Decision::Reject(reply::NOT_FOUND);
    };
    if !findings.is_empty()
        && let Err(e) = opted_in(runtime, &view, hit.route, findings)
    {
        return Decision::Reject(reply::for_path(e));
    }
    let Some(route) = runtime.routes.get(hit.route) else {
        return Decision::Reject(reply::INTERNAL);
    };
    match &route.action {
        RouteAction::Redirect(r) => {
            let port = raw_host
                .rsplit_once(':')
                .filter(|(h, _)| !h.ends_with(']') || raw_host.starts_with('['))
                .and_then(|(_, p)| p.parse().ok());
            let target = RequestTarget {
                scheme: if tls.is_some() {
                    Scheme::Https
                } else {
                    Scheme::Http
                },
                host: if host.is_empty() { "localhost" } else { host },
                port,
                path: &path,
                query,
            };
            Decision::Redirect {
                route: hit.route,
                status: r.status,
                location: r.location(&target),
            }
        }
        RouteAction::Direct(_) => Decision::Direct { route: hit.route },
        RouteAction::Proxy(backends) => {
            let Some(pool) = backends.choose() else {
                return Decision::Reject(reply::NO_ENDPOINT);
            };
            let new_path = match &route.rewrite {
                Some(rw) => Some(rw.apply(&path, &hit.captures)),
                None => match path {
                    std::borrow::Cow::Owned(p) => Some(p),
                    std::borrow::Cow::Borrowed(_) => None,
                },
            };
            let upstream_target = new_path.map(|mut p| {
                if let Some(q) = query {
                    p.push('?');
                    p.push_str(q);
                }
                p
            });
            Decision::Proxy {
                route: hit.route,
                pool: Arc::clone(pool),
                upstream_target,
            }
        }
    }
}

/// A path with encoded slashes or `;` parameters reaches its route only when that route
/// opts in *and* the path, read as a lenient backend reads it (`%2F` as `/`, `;params`
/// dropped), would reach the same route: otherwise `/public/..%2Fadmin` could pass a
/// permissive `/public` route and be served as `/admin` behind it.
fn opted_in(
    runtime: &Runtime,
    view: &RequestView<'_>,
    route: usize,
    findings: Findings,
) -> Result<(), PathError> {
    let Some(m) = runtime.table.matchers().get(route) else {
        return Err(PathError::for_findings(findings));
    };
    let refused = findings.without(m.path_options.allow);
    if !refused.is_empty() {
        return Err(PathError::for_findings(refused));
    }
    let lenient = path::lenient_reading(view.path);
    let again = runtime.table.find(&RequestView {
        path: &lenient,
        ..*view
    });
    if again.map(|h| h.route) != Some(route) {
        return Err(PathError::Ambiguous);
    }
    Ok(())
}

/// Put the normalized path into the request head itself (when normalizing changed it),
/// so the cache key, purges, consistent hashing on the path and the access log all see
/// the path that was matched and is forwarded. Scheme and authority stay.
pub fn normalize_target(req: &mut RequestHeader) {
    let Ok(normal) = path::normalize(req.uri.path()) else {
        return;
    };
    let std::borrow::Cow::Owned(new_path) = normal.path else {
        return;
    };
    let target = match req.uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let mut parts = req.uri.clone().into_parts();
    let Ok(pq) = target.parse::<http::uri::PathAndQuery>() else {
        return;
    };
    parts.path_and_query = Some(pq);
    if let Ok(uri) = http::Uri::from_parts(parts) {
        req.set_uri(uri);
    }
}
