//! Owns the `logging` phase: request metrics (compression's too, requests by protocol)
//! and the access-log line (with the API consumer, the protocol and the TLS SNI).
//!
//! A request that got no response at all is one whose client went away first: every
//! other failure is answered (see `reply::for_error`). It is counted with
//! `status_class="client_closed"` and logged with status 499 (nginx's convention), so
//! it is never mistaken for a gateway error or for a missing label.

use pingora::prelude::*;
use pingora::proxy::Session;

use super::{Gateway, RequestCtx};
use crate::metrics::{CLIENT_CLOSED, method_label, status_class};

pub(super) async fn logging(
    gw: &Gateway,
    session: &mut Session,
    error: Option<&Error>,
    ctx: &mut RequestCtx,
) {
    let mut status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let client_closed = status == 0
        && (ctx.client_gone || error.is_some_and(|e| e.esource() == &ErrorSource::Downstream));
    let class = if client_closed {
        status = 499;
        ctx.reply_code = Some(CLIENT_CLOSED);
        CLIENT_CLOSED
    } else {
        status_class(status)
    };
    if let Some(kind) = error.and_then(client_timeout) {
        let listener = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .and_then(|a| ctx.runtime.edge.listener_at(*a))
            .map_or("-", |l| l.name.as_str());
        gw.metrics
            .edge
            .downstream_timeouts
            .with_label_values(&[listener, kind])
            .inc();
    }
    let route = ctx.route().map(|r| &*r.id).unwrap_or("-");
    let req = session.req_header();
    let method = method_label(&req.method);
    let elapsed = ctx.started.elapsed();
    gw.metrics
        .requests
        .with_label_values(&[route, method, class])
        .inc();
    gw.metrics
        .request_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    let protocol = match req.version {
        http::Version::HTTP_2 => "h2",
        http::Version::HTTP_10 => "http/1.0",
        _ => "http/1.1",
    };
    let tls = super::is_tls(session);
    gw.metrics
        .protocols
        .requests
        .with_label_values(&[protocol, if tls { "true" } else { "false" }])
        .inc();
    if let Some((outcome, collapsed)) = ctx.cache.outcome {
        crate::cache::stats::observe(&gw.metrics.cache, route, outcome, collapsed);
    }
    if let Some((algo, bytes_in, bytes_out)) = session
        .downstream_modules_ctx
        .get::<crate::compression::CompressionModule>()
        .and_then(|m| m.stats())
    {
        let p = &gw.metrics.policies;
        p.compressed.with_label_values(&[algo.token()]).inc();
        p.compression_bytes
            .with_label_values(&[algo.token(), "in"])
            .inc_by(bytes_in as u64);
        p.compression_bytes
            .with_label_values(&[algo.token(), "out"])
            .inc_by(bytes_out as u64);
    }
    if let (Some(pool), Some(up)) = (&ctx.pool, ctx.upstream_elapsed) {
        gw.metrics
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
        protocol,
        tls,
        sni = super::tls_connection(session).and_then(|t| t.sni.as_deref()),
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream = ctx.pool.as_ref().map(|p| &*p.name),
        upstream_addr = ctx.endpoint.as_deref(),
        upstream_ms = ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
        bytes_received = session.body_bytes_read(),
        bytes_sent = session.body_bytes_sent(),
        client = session.client_addr().map(|a| a.to_string()),
        client_ip = ctx.client_ip.map(|ip| ip.to_string()),
        reply = ctx.reply_code,
        consumer = ctx.policy.consumer.as_deref(),
        error = error.map(|e| e.etype().as_str()),
    );
}

/// The client-side timeout that ended the request, if one did.
fn client_timeout(e: &Error) -> Option<&'static str> {
    if e.esource() != &ErrorSource::Downstream {
        return None;
    }
    match e.etype() {
        ErrorType::ReadTimedout => Some("request_body_idle"),
        ErrorType::WriteTimedout => Some("downstream_write"),
        _ => None,
    }
}
