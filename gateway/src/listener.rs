//! Owns the accept side of the proxy listeners: the Pingora `ServerApp` every proxy
//! listener runs. Per connection it enforces the listener's connection limits (closing
//! a connection over them at once, counted), then runs the HTTP/1 keepalive loop that
//! Pingora would run, with the edge deadlines in front of each request head
//! (`edge::head`: `keepalive_idle`, `request_header`, the head size limit) and the
//! strict framing checks (`edge::framing`) before Pingora parses it; the body and write
//! timeouts are set on each session. Heads that fail get the gateway's JSON error
//! (408, 400, 431, 501) and the connection is closed.
//!
//! Why a layer and not a Pingora hook: Pingora reads the head inside
//! `HttpProxy::process_new_http`, before any `ProxyHttp` phase, with a read timeout that
//! restarts on every read (and none at all between keepalive requests after the first);
//! its connection filter sees an accept but not the close, so it cannot count open
//! connections. What this layer reads is handed to Pingora as the session's pre-read
//! bytes (`set_pipelined_prefix`), which Pingora parses without reading again.
//!
//! HTTP/2 (ALPN `h2`, or h2c when enabled) is handed to Pingora's own loop after the
//! connection limits; its per-stream limits are Pingora's (see README, "Limits and
//! timeouts").

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::access_log::{AccessLog, Entry};
use crate::config::ListenerSpec;
use crate::edge::connections::ConnectionCounts;
use crate::edge::framing;
use crate::edge::head::{self, HeadLimits, HeadRead};
use crate::edge::{ConnectionLimits, Timeouts};
use crate::metrics::{Metrics, method_label, status_class};
use crate::proxy::Gateway;
use crate::proxy::reply::{self, Reply};
use crate::reload::RuntimeStore;

/// The HTTP/2 connection preface (RFC 9113 section 3.4), for h2c.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// After refusing a head, keep reading (and discarding) this long before closing, so
/// that the refusal is not destroyed by the reset a close with unread bytes causes.
const LINGER: Duration = Duration::from_secs(1);

/// A listener this process bound, with its connection counts.
#[derive(Debug)]
struct Bound {
    name: String,
    address: SocketAddr,
    counts: Arc<ConnectionCounts>,
}

/// The `ServerApp` of the proxy service (see the module doc).
pub struct ListenerApp {
    proxy: Arc<HttpProxy<Gateway>>,
    store: Arc<RuntimeStore>,
    metrics: Arc<Metrics>,
    listeners: Vec<Bound>,
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

    /// Is this connection HTTP/2 (or a custom protocol) for Pingora's own loop?
    /// `None`: the connection ended while finding out.
    async fn wants_pingora_loop(
        &self,
        stream: &mut Stream,
        bound: &Bound,
        limits: &ConnectionLimits,
    ) -> Option<bool> {
        let options = self.proxy.server_options.as_ref();
        if options.is_some_and(|o| o.force_custom)
            || matches!(
                stream.selected_alpn_proto(),
                Some(ALPN::H2) | Some(ALPN::Custom(_))
            )
        {
            return Some(true);
        }
        if stream.get_ssl_digest().is_some() || !options.is_some_and(|o| o.h2c) {
            return Some(false);
        }
        // h2c: peek for the preface, within the head deadline (Pingora waits forever).
        let mut preface = [0u8; H2_PREFACE.len()];
        match tokio::time::timeout(
            limits.timeouts.request_header,
            stream.try_peek(&mut preface),
        )
        .await
        {
            Ok(Ok(peeked)) => Some(peeked && preface == H2_PREFACE),
            Ok(Err(_)) => None,
            Err(_) => {
                self.timed_out(bound, "request_header");
                None
            }
        }
    }

    /// Serve HTTP/1 requests on `stream` until the connection ends.
    async fn serve_http1(
        &self,
        mut stream: Stream,
        bound: &Bound,
        accepted: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let mut shutdown_rx = shutdown.clone();
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut fresh = true;
        loop {
            // Read the running limits per request, and pin no runtime while idle.
            let (timeouts, max_bytes) = {
                let runtime = self.store.load();
                (
                    runtime.edge.limits(&bound.name).timeouts,
                    runtime.max_request_header_bytes,
                )
            };
            let limits = HeadLimits {
                request_header: timeouts.request_header,
                keepalive_idle: timeouts.keepalive_idle,
                max_bytes,
            };
            let read =
                head::read_head(&mut stream, fresh, accepted, limits, &mut shutdown_rx).await;
            let buf = match read {
                HeadRead::Complete { buf, head_len } => match framing::check(&buf[..head_len]) {
                    Ok(_) => buf,
                    Err(e) => {
                        let head = Some(&buf[..head_len]);
                        self.refuse(&mut stream, bound, reply::for_framing(e), head, &timeouts)
                            .await;
                        return;
                    }
                },
                HeadRead::Closed | HeadRead::Shutdown | HeadRead::Truncated => return,
                HeadRead::Idle => {
                    self.timed_out(bound, "keepalive_idle");
                    return;
                }
                HeadRead::TimedOut { partial } => {
                    self.timed_out(bound, "request_header");
                    // Nothing came: there is no request to answer, just close.
                    if !partial.is_empty() {
                        let reply = reply::REQUEST_HEADER_TIMEOUT;
                        self.refuse(&mut stream, bound, reply, Some(&partial), &timeouts)
                            .await;
                    }
                    return;
                }
                HeadRead::TooLarge { partial } => {
                    let reply = reply::HEADERS_TOO_LARGE;
                    self.refuse(&mut stream, bound, reply, Some(&partial), &timeouts)
                        .await;
                    return;
                }
                HeadRead::Malformed { error, partial } => {
                    let reply = reply::for_framing(error);
                    self.refuse(&mut stream, bound, reply, Some(&partial), &timeouts)
                        .await;
                    return;
                }
            };
            let session = self.session(stream, buf, settings.take(), &timeouts, shutdown);
            match self.proxy.process_new_http(session, shutdown).await {
                Some(reused) => {
                    (stream, settings) = reused.consume();
                    fresh = false;
                }
                None => return,
            }
        }
    }

