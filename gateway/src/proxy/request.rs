//! Owns `request_filter`: framing and request id, the routing decision (`decide`), then
//! the matched route's IP rules, CORS preflight, auth (JWT, API key, forward auth; see
//! `policies`) and rate limits, in that order, and the route's own answer (preflight,
//! redirect, direct response) or the upstream admission (in-flight limit and
//! retry-budget deposit) before proxying.

use std::sync::Arc;

use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::body_limit;
use super::decide::{self, Decision};
use super::policies;
use super::reply;
use super::respond::{X_REQUEST_ID, send, send_reply, send_reply_with};
use super::{Gateway, RequestCtx};
use crate::auth::{self, AuthOutcome, RouteJwt};
use crate::ratelimit;
use crate::runtime::RouteAction;
use crate::upstream::UpstreamPool;

pub(super) async fn request_filter(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    let runtime = Arc::clone(&ctx.runtime);
    ctx.sent_authorization = session
        .req_header()
        .headers
        .contains_key(http::header::AUTHORIZATION);
    // Before anything can answer: a gRPC call gets every answer as a gRPC status.
    ctx.grpc = crate::grpc::is_grpc(&session.req_header().headers);
    // Who the client is, once, before anything is removed; then what only a trusted
    // proxy may say goes (and spoofs such as `X_User_Id` from anyone).
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    ctx.client_ip = runtime
        .client_ip
        .resolve(peer, &session.req_header().headers);
    ctx.peer_trusted = peer.is_some_and(|p| runtime.client_ip.is_trusted(p));
    crate::client_ip::sanitize(
        session.req_header_mut(),
        ctx.peer_trusted,
        &runtime.identity_headers,
    );
    // Identity headers are the gateway's to set, on every route (see `Runtime`), and
    // removed before matching so a client cannot steer routing with them either.
    if !runtime.identity_headers.is_empty() {
        let req = session.req_header_mut();
        for name in &runtime.identity_headers {
            req.remove_header(name);
        }
    }
    decide::normalize_target(session.req_header_mut());
    let req = session.req_header();
    ctx.request_id = reply::request_id(req.headers.get(X_REQUEST_ID).map(|v| v.as_bytes()));
    if let (Some(settings), Some(tracer)) = (&runtime.tracing, &gw.tracer) {
        let started = std::time::SystemTime::now() - ctx.started.elapsed();
        ctx.trace = Some(crate::telemetry::RequestTrace::begin(
            tracer,
            settings,
            &req.headers,
            req.method.as_str(),
            started,
        ));
    }
    let mut decision = decide::decide_on(&runtime, req, super::tls_connection(session));
    // The body size limit comes before everything the route does (and applies when no
    // route matches); a malformed head keeps its own 400/431.
    let malformed = matches!(&decision, Decision::Reject(r) if r.status != 404);
    if !malformed && body_limit::refuse_declared(session, ctx, decision.route()).await? {
        return Ok(true);
    }
    let listener = policies::listener(session, &runtime);
    let preflight = policies::route_preflight(&runtime, session, listener, &mut decision);
    let matched = decision.route().and_then(|r| runtime.routes.get(r));
    // IP rules, then the CORS preflight (answered below, after the rate limits, without
    // auth), then auth, before rate limits, so that header-keyed limits and consistent
    // hashing see the verified identity.
    if policies::check_ip(gw, session, ctx, matched, listener).await? {
        return Ok(true);
    }
    if let Some(route) = matched {
        policies::compression(session, route, listener);
        if policies::cors(gw, session, ctx, route, listener, preflight).await?
            || (!preflight && policies::authenticate(gw, session, ctx, route).await?)
        {
            return Ok(true);
        }
    }
    let req = session.req_header();
    // Rate limits of the matched route, before it acts.
    if let Some(route) = decision.route().and_then(|r| runtime.routes.get(r))
        && !route.rate_limits.is_empty()
    {
        let input = ratelimit::KeyInput {
            client_ip: ctx.client_ip,
            headers: &req.headers,
            route_id: &route.id,
            consumer: ctx.policy.consumer.as_deref(),
        };
        // A span around the decision when it asks Redis (the calls are its children); a
        // local decision is only an attribute of the server span.
        let span = ctx
            .trace
            .as_ref()
            .filter(|_| route.rate_limits.iter().any(|l| l.cluster.is_some()))
            .and_then(|t| t.child("rate_limit", opentelemetry::trace::SpanKind::Internal));
        let scope = span.as_ref().and_then(crate::telemetry::scope_of);
        let outcome = super::trace::in_scope(
            scope,
            ratelimit::decide(&route.rate_limits, &input, &gw.metrics),
        )
        .await;
        let result = if outcome.unavailable {
            "unavailable"
        } else if outcome.retry_after.is_some() {
            "limited"
        } else {
            "allowed"
        };
        if let Some(mut span) = span {
            use opentelemetry::trace::Span as _;
            span.set_attribute(opentelemetry::KeyValue::new(
                "gateway.rate_limit.outcome",
                result,
            ));
            span.end();
        }
        if let Some(t) = ctx.trace.as_mut() {
            t.annotate(|| {
                vec![opentelemetry::KeyValue::new(
                    "gateway.rate_limit.outcome",
                    result,
                )]
            });
        }
        for (name, _, _, remaining, _) in &outcome.entries {
            let result = if outcome.retry_after.is_some() && *remaining == 0 {
                "limited"
            } else {
                "allowed"
            };
            gw.metrics
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
    if let (Some(answer), Some(route)) = (ctx.policy.preflight.take(), decision.route()) {
        policies::answer_preflight(session, ctx, route, &answer).await?;
        return Ok(true);
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
            let matched = runtime.routes.get(route);
            ctx.deadline = matched.and_then(|r| r.deadline).map(|d| ctx.started + d);
            if ctx.grpc
                && let Some(t) = crate::grpc::timeout(&session.req_header().headers)
            {
                // The caller's deadline bounds the upstream wait too (the earlier wins).
                let end = ctx.started + t;
                ctx.deadline = Some(ctx.deadline.map_or(end, |d| d.min(end)));
            }
            let req = session.req_header();
            if let Some(r) = matched
                && crate::websocket::is_upgrade(&req.method, req.version, &req.headers)
            {
                ctx.websocket = Some(r.websocket.idle_timeout);
                // After the 101 the client side is read with this timeout too (instead
                // of `request_body_idle`).
                session.set_read_timeout(Some(r.websocket.idle_timeout));
            }
            ctx.upstream_target = policies::strip_key_from_target(session, ctx, upstream_target);
            if runtime.routes.get(route).is_some_and(|r| r.cache.is_some()) {
                // A cache hit never reaches the upstream: the in-flight slot and the
                // retry-budget deposit wait for a miss (`proxy_upstream_filter`).
                ctx.pool = Some(pool);
                ctx.slot_deferred = true;
                return Ok(false);
            }
            ctx.pool = Some(Arc::clone(&pool));
            Ok(!admit(gw, session, ctx, &pool).await?)
        }
    }
}

/// Take a place in the upstream's in-flight limit for the whole request and deposit
/// into its retry budget. `Ok(false)`: over the limit, the 503 was sent.
pub(super) async fn admit(
    gw: &Gateway,
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
            gw.metrics.overloaded.with_label_values(&[&pool.name]).inc();
            send_reply(session, ctx, reply::OVERLOADED).await?;
            return Ok(false);
        }
    }
    pool.state.budget.deposit();
    Ok(true)
}

