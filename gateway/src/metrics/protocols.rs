//! Owns the metric definitions of the downstream protocols: TLS handshakes and their
//! failures, certificate expiry, HTTP/2 connection errors, protocol mix-ups at the
//! listener, and requests by protocol. Labels are bounded: listener names come from the
//! config, reasons and kinds are fixed lists.

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

#[derive(Debug)]
pub struct ProtocolMetrics {
    /// Finished TLS handshakes, by listener and SNI (`matched`, `unmatched`: sent but no
    /// certificate names it, so the default served it, `absent`).
    pub tls_handshakes: IntCounterVec,
    /// TLS handshakes that failed, by listener and reason (`not_tls`, `timeout`,
    /// `client_certificate`, `no_common_protocol`, `closed`, `other`).
    pub tls_handshake_failures: IntCounterVec,
    /// Unix time at which each served certificate expires, by listener and name.
    pub tls_certificate_expiry: GaugeVec,
    /// HTTP/2 connections ended by an error, by listener and reason (the RFC 9113 error
    /// code in lowercase, e.g. `protocol_error`, `enhance_your_calm`, or `io`).
    pub http2_connection_errors: IntCounterVec,
    /// Connections closed for speaking another protocol than the listener does, by
    /// listener and kind (`h2_preface_on_http1`).
    pub protocol_errors: IntCounterVec,
    /// Requests by protocol (`http/1.1`, `http/1.0`, `h2`) and whether over TLS.
    pub requests: IntCounterVec,
}

impl ProtocolMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let tls_certificate_expiry = GaugeVec::new(
            Opts::new(
                "gateway_tls_certificate_expiry_seconds",
                "Unix time at which a served certificate expires, by listener and name (its first SAN name)",
            ),
            &["listener", "name"],
        )?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        Ok(Self {
            tls_handshakes: counter(
                "gateway_tls_handshakes_total",
                "Finished TLS handshakes, by listener and SNI (matched, unmatched, absent)",
                &["listener", "sni"],
            )?,
            tls_handshake_failures: counter(
                "gateway_tls_handshake_failures_total",
                "Failed TLS handshakes, by listener and reason (not_tls, timeout, client_certificate, no_common_protocol, closed, other)",
                &["listener", "reason"],
            )?,
            tls_certificate_expiry,
            http2_connection_errors: counter(
                "gateway_http2_connection_errors_total",
                "HTTP/2 client connections ended by an error, by listener and reason (protocol_error, enhance_your_calm, ...)",
                &["listener", "reason"],
            )?,
            protocol_errors: counter(
                "gateway_downstream_protocol_errors_total",
                "Client connections closed for speaking another protocol than the listener, by listener and kind (h2_preface_on_http1)",
                &["listener", "kind"],
            )?,
            requests: counter(
                "gateway_requests_by_protocol_total",
                "Requests by protocol (http/1.1, http/1.0, h2) and TLS (true, false)",
                &["protocol", "tls"],
            )?,
        })
    }
}
