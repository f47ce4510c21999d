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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use crate::config::parse;

    #[test]
    fn defaults_overrides_and_sizes() {
        let spec = parse(
            "
server:
  timeouts: {request_header: 3s, keepalive_idle: 5s}
  max_connections: 100
  max_request_body_bytes: 2MiB
listeners:
  - {name: a, address: '127.0.0.1:8080'}
  - {name: b, address: '127.0.0.1:8081', max_connections: 0, max_connections_per_client_ip: 7, timeouts: {keepalive_idle: 1s}}
routes:
  - {id: big, match: {path: {prefix: /big}}, direct_response: {status: 200}, max_request_body_bytes: 0}
  - {id: small, match: {path: {prefix: /small}}, direct_response: {status: 200}, max_request_body_bytes: 512}
",
            "gw.yaml",
        )
        .unwrap();
        let e = &spec.edge;
        assert_eq!(e.max_request_body_bytes, Some(2 << 20));
        let a = e.limits("a");
        assert_eq!(a.max_connections, 100);
        assert_eq!(a.timeouts.request_header, Duration::from_secs(3));
        assert_eq!(a.timeouts.request_body_idle, Duration::from_secs(30));
        let b = e.limits("b");
        assert_eq!(b.max_connections, 0);
        assert_eq!(b.max_connections_per_client_ip, 7);
        assert_eq!(b.timeouts.keepalive_idle, Duration::from_secs(1));
        assert_eq!(b.timeouts.request_header, Duration::from_secs(3));
        assert_eq!(spec.routes[0].max_request_body_bytes, Some(0));
        assert_eq!(spec.routes[1].max_request_body_bytes, Some(512));

        let spec = parse("listeners: [{name: a, address: '127.0.0.1:1'}]", "gw.yaml").unwrap();
        assert_eq!(spec.edge.max_request_body_bytes, Some(10 << 20));
        assert_eq!(spec.edge.limits("a").max_connections, 10_000);
        assert_eq!(
            spec.edge.limits("a").timeouts,
            crate::edge::Timeouts::default()
        );
        let spec = parse(
            "server: {max_request_body_bytes: 0}\nlisteners: [{name: a, address: '127.0.0.1:1'}]",
            "gw.yaml",
        )
        .unwrap();
        assert_eq!(spec.edge.max_request_body_bytes, None);
    }

    #[test]
    fn bad_values_are_located() {
        let errors: Vec<String> = parse(
            "
server:
  timeouts: {request_header: 0s, downstream_write: soon}
  max_request_body_bytes: 10 parsecs
listeners:
  - name: a
    address: '127.0.0.1:1'
    max_connections: 2
    max_connections_per_client_ip: 3
    timeouts: {keepalive_idle: 2h}
routes:
  - {id: r, match: {path: {prefix: /}}, direct_response: {status: 200}, max_request_body_bytes: lots}
",
            "gw.yaml",
        )
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
        let want = [
            "gw.yaml:3:14: server.timeouts.request_header",
            "gw.yaml:3:34: server.timeouts.downstream_write",
            "gw.yaml:4:3: server.max_request_body_bytes",
            "gw.yaml:9:5: listeners[0].max_connections_per_client_ip",
            "gw.yaml:10:16: listeners[0].timeouts.keepalive_idle",
            "gw.yaml:12:73: routes[0].max_request_body_bytes",
        ];
        for w in want {
            assert!(
                errors.iter().any(|e| e.starts_with(w)),
                "{w} in {errors:#?}"
            );
        }
        // A negative count is a type error, located by the YAML parser.
        let err = parse(
            "server: {max_connections: -1}\nlisteners: [{name: a, address: '127.0.0.1:1'}]",
            "gw.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gw.yaml:1:"), "{err}");
    }
}
