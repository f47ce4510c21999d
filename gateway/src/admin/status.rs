//! Owns the status page: the page itself (`GET /`, plain HTML/CSS/JS embedded in the
//! binary, no network at run time) and the one JSON document it polls
//! (`GET /admin/status`): routes with their live rates and latency series, upstreams
//! with every endpoint, discovery, config reloads, cache, rate limits and Redis, trace
//! export, and the certificates the TLS listeners serve with their expiry. The page holds no data, so it is served without the token (like the
//! probes); it asks for the token once, keeps it in `sessionStorage` and sends it as
//! a bearer token with every call, so everything it shows is behind the admin gate.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::history::History;
use crate::reload::RuntimeStore;
use crate::runtime::{Route, RouteAction, Runtime};

/// The page, as served.
pub const PAGE: &str = include_str!("status.html");

/// A short text of what a route matches, for the page's table.
fn match_text(m: &crate::router::RouteMatch) -> String {
    let mut parts = Vec::new();
    if !m.hosts.is_empty() {
        parts.push(
            m.hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    parts.push(format!("{} {}", m.path.kind(), m.path.source()));
    if let Some(methods) = &m.methods {
        parts.push(methods.names().join(","));
    }
    if !m.headers.is_empty() {
        parts.push(format!("{} header matcher(s)", m.headers.len()));
    }
    if !m.query.is_empty() {
        parts.push(format!("{} query matcher(s)", m.query.len()));
    }
    parts.join(" · ")
}

/// The policy names a route applies, for the page's table.
fn policy_names(r: &Route) -> Vec<&'static str> {
    let mut out = Vec::new();
    if r.jwt.is_some() {
        out.push("jwt");
    }
    if r.policies.api_key.is_some() {
        out.push("api_key");
    }
    if r.policies.forward_auth.is_some() {
        out.push("forward_auth");
    }
    if !r.rate_limits.is_empty() {
        out.push("rate_limit");
    }
    if r.cache.is_some() {
        out.push("cache");
    }
    if r.policies.ip.is_some() {
        out.push("ip_rules");
    }
    if matches!(r.policies.cors, crate::cors::RouteCors::On(_)) {
        out.push("cors");
    }
    if matches!(
        r.policies.compression,
        crate::compression::RouteCompression::On(_)
    ) {
        out.push("compression");
    }
    out
}

fn target(r: &Route) -> Value {
    match &r.action {
        RouteAction::Proxy(b) => json!(
            b.targets
                .iter()
                .map(|(p, w)| if b.targets.len() > 1 {
                    format!("{} ({w})", p.name)
                } else {
                    p.name.to_string()
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RouteAction::Redirect(_) => json!("redirect"),
        RouteAction::Direct(d) => json!(format!("direct {}", d.status.as_u16())),
    }
}

/// One entry per certificate the TLS listeners serve (listener by name, then config
/// order; the first of a listener is its `default`, for handshakes no name matches).
/// Read from the running runtime's acceptors, the certificates the gauge
/// `gateway_tls_certificate_expiry_seconds` shows too, so a status request never reads
/// a file; only the seconds left are computed now.
fn tls_certificates(rt: &Runtime, now: SystemTime) -> Vec<Value> {
    let mut listeners: Vec<_> = rt.tls.iter().collect();
    listeners.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (name, tls) in listeners {
        for (i, cert) in tls.compiled.table.certs.iter().enumerate() {
            let mut entry = cert.describe(now);
            if let Value::Object(fields) = &mut entry {
                fields.insert("listener".into(), json!(name));
                fields.insert("default".into(), json!(i == 0));
            }
            out.push(entry);
        }
    }
    out
}

/// `GET /admin/status`.
pub fn describe(
    store: &RuntimeStore,
    history: &History,
    discovery: Option<&crate::kubernetes::DiscoveryControl>,
) -> Value {
    let rt = store.load();
    let status = store.status();
    let (series, totals) = history.snapshot();
    let routes: Vec<Value> = rt
        .routes
        .iter()
        .zip(rt.table.matchers())
        .map(|(r, m)| {
            let s = series.get(&*r.id);
            json!({
                "id": &*r.id,
                "match": match_text(m),
                "policies": policy_names(r),
                "upstream": target(r),
                "series": s,
            })
        })
        .collect();
    let hits = totals.cache_lookups.get("hit").copied().unwrap_or(0)
        + totals.cache_lookups.get("stale").copied().unwrap_or(0);
    let lookups: u64 = totals.cache_lookups.values().sum();
    json!({
        "version": rt.version,
        "compiled_at": humantime::format_rfc3339_millis(rt.compiled_at).to_string(),
        "history_seconds": super::history::SAMPLES,
        "routes": routes,
        "upstreams": rt.upstreams.values().map(|p| super::describe_pool(p)).collect::<Vec<_>>(),
        "discovery": crate::kubernetes::describe(&rt.discovery, discovery),
        "has_discovery": rt.discovery.mode.is_some(),
        "reload": {
            "source": status.source,
            "last_attempt": status.last_attempt,
            "last_success": status.last_success,
            "ok": status.last_errors.is_empty(),
            "last_failure": status.last_failure.as_ref().map(|(at, errors)| json!({"at": at, "errors": errors})),
            "restart_required": status.restart_required,
        },
        "cache": {
            "storage": crate::cache::describe(),
            "lookups": totals.cache_lookups,
            "hit_ratio": (lookups > 0).then(|| hits as f64 / lookups as f64),
        },
        "rate_limits": totals.rate_limits.iter().map(|(k, (allowed, limited))| json!({
            "policy": k, "allowed": allowed, "limited": limited,
        })).collect::<Vec<_>>(),
        "redis": totals.redis_circuits.iter().map(|(backend, state)| json!({
            "backend": backend,
            "circuit": match state { 0 => "closed", 1 => "half_open", _ => "open" },
            "calls": totals.redis_calls.get(backend),
        })).collect::<Vec<_>>(),
        "tracing": rt.tracing.map(|t| json!({
            "sample_ratio": t.sample_ratio,
            "spans_exported": totals.trace_spans_exported,
            "spans_dropped": totals.trace_spans_dropped,
        })),
        "tls": tls_certificates(&rt, SystemTime::now()),
    })
}
