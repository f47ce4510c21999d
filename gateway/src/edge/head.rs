//! Owns reading one HTTP/1 request head off a connection under the edge deadlines:
//! `keepalive_idle` for the first byte of a request on a reused connection,
//! `request_header` for the whole head (from the accept on a fresh connection, from the
//! first byte on a reused one), and the head size limit.
//!
//! Pingora's own read timeout restarts on every read, so a client sending one byte a
//! second is never cut off, and after the first request its keepalive wait has no limit
//! at all; hence this reader in front of it. What it read is handed to Pingora as the
//! session's pre-read bytes, so Pingora parses the same head without reading again.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::framing::{self, FramingError, Scan};

/// Bytes asked for per read; a head usually arrives in one.
const READ_SIZE: usize = 4096;
/// Below this many bytes every read is scanned, so a request line that is not HTTP is
/// refused at once instead of waiting for a line end.
const EARLY_CHECK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub request_header: Duration,
    pub keepalive_idle: Duration,
    /// Largest head accepted (`server.max_request_header_bytes`).
    pub max_bytes: usize,
}

#[derive(Debug)]
pub enum HeadRead {
    /// A whole head is `buf[..head_len]`; `buf` may hold body bytes after it.
    Complete { buf: BytesMut, head_len: usize },
    /// The client closed (or the read failed) before sending anything: nothing to answer.
    Closed,
    /// A reused connection sent nothing within `keepalive_idle`.
    Idle,
    /// The process is shutting down and no request had started.
    Shutdown,
    /// The head did not complete within `request_header`; `partial` is what came.
    TimedOut { partial: BytesMut },
    /// The client closed, or the read failed, part way through a head.
    Truncated,
    /// The head grew past `max_bytes` without ending.
    TooLarge { partial: BytesMut },
    /// What arrived (`partial`) can never become a valid head.
    Malformed {
        error: FramingError,
        partial: BytesMut,
    },
}

/// Read until a whole request head is buffered (see the module doc). `fresh`: the
/// connection has served no request yet, so its `request_header` clock started at the
/// accept (`accepted`).
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    fresh: bool,
    accepted: Instant,
    limits: HeadLimits,
    shutdown: &mut watch::Receiver<bool>,
) -> HeadRead {
    read_head_after(stream, fresh, accepted, limits, shutdown, BytesMut::new()).await
}

/// What the buffered bytes say so far: `None` while the head may still complete.
fn judge(buf: &[u8], limits: &HeadLimits) -> Option<Judged> {
    match framing::scan(buf) {
        Scan::Complete(head_len) if head_len > limits.max_bytes => Some(Judged::TooLarge),
        Scan::Complete(head_len) => Some(Judged::Complete(head_len)),
        Scan::Malformed(error) => Some(Judged::Malformed(error)),
        Scan::Partial if buf.len() > limits.max_bytes => Some(Judged::TooLarge),
        Scan::Partial => None,
    }
}

enum Judged {
    Complete(usize),
    TooLarge,
    Malformed(FramingError),
}

impl Judged {
    fn into_read(self, buf: BytesMut) -> HeadRead {
        match self {
            Judged::Complete(head_len) => HeadRead::Complete { buf, head_len },
            Judged::TooLarge => HeadRead::TooLarge { partial: buf },
            Judged::Malformed(error) => HeadRead::Malformed {
                error,
                partial: buf,
            },
        }
    }
}

/// [`read_head`] for a connection whose client already sent the start of this request
/// (`pending`: bytes of a pipelined request read together with the previous one). The
/// request has begun, so the whole head is due within `request_header` from now.
pub async fn read_head_after<S: AsyncRead + Unpin>(
    stream: &mut S,
    fresh: bool,
    accepted: Instant,
    limits: HeadLimits,
    shutdown: &mut watch::Receiver<bool>,
    pending: BytesMut,
) -> HeadRead {
    let mut buf = pending;
    let mut deadline = if !buf.is_empty() {
        if let Some(j) = judge(&buf, &limits) {
            return j.into_read(buf);
        }
        Instant::now() + limits.request_header
    } else if fresh {
        accepted + limits.request_header
    } else {
        Instant::now() + limits.keepalive_idle
    };
    let started = !buf.is_empty();
    let mut watch_shutdown = true;
    loop {
        if buf.is_empty() && *shutdown.borrow() {
            return HeadRead::Shutdown;
        }
        if buf.capacity() - buf.len() < READ_SIZE / 4 {
            buf.reserve(READ_SIZE);
        }
        let read = tokio::select! {
            biased;
            r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
            changed = shutdown.changed(), if watch_shutdown && buf.is_empty() => {
                // A dropped sender means no shutdown signal can come any more.
                watch_shutdown = changed.is_ok();
                continue;
            }
        };
        match read {
            Err(_) if buf.is_empty() && !fresh => return HeadRead::Idle,
            Err(_) => return HeadRead::TimedOut { partial: buf },
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return HeadRead::Closed,
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Truncated,
            Ok(Ok(n)) => {
                if !fresh && !started && buf.len() == n {
                    // The first bytes of a request on a reused connection: from now on
                    // the whole head must arrive within `request_header`.
                    deadline = Instant::now() + limits.request_header;
                }
                // A head can only end at a line end, so rescan only when one arrived
                // (or while the method is being judged): a client sending one byte at a
                // time must not cost a parse per byte.
                let new = &buf[buf.len() - n..];
                if buf.len() > EARLY_CHECK && !new.contains(&b'\n') {
                    if buf.len() > limits.max_bytes {
                        return HeadRead::TooLarge { partial: buf };
                    }
                    continue;
                }
                if let Some(j) = judge(&buf, &limits) {
                    return j.into_read(buf);
                }
            }
        }
    }
}
