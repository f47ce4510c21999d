//! The HTTP/2 side of a connection (h2 by ALPN, or h2c with prior knowledge): the
//! gateway's own accept loop rather than Pingora's, so that each listener gets its own
//! HTTP/2 limits (`edge::http2`) and a connection ended by an HTTP/2 error (a malformed
//! frame, rapid reset) is counted by listener and reason. Each stream is served by
//! Pingora's proxy on a task of its own, as Pingora's loop does; on shutdown the
//! connection gets GOAWAY and drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{H2Accept, HttpSession, handshake};
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::{Bound, ListenerApp};
use crate::edge::ConnectionLimits;

/// Streams Pingora rejects while accepting them (a forbidden byte in the target, say)
/// that one connection may cause before it is closed with GOAWAY ENHANCE_YOUR_CALM.
const MAX_REJECTED_STREAMS: usize = 32;

/// Streams being served on one connection, and a wake-up when none is.
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

struct StreamGuard(Arc<Active>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> StreamGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        StreamGuard(Arc::clone(self))
    }

    /// Resolves once no stream has been served for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            while self.count.load(Ordering::Acquire) != 0 {
                self.idle.notified().await;
            }
            tokio::time::sleep(idle).await;
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
        }
    }
}

/// The RFC 9113 name of an error code, as a metric label.
fn reason_label(code: u32) -> &'static str {
    match code {
        0x0 => "no_error",
        0x1 => "protocol_error",
        0x2 => "internal_error",
        0x3 => "flow_control_error",
        0x4 => "settings_timeout",
        0x5 => "stream_closed",
        0x6 => "frame_size_error",
        0x7 => "refused_stream",
        0x8 => "cancel",
        0x9 => "compression_error",
        0xa => "connect_error",
        0xb => "enhance_your_calm",
        0xc => "inadequate_security",
        0xd => "http_1_1_required",
        _ => "unknown",
    }
}

impl ListenerApp {
    /// Count and log an HTTP/2 connection error. A client that just went away (an I/O
    /// error, or its own GOAWAY without an error) is not an error.
    fn h2_failed(&self, bound: &Bound, stage: &str, e: &pingora::Error) {
        let h2 = e
            .root_cause()
            .downcast_ref::<::h2::Error>()
            .filter(|h| !h.is_io() && !h.is_remote());
        let Some(reason) = h2
            .and_then(|h| h.reason())
            .filter(|r| *r != ::h2::Reason::NO_ERROR)
        else {
            tracing::debug!(listener = %bound.name, stage, error = %e, "HTTP/2 connection ended");
            return;
        };
        let label = reason_label(reason.into());
        self.metrics
            .protocols
            .http2_connection_errors
            .with_label_values(&[&bound.name, label])
            .inc();
        tracing::debug!(listener = %bound.name, stage, reason = label, error = %e, "HTTP/2 connection closed for an error");
    }

    /// Serve HTTP/2 streams on `stream` until the connection ends.
    pub(super) async fn serve_h2(
        &self,
        stream: Stream,
        bound: &Bound,
        limits: &ConnectionLimits,
        shutdown: &ShutdownWatch,
    ) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let handshake = tokio::time::timeout(
            limits.timeouts.request_header,
            handshake(stream, Some(bound.http2.options())),
        )
        .await;
        let mut conn = match handshake {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.h2_failed(bound, "handshake", &e);
                return;
            }
            Err(_) => {
                self.timed_out(bound, "request_header");
                return;
            }
        };
        let idle = limits.timeouts.keepalive_idle;
        let active = Arc::new(Active {
            count: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let mut shutdown_rx = shutdown.clone();
        let mut draining = *shutdown.borrow();
        if draining {
            conn.graceful_shutdown();
        }
        let mut rejected = 0usize;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown_rx.changed(), if !draining => {
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
                next = HttpSession::from_h2_conn(&mut conn, Arc::clone(&digest)) => next,
                () = active.idle_for(idle), if !draining => {
                    self.timed_out(bound, "keepalive_idle");
                    return;
                }
            };
            match next {
                Err(e) => {
                    self.h2_failed(bound, "accept", &e);
                    return;
                }
                Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    rejected += 1;
                    if rejected > MAX_REJECTED_STREAMS {
                        self.metrics
                            .protocols
                            .http2_connection_errors
                            .with_label_values(&[&bound.name, "enhance_your_calm"])
                            .inc();
                        tracing::debug!(listener = %bound.name, "too many malformed HTTP/2 requests; GOAWAY");
                        conn.abrupt_shutdown(::h2::Reason::ENHANCE_YOUR_CALM);
                        // Flush the GOAWAY; the connection then ends.
                        while let Ok(Some(_)) =
                            HttpSession::from_h2_conn(&mut conn, Arc::clone(&digest)).await
                        {
                        }
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(session)))
                    if session.req_header().method == http::Method::CONNECT =>
                {
                    // As on HTTP/1 (`edge::framing`): no tunnels, a JSON 501 rather than
                    // Pingora's bare 405. Extended CONNECT (RFC 8441) is not offered.
                    let reply = crate::proxy::reply::for_framing(
                        crate::edge::framing::FramingError::Connect,
                    );
                    self.refuse_stream(session, bound, reply, active.start());
                }
                Ok(Some(H2Accept::Session(session))) => {
                    let guard = active.start();
                    let app = Arc::clone(&self.proxy);
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        app.process_new_http(ServerSession::new_http2(session), &shutdown)
                            .await;
                    });
                }
            }
        }
    }

    /// Answer one stream with the gateway's JSON error (the connection stays open). The
    /// answer is written on a task of its own: the accept loop must go on driving the
    /// connection, or a client holding back flow-control credit would stall it.
    fn refuse_stream(
        &self,
        mut session: HttpSession,
        bound: &Bound,
        reply: crate::proxy::reply::Reply,
        guard: StreamGuard,
    ) {
        let request_id = crate::proxy::reply::request_id(
            session
                .req_header()
                .headers
                .get("x-request-id")
                .map(|v| v.as_bytes()),
        );
        let client = session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let method = session.req_header().method.as_str().to_owned();
        self.account_refusal(
            bound,
            &request_id,
            &method,
            reply.status,
            client,
            reply.code,
        );
        let body = reply.body(&request_id, None);
        tokio::spawn(async move {
            let _guard = guard;
            let written = async {
                let mut resp = pingora::http::ResponseHeader::build(reply.status, Some(4))?;
                resp.insert_header("content-type", "application/json")?;
                resp.insert_header("cache-control", "no-store")?;
                resp.insert_header("content-length", body.len().to_string())?;
                resp.insert_header("x-request-id", request_id.as_str())?;
                session.write_response_header(Box::new(resp), false)?;
                session.write_body(body, true).await
            }
            .await;
            if let Err(e) = written {
                tracing::debug!(error = %e, "could not answer a refused HTTP/2 stream");
            }
        });
    }
}
