//! Owns the Pingora `ProxyHttp` implementation. Each phase delegates to a small function
//! elsewhere and acts on its result. Feature -> phase map (also in gateway/README.md):
//!
//! | feature                                              | phase                      |
//! |------------------------------------------------------|----------------------------|
//! | pin one runtime version for the request              | `new_ctx`                  |
//! | request id, 431, 400, route match, 404, redirect,    | `request_filter` (`decide`)|
//! | direct response, split choice, in-flight limit (503),|                            |
//! | retry-budget deposit, deadline                       |                            |
//! | JWT auth (401/403/503), claims to headers (client    | `request_filter` (`auth`), |
//! | copies removed), strip Authorization                 | before rate limits         |
//! | sticky cookie, endpoint selection, retry backoff,    | `upstream_peer`            |
//! | per-try timeout                                      |                            |
//! | retry on connect failure, passive failure            | `fail_to_connect`          |
//! | retry on timeout or broken connection                | `error_while_proxy`        |
//! | path rewrite, request headers, X-Forwarded-*         | `upstream_request_filter`  |
//! | latency (metrics, peak EWMA), passive outcome,       | `upstream_response_filter` |
//! | retry on 502/503/504                                 |                            |
//! | response headers, sticky Set-Cookie, X-Request-Id    | `response_filter`          |
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

pub mod decide;
pub mod reply;
pub mod resilience;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{
    CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::auth::{self, AuthOutcome, RouteJwt};
use crate::metrics::{Metrics, method_label, status_class};
use crate::ratelimit;
use crate::reload::RuntimeStore;
use crate::router::{Route, RouteAction};
use crate::runtime::Runtime;
use crate::upstream::policy::RetryOn;
use crate::upstream::{
    Attempt, ConnectionSlot, InFlightSlot, MAX_TRIED, UpstreamPool, random_unit,
};
use decide::Decision;
use reply::Reply;
use reply::UPSTREAM_OVERLOADED;
use resilience::{RETRY_GATEWAY_ERROR, RetryCheck};

/// The gateway's proxy logic; one instance serves every listener.
#[derive(Debug)]
pub struct Gateway {
    store: Arc<RuntimeStore>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
}

impl Gateway {
    /// `in_flight` counts live requests, so shutdown can end as soon as they are done.
    pub fn new(
        store: Arc<RuntimeStore>,
        metrics: Arc<Metrics>,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            store,
            metrics,
            in_flight,
        }
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
    /// The client sent `Authorization` (noted before JWT auth may strip it), so the
    /// shared cache treats the request as authorized.
    sent_authorization: bool,
    _in_flight: InFlight,
    /// What the cache phases learned, for `Cache-Status` and metrics.
    cache: crate::cache::CacheCtx,
    /// A caching route takes its upstream in-flight slot only on a miss.
    slot_deferred: bool,
}

impl RequestCtx {
    /// Credentials came with the request: `Authorization`, or a verified token from any
    /// source (a cookie is a credential too). Such requests get shared-cache answers only
    /// when the stored response allows it (RFC 9111 section 3.5).
    fn sent_credentials(&self) -> bool {
        self.sent_authorization || self.jwt_claims.is_some()
    }

