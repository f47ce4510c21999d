//! Builds `listeners[].tls` into the TLS feature's `TlsSpec`: reads and checks every
//! certificate/key pair and the client CA here, so a bad file is a config error (and a
//! reload keeps the running certificates), and `listeners[].h2c`/`http2` into the
//! listener's HTTP/2 limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Errors, wire};
use crate::edge::http2::Http2Limits;
use crate::tls::{self, Alpn, CertError, MinVersion, TlsSpec};
use crate::units::{duration, size};

pub(super) fn tls_spec(
    e: &mut Errors,
    path: &str,
    listener: &str,
    t: &wire::ListenerTls,
) -> Option<TlsSpec> {
    let before = e.len();
    if t.certificates.is_empty() {
        e.push(
            format!("{path}.certificates"),
            "a TLS listener needs at least one certificate",
        );
    }
    let provider = tls::provider();
    let now = SystemTime::now();
    let mut certificates = Vec::new();
    for (i, c) in t.certificates.iter().enumerate() {
        let p = format!("{path}.certificates[{i}]");
        match tls::certs::load_pair(
            Path::new(&c.cert_file),
            Path::new(&c.key_file),
            &provider,
            now,
        ) {
            Ok(loaded) => certificates.push(Arc::new(loaded)),
            Err(err) => {
                let field = match &err {
                    CertError::Read { file, .. } if *file == c.key_file => "key_file",
                    CertError::BadKey { .. } | CertError::KeyMismatch { .. } => "key_file",
                    _ => "cert_file",
                };
                e.push(format!("{p}.{field}"), err.to_string());
            }
        }
    }
    let min_version = t
        .min_version
        .as_deref()
        .and_then(|v| e.take(format!("{path}.min_version"), MinVersion::parse(v)))
        .unwrap_or_default();
    let alpn = match &t.alpn {
        None => vec![Alpn::H2, Alpn::Http11],
        Some(list) => {
            if list.is_empty() {
                e.push(
                    format!("{path}.alpn"),
                    "alpn needs at least one of h2, http/1.1",
                );
            }
            let mut out = Vec::new();
            for (i, raw) in list.iter().enumerate() {
                if let Some(a) = e.take(format!("{path}.alpn[{i}]"), Alpn::parse(raw)) {
                    if out.contains(&a) {
                        e.push(
                            format!("{path}.alpn[{i}]"),
                            format!("alpn {raw:?} is listed twice"),
                        );
                    }
                    out.push(a);
                }
            }
            out
        }
    };
    let client_ca = t.client_ca_file.as_ref().and_then(|f| {
        let roots = e.take(
            format!("{path}.client_ca_file"),
            tls::certs::load_ca(Path::new(f)).map_err(|err| err.to_string()),
        )?;
        Some((PathBuf::from(f), Arc::new(roots)))
    });
    let handshake_timeout = t.handshake_timeout.as_deref().and_then(|raw| {
        let d = e.take(format!("{path}.handshake_timeout"), duration(raw))?;
        if d.is_zero() {
            e.push(
                format!("{path}.handshake_timeout"),
                "handshake_timeout must be above 0",
            );
        }
        Some(d)
    });
    (e.len() == before).then(|| TlsSpec {
        listener: listener.to_owned(),
        certificates,
        min_version,
        alpn,
        client_ca,
        handshake_timeout,
    })
}

/// The files a `listeners[].tls` names, readable or not (a missing file is watched
/// for its arrival too).
pub(super) fn tls_files(t: &wire::ListenerTls) -> Vec<PathBuf> {
    t.certificates
        .iter()
        .flat_map(|c| [PathBuf::from(&c.cert_file), PathBuf::from(&c.key_file)])
        .chain(t.client_ca_file.iter().map(PathBuf::from))
        .collect()
}

pub(super) fn http2_limits(
    e: &mut Errors,
    path: &str,
    h: Option<&wire::Http2>,
    max_header: usize,
) -> Http2Limits {
    let mut limits = Http2Limits {
        max_header_list_size: u32::try_from(max_header).unwrap_or(u32::MAX),
        ..Http2Limits::default()
    };
    let Some(h) = h else { return limits };
    let count = |e: &mut Errors, name: &str, v: Option<u32>, max: u32, out: &mut u32| {
        if let Some(v) = v {
            if v == 0 || v > max {
                e.push(
                    format!("{path}.{name}"),
                    format!("{name} must be between 1 and {max}"),
                );
            } else {
                *out = v;
            }
        }
    };
    count(
        e,
        "max_concurrent_streams",
        h.max_concurrent_streams,
        10_000,
        &mut limits.max_concurrent_streams,
    );
    count(
        e,
        "max_pending_resets",
        h.max_pending_resets,
        10_000,
        &mut limits.max_pending_resets,
    );
    count(
        e,
        "max_error_resets",
        h.max_error_resets,
        100_000,
        &mut limits.max_error_resets,
    );
    if let Some(raw) = &h.max_header_list_size
        && let Some(n) = e.take(format!("{path}.max_header_list_size"), size(raw))
    {
        if !(1024..=1_048_576).contains(&n) {
            e.push(
                format!("{path}.max_header_list_size"),
                "max_header_list_size must be between 1024 and 1048576 bytes",
            );
        } else {
            limits.max_header_list_size = n as u32;
        }
    }
    limits
}
