//! Owns the Pingora `ProxyHttp` implementation. Each phase delegates to a small function
//! elsewhere and acts on its result. Feature -> phase map (also in gateway/README.md):
//!
//! | feature                                              | phase                      |
//! |------------------------------------------------------|----------------------------|
//! | pin one runtime version for the request              | `new_ctx`                  |
//! | request id, 431, 400, route match (SNI when no host; | `request_filter` (`decide`,|
//! | 421 for another certificate's host), 413 (declared   | `body_limit`)              |
//! | body over the limit), 404, redirect,                 |                            |
//! | direct response, split choice, in-flight limit (503),|                            |
//! | retry-budget deposit, deadline                       |                            |
//! | IP rules (403), CORS preflight (204/403, after rate  | `request_filter`           |
//! | limits, no auth), JWT / API key / any_of / forward   | (`policies`), in this      |
//! | auth (401/403/413/503, the auth service's answer)    | order, before rate limits  |
//! | JWT auth (401/403/503), claims to headers (client    | `request_filter` (`auth`), |
//! | copies removed), strip Authorization                 | before rate limits         |
//! | body size limit on streamed bodies (413 / close)     | `request_body_filter`      |
//! | sticky cookie, endpoint selection, retry backoff,    | `upstream_peer`            |
//! | per-try timeout                                      |                            |
//! | retry on connect failure, passive failure            | `fail_to_connect`          |
//! | retry on timeout or broken connection                | `error_while_proxy`        |
//! | path rewrite, request headers, X-Forwarded-*         | `upstream_request_filter`  |
//! | latency (metrics, peak EWMA), passive outcome,       | `upstream_response_filter` |
//! | retry on 502/503/504                                 |                            |
//! | response headers, sticky Set-Cookie, X-Request-Id    | `response_filter`          |
//! | CORS headers + Vary: Origin (after the cache), then  | downstream modules, after  |
//! | compression (streamed, Vary: Accept-Encoding)        | `response_filter`          |
//! | 502 / 503 / 504 JSON errors                          | `fail_to_proxy`            |
//! | metrics and access log                               | `logging`                  |
//! | cache on/off, key, lookup, Authorization hits,       | `request_cache_filter`,    |
//! | Vary variants, storability, stale serving            | `cache_key_callback`,      |
//! | (all in `crate::cache`)                              | `cache_hit_filter`,        |
//! |                                                      | `cache_vary_filter`,       |
//! |                                                      | `response_cache_filter`,   |
//! |                                                      | `should_serve_stale`       |
//! | upstream in-flight slot on a cache miss              | `proxy_upstream_filter`    |
//! | revalidation headers, hop-by-hop stripping           | `upstream_request_filter`  |
//! | `Cache-Status`, unsafe-method invalidation           | `response_filter`          |

mod body_limit;
pub mod decide;
mod forward;
mod log;
mod policies;
pub mod reply;
mod request;
pub mod resilience;
mod respond;
mod trace;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::cache::key::HashBinary;
use pingora::cache::{
    CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::reload::RuntimeStore;
use crate::runtime::{Route, Runtime};
use crate::upstream::policy::RetryOn;
use crate::upstream::{Attempt, ConnectionSlot, InFlightSlot, MAX_TRIED, UpstreamPool};
use resilience::RetryCheck;

/// What the TLS handshake of the request's connection learned; `None` on plaintext.
pub(crate) fn tls_connection(session: &Session) -> Option<&crate::tls::TlsConnection> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<crate::tls::TlsConnection>()
}

/// Did the request come over TLS?
pub(crate) fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// The gateway's proxy logic; one instance serves every listener.
#[derive(Debug)]
pub struct Gateway {
    store: Arc<RuntimeStore>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
    /// `None` with `access_log: off`: no line is even formatted.
    access_log: Option<Arc<AccessLog>>,
    /// The process's tracer, when `tracing:` was configured at start.
    tracer: Option<Arc<crate::telemetry::Tracer>>,
}

impl Gateway {
    /// `in_flight` counts live requests, so shutdown can end as soon as they are done.
    pub fn new(
        store: Arc<RuntimeStore>,
        metrics: Arc<Metrics>,
        in_flight: Arc<AtomicUsize>,
        access_log: Option<Arc<AccessLog>>,
    ) -> Self {
        Self {
            store,
            metrics,
            in_flight,
            access_log,
            tracer: None,
        }
    }

