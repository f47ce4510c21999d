//! Owns the edge-policy steps of `request_filter`, in the order DESIGN.md gives after
//! the route match: IP rules (listener, then route), the CORS preflight (answered after
//! the rate limits, without auth), authentication (JWT, API key, either of them, then
//! forward auth), and turning on the response modules (CORS headers, compression) for
//! the request. Each step calls its feature and turns the decision into a reply.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::decide::{self, Decision};
use super::reply;
use super::respond::{X_REQUEST_ID, send_reply, send_reply_with};
use super::{Gateway, RequestCtx};
use crate::apikey::{KeyOutcome, KeySource, RouteApiKey, strip_query};
use crate::auth::{self, AuthOutcome, RouteJwt};
use crate::compression::CompressionModule;
use crate::cors::{self, CorsAnswer, CorsModule};
use crate::forward_auth::{CheckRequest, Decision as FaDecision, ForwardAuth, OnError};
use crate::runtime::{ListenerPolicies, Route, Runtime};

/// What the policy steps learned about a request.
#[derive(Debug, Default)]
pub struct PolicyCtx {
    /// The consumer of a verified API key: forwarded, rate-limit key, access log.
    pub consumer: Option<Arc<str>>,
    /// Forward auth let the request through (it carried credentials the service checked).
    pub forward_authorized: bool,
    /// The query parameter that carried the API key, removed before forwarding.
    pub strip_query: Option<String>,
    /// An allowed preflight, answered once the rate limits passed.
    pub preflight: Option<CorsAnswer>,
}

const API_KEY_CHALLENGE: &str = "ApiKey realm=\"gateway\"";

/// The listener the request came in on.
pub(super) fn listener<'a>(
    session: &Session,
    runtime: &'a Runtime,
) -> Option<&'a ListenerPolicies> {
    let local = session.server_addr().and_then(|a| a.as_inet()).copied();
    runtime.policies.listener(local)
}

/// For a CORS preflight, route it as the request it announces (the method in
/// `Access-Control-Request-Method`), so it finds the route that would serve that
/// request even when the route's `methods` leave out OPTIONS; failing that as a GET,
/// then as the OPTIONS it is. Returns whether the request is a preflight the gateway
/// answers (its route has a CORS policy).
pub(super) fn route_preflight(
    runtime: &Runtime,
    session: &Session,
    listener: Option<&ListenerPolicies>,
    decision: &mut Decision,
) -> bool {
    let req = session.req_header();
    if !cors::is_preflight(&req.method, &req.headers) {
        return false;
    }
    let has_cors = |d: &Decision| {
        d.route()
            .and_then(|r| runtime.routes.get(r))
            .is_some_and(|r| {
                r.policies
                    .cors
                    .resolve(listener.and_then(|l| l.cors.as_ref()))
                    .is_some()
            })
    };
    // The announced method; then GET, so that a method no route serves (or one that
    // is not a method at all) still finds the path's policy, which refuses it.
    let announced = cors::requested_method(&req.headers);
    for method in announced.into_iter().chain([http::Method::GET]) {
        let mut as_announced = req.clone();
        as_announced.set_method(method);
        let d = decide::decide(runtime, &as_announced);
        if has_cors(&d) {
            *decision = d;
            return true;
        }
    }
    has_cors(decision)
}

/// IP rules of the listener, then of the route. `Ok(true)`: refused, 403 sent.
pub(super) async fn check_ip(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: Option<&Route>,
    listener: Option<&ListenerPolicies>,
) -> Result<bool> {
    let on_listener = listener.and_then(|l| l.ip.as_deref());
    let on_route = route.and_then(|r| r.policies.ip.as_deref());
    if on_listener.is_none() && on_route.is_none() {
        return Ok(false);
    }
    let ip = ctx.client_ip;
    let scope = if on_listener.is_some_and(|r| !r.allows(ip)) {
        "listener"
    } else if on_route.is_some_and(|r| !r.allows(ip)) {
        "route"
    } else {
        return Ok(false);
    };
    let id = route.map_or("-", |r| &*r.id);
    gw.metrics
        .policies
        .ip_denied
        .with_label_values(&[id, scope])
        .inc();
    ctx.route = route.map(|r| r.index);
    send_reply(session, ctx, reply::IP_FORBIDDEN).await?;
    Ok(true)
}

