//! Owns the compiled `Route`: what one matched route does, with every policy it carries
//! (rewrite, headers, action, timeouts, retries, rate limits, JWT, cache, and the edge
//! policies) resolved to the runtime's shared objects. The router finds a route's
//! index; the runtime keeps the route at that index.

use std::sync::Arc;
use std::time::Duration;

use crate::actions::{DirectResponse, HeaderOps, PathRewrite, Redirect};
use crate::auth::RouteJwt;
use crate::cache::RouteCache;
use crate::ratelimit::PolicyLimiter;
use crate::upstream::Backends;
use crate::upstream::policy::RetryPolicy;

#[derive(Debug)]
pub enum RouteAction {
    Proxy(Backends),
    Redirect(Redirect),
    Direct(DirectResponse),
}

/// One compiled route. Immutable; lives inside a `Runtime`.
#[derive(Debug)]
pub struct Route {
    pub id: Arc<str>,
    /// Position in the config file, and in the route table; the last tie-breaker.
    pub index: usize,
    pub rewrite: Option<PathRewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub action: RouteAction,
    /// Per try: the longest wait for the upstream's next bytes.
    pub timeout: Option<Duration>,
    /// Whole request, all tries and backoffs included.
    pub deadline: Option<Duration>,
    pub retry: RetryPolicy,
    /// All must pass before the route acts.
    pub rate_limits: Vec<Arc<PolicyLimiter>>,
    /// JWT authentication, checked before the rate limits.
    pub jwt: Option<RouteJwt>,
    /// Response caching, when enabled on the route.
    pub cache: Option<Arc<RouteCache>>,
    /// Largest request body (the route's or the server's); `None`: unlimited.
    pub max_request_body: Option<u64>,
    /// Largest body of a gRPC call: the route's own limit only. A streaming call is
    /// a long-lived body, which `server.max_request_body_bytes` would cut off.
    pub max_grpc_body: Option<u64>,
    /// IP rules, CORS, compression, API key, forward auth (`runtime::policies`).
    pub policies: super::RoutePolicies,
    /// Upgraded WebSocket connections (idle timeout).
    pub websocket: crate::websocket::WebSocketSpec,
}

impl Route {
    /// Whether the route proxies to a `kubernetes` upstream (it then waits for the first
    /// discovery snapshot).
    pub fn uses_kubernetes(&self) -> bool {
        match &self.action {
            RouteAction::Proxy(b) => b.targets.iter().any(|(p, _)| p.kubernetes.is_some()),
            _ => false,
        }
    }
}
