//! The TLS handshake of a connection on a TLS listener, with the acceptor of the
//! runtime the connection arrived under (a certificate reload changes it for new
//! connections only). Bad input is closed cleanly and counted by reason: plain HTTP on
//! the port (answered with a JSON 400, as a client that typed `http://` deserves), a
//! handshake that stalls, a client certificate that does not verify, no protocol or
//! version in common.

use pingora::protocols::Stream;
use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::time::Instant;

use super::{Bound, ListenerApp};
use crate::edge::ConnectionLimits;
use crate::proxy::reply;
use crate::tls::{ListenerTls, TlsConnection};

/// The first byte of a TLS record carrying a handshake message (RFC 8446 section 5.1).
const HANDSHAKE_RECORD: u8 = 0x16;

/// The failure reason label of a handshake error, from its message (rustls errors
/// reach us through Pingora's error chain as text).
fn failure_reason(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if (m.contains("certificate") && (m.contains("peer") || m.contains("client")))
        || m.contains("no certificates")
        || m.contains("certificaterequired")
    {
        "client_certificate"
    } else if m.contains("application protocol")
        || m.contains("protocol version")
        || m.contains("no cipher")
        || m.contains("nocipher")
        || m.contains("incompatible")
    {
        "no_common_protocol"
    } else if m.contains("eof") || m.contains("reset") || m.contains("broken pipe") {
        "closed"
    } else {
        "other"
    }
}

impl ListenerApp {
    fn tls_failed(&self, bound: &Bound, reason: &str) {
        self.metrics
            .protocols
            .tls_handshake_failures
            .with_label_values(&[&bound.name, reason])
            .inc();
    }

    /// Run the handshake; `None` when the connection is done (refused or failed).
    pub(super) async fn tls_accept(
        &self,
        mut stream: Stream,
        bound: &Bound,
        tls: &ListenerTls,
        limits: &ConnectionLimits,
    ) -> Option<Stream> {
        let timeout = tls
            .handshake_timeout
            .unwrap_or(limits.timeouts.request_header);
        let deadline = Instant::now() + timeout;
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.try_peek(&mut first)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                // Connected and closed without a byte (a port scan, a health check).
                return None;
            }
            Err(_) => {
                self.tls_failed(bound, "timeout");
                self.timed_out(bound, "tls_handshake");
                return None;
            }
        }
        if first[0] != HANDSHAKE_RECORD {
            self.tls_failed(bound, "not_tls");
            tracing::debug!(listener = %bound.name, first = first[0], "not TLS on a TLS listener");
            if first[0].is_ascii_uppercase() {
                // Most likely an HTTP/1 request line: say what went wrong.
                let timeouts = limits.timeouts;
                self.refuse(
                    &mut stream,
                    bound,
                    reply::PLAIN_HTTP_ON_TLS,
                    None,
                    &timeouts,
                )
                .await;
            }
            return None;
        }
        let l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => {
                tracing::warn!(listener = %bound.name, "TLS listener got a stream that is not TCP");
                return None;
            }
        };
        match tokio::time::timeout_at(deadline, tls.acceptor.tls_handshake(l4)).await {
            Ok(Ok(stream)) => {
                let stream: Stream = Box::new(stream);
                let conn = stream.get_ssl_digest().and_then(|d| {
                    d.extension.get::<TlsConnection>().map(|c| {
                        let matched = c.sni.as_deref().is_some_and(|s| c.table.find(s).is_some());
                        (c.sni.is_some(), matched)
                    })
                });
                let sni = match conn {
                    Some((true, true)) => "matched",
                    Some((true, false)) => "unmatched",
                    _ => {
                        tracing::debug!(listener = %bound.name, "TLS handshake without SNI; the first certificate served it");
                        "absent"
                    }
                };
                self.metrics
                    .protocols
                    .tls_handshakes
                    .with_label_values(&[&bound.name, sni])
                    .inc();
                Some(stream)
            }
            Ok(Err(e)) => {
                let message = format!("{e} {}", e.root_cause());
                let reason = failure_reason(&message);
                self.tls_failed(bound, reason);
                tracing::debug!(listener = %bound.name, reason, error = %message, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.tls_failed(bound, "timeout");
                self.timed_out(bound, "tls_handshake");
                None
            }
        }
    }
}