/// The route's CORS policy (or its listener's): a preflight is checked and kept for
/// `answer_preflight`; for any other request the answer goes onto the response.
/// `Ok(true)`: a refused preflight, 403 sent.
pub(super) async fn cors(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    listener: Option<&ListenerPolicies>,
    preflight: bool,
) -> Result<bool> {
    let Some(policy) = route
        .policies
        .cors
        .resolve(listener.and_then(|l| l.cors.as_ref()))
    else {
        return Ok(false);
    };
    let headers = &session.req_header().headers;
    if !preflight {
        let answer = policy.actual(headers);
        if let Some(m) = session.downstream_modules_ctx.get_mut::<CorsModule>() {
            m.set(answer);
        }
        return Ok(false);
    }
    let result = policy.preflight(headers);
    let label = result.as_ref().map_or_else(|r| r.label(), |_| "allowed");
    gw.metrics
        .policies
        .cors_preflights
        .with_label_values(&[&route.id, label])
        .inc();
    match result {
        Ok(answer) => {
            // Also on the gateway's own answers to it (a 429, say).
            if let Some(m) = session.downstream_modules_ctx.get_mut::<CorsModule>() {
                m.set(answer.clone());
            }
            ctx.policy.preflight = Some(answer);
            Ok(false)
        }
        Err(refusal) => {
            ctx.route = Some(route.index);
            if let Some(m) = session.downstream_modules_ctx.get_mut::<CorsModule>() {
                m.set(CorsAnswer {
                    vary_origin: true,
                    ..CorsAnswer::default()
                });
            }
            send_reply(session, ctx, reply::for_cors_refusal(refusal)).await?;
            Ok(true)
        }
    }
}

/// The 204 to an allowed preflight (no body, so no Content-Length: RFC 9110 section
/// 8.6), with the rate-limit headers of the request.
pub(super) async fn answer_preflight(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: usize,
    answer: &CorsAnswer,
) -> Result<()> {
    ctx.route = Some(route);
    ctx.reply_code = Some("cors_preflight");
    let mut resp = ResponseHeader::build(204, Some(answer.headers.len() + 4))?;
    CorsModule::apply(answer, &mut resp);
    resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    for (k, v) in &ctx.rate_headers {
        resp.insert_header(*k, v.as_str())?;
    }
    session.write_response_header(Box::new(resp), true).await
}

/// Turn response compression on for the request when its route (or listener) has it.
pub(super) fn compression(
    session: &mut Session,
    route: &Route,
    listener: Option<&ListenerPolicies>,
) {
    let Some(spec) = route
        .policies
        .compression
        .resolve(listener.and_then(|l| l.compression.as_ref()))
    else {
        return;
    };
    let req = session.downstream_session.req_header();
    if let Some(m) = session
        .downstream_modules_ctx
        .get_mut::<CompressionModule>()
    {
        m.enable(Arc::clone(spec), req);
    }
}

/// The route's authentication: JWT, API key, either (`any_of`), then forward auth.
/// `Ok(true)`: refused, the answer was sent.
pub(super) async fn authenticate(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<bool> {
    let refused = match (&route.jwt, &route.policies.api_key) {
        (Some(jwt), None) => {
            super::request::authenticate(gw, session, ctx, route.index, jwt).await?
        }
        (None, Some(key)) => {
            let req = session.req_header();
            let outcome = key.authenticate(&req.headers, req.uri.query());
            key_result(gw, session, ctx, route, key, outcome).await?
        }
        (Some(jwt), Some(key)) => any_of(gw, session, ctx, route, jwt, key).await?,
        (None, None) => false,
    };
    if refused {
        return Ok(true);
    }
    match &route.policies.forward_auth {
        Some(fa) => forward(gw, session, ctx, route, fa).await,
        None => Ok(false),
    }
}

/// Act on an API-key outcome: set the consumer header and strip the key, or refuse.
async fn key_result(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    key: &RouteApiKey,
    outcome: KeyOutcome,
) -> Result<bool> {
    gw.metrics
        .policies
        .api_keys
        .with_label_values(&[&route.id, outcome.label()])
        .inc();
    let KeyOutcome::Verified { consumer, source } = outcome else {
        ctx.route = Some(route.index);
        let r = reply::for_key_outcome(&outcome).unwrap_or(reply::API_KEY_INVALID);
        let challenge = (r.status == 401).then_some(("www-authenticate", API_KEY_CHALLENGE));
        send_reply_with(session, ctx, r, challenge.as_slice()).await?;
        return Ok(true);
    };
    let req = session.req_header_mut();
    if let Some(v) = RouteApiKey::consumer_value(&consumer) {
        req.insert_header(key.spec.consumer_header.clone(), v)?;
    }
    if key.spec.strip {
        match key.spec.sources.get(source) {
            Some(KeySource::Header(h)) => {
                req.remove_header(h);
            }
            Some(KeySource::Cookie(name)) => strip_cookie(req, name)?,
            Some(KeySource::Query(name)) => ctx.policy.strip_query = Some(name.clone()),
            None => {}
        }
    }
    ctx.policy.consumer = Some(Arc::clone(&consumer.name));
    Ok(false)
}

/// Remove one cookie from the request's `Cookie` header(s).
fn strip_cookie(req: &mut pingora::http::RequestHeader, name: &str) -> Result<()> {
    let kept: Vec<String> = req
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_owned)
        .collect();
    req.remove_header(&header::COOKIE);
    if !kept.is_empty() {
        req.insert_header(header::COOKIE, kept.join("; "))?;
    }
    Ok(())
}

