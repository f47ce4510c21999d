//! The HTTP/1 keepalive loop of a connection: each request head read under the edge
//! deadlines and checked for strict framing before Pingora parses it, and the JSON
//! refusal (then a close) of a head that fails.

use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{Bound, H2_PREFACE, ListenerApp};
use crate::access_log::Entry;
use crate::edge::Timeouts;
use crate::edge::framing;
use crate::edge::head::{self, HeadLimits, HeadRead};
use crate::metrics::{method_label, status_class};
use crate::proxy::reply::{self, Reply};

/// After refusing a head, keep reading (and discarding) this long before closing, so
/// that the refusal is not destroyed by the reset a close with unread bytes causes.
const LINGER: Duration = Duration::from_secs(1);

impl ListenerApp {
    /// Serve HTTP/1 requests on `stream` until the connection ends.
    pub(super) async fn serve_http1(
        &self,
        mut stream: Stream,
        bound: &Bound,
        accepted: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let mut shutdown_rx = shutdown.clone();
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut fresh = true;
        // Bytes of the next pipelined request, read together with the previous one.
        let mut pending = BytesMut::new();
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
            let read = head::read_head_after(
                &mut stream,
                fresh,
                accepted,
                limits,
                &mut shutdown_rx,
                std::mem::take(&mut pending),
            )
            .await;
            let buf = match read {
                HeadRead::Complete { buf, .. } if fresh && buf.starts_with(&H2_PREFACE[..16]) => {
                    self.h2_preface_on_http1(&mut stream, bound).await;
                    return;
                }
                HeadRead::Malformed { partial, .. }
                    if fresh && partial.starts_with(&H2_PREFACE[..16]) =>
                {
                    self.h2_preface_on_http1(&mut stream, bound).await;
                    return;
                }
                HeadRead::Complete { mut buf, head_len } => {
                    match framing::check(&buf[..head_len]) {
                        Ok(head) => {
                            // Pipelining (RFC 9112 section 9.3.2): when this request (head and
                            // a body of known length) is all buffered and more follows, Pingora
                            // gets exactly this request and the rest waits here to be read,
                            // and checked, as the next head. Otherwise Pingora would read the
                            // next request as overread body bytes and close the connection.
                            let body = match head.body {
                                framing::BodyFraming::None => Some(0),
                                framing::BodyFraming::Length(n) => usize::try_from(n).ok(),
                                framing::BodyFraming::Chunked => None,
                            };
                            if let Some(end) = body.and_then(|b| head_len.checked_add(b))
                                && buf.len() > end
                            {
                                pending = buf.split_off(end);
                            }
                            buf
                        }
                        Err(e) => {
                            let head = Some(&buf[..head_len]);
                            self.refuse(&mut stream, bound, reply::for_framing(e), head, &timeouts)
                                .await;
                            return;
                        }
                    }
                }
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
                    // No line end yet (leading empty lines aside): the request line
                    // alone is too long, which is the target (RFC 9112 section 3).
                    let line_ended = partial
                        .iter()
                        .skip_while(|&&b| b == b'\r' || b == b'\n')
                        .any(|&b| b == b'\n');
                    let reply = if line_ended {
                        reply::HEADERS_TOO_LARGE
                    } else {
                        reply::URI_TOO_LONG
                    };
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

    /// HTTP/2 with prior knowledge on a listener without h2c: an HTTP/1 answer would be
    /// noise to that client, so count it and close.
    async fn h2_preface_on_http1(&self, stream: &mut Stream, bound: &Bound) {
        self.metrics
            .protocols
            .protocol_errors
            .with_label_values(&[&bound.name, "h2_preface_on_http1"])
            .inc();
        tracing::debug!(listener = %bound.name, "HTTP/2 preface on a listener without h2c; closing");
        let _ = AsyncWriteExt::shutdown(stream).await;
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

    /// Count and log an answer the listener made before any route (`status` 0: the
    /// answer could not be written).
    pub(super) fn account_refusal(
        &self,
        bound: &Bound,
        request_id: &str,
        method: &str,
        status: u16,
        client: Option<std::net::SocketAddr>,
        code: &'static str,
    ) {
        self.metrics
            .requests
            .with_label_values(&["-", method_label_bytes(method), status_class(status)])
            .inc();
        if let Some(log) = &self.access_log {
            let mut line = Entry::new(request_id, "-", method, status);
            line.listener = Some(&bound.name);
            line.client = client;
            line.reply = Some(code);
            log.write(&line);
        }
    }

    /// Answer a refused head with the gateway's JSON error and close the connection.
    /// `head`: what came of the head (for the method and request id, when they came).
    pub(super) async fn refuse(
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
        self.account_refusal(bound, &request_id, method, status, client, reply.code);
        if status != 0 {
            linger(stream).await;
        }
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