    /// A Pingora session for one request whose head (and maybe more) is in `buf`, set up
    /// as Pingora's own loop would, plus the body and write timeouts.
    fn session(
        &self,
        stream: Stream,
        buf: BytesMut,
        settings: Option<HttpPersistentSettings>,
        timeouts: &Timeouts,
        shutdown: &ShutdownWatch,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(s) => s.apply_to_session(&mut session),
            None => {
                // Pingora's defaults for a new connection; the keepalive wait itself is
                // `keepalive_idle`, enforced by `edge::head` before the next request.
                let keepalive = (!*shutdown.borrow()).then_some(60);
                session.set_keepalive(keepalive);
                session.set_keepalive_reuses_remaining(
                    self.proxy
                        .server_options
                        .as_ref()
                        .and_then(|o| o.keepalive_request_limit),
                );
            }
        }
        session.set_pipelined_prefix(buf);
        session.set_read_timeout(Some(timeouts.request_body_idle));
        session.set_write_timeout(Some(timeouts.downstream_write));
        session
    }

    /// Answer a refused head with the gateway's JSON error and close the connection.
    /// `head`: what came of the head (for the method and request id, when they came).
    async fn refuse(
        &self,
        stream: &mut Stream,
        bound: &Bound,
        reply: Reply,
        head: Option<&[u8]>,
        timeouts: &Timeouts,
    ) {
        let parsed = head.and_then(|h| request_line_and_id(h));
        let method = parsed.map_or("-", |(m, _)| m);
        let request_id = reply::request_id(parsed.and_then(|(_, id)| id));
        let body = reply.body(&request_id, None);
        let reason = http::StatusCode::from_u16(reply.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let date = pingora::protocols::http::date::get_cached_date();
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\ndate: {}\r\n\r\n",
            reply.status,
            body.len(),
            date.to_str().unwrap_or_default(),
        )
        .into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(&body);
        }
        let written = tokio::time::timeout(timeouts.downstream_write, async {
            stream.write_all(&out).await?;
            stream.flush().await?;
            AsyncWriteExt::shutdown(stream).await
        })
        .await;
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let status = match written {
            Ok(Ok(())) => reply.status,
            _ => 0,
        };
        self.metrics
            .requests
            .with_label_values(&["-", method_label_bytes(method), status_class(status)])
            .inc();
        if let Some(log) = &self.access_log {
            let mut line = Entry::new(&request_id, "-", method, status);
            line.listener = Some(&bound.name);
            line.client = client;
            line.reply = Some(reply.code);
            log.write(&line);
        }
        if status != 0 {
            linger(stream).await;
        }
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
        let limits = *self.store.load().edge.limits(&bound.name);
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
        match self.wants_pingora_loop(&mut stream, bound, &limits).await {
            Some(true) => {
                // HTTP/2 or a custom protocol; the connection ends with this call (only
                // custom sessions hand a stream back, and the gateway configures none).
                ServerApp::process_new(&self.proxy, stream, shutdown).await;
            }
            Some(false) => self.serve_http1(stream, bound, accepted, shutdown).await,
            None => {}
        }
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// Read and discard what the client still sends, for at most [`LINGER`].
async fn linger(stream: &mut Stream) {
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, stream.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// The method (once the request line has its first space) and `X-Request-Id` (once the
/// fields are complete) of what came of a head.
fn request_line_and_id(head: &[u8]) -> Option<(&str, Option<&[u8]>)> {
    let start = head.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let line = &head[start..];
    let method = &line[..line.iter().position(|&b| b == b' ')?];
    let method = std::str::from_utf8(method).ok()?;
    let mut storage = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
    let id = line.iter().position(|&b| b == b'\n').and_then(|nl| {
        match httparse::parse_headers(&line[nl + 1..], &mut storage) {
            Ok(httparse::Status::Complete((_, headers))) => headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("x-request-id"))
                .map(|h| h.value),
            _ => None,
        }
    });
    Some((method, id))
}

/// The bounded method label of a method given as text.
fn method_label_bytes(method: &str) -> &'static str {
    http::Method::from_bytes(method.as_bytes()).map_or("OTHER", |m| method_label(&m))
}
