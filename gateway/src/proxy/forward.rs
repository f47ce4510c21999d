//! Owns the upstream side of a proxied request: choosing the endpoint for each try
//! (`upstream_peer`: backoff, connection limit, sticky cookie, load balancing, per-try
//! timeout), deciding retries after a failed try (`fail_to_connect`,
//! `error_while_proxy`), and the request and response heads at the upstream
//! (`upstream_request_filter`, `upstream_response_filter`).

use std::time::{Duration, Instant};

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

use super::reply::UPSTREAM_OVERLOADED;
use super::resilience::{self, RETRY_GATEWAY_ERROR};
use super::respond::X_REQUEST_ID;
use super::{Gateway, RequestCtx};
use crate::telemetry::AttemptOutcome;
use crate::upstream::policy::RetryOn;
use crate::upstream::{Attempt, random_unit};

pub(super) async fn upstream_peer(
    gw: &Gateway,
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
        gw.metrics.overloaded.with_label_values(&[&pool.name]).inc();
        return Error::e_explain(UPSTREAM_OVERLOADED, "upstream connection limit reached");
    };
    ctx.connection = Some(connection);
    let req = session.req_header();
    let client = ctx.client_ip;
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
    if let Some(idle) = ctx.websocket {
        // The tunnel's reads wait as long as the route's idle timeout allows, and an
        // upgrade is HTTP/1.1 whatever the upstream speaks otherwise.
        peer.options.read_timeout = Some(idle);
        peer.options.write_timeout = Some(idle);
        peer.options.alpn = pingora::protocols::ALPN::H1;
    }
    if let Some(t) = ctx.trace.as_mut() {
        t.begin_attempt(
            session.req_header().method.as_str(),
            &pool.name,
            &endpoint.address,
            ctx.tries,
        );
    }
    ctx.endpoint = Some(endpoint.address.clone());
    Ok(Box::new(peer))
}

pub(super) fn fail_to_connect(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
) -> Box<Error> {
    ctx.record_outcome(true, &gw.metrics);
    if let Some(t) = ctx.trace.as_mut() {
        t.end_attempt(AttemptOutcome::Failed(e.etype().as_str()));
    }
    // The request never left: safe to send elsewhere, whatever the method.
    e.set_retry(ctx.may_retry(session, RetryOn::ConnectFailure, &gw.metrics));
    e
}

pub(super) fn error_while_proxy(
    gw: &Gateway,
    peer: &HttpPeer,
    session: &mut Session,
    e: Box<Error>,
    ctx: &mut RequestCtx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    if let Some(t) = ctx.trace.as_mut() {
        // No-op after `upstream_response_filter` ended it with the upstream's status.
        t.end_attempt(AttemptOutcome::Failed(e.etype().as_str()));
    }
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
    ctx.record_outcome(true, &gw.metrics);
    if ctx.may_retry(session, why, &gw.metrics) {
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

pub(super) async fn upstream_request_filter(
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
    if let Some(jwt) = ctx.route().and_then(|r| r.jwt.as_ref()) {
        // The rewritten target was built from the query as the client sent it.
        super::request::strip_query_tokens(upstream, jwt);
    }
    upstream.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    // Traced: the upstream continues this attempt's span (an invalid client
    // `traceparent` is replaced, never forwarded). Untraced: the client's headers pass
    // through untouched.
    if let Some(t) = &ctx.trace {
        t.inject(upstream)?;
    }
    // The peer joins the chain. From an untrusted peer the chain was dropped in
    // `request_filter` (`client_ip::sanitize`), so it starts over with the peer.
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
    {
        if let Some(xff) = joined(upstream, "x-forwarded-for", ip_text(ip)) {
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        if upstream.headers.contains_key("forwarded") {
            let hop = match ip {
                std::net::IpAddr::V4(v4) => format!("for={v4}"),
                std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
            };
            if let Some(f) = joined(upstream, "forwarded", hop) {
                upstream.insert_header("forwarded", f)?;
            }
        }
    }
    let proto = if super::is_tls(session) {
        "https"
    } else {
        "http"
    };
    upstream.insert_header("x-forwarded-proto", proto)?;
    if let Some(host) = forwarded_host(session.req_header()) {
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

/// `X-Forwarded-Host`: the authority the client asked for (as `http_head::raw_host` reads it). The
/// `Host` header's value is shared with the request head (a reference count), not copied.
fn forwarded_host(req: &RequestHeader) -> Option<http::HeaderValue> {
    match req.uri.authority() {
        Some(a) => http::HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers
            .get(http::header::HOST)
            .filter(|h| !h.is_empty() && h.to_str().is_ok())
            .cloned(),
    }
    .filter(|h| !h.is_empty())
}

/// An address as text for `X-Forwarded-For`. IPv4 digits are written directly: the
/// `Display` machinery cost about 1% of a plain proxied request (callgrind).
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// Every line of `name`, then `hop`, as one comma-separated value; `None` when a line
/// is not text (it is then left as it is).
fn joined(req: &RequestHeader, name: &str, hop: String) -> Option<String> {
    let prev = req
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<_>>>()?;
    Some(if prev.is_empty() {
        hop
    } else {
        format!("{}, {hop}", prev.join(", "))
    })
}

pub(super) async fn upstream_response_filter(
    gw: &Gateway,
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
    ctx.record_outcome(status >= 500, &gw.metrics);
    if let Some(t) = ctx.trace.as_mut() {
        t.end_attempt(AttemptOutcome::Status(status));
    }
    if matches!(status, 502..=504) && ctx.may_retry(session, RetryOn::GatewayError, &gw.metrics) {
        return Error::e_explain(RETRY_GATEWAY_ERROR, format!("upstream answered {status}"));
    }
    // A trailers-only UNAVAILABLE: the call was not processed, nothing reached the
    // client yet, so another endpoint may take it.
    if ctx.grpc
        && status == 200
        && crate::grpc::head_status(&upstream_response.headers) == Some(14)
        && ctx.may_retry(session, RetryOn::GrpcUnavailable, &gw.metrics)
    {
        return Error::e_explain(RETRY_GATEWAY_ERROR, "upstream answered grpc-status 14");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_text() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
        ] {
            assert_eq!(ip_text(ip.parse().unwrap()), ip);
        }
        assert_eq!(ip_text("2001:db8::1".parse().unwrap()), "2001:db8::1");
    }
}