/// `any_of: [jwt, api_key]`: a verified API key passes; else a verified token (or none
/// where the token is optional). A presented key that fails is refused as such; with no
/// credential at all the 401 names both schemes.
async fn any_of(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    jwt: &RouteJwt,
    key: &RouteApiKey,
) -> Result<bool> {
    let req = session.req_header();
    let key_outcome = key.authenticate(&req.headers, req.uri.query());
    if matches!(key_outcome, KeyOutcome::Verified { .. }) {
        return key_result(gw, session, ctx, route, key, key_outcome).await;
    }
    let scope = ctx.trace.as_ref().and_then(|t| t.scope());
    let jwt_outcome = super::trace::in_scope(
        scope,
        auth::authenticate(jwt, &req.headers, req.uri.query(), &gw.metrics),
    )
    .await;
    match (&key_outcome, &jwt_outcome) {
        (_, AuthOutcome::Verified { .. }) | (KeyOutcome::Missing, AuthOutcome::Anonymous) => {
            super::request::apply_jwt(session, ctx, route.index, jwt, jwt_outcome).await
        }
        (KeyOutcome::Missing, AuthOutcome::Rejected(auth::Rejection::Missing { realm })) => {
            gw.metrics
                .policies
                .api_keys
                .with_label_values(&[&route.id, "missing"])
                .inc();
            ctx.route = Some(route.index);
            let challenge = format!("Bearer realm=\"{realm}\", {API_KEY_CHALLENGE}");
            send_reply_with(
                session,
                ctx,
                reply::CREDENTIALS_MISSING,
                &[("www-authenticate", &challenge)],
            )
            .await?;
            Ok(true)
        }
        (KeyOutcome::Missing, _) => {
            super::request::apply_jwt(session, ctx, route.index, jwt, jwt_outcome).await
        }
        _ => key_result(gw, session, ctx, route, key, key_outcome).await,
    }
}

/// Read the whole request body (at most `max` bytes) into Pingora's retry buffer, from
/// which the proxy replays it to the upstream. `None`: too large.
async fn read_body(session: &mut Session, max: usize) -> Result<Option<Bytes>> {
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    session.as_mut().enable_retry_buffering();
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > max {
            return Ok(None);
        }
    }
    Ok(Some(body.freeze()))
}

fn result_label(d: &FaDecision, cached: bool, on_error: OnError) -> &'static str {
    match (d, cached, on_error) {
        (FaDecision::Allow(_), false, _) => "allowed",
        (FaDecision::Allow(_), true, _) => "cached_allowed",
        (FaDecision::Deny(_), false, _) => "denied",
        (FaDecision::Deny(_), true, _) => "cached_denied",
        (FaDecision::Error(_), _, OnError::Deny) => "error_denied",
        (FaDecision::Error(_), _, OnError::Allow) => "error_allowed",
    }
}

