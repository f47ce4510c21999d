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
use crate::router::{RequestView, normalize_host, normalize_path};
use crate::runtime::{RouteAction, Runtime};
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
    if head_size(req) > runtime.max_request_header_bytes {
        return Decision::Reject(reply::HEADERS_TOO_LARGE);
    }
    let Ok(path) = normalize_path(req.uri.path()) else {
        return Decision::Reject(reply::BAD_PATH);
    };
    let raw_host = raw_host(req);
    let mut buf = [0u8; MAX_HOST_LEN];
    let host = normalize_host(raw_host, &mut buf);
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
                scheme: Scheme::Http,
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
