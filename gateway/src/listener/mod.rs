//! Owns the accept side of the proxy listeners: the Pingora `ServerApp` every proxy
//! listener runs. Per connection it enforces the listener's connection limits (closing
//! a connection over them at once, counted), runs the TLS handshake on a TLS listener
//! (`tls`: the running runtime's acceptor, SNI certificate choice, mTLS, bad input
//! counted), then serves the protocol the connection speaks: HTTP/2 by ALPN `h2`, or by
//! the prior-knowledge preface on an `h2c` listener (`h2`: the gateway's own accept loop
//! with the listener's HTTP/2 limits), else the HTTP/1 keepalive loop (`http1`) with
//! the edge deadlines in front of each request head (`edge::head`: `keepalive_idle`,
//! `request_header`, the head size limit) and the strict framing checks
//! (`edge::framing`) before Pingora parses it. Heads that fail get the gateway's JSON
//! error (408, 400, 431, 501) and the connection is closed.
//!
//! Why a layer and not a Pingora hook: Pingora reads the head inside
//! `HttpProxy::process_new_http`, before any `ProxyHttp` phase, with a read timeout that
//! restarts on every read (and none at all between keepalive requests after the first);
//! its connection filter sees an accept but not the close, so it cannot count open
//! connections; and its TLS listeners take one fixed certificate setup at start. What
//! this layer reads is handed to Pingora as the session's pre-read bytes
//! (`set_pipelined_prefix`), which Pingora parses without reading again.

mod h2;
mod http1;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::time::Instant;

use crate::access_log::AccessLog;
use crate::config::ListenerSpec;
use crate::edge::ConnectionLimits;
use crate::edge::connections::ConnectionCounts;
use crate::edge::http2::Http2Limits;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::reload::RuntimeStore;

/// The HTTP/2 connection preface (RFC 9113 section 3.4), for h2c.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener this process bound, with its connection counts.
#[derive(Debug)]
struct Bound {
    name: String,
    address: SocketAddr,
    counts: Arc<ConnectionCounts>,
    h2c: bool,
    http2: Http2Limits,
}

/// The `ServerApp` of the proxy service (see the module doc).
pub struct ListenerApp {
    proxy: Arc<HttpProxy<Gateway>>,
    store: Arc<RuntimeStore>,
    metrics: Arc<Metrics>,
    listeners: Vec<Bound>,
    /// Lines for the replies made before Pingora parsed a head (400, 408, 431...).
    access_log: Option<Arc<AccessLog>>,
}

impl ListenerApp {
    /// `listeners`: the proxy listeners this process binds (fixed until a restart).
    pub fn new(
        proxy: HttpProxy<Gateway>,
        store: Arc<RuntimeStore>,
        metrics: Arc<Metrics>,
        listeners: &[ListenerSpec],
        access_log: Option<Arc<AccessLog>>,
    ) -> Self {
        let listeners = listeners
            .iter()
            .map(|l| Bound {
                name: l.name.clone(),
                address: l.address,
                counts: ConnectionCounts::new(
                    metrics
                        .edge
                        .connections_active
                        .with_label_values(&[&l.name]),
                ),
                h2c: l.h2c,
                http2: l.http2,
            })
            .collect();
        Self {
            proxy: Arc::new(proxy),
            store,
            metrics,
            listeners,
            access_log,
        }
    }

    /// The listener a connection accepted on `local` came in on: the one bound to that
    /// address, else the one bound to the unspecified address on its port.
    fn bound_at(&self, local: SocketAddr) -> Option<&Bound> {
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.listeners
            .iter()
            .find(|l| l.address == local)
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| l.address.port() == local.port() && l.address.ip().is_unspecified())
            })
    }

    fn timed_out(&self, bound: &Bound, kind: &str) {
        self.metrics
            .edge
            .downstream_timeouts
            .with_label_values(&[&bound.name, kind])
            .inc();
    }

    /// Is this connection HTTP/2? `None`: the connection ended while finding out.
    async fn speaks_h2(
        &self,
        stream: &mut Stream,
        bound: &Bound,
        limits: &ConnectionLimits,
    ) -> Option<bool> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return Some(true);
        }
        if stream.get_ssl_digest().is_some() || !bound.h2c {
            return Some(false);
        }
        // h2c: peek for the preface, within the head deadline (Pingora waits forever).
        // In steps, so that an HTTP/1 request shorter than the preface (`GET /
        // HTTP/1.1` and an empty line are 18 bytes) is not held waiting for 24: a first
        // byte other than `P` decides at once, then `PRI ` (no other method starts so),
        // then the whole preface. A peek reads and puts back, so nothing is lost.
        let deadline = Instant::now() + limits.timeouts.request_header;
        let mut peeked = [0u8; H2_PREFACE.len()];
        for n in [1, 4, H2_PREFACE.len()] {
            let window = &mut peeked[..n];
            match tokio::time::timeout_at(deadline, stream.try_peek(window)).await {
                Ok(Ok(true)) if H2_PREFACE.starts_with(window) => {}
                Ok(Ok(_)) => return Some(false),
                // Fewer bytes than asked for, then a close: nothing to serve.
                Ok(Err(_)) => return None,
                Err(_) => {
                    self.timed_out(bound, "request_header");
                    return None;
                }
            }
        }
        Some(true)
    }
}

impl std::fmt::Debug for ListenerApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerApp")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ServerApp for ListenerApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let peer: Option<IpAddr> = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let Some(bound) = local.and_then(|l| self.bound_at(l)) else {
            // Not a listener from the config (cannot happen): Pingora's own handling.
            tracing::warn!(?local, "connection on an unknown listener");
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        };
        let (limits, tls) = {
            let runtime = self.store.load();
            (
                *runtime.edge.limits(&bound.name),
                runtime.tls.get(&bound.name).cloned(),
            )
        };
        let _guard = match bound.counts.admit(
            peer,
            limits.max_connections,
            limits.max_connections_per_client_ip,
        ) {
            Ok(guard) => guard,
            Err(refusal) => {
                self.metrics
                    .edge
                    .connections_rejected
                    .with_label_values(&[&bound.name, refusal.reason()])
                    .inc();
                tracing::debug!(listener = %bound.name, ?peer, reason = refusal.reason(), "connection refused");
                return None;
            }
        };
        if let Some(tls) = tls {
            stream = self
                .tls_accept(stream, bound, &tls.compiled, &limits)
                .await?;
        }
        match self.speaks_h2(&mut stream, bound, &limits).await {
            Some(true) => self.serve_h2(stream, bound, &limits, shutdown).await,
            Some(false) => self.serve_http1(stream, bound, accepted, shutdown).await,
            None => {}
        }
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