    /// Trace requests with `tracer` (while the running config has `tracing:`).
    pub fn with_tracer(mut self, tracer: Arc<crate::telemetry::Tracer>) -> Self {
        self.tracer = Some(tracer);
        self
    }
}

/// Counts one live request from `new_ctx` until its context is dropped after logging.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state; `runtime` is pinned for the whole request.
#[derive(Debug)]
pub struct RequestCtx {
    runtime: Arc<Runtime>,
    started: Instant,
    request_id: String,
    route: Option<usize>,
    pool: Option<Arc<UpstreamPool>>,
    upstream_target: Option<String>,
    endpoint: Option<Box<str>>,
    /// The current attempt on an endpoint (in-flight count, latency sample).
    attempt: Option<Attempt>,
    /// Tries started, and the endpoints (pool indexes) they went to.
    tries: u32,
    tried: [usize; MAX_TRIED],
    /// Holds a place in the upstream's in-flight limit for the whole request.
    _slot: Option<InFlightSlot>,
    /// Holds a place in the upstream's connection limit for the current try.
    connection: Option<ConnectionSlot>,
    /// End of the route's total deadline, if it has one.
    deadline: Option<Instant>,
    /// A sticky-session cookie to hand the client with the response.
    set_cookie: Option<String>,
    /// `RateLimit-Policy` / `RateLimit` (and legacy) headers for the response.
    rate_headers: Vec<(&'static str, String)>,
    upstream_elapsed: Option<Duration>,
    /// Stable code of a reply the gateway made itself, for the access log.
    reply_code: Option<&'static str>,
    /// Claims of the request's verified JWT (routes with `auth.jwt`); the cache key may
    /// use them.
    pub(crate) jwt_claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The client's address, computed once (`crate::client_ip`): rate limits,
    /// consistent hashing, IP rules and the access log all use this value.
    pub(crate) client_ip: Option<std::net::IpAddr>,
    /// The TCP peer is a trusted proxy (its forwarding headers were kept).
    peer_trusted: bool,
    /// The client sent `Authorization` (noted before JWT auth may strip it), so the
    /// shared cache treats the request as authorized.
    sent_authorization: bool,
    _in_flight: InFlight,
    /// What the cache phases learned, for `Cache-Status` and metrics.
    cache: crate::cache::CacheCtx,
    /// A caching route takes its upstream in-flight slot only on a miss.
    slot_deferred: bool,
    /// Request body bytes against the route's size limit (`body_limit`).
    body: crate::edge::body::BodyBudget,
    /// Writing a response to the client failed: it went away.
    client_gone: bool,
    /// What the edge-policy steps learned (consumer, preflight, key to strip).
    policy: policies::PolicyCtx,
    /// The request's spans, when tracing is on (`crate::telemetry`).
    trace: Option<crate::telemetry::RequestTrace>,
    /// The request is a gRPC call: the gateway's own answers are gRPC statuses.
    grpc: bool,
    /// A WebSocket upgrade on a proxied route: the tunnel's idle timeout.
    websocket: Option<Duration>,
}

impl RequestCtx {
    /// Credentials came with the request: `Authorization`, a verified token from any
    /// source (a cookie is a credential too), an API key, or what forward auth checked. Such requests get shared-cache answers only
    /// when the stored response allows it (RFC 9111 section 3.5).
    fn sent_credentials(&self) -> bool {
        self.sent_authorization
            || self.jwt_claims.is_some()
            || self.policy.consumer.is_some()
            || self.policy.forward_authorized
    }

    fn route(&self) -> Option<&Route> {
        self.route.and_then(|r| self.runtime.routes.get(r))
    }

    /// The trace id for log lines and error bodies, when the request is traced.
    fn trace_id(&self) -> Option<&str> {
        self.trace
            .as_ref()
            .map(crate::telemetry::RequestTrace::trace_id)
    }

    fn tried(&self) -> &[usize] {
        &self.tried[..(self.tries as usize).min(MAX_TRIED)]
    }

    /// May the try that just failed for `why` be retried?
    fn may_retry(&self, session: &Session, why: RetryOn, metrics: &Metrics) -> bool {
        let (Some(route), Some(pool)) = (self.route(), self.pool.as_deref()) else {
            return false;
        };
        resilience::may_retry(
            &RetryCheck {
                route,
                pool,
                method: &session.req_header().method,
                why,
                tries: self.tries,
                deadline: self.deadline,
                body_truncated: session.as_ref().retry_buffer_truncated(),
            },
            metrics,
        )
    }