/// Run the route's JWT check and rewrite the identity headers. `Ok(true)`: a
/// rejection was sent.
pub(super) async fn authenticate(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: usize,
    jwt: &RouteJwt,
) -> Result<bool> {
    let req = session.req_header();
    let scope = ctx.trace.as_ref().and_then(|t| t.scope());
    let outcome = super::trace::in_scope(
        scope,
        auth::authenticate(jwt, &req.headers, req.uri.query(), &gw.metrics),
    )
    .await;
    apply_jwt(session, ctx, route, jwt, outcome).await
}

/// Act on a JWT outcome: identity headers and claims, or the RFC 6750 refusal.
/// `Ok(true)`: a rejection was sent.
pub(super) async fn apply_jwt(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: usize,
    jwt: &RouteJwt,
    outcome: AuthOutcome,
) -> Result<bool> {
    // Client copies of the identity headers are already gone (`request_filter`
    // removes `Runtime::identity_headers` on every route).
    let req = session.req_header_mut();
    if jwt.strip_authorization {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    if !matches!(outcome, AuthOutcome::Rejected(_)) {
        strip_query_tokens(req, jwt);
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
            if ctx.grpc {
                let www = rejection.www_authenticate();
                let extra: Vec<(&'static str, &str)> = www
                    .as_deref()
                    .map(|w| ("www-authenticate", w))
                    .into_iter()
                    .collect();
                send_reply_with(session, ctx, reply, &extra).await?;
                return Ok(true);
            }
            ctx.reply_code = Some(reply.code);
            let body = reply.body(&ctx.request_id, ctx.trace_id());
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

/// `path` with `query` (none when empty).
pub(super) fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// Drop the route's `query:NAME` token parameters from a request head (the client's, so
/// neither the cache key nor a log line holds the token; and the upstream's).
pub(super) fn strip_query_tokens(req: &mut pingora::http::RequestHeader, jwt: &RouteJwt) {
    let Some(query) = req.uri.query() else {
        return;
    };
    let Some(kept) = jwt.strip_query_tokens(query) else {
        return;
    };
    if let Ok(uri) = with_query(req.uri.path(), &kept).parse::<http::Uri>() {
        req.set_uri(uri);
    }
}
