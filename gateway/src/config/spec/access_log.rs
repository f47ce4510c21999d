//! Builds the `access_log` section into `crate::access_log::AccessLogSpec`.

use std::path::PathBuf;

use super::{Errors, opt_duration, wire};
use crate::access_log::{
    AccessLogSettings, AccessLogSpec, DEFAULT_BUFFER_BYTES, DEFAULT_FLUSH_INTERVAL, Format, Target,
};
use crate::units::size;

/// Batches below this are a syscall every few lines; above the cap a batch is a long
/// memcpy for one request and a lot of memory per stalled writer.
const MIN_BUFFER: u64 = 512;
const MAX_BUFFER: u64 = 16 << 20;
const MAX_QUEUED: u64 = 1 << 30;

fn bytes(e: &mut Errors, path: &str, raw: Option<&wire::Size>) -> Option<u64> {
    match raw? {
        wire::Size::Number(n) => Some(*n),
        wire::Size::Text(t) => e.take(path, size(t)),
    }
}

pub(super) fn access_log_spec(e: &mut Errors, a: Option<&wire::AccessLog>) -> AccessLogSpec {
    let s = match a {
        None => return AccessLogSpec::default(),
        Some(wire::AccessLog::Off) => return AccessLogSpec::Off,
        Some(wire::AccessLog::On(s)) => s,
    };
    let target = match s.path.as_deref() {
        None | Some("stdout") => Target::Stdout,
        Some("") => {
            e.push("access_log.path", "path must be `stdout` or a file path");
            Target::Stdout
        }
        Some(p) if p.ends_with('/') => {
            e.push(
                "access_log.path",
                format!("{p:?} names a directory; give a file path"),
            );
            Target::Stdout
        }
        Some(p) => Target::File(PathBuf::from(p)),
    };
    let format = match s.format.as_deref() {
        None | Some("json") => Format::Json,
        Some(other) => {
            e.push(
                "access_log.format",
                format!("unknown format {other:?}: the access log is written as `json`"),
            );
            Format::Json
        }
    };
    let buffer_bytes = match bytes(e, "access_log.buffer_bytes", s.buffer_bytes.as_ref()) {
        Some(n) if !(MIN_BUFFER..=MAX_BUFFER).contains(&n) => {
            e.push(
                "access_log.buffer_bytes",
                format!("buffer_bytes must be between {MIN_BUFFER} and {MAX_BUFFER}"),
            );
            DEFAULT_BUFFER_BYTES
        }
        Some(n) => n as usize,
        None => DEFAULT_BUFFER_BYTES,
    };
    let max_queued_bytes = match bytes(
        e,
        "access_log.max_queued_bytes",
        s.max_queued_bytes.as_ref(),
    ) {
        Some(n) if n < buffer_bytes as u64 || n > MAX_QUEUED => {
            e.push(
                    "access_log.max_queued_bytes",
                    format!(
                        "max_queued_bytes must be at least buffer_bytes ({buffer_bytes}) and at most {MAX_QUEUED}"
                    ),
                );
            16 * buffer_bytes
        }
        Some(n) => n as usize,
        None => 16 * buffer_bytes,
    };
    AccessLogSpec::On(AccessLogSettings {
        target,
        format,
        buffer_bytes,
        flush_interval: opt_duration(
            e,
            "access_log.flush_interval",
            s.flush_interval.as_deref(),
            DEFAULT_FLUSH_INTERVAL,
        ),
        max_queued_bytes,
    })
}