    /// Tell passive outlier detection how the current try went.
    fn record_outcome(&self, failed: bool, metrics: &Metrics) {
        if let (Some(pool), Some(attempt)) = (self.pool.as_deref(), self.attempt.as_ref()) {
            resilience::record_outcome(pool, attempt.state(), failed, metrics);
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let runtime = self.store.load();
        // The server-wide limit until `request_filter` knows the route.
        let body = crate::edge::body::BodyBudget::new(runtime.edge.max_request_body_bytes);
        RequestCtx {
            runtime,
            started: Instant::now(),
            request_id: String::new(),
            route: None,
            pool: None,
            upstream_target: None,
            endpoint: None,
            attempt: None,
            tries: 0,
            tried: [0; MAX_TRIED],
            _slot: None,
            connection: None,
            deadline: None,
            set_cookie: None,
            rate_headers: Vec::new(),
            upstream_elapsed: None,
            reply_code: None,
            jwt_claims: None,
            client_ip: None,
            peer_trusted: false,
            sent_authorization: false,
            _in_flight: InFlight::enter(&self.in_flight),
            cache: crate::cache::CacheCtx::default(),
            slot_deferred: false,
            body,
            client_gone: false,
            policy: policies::PolicyCtx::default(),
            trace: None,
            grpc: false,
            websocket: None,
        }
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // Pingora's own compression module, off (its default): ours replaces it.
        modules
            .add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        // After the cache, for every response: the route's CORS answer, then compression.
        modules.add_module(Box::new(crate::cors::module::CorsModuleBuilder));
        modules.add_module(Box::new(crate::compression::CompressionModuleBuilder));
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        request::request_filter(self, session, ctx).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        body_limit::count(ctx, body.as_ref().map_or(0, bytes::Bytes::len))
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        // A WebSocket tunnel is never a cacheable exchange.
        if ctx.websocket.is_none()
            && let Some(policy) = ctx.route().and_then(|r| r.cache.as_deref())
        {
            crate::cache::enable(session, policy, &ctx.runtime.cache);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let Some(route) = ctx.route() else {
            return Error::e_explain(InternalError, "cache key without a route");
        };
        let Some(policy) = route.cache.as_deref() else {
            return Error::e_explain(InternalError, "cache key on a route without cache");
        };
        Ok(crate::cache::cache_key(
            session.req_header(),
            &route.id,
            policy,
            ctx.jwt_claims.as_deref(),
        ))
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        ctx.cache.looked_up = true;
        session.cache.cache_miss();
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(crate::cache::hit_filter(ctx.sent_credentials(), meta))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let variance = crate::cache::policy::variance(meta.headers(), &req.headers);
        if !ctx.cache.looked_up && variance.is_some() && variance != meta.variance() {
            ctx.cache.vary_seen = true;
        }
        variance
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(policy) = ctx.route().and_then(|r| r.cache.clone()) else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        Ok(crate::cache::response_cacheable(
            ctx.sent_credentials(),
            resp,
            &policy,
            &mut ctx.cache,
        ))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        crate::cache::should_serve_stale(error, &mut ctx.cache)
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        ctx.cache.looked_up = true;
        if !std::mem::take(&mut ctx.slot_deferred) {
            return Ok(true);
        }
        let Some(pool) = ctx.pool.clone() else {
            return Ok(true);
        };
        request::admit(self, session, ctx, &pool).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        forward::upstream_peer(self, session, ctx).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        forward::fail_to_connect(self, session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        forward::error_while_proxy(self, peer, session, e, ctx, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::upstream_request_filter(session, upstream, ctx).await
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::upstream_response_filter(self, session, upstream_response, ctx).await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        respond::response_filter(self, session, response, ctx).await
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        respond::fail_to_proxy(session, e, ctx).await
    }

    /// What Pingora's own error lines ("Fail to proxy: ...") say about a request:
    /// method, path (never the query: it may carry a token), route and request id.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {}, route: {}, request_id: {}",
            req.method,
            req.uri.path(),
            ctx.route().map_or("-", |r| &*r.id),
            if ctx.request_id.is_empty() {
                "-"
            } else {
                ctx.request_id.as_str()
            },
        )
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        log::logging(self, session, error, ctx).await;
        trace::finish(session, error, ctx);
    }
}
