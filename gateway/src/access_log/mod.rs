//! Owns the access log: its settings (`AccessLogSpec`, built by
//! `config/spec/access_log.rs`), the line it writes (`Entry`, one JSON object per
//! request) and the writer (`writer`): a dedicated thread that takes lines from a bounded
//! in-memory queue and writes them in batches, so a request never waits on a `write`.
//!
//! The request path formats its line into a per-thread buffer that is reused (no
//! allocation once warm), then copies it into the queue under a short lock. When the
//! queue is full (the disk or the reader of stdout is slower than the traffic) the line
//! is dropped and counted (`gateway_access_log_dropped_total`): losing log lines is
//! better than stalling requests or growing without bound. The access log is its own
//! stream, independent of the diagnostic log and `RUST_LOG`.
//!
//! Feature layer: imports only the bottom layer (`metrics`).

mod writer;

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

pub use writer::AccessLog;

/// `access_log:`; `Off` costs nothing per request (no line is formatted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogSpec {
    Off,
    On(AccessLogSettings),
}

impl Default for AccessLogSpec {
    /// Without an `access_log` section: JSON lines on stdout, as before the section existed.
    fn default() -> Self {
        Self::On(AccessLogSettings::default())
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// Appended to; reopened by name on SIGUSR1 (after logrotate renamed it).
    File(PathBuf),
}

/// How a line is written. JSON is the one format today; the field is there so a config
/// says what it expects and a future format is an addition, not a change of meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub target: Target,
    pub format: Format,
    /// The writer wakes once this many bytes are queued (one `write` per batch)...
    pub buffer_bytes: usize,
    /// ...or when this much time has passed since it last wrote.
    pub flush_interval: Duration,
    /// The queue's bound: a line that does not fit is dropped and counted.
    pub max_queued_bytes: usize,
}

pub const DEFAULT_BUFFER_BYTES: usize = 64 * 1024;
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Sixteen batches: a writer stalled for a moment (a slow disk, a paused reader of
/// stdout) loses nothing, a stuck one costs at most twice this in memory.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 16 * DEFAULT_BUFFER_BYTES;

impl Default for AccessLogSettings {
    fn default() -> Self {
        Self {
            target: Target::Stdout,
            format: Format::Json,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }
}

/// One access-log line. Never header values (`Authorization`, `Cookie`, `Set-Cookie`,
/// API keys) and never the query string (it may carry a token): the path only.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    /// Always `access_log`: tells these lines from diagnostic ones on a shared stdout.
    pub target: &'static str,
    pub request_id: &'a str,
    /// The W3C trace id of the request, when tracing is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    pub route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
    pub method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    /// `http/1.1`, `http/1.0` or `h2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'a str>,
    /// Whether the connection is TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// The TLS server name the client asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_addr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

impl<'a> Entry<'a> {
    /// A line stamped now with the always-present fields; the rest start empty.
    pub fn new(request_id: &'a str, route: &'a str, method: &'a str, status: u16) -> Self {
        Self {
            timestamp: SystemTime::now(),
            target: "access_log",
            request_id,
            trace_id: None,
            route,
            listener: None,
            config_version: None,
            method,
            path: None,
            protocol: None,
            tls: None,
            sni: None,
            status,
            duration_ms: None,
            upstream: None,
            upstream_addr: None,
            upstream_ms: None,
            bytes_received: None,
            bytes_sent: None,
            client: None,
            client_ip: None,
            reply: None,
            consumer: None,
            error: None,
        }
    }
}

/// RFC 3339 with milliseconds, UTC, written straight into the line (no `String`).
fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

thread_local! {
    /// The line being formatted; reused by every request of this thread.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// `entry` as one JSON line (newline included) in this thread's reusable buffer, handed
/// to `f`.
pub(crate) fn format_line<R>(entry: &Entry<'_>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    LINE.with(|cell| {
        let mut buf = cell.try_borrow_mut().ok()?;
        buf.clear();
        serde_json::to_writer(&mut *buf, entry).ok()?;
        buf.push(b'\n');
        Some(f(&buf))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_without_empty_fields() {
        let mut e = Entry::new("abc", "api", "GET", 200);
        e.path = Some("/a\"b\n");
        e.client = Some("127.0.0.1:5000".parse().unwrap());
        e.duration_ms = Some(1.5);
        let line = format_line(&e, |l| l.to_vec()).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["target"], "access_log");
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["client"], "127.0.0.1:5000");
        assert_eq!(v["status"], 200);
        assert!(v.get("upstream").is_none());
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