    fn route(&self) -> Option<&Route> {
        self.route.and_then(|r| self.runtime.routes.get(r))
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

const X_REQUEST_ID: &str = "x-request-id";

async fn send(
    session: &mut Session,
    status: u16,
    headers: &[(&'static str, &str)],
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 1))?;
    for (k, v) in headers {
        resp.insert_header(*k, *v)?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

async fn send_reply(session: &mut Session, ctx: &mut RequestCtx, reply: Reply) -> Result<()> {
    ctx.reply_code = Some(reply.code);
    let body = reply.body(&ctx.request_id);
    let retry_after = (reply.status == 503).then_some(("retry-after", "1"));
    let headers = [
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        (X_REQUEST_ID, ctx.request_id.as_str()),
    ];
    // A caching route's request that went to the origin and failed still says so.
    let cache_status = (ctx.cache.looked_up && ctx.route().is_some_and(|r| r.cache.is_some()))
        .then(|| {
            let (outcome, text) = crate::cache::outcome(session, &ctx.cache);
            ctx.cache.outcome = Some((outcome, session.cache.lock_duration().is_some()));
            text
        });
    let all: Vec<(&'static str, &str)> = headers
        .into_iter()
        .chain(retry_after)
        .chain(ctx.rate_headers.iter().map(|(k, v)| (*k, v.as_str())))
        .chain(cache_status.as_deref().map(|v| ("cache-status", v)))
        .collect();
    send(session, reply.status, &all, body).await
}

impl Gateway {
    /// Take a place in the upstream's in-flight limit for the whole request and deposit
    /// into its retry budget. `Ok(false)`: over the limit, the 503 was sent.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        pool: &UpstreamPool,
    ) -> Result<bool> {
        let limits = pool.limits;
        match pool
            .state
            .acquire(
                limits.max_in_flight,
                limits.max_pending,
                pool.connect_timeout,
            )
            .await
        {
            Ok(slot) => ctx._slot = Some(slot),
            Err(_) => {
                self.metrics
                    .overloaded
                    .with_label_values(&[&pool.name])
                    .inc();
                send_reply(session, ctx, reply::OVERLOADED).await?;
                return Ok(false);
            }
        }
        pool.state.budget.deposit();
        Ok(true)
    }

    /// Run the route's JWT check and rewrite the identity headers. `Ok(true)`: a
    /// rejection was sent.
    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
        jwt: &RouteJwt,
    ) -> Result<bool> {
        let req = session.req_header();
        let outcome = auth::authenticate(jwt, &req.headers, req.uri.query(), &self.metrics).await;
        // Client copies of the identity headers are already gone (`request_filter`
        // removes `Runtime::identity_headers` on every route).
        let req = session.req_header_mut();
        if jwt.strip_authorization {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        match outcome {
            AuthOutcome::Anonymous => Ok(false),
            AuthOutcome::Verified { claims, .. } => {
                for (name, value) in jwt.identity_headers(&claims) {
                    req.insert_header(name, value)?;
                }
                ctx.jwt_claims = Some(claims);
                Ok(false)
            }
            AuthOutcome::Rejected(rejection) => {
                ctx.route = Some(route);
                let reply = reply::for_rejection(&rejection);
                ctx.reply_code = Some(reply.code);
                let body = reply.body(&ctx.request_id);
                let www = rejection.www_authenticate();
                let retry = match rejection {
                    auth::Rejection::Unavailable { retry_after } => Some(retry_after.to_string()),
                    _ => None,
                };
                let mut headers = vec![
                    ("content-type", "application/json"),
                    ("cache-control", "no-store"),
                    (X_REQUEST_ID, ctx.request_id.as_str()),
                ];
                if let Some(w) = www.as_deref() {
                    headers.push(("www-authenticate", w));
                }
                if let Some(r) = retry.as_deref() {
                    headers.push(("retry-after", r));
                }
                send(session, reply.status, &headers, body).await?;
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            runtime: self.store.load(),
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
            sent_authorization: false,
            _in_flight: InFlight::enter(&self.in_flight),
            cache: crate::cache::CacheCtx::default(),
            slot_deferred: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let runtime = Arc::clone(&ctx.runtime);
        ctx.sent_authorization = session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION);
        // Identity headers are the gateway's to set, on every route (see `Runtime`), and
        // removed before matching so a client cannot steer routing with them either.
        if !runtime.identity_headers.is_empty() {
            let req = session.req_header_mut();
            for name in &runtime.identity_headers {
                req.remove_header(name);
            }
        }
        let req = session.req_header();
        ctx.request_id = reply::request_id(req.headers.get(X_REQUEST_ID).map(|v| v.as_bytes()));
        let decision = decide::decide(&runtime, req);
        // JWT auth of the matched route, before rate limits, so that header-keyed limits
        // and consistent hashing see the verified identity.
        if let Some(route) = decision.route().and_then(|r| runtime.routes.get(r))
            && let Some(jwt) = &route.jwt
            && self.authenticate(session, ctx, route.index, jwt).await?
        {
            return Ok(true);
        }
        let req = session.req_header();
        // Rate limits of the matched route, before it acts.
        if let Some(route) = decision.route().and_then(|r| runtime.routes.get(r))
            && !route.rate_limits.is_empty()
        {
            let input = ratelimit::KeyInput {
                client_ip: ratelimit::client_ip(
                    session
                        .client_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.ip()),
                    &req.headers,
                    &runtime.trusted_proxies,
                ),
                headers: &req.headers,
                route_id: &route.id,
            };
            let outcome = ratelimit::decide(&route.rate_limits, &input, &self.metrics).await;
            for (name, _, _, remaining, _) in &outcome.entries {
                let result = if outcome.retry_after.is_some() && *remaining == 0 {
                    "limited"
                } else {
                    "allowed"
                };
                self.metrics
                    .ratelimit_decisions
                    .with_label_values(&[name, result])
                    .inc();
            }
            ctx.rate_headers = outcome.headers();
            if outcome.unavailable {
                ctx.route = Some(route.index);
                send_reply(session, ctx, reply::RATE_LIMIT_UNAVAILABLE).await?;
                return Ok(true);
            }
            if outcome.retry_after.is_some() {
                ctx.route = Some(route.index);
                send_reply(session, ctx, reply::RATE_LIMITED).await?;
                return Ok(true);
            }
        }
        match decision {
            Decision::Reject(reply) => {
                send_reply(session, ctx, reply).await?;
                Ok(true)
            }
            Decision::Redirect {
                route,
                status,
                location,
            } => {
                ctx.route = Some(route);
                ctx.reply_code = Some("redirect");
                let mut resp = ResponseHeader::build(status, Some(4))?;
                resp.insert_header("location", location.as_str())?;
                resp.insert_header("content-length", "0")?;
                resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
                for (k, v) in &ctx.rate_headers {
                    resp.insert_header(*k, v.as_str())?;
                }
                if let Some(r) = runtime.routes.get(route) {
                    r.response_headers.apply(&mut resp);
                }
                session.write_response_header(Box::new(resp), true).await?;
                Ok(true)
            }
            Decision::Direct { route } => {
                ctx.route = Some(route);
                ctx.reply_code = Some("direct_response");
                let Some(r) = runtime.routes.get(route) else {
                    return Ok(false);
                };
                let RouteAction::Direct(d) = &r.action else {
                    return Ok(false);
                };
                let mut resp = ResponseHeader::build(d.status, Some(4))?;
                resp.insert_header("content-type", d.content_type.clone())?;
                resp.insert_header("content-length", d.body.len().to_string())?;
                resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
                for (k, v) in &ctx.rate_headers {
                    resp.insert_header(*k, v.as_str())?;
                }
                r.response_headers.apply(&mut resp);
                let head_only = session.req_header().method == http::Method::HEAD;
                let empty = d.body.is_empty() || head_only;
                session.write_response_header(Box::new(resp), empty).await?;
                if !empty {
                    session
                        .write_response_body(Some(d.body.clone()), true)
                        .await?;
                }
                Ok(true)
            }
            Decision::Proxy {
                route,
                pool,
                upstream_target,
            } => {
                ctx.route = Some(route);
                ctx.deadline = runtime
                    .routes
                    .get(route)
                    .and_then(|r| r.deadline)
                    .map(|d| ctx.started + d);
                ctx.upstream_target = upstream_target;
                if runtime.routes.get(route).is_some_and(|r| r.cache.is_some()) {
                    // A cache hit never reaches the upstream: the in-flight slot and the
                    // retry-budget deposit wait for a miss (`proxy_upstream_filter`).
                    ctx.pool = Some(pool);
                    ctx.slot_deferred = true;
                    return Ok(false);
                }
                ctx.pool = Some(Arc::clone(&pool));
                Ok(!self.admit(session, ctx, &pool).await?)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if let Some(policy) = ctx.route().and_then(|r| r.cache.as_deref()) {
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
        self.admit(session, ctx, &pool).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.pool.clone() else {
            return Error::e_explain(InternalError, "proxying without a chosen upstream");
        };
        if ctx.tries > 0 {
            let Some(route) = ctx.route() else {
                return Error::e_explain(InternalError, "retrying without a route");
            };
            match resilience::backoff(route, ctx.tries, ctx.deadline, random_unit()) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => {
                    return Error::e_explain(HTTPStatus(504), "deadline reached before a retry");
                }
            }
        }
        // Release the previous try's connection slot before taking one for this try.
        ctx.connection = None;
        let Some(connection) = pool.state.try_connection(pool.limits.max_connections) else {
            self.metrics
                .overloaded
                .with_label_values(&[&pool.name])
                .inc();
            return Error::e_explain(UPSTREAM_OVERLOADED, "upstream connection limit reached");
        };
        ctx.connection = Some(connection);
        let req = session.req_header();
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let chosen = match pool.sticky_choice(&req.headers, ctx.tried()) {
            Some(pinned) => Some(pinned),
            None => {
                let key = pool.hash_key(&req.headers, req.uri.path(), client);
                let chosen = pool.select(key, ctx.tried());
                // A new or moved client: pin it to where it lands.
                ctx.set_cookie = chosen.and_then(|(_, e)| pool.sticky_set_cookie(e));
                chosen
            }
        };
        let Some((index, endpoint)) = chosen else {
            return Error::e_explain(
                HTTPStatus(503),
                "no endpoint of the upstream can take requests",
            );
        };
        if let Some(slot) = ctx.tried.get_mut(ctx.tries as usize) {
            *slot = index;
        }
        ctx.tries += 1;
        // Counts as in flight on this endpoint until the try ends.
        ctx.attempt = Some(Attempt::begin(&endpoint.state));
        // Clone the prebuilt peer: Pingora keys its connection pool on the peer, so
        // reusing one per endpoint keeps keepalive connections warm.
        let mut peer = endpoint.peer.clone();
        let per_try = ctx.route().and_then(|r| r.timeout);
        let left = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = match (per_try, left) {
            (Some(t), Some(l)) => Some(t.min(l)),
            (t, l) => t.or(l),
        };
        if let Some(t) = timeout {
            let t = t.max(Duration::from_millis(1));
            peer.options.read_timeout = Some(t);
            peer.options.write_timeout = Some(t);
        }
        ctx.endpoint = Some(endpoint.address.clone());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.record_outcome(true, &self.metrics);
        // The request never left: safe to send elsewhere, whatever the method.
        e.set_retry(ctx.may_retry(session, RetryOn::ConnectFailure, &self.metrics));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if e.etype() == &RETRY_GATEWAY_ERROR {
            // Granted (and counted) in upstream_response_filter.
            e.set_retry(true);
            return e;
        }
        // A client that hangs up or stalls is not the endpoint's fault: it must neither
        // count towards ejecting the endpoint nor cause a retry.
        if e.esource() != &ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        let Some(why) = resilience::reason_for(e.etype()) else {
            e.set_retry(false);
            return e;
        };
        ctx.record_outcome(true, &self.metrics);
        if ctx.may_retry(session, why, &self.metrics) {
            e.set_retry(true);
        } else if session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
        {
            // Pingora's own rule: a pooled keepalive connection that the upstream had
            // already closed is retried once, on a fresh connection.
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(target) = ctx.upstream_target.as_deref() {
            let uri = target
                .parse::<http::Uri>()
                .map_err(|e| Error::because(InternalError, "rewritten path is not a URI", e))?;
            upstream.set_uri(uri);
        }
        upstream.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
        {
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip,
            };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        let host = decide::raw_host(session.req_header()).to_owned();
        if !host.is_empty() {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        if let Some(route) = ctx.route() {
            route.request_headers.apply(upstream);
        }
        if ctx.route().is_some_and(|r| r.cache.is_some()) {
            if !upstream.headers.contains_key(http::header::UPGRADE) {
                crate::cache::strip_hop_by_hop_request(upstream);
            }
            if session.cache.enabled() {
                // Fetch the whole response to store (no Range, no client conditionals);
                // for a stale entry, ask with its validators instead.
                pingora::cache::filters::upstream::request_filter(
                    upstream,
                    session.cache.maybe_cache_meta(),
                );
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_elapsed = ctx.attempt.as_ref().map(Attempt::response_head);
        let status = upstream_response.status.as_u16();
        if status != 101 && ctx.route().is_some_and(|r| r.cache.is_some()) {
            crate::cache::strip_hop_by_hop_response(upstream_response);
            crate::cache::upstream_response(session, upstream_response, &mut ctx.cache);
        }
        ctx.record_outcome(status >= 500, &self.metrics);
        if matches!(status, 502..=504)
            && ctx.may_retry(session, RetryOn::GatewayError, &self.metrics)
        {
            return Error::e_explain(RETRY_GATEWAY_ERROR, format!("upstream answered {status}"));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.route().is_some_and(|r| r.cache.is_some()) {
            let (outcome, status) = crate::cache::outcome(session, &ctx.cache);
            ctx.cache.outcome = Some((outcome, session.cache.lock_duration().is_some()));
            if outcome == crate::cache::Outcome::StaleIfError {
                // After a failed origin request Pingora does not reuse the client's
                // connection: say so, or a keepalive client sends into a closed socket.
                session.set_keepalive(None);
            }
            crate::cache::strip_tags(response);
            response.insert_header("cache-status", status)?;
            let removed =
                crate::cache::invalidate_after_unsafe(session.req_header(), response).await;
            self.metrics.cache.purged.inc_by(removed as u64);
        }
        if let Some(route) = ctx.route() {
            route.response_headers.apply(response);
        }
        if let Some(cookie) = ctx.set_cookie.take() {
            response.append_header("set-cookie", cookie)?;
        }
        for (k, v) in &ctx.rate_headers {
            response.insert_header(*k, v.as_str())?;
        }
        response.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let reply = reply::for_error(e.etype(), e.esource());
        let mut code = 0;
        if let Some(reply) = reply {
            code = reply.status;
            // Once a response head went out, the status cannot change: just close.
            if session.response_written().is_none() {
                if ctx.request_id.is_empty() {
                    ctx.request_id = reply::request_id(None);
                }
                // Pingora will not reuse this connection; say so, or a keepalive client
                // sends its next request into a closed socket.
                session.set_keepalive(None);
                if let Err(err) = send_reply(session, ctx, reply).await {
                    tracing::debug!(error = %err, "could not send error response");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx.route().map(|r| &*r.id).unwrap_or("-");
        let req = session.req_header();
        let method = method_label(&req.method);
        let elapsed = ctx.started.elapsed();
        self.metrics
            .requests
            .with_label_values(&[route, method, status_class(status)])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if let Some((outcome, collapsed)) = ctx.cache.outcome {
            self.metrics.cache.observe(route, outcome, collapsed);
        }
        if let (Some(pool), Some(up)) = (&ctx.pool, ctx.upstream_elapsed) {
            self.metrics
                .upstream_duration
                .with_label_values(&[&pool.name])
                .observe(up.as_secs_f64());
        }
        // Never log header values: Authorization, Cookie and Set-Cookie stay out.
        tracing::info!(
            target: "access_log",
            request_id = %ctx.request_id,
            route,
            config_version = ctx.runtime.version,
            method = %req.method,
            path = req.uri.path(),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream = ctx.pool.as_ref().map(|p| &*p.name),
            upstream_addr = ctx.endpoint.as_deref(),
            upstream_ms = ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
            bytes_received = session.body_bytes_read(),
            bytes_sent = session.body_bytes_sent(),
            client = session.client_addr().map(|a| a.to_string()),
            reply = ctx.reply_code,
            error = error.map(|e| e.etype().as_str()),
        );
    }
}
