//! Builds the edge settings (`crate::edge::EdgeSpec`) from `server.timeouts`,
//! `server.max_connections`, `server.max_connections_per_client_ip`,
//! `server.max_request_body_bytes` and each listener's overrides, and a route's
//! `max_request_body_bytes`.

use super::{Errors, wire};
use crate::edge::body::DEFAULT_MAX_REQUEST_BODY;
use crate::edge::{ConnectionLimits, EdgeSpec, ListenerEdge, Timeouts};
use crate::units::{duration, size, socket_addr};

pub(super) fn edge_spec(
    e: &mut Errors,
    s: &wire::Server,
    listeners: &[wire::Listener],
) -> EdgeSpec {
    let base = ConnectionLimits::default();
    let defaults = ConnectionLimits {
        timeouts: timeouts(e, "server.timeouts", s.timeouts.as_ref(), base.timeouts),
        max_connections: s.max_connections.unwrap_or(base.max_connections),
        max_connections_per_client_ip: s
            .max_connections_per_client_ip
            .unwrap_or(base.max_connections_per_client_ip),
    };
    let listeners = listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let path = format!("listeners[{i}]");
            let limits = ConnectionLimits {
                timeouts: timeouts(
                    e,
                    &format!("{path}.timeouts"),
                    l.timeouts.as_ref(),
                    defaults.timeouts,
                ),
                max_connections: l.max_connections.unwrap_or(defaults.max_connections),
                max_connections_per_client_ip: l
                    .max_connections_per_client_ip
                    .unwrap_or(defaults.max_connections_per_client_ip),
            };
            if limits.max_connections != 0
                && limits.max_connections_per_client_ip > limits.max_connections
            {
                e.push(
                    format!("{path}.max_connections_per_client_ip"),
                    format!(
                        "max_connections_per_client_ip {} is more than the listener's max_connections {}",
                        limits.max_connections_per_client_ip, limits.max_connections
                    ),
                );
            }
            // A bad address is reported by the listener section.
            let address = socket_addr(&l.address).ok()?;
            Some(ListenerEdge {
                name: l.name.clone(),
                address,
                limits,
            })
        })
        .collect();
    let max_request_body_bytes = match &s.max_request_body_bytes {
        None => Some(DEFAULT_MAX_REQUEST_BODY),
        Some(raw) => match body_size(e, "server.max_request_body_bytes", raw) {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(DEFAULT_MAX_REQUEST_BODY),
        },
    };
    EdgeSpec {
        defaults,
        listeners,
        max_request_body_bytes,
    }
}

/// A route's `max_request_body_bytes` as written (`Some(0)` = unlimited).
pub(super) fn route_body_limit(e: &mut Errors, path: &str, r: &wire::Route) -> Option<u64> {
    r.max_request_body_bytes
        .as_ref()
        .and_then(|raw| body_size(e, &format!("{path}.max_request_body_bytes"), raw))
}

fn body_size(e: &mut Errors, path: &str, raw: &wire::Size) -> Option<u64> {
    match raw {
        wire::Size::Number(n) => Some(*n),
        wire::Size::Text(t) => e.take(path, size(t)),
    }
}

fn timeouts(e: &mut Errors, path: &str, t: Option<&wire::Timeouts>, base: Timeouts) -> Timeouts {
    let Some(t) = t else {
        return base;
    };
    let mut one = |name: &str, raw: Option<&str>, default| {
        raw.and_then(|r| e.take(format!("{path}.{name}"), duration(r)))
            .unwrap_or(default)
    };
    Timeouts {
        request_header: one(
            "request_header",
            t.request_header.as_deref(),
            base.request_header,
        ),
        request_body_idle: one(
            "request_body_idle",
            t.request_body_idle.as_deref(),
            base.request_body_idle,
        ),
        keepalive_idle: one(
            "keepalive_idle",
            t.keepalive_idle.as_deref(),
            base.keepalive_idle,
        ),
        downstream_write: one(
            "downstream_write",
            t.downstream_write.as_deref(),
            base.downstream_write,
        ),
    }
}
