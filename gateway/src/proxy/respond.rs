//! Owns what goes back to the client that the upstream did not write: the gateway's own
//! replies (`send`, `send_reply`), the response head filter (cache status, route
//! headers, sticky cookie, rate-limit headers, request id), and the JSON error after a
//! failed proxy attempt (`fail_to_proxy`).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};

use super::reply::{self, Reply};
use super::{Gateway, RequestCtx};

pub(super) const X_REQUEST_ID: &str = "x-request-id";

pub(super) async fn send(
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

pub(super) async fn send_reply(
    session: &mut Session,
    ctx: &mut RequestCtx,
    reply: Reply,
) -> Result<()> {
    send_reply_with(session, ctx, reply, &[]).await
}

/// [`send_reply`] with `extra` headers (a `WWW-Authenticate` challenge, say).
pub(super) async fn send_reply_with(
    session: &mut Session,
    ctx: &mut RequestCtx,
    reply: Reply,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    ctx.reply_code = Some(reply.code);
    if ctx.grpc {
        return send_grpc_status(session, ctx, reply, extra).await;
    }
    let body = reply.body(&ctx.request_id, ctx.trace_id());
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
        .chain(extra.iter().copied())
        .collect();
    send(session, reply.status, &all, body).await
}

/// A gateway answer to a gRPC call: HTTP 200 with the status in a trailers-only
/// response (one HEADERS frame ending the stream: `grpc-status`, `grpc-message`),
/// never a JSON body; gRPC clients read no HTTP status.
async fn send_grpc_status(
    session: &mut Session,
    ctx: &mut RequestCtx,
    reply: Reply,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let code = crate::grpc::Code::for_http(reply.status);
    let mut resp = ResponseHeader::build(200, Some(6 + extra.len()))?;
    resp.insert_header(
        "content-type",
        crate::grpc::reply_content_type(&session.req_header().headers),
    )?;
    resp.insert_header("grpc-status", code.as_str())?;
    resp.insert_header("grpc-message", crate::grpc::encode_message(reply.message))?;
    resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    for (k, v) in ctx
        .rate_headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().copied())
    {
        resp.insert_header(k, v)?;
    }
    if let pingora::protocols::http::ServerSession::H2(h2) = session.as_downstream_mut() {
        // Straight to the HTTP/2 stream: Pingora's `write_response_header` keeps the
        // stream open for a body and ends it later with an empty DATA frame, which is not
        // the trailers-only form (gRPC clients other than tonic then miss the status).
        // Nothing of the downstream modules applies to an answer without a body.
        return h2.write_response_header(Box::new(resp), true);
    }
    // HTTP/1.1 has no end-of-stream flag: the empty body needs its length.
    resp.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(resp), true).await
}

pub(super) async fn response_filter(
    gw: &Gateway,
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
        let removed = crate::cache::invalidate_after_unsafe(session.req_header(), response).await;
        gw.metrics.cache.purged.inc_by(removed as u64);
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

pub(super) async fn fail_to_proxy(
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
                ctx.client_gone = true;
            } else if reply.status == 413 {
                // The client may still be sending the body it was refused.
                super::body_limit::linger(session).await;
            }
        }
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}
