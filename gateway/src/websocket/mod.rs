//! Owns WebSocket proxying's own decisions: whether a request asks for a WebSocket
//! upgrade (RFC 6455 section 4.1: an HTTP/1.1 GET with `Upgrade: websocket` and
//! `Connection: upgrade`), and a route's WebSocket settings ([`WebSocketSpec`], built
//! by `config::spec`). Pingora moves the frames itself once the upstream answers 101:
//! both directions are copied as they arrive (nothing is buffered), and the end of one
//! side ends the other. `proxy` applies the idle timeout to both sides of the tunnel.
//!
//! WebSocket over HTTP/2 (RFC 8441, extended CONNECT) is not offered: Pingora 0.9's
//! HTTP/2 server does not advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`, so HTTP/2
//! clients open their WebSockets over HTTP/1.1, as browsers do when it is absent.

use std::time::Duration;

use http::{HeaderMap, Method, Version};

/// Idle timeout of a tunnel on routes that set none.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A route's WebSocket settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebSocketSpec {
    /// A tunnel with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for WebSocketSpec {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Whether a field's comma-separated list holds `token` (ASCII case-insensitive), in
/// any of the field's lines.
fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Does this request ask to become a WebSocket (RFC 6455 section 4.1)?
pub fn is_upgrade(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    method == Method::GET
        && version == Version::HTTP_11
        && has_token(headers, http::header::UPGRADE, "websocket")
        && has_token(headers, http::header::CONNECTION, "upgrade")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn upgrade_requests() {
        const WS: &[(&str, &str)] = &[("upgrade", "websocket"), ("connection", "Upgrade")];
        type Case = (
            &'static Method,
            Version,
            &'static [(&'static str, &'static str)],
            bool,
        );
        let cases: &[Case] = &[
            (&Method::GET, Version::HTTP_11, WS, true),
            (
                &Method::GET,
                Version::HTTP_11,
                &[
                    ("upgrade", "WebSocket"),
                    ("connection", "keep-alive, upgrade"),
                ],
                true,
            ),
            (&Method::POST, Version::HTTP_11, WS, false),
            (&Method::GET, Version::HTTP_10, WS, false),
            (&Method::GET, Version::HTTP_2, WS, false),
            (
                &Method::GET,
                Version::HTTP_11,
                &[("upgrade", "websocket")],
                false,
            ),
            (
                &Method::GET,
                Version::HTTP_11,
                &[("upgrade", "h2c"), ("connection", "upgrade")],
                false,
            ),
            (
                &Method::GET,
                Version::HTTP_11,
                &[("upgrade", "websocketx"), ("connection", "upgrade")],
                false,
            ),
        ];
        for (method, version, pairs, want) in cases {
            let h = headers(pairs);
            assert_eq!(
                is_upgrade(method, *version, &h),
                *want,
                "{pairs:?} {version:?}"
            );
        }
    }
}
