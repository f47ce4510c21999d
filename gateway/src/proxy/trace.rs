//! Owns what the proxy tells the request's server span when the request ends (after
//! the access log line): the HTTP semantic-convention attributes and the gateway's own
//! (`gateway.*`: route, upstream, tries, cache status, auth outcome, the reply it made),
//! then ends it. Never a header value, a query string or a credential. Also runs the
//! calls features make for a request inside its trace scope (`in_scope`).

use std::future::Future;

use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt as _;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::RequestCtx;

/// How the request's authentication went, from what the auth steps left in `ctx`.
fn auth_outcome(ctx: &RequestCtx) -> Option<&'static str> {
    let route = ctx.route()?;
    let has_auth = route.jwt.is_some()
        || route.policies.api_key.is_some()
        || route.policies.forward_auth.is_some();
    if !has_auth {
        return None;
    }
    let refused = matches!(
        ctx.reply_code,
        Some(
            "unauthenticated"
                | "invalid_token"
                | "insufficient_scope"
                | "invalid_request"
                | "auth_unavailable"
                | "api_key_missing"
                | "invalid_api_key"
                | "ambiguous_api_key"
                | "consumer_disabled"
                | "consumer_not_allowed"
                | "forward_auth_denied"
                | "forward_auth_unavailable"
                | "auth_body_too_large"
        )
    );
    Some(if refused {
        "refused"
    } else if ctx.jwt_claims.is_some() {
        "jwt"
    } else if ctx.policy.consumer.is_some() {
        "api_key"
    } else if ctx.policy.forward_authorized {
        "forward_auth"
    } else {
        "anonymous"
    })
}

/// Await `fut` with `scope` as OpenTelemetry's current context, so the spans of the
/// calls it makes (Redis, a JWKS fetch) are children of the span `scope` holds.
pub(super) async fn in_scope<F: Future>(
    scope: Option<opentelemetry::Context>,
    fut: F,
) -> F::Output {
    match scope {
        Some(cx) => fut.with_context(cx).await,
        None => fut.await,
    }
}

pub(super) fn finish(session: &Session, error: Option<&Error>, ctx: &mut RequestCtx) {
    let Some(mut trace) = ctx.trace.take() else {
        return;
    };
    let status = match session.response_written().map(|r| r.status.as_u16()) {
        Some(s) if s != 0 => s,
        // Nothing was answered: the client went away first (see `log`).
        _ => 499,
    };
    trace.promote_error(status);
    let req = session.req_header();
    let method = req.method.as_str();
    let route = ctx.route().map(|r| r.id.clone());
    trace.rename(|| match &route {
        Some(r) => format!("{method} {r}"),
        None => method.to_owned(),
    });
    trace.annotate(|| {
        let mut a = vec![
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("url.path", req.uri.path().to_owned()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new(
                "network.protocol.version",
                match req.version {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                },
            ),
            KeyValue::new("gateway.request_id", ctx.request_id.clone()),
            KeyValue::new("gateway.config_version", ctx.runtime.version as i64),
            KeyValue::new("http.request.body.size", session.body_bytes_read() as i64),
            KeyValue::new("http.response.body.size", session.body_bytes_sent() as i64),
        ];
        let host = super::decide::raw_host(req);
        if !host.is_empty() {
            a.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(ip) = ctx.client_ip {
            a.push(KeyValue::new("client.address", ip.to_string()));
        }
        if let Some(ua) = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            a.push(KeyValue::new("user_agent.original", ua.to_owned()));
        }
        if let Some(r) = &route {
            a.push(KeyValue::new("http.route", r.to_string()));
        }
        if let Some(p) = &ctx.pool {
            a.push(KeyValue::new("gateway.upstream", p.name.to_string()));
        }
        if let Some(e) = ctx.endpoint.as_deref() {
            a.push(KeyValue::new("gateway.upstream.endpoint", e.to_owned()));
        }
        if ctx.tries > 0 {
            a.push(KeyValue::new(
                "gateway.upstream.tries",
                i64::from(ctx.tries),
            ));
        }
        if let Some((outcome, _)) = ctx.cache.outcome {
            a.push(KeyValue::new("gateway.cache.status", outcome.label()));
        }
        if let Some(o) = auth_outcome(ctx) {
            a.push(KeyValue::new("gateway.auth.outcome", o));
        }
        if let Some(c) = ctx.policy.consumer.as_deref() {
            a.push(KeyValue::new("gateway.consumer", c.to_owned()));
        }
        if let Some(code) = ctx.reply_code {
            a.push(KeyValue::new("gateway.reply", code));
        }
        a
    });
    trace.finish(status, error.map(|e| e.etype().as_str()));
}
