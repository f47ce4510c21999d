//! Owns the request body size limit in the request phases (`edge::body` has the rules):
//! a declared `Content-Length` over the limit gets 413 in `request_filter`, right after
//! the route match and before auth, rate limits, the cache or any upstream, whatever
//! the route does (and the server-wide limit when no route matches); a body without a
//! declared length is counted in `request_body_filter` and cut off once it crosses the
//! limit: the upstream request is aborted, and the client gets 413 if no response head
//! went out yet (`fail_to_proxy`), else the connection is closed. A gRPC call on a
//! route is held to the route's own limit only (streams are long-lived bodies).

use std::time::Duration;

use pingora::prelude::*;
use pingora::proxy::Session;

use super::RequestCtx;
use super::reply::{self, BODY_TOO_LARGE_ERROR};
use super::respond::send_reply;
use crate::edge::body::{self, BodyBudget};

/// After a 413 the client may still be sending the body it was refused. Closing with
/// unread bytes makes the kernel answer with a reset, which can destroy the 413 before
/// the client reads it, so the gateway keeps reading (and discarding) for this long.
const LINGER: Duration = Duration::from_secs(2);

/// Set the request's body limit for the matched route (`None`: no route, the server's
/// limit) and answer 413 when the declared length is over it. `Ok(true)`: refused.
pub(super) async fn refuse_declared(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: Option<usize>,
) -> Result<bool> {
    let limit = match route.and_then(|r| ctx.runtime.routes.get(r)) {
        Some(r) if ctx.grpc => r.max_grpc_body,
        Some(r) => r.max_request_body,
        None => ctx.runtime.edge.max_request_body_bytes,
    };
    ctx.body = BodyBudget::new(limit);
    let Some(declared) = body::declared_length(&session.req_header().headers) else {
        return Ok(false);
    };
    if !ctx.body.refuses(declared) {
        return Ok(false);
    }
    ctx.route = route;
    session.set_keepalive(None);
    send_reply(session, ctx, reply::BODY_TOO_LARGE).await?;
    linger(session).await;
    Ok(true)
}

/// `request_body_filter`: count the chunk; over the limit, end the request (Pingora
/// drops the upstream connection mid-body and `fail_to_proxy` answers 413).
pub(super) fn count(ctx: &mut RequestCtx, chunk: usize) -> Result<()> {
    if ctx.body.take(chunk) {
        return Ok(());
    }
    let mut e = Error::explain(
        BODY_TOO_LARGE_ERROR,
        format!(
            "request body over the {} byte limit",
            ctx.body.limit().unwrap_or_default()
        ),
    );
    // The client's fault: never retried, never held against the endpoint.
    e.set_retry(false);
    Err(e)
}

/// Close our side of an HTTP/1 connection, then read and discard what is left of the
/// request body for at most [`LINGER`], so that the refusal reaches the client before
/// the connection closes (an HTTP/2 refusal ends only its stream: nothing to do).
pub(super) async fn linger(session: &mut Session) {
    session.set_keepalive(None);
    if session.as_http1().is_none() {
        return;
    }
    session.downstream_session.shutdown().await;
    let until = tokio::time::Instant::now() + LINGER;
    while let Ok(Ok(Some(_))) =
        tokio::time::timeout_at(until, session.downstream_session.read_request_body()).await
    {}
}