/// Ask the route's auth service; copy its headers upstream on a 2xx, return its answer
/// otherwise, or apply `on_error`.
async fn forward(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    fa: &ForwardAuth,
) -> Result<bool> {
    let body = if fa.spec.send_body {
        match read_body(session, fa.spec.max_body).await? {
            Some(b) => Some(b),
            None => {
                ctx.route = Some(route.index);
                // Part of the body may be unread: this connection cannot carry another.
                session.set_keepalive(None);
                send_reply(session, ctx, reply::AUTH_BODY_TOO_LARGE).await?;
                return Ok(true);
            }
        }
    } else {
        None
    };
    let client_ip = ctx.client_ip;
    let req = session.req_header();
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match &ctx.policy.strip_query {
        Some(name) => strip_query(pq, name),
        None => pq.to_owned(),
    };
    let span = ctx
        .trace
        .as_ref()
        .and_then(|t| t.child("forward_auth", opentelemetry::trace::SpanKind::Client));
    // The auth service continues the trace from the forward-auth span (as an upstream
    // continues it from its attempt span); unsampled, from the server span.
    let trace_headers = ctx.trace.as_ref().map(|t| {
        let sc = t.context_of(span.as_ref());
        (
            crate::telemetry::propagation::traceparent(sc),
            sc.trace_state().header(),
        )
    });
    let check = CheckRequest {
        method: &req.method,
        uri: &uri,
        host: decide::raw_host(req),
        proto: if super::tls_connection(session).is_some() {
            "https"
        } else {
            "http"
        },
        client_ip,
        request_id: &ctx.request_id,
        headers: &req.headers,
        body,
        trace: trace_headers
            .as_ref()
            .map(|(parent, state)| (parent.as_str(), state.as_str())),
    };
    let started = Instant::now();
    let (decision, cached) = fa.check(&check).await;
    if let Some(mut span) = span {
        use opentelemetry::trace::Span as _;
        span.set_attribute(opentelemetry::KeyValue::new(
            "gateway.forward_auth.cached",
            cached,
        ));
        span.set_attribute(opentelemetry::KeyValue::new(
            "gateway.forward_auth.result",
            result_label(&decision, cached, fa.spec.on_error),
        ));
        span.end();
    }
    let policies = &gw.metrics.policies;
    if !cached {
        policies
            .forward_auth_duration
            .with_label_values(&[&route.id])
            .observe(started.elapsed().as_secs_f64());
    }
    policies
        .forward_auth
        .with_label_values(&[&route.id, result_label(&decision, cached, fa.spec.on_error)])
        .inc();
    match decision {
        FaDecision::Allow(headers) => {
            let req = session.req_header_mut();
            for (name, value) in headers.iter() {
                req.append_header(name.clone(), value.clone())?;
            }
            ctx.policy.forward_authorized = true;
            Ok(false)
        }
        FaDecision::Deny(denial) => {
            ctx.route = Some(route.index);
            ctx.reply_code = Some("forward_auth_denied");
            let mut resp =
                ResponseHeader::build(denial.status.as_u16(), Some(denial.headers.len() + 2))?;
            for (k, v) in &denial.headers {
                resp.append_header(k.clone(), v.clone())?;
            }
            resp.insert_header(header::CONTENT_LENGTH, denial.body.len())?;
            resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
            for (k, v) in &ctx.rate_headers {
                resp.insert_header(*k, v.as_str())?;
            }
            let head_only = session.req_header().method == http::Method::HEAD;
            let empty = head_only || denial.body.is_empty();
            session.write_response_header(Box::new(resp), empty).await?;
            if !empty {
                session
                    .write_response_body(Some(denial.body.clone()), true)
                    .await?;
            }
            Ok(true)
        }
        FaDecision::Error(why) => {
            tracing::warn!(route = %route.id, url = %fa.spec.url, why, "forward auth failed");
            match fa.spec.on_error {
                OnError::Allow => Ok(false),
                OnError::Deny => {
                    ctx.route = Some(route.index);
                    send_reply(session, ctx, reply::FORWARD_AUTH_UNAVAILABLE).await?;
                    Ok(true)
                }
            }
        }
    }
}

/// The upstream target with the API key's query parameter removed, when it came there.
pub(super) fn strip_key_from_target(
    session: &Session,
    ctx: &RequestCtx,
    target: Option<String>,
) -> Option<String> {
    let Some(name) = ctx.policy.strip_query.as_deref() else {
        return target;
    };
    let original;
    let pq = match &target {
        Some(t) => t.as_str(),
        None => {
            original = session
                .req_header()
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            &original
        }
    };
    let stripped = strip_query(pq, name);
    // An unchanged target keeps the request's own URI (None), as before.
    if target.is_none() && stripped == pq {
        return None;
    }
    Some(stripped)
}
