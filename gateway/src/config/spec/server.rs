//! Builds the `server` and `listeners` sections: process settings, Redis, trusted
//! proxies, the cache's process-wide settings, and the listeners (addresses, h2c,
//! HTTP/2 limits, TLS via `tls`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::{Errors, ListenerSpec, ServerSpec, opt_duration, tls, wire};
use crate::cache::CacheSettings;
use crate::client_ip::{ClientIpSpec, Source};
use crate::ratelimit::BreakerSpec;
use crate::tls::TlsSpec;
use crate::units::socket_addr;

pub(super) fn server_spec(e: &mut Errors, s: &wire::Server) -> ServerSpec {
    let threads = match s.threads {
        Some(0) => {
            e.push("server.threads", "threads must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let max_header = match s.max_request_header_bytes {
        Some(n) if !(1024..=1_048_576).contains(&n) => {
            e.push(
                "server.max_request_header_bytes",
                "max_request_header_bytes must be between 1024 and 1048576",
            );
            32 * 1024
        }
        Some(n) => n as usize,
        None => 32 * 1024,
    };
    ServerSpec {
        threads,
        work_stealing: s.work_stealing.unwrap_or(true),
        shutdown_grace_period: opt_duration(
            e,
            "server.shutdown_grace_period",
            s.shutdown_grace_period.as_deref(),
            Duration::from_secs(30),
        ),
        max_request_header_bytes: max_header,
        redis: s.redis.as_ref().and_then(|r| {
            let ok = r.url.starts_with("redis://") || r.url.starts_with("rediss://");
            if !ok {
                e.push(
                    "server.redis.url",
                    format!("invalid Redis URL {:?}: expected redis://host:port", r.url),
                );
            }
            let timeout = opt_duration(
                e,
                "server.redis.timeout",
                r.timeout.as_deref(),
                Duration::from_millis(50),
            );
            let password_file = r.password_file.as_deref().and_then(|f| {
                if f.trim().is_empty() {
                    e.push("server.redis.password_file", "empty path");
                    return None;
                }
                Some(std::path::PathBuf::from(f))
            });
            ok.then(|| crate::ratelimit::RedisSpec {
                url: r.url.clone(),
                timeout,
                password_file,
            })
        }),
        client_ip: client_ip(e, s),
        redis_breaker: breaker(e, s.redis.as_ref().and_then(|r| r.circuit_breaker.as_ref())),
        reload_debounce: opt_duration(
            e,
            "server.reload_debounce",
            s.reload_debounce.as_deref(),
            Duration::from_millis(200),
        ),
        cache: server_cache(e, s.cache.as_ref()),
    }
}

fn breaker(e: &mut Errors, c: Option<&wire::CircuitBreaker>) -> BreakerSpec {
    let d = BreakerSpec::default();
    let Some(c) = c else {
        return d;
    };
    let p = "server.redis.circuit_breaker";
    let at_least_one = |e: &mut Errors, name: &str, v: Option<u32>, default: u32| match v {
        Some(0) => {
            e.push(format!("{p}.{name}"), format!("{name} must be at least 1"));
            default
        }
        Some(n) => n,
        None => default,
    };
    let error_ratio = match c.error_ratio {
        Some(r) if !(r > 0.0 && r <= 1.0) => {
            e.push(
                format!("{p}.error_ratio"),
                "error_ratio must be above 0 and at most 1",
            );
            d.error_ratio
        }
        Some(r) => r,
        None => d.error_ratio,
    };
    BreakerSpec {
        consecutive_failures: at_least_one(
            e,
            "consecutive_failures",
            c.consecutive_failures,
            d.consecutive_failures,
        ),
        error_ratio,
        window: opt_duration(e, &format!("{p}.window"), c.window.as_deref(), d.window),
        min_calls: at_least_one(e, "min_calls", c.min_calls, d.min_calls),
        probe_interval: opt_duration(
            e,
            &format!("{p}.probe_interval"),
            c.probe_interval.as_deref(),
            d.probe_interval,
        ),
        close_after: at_least_one(e, "close_after", c.close_after, d.close_after),
    }
}

fn cidrs(e: &mut Errors, path: &str, raw: &[String]) -> Vec<ipnet::IpNet> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let parsed = raw
                .parse::<ipnet::IpNet>()
                .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("invalid CIDR {raw:?}: expected e.g. 10.0.0.0/8 or 10.1.2.3"));
            e.take(format!("{path}[{i}]"), parsed)
        })
        .collect()
}

/// `server.client_ip`, or the older `server.trusted_proxies` (read as
/// `x_forwarded_for` behind those proxies).
fn client_ip(e: &mut Errors, s: &wire::Server) -> ClientIpSpec {
    let legacy = cidrs(e, "server.trusted_proxies", &s.trusted_proxies);
    let Some(c) = &s.client_ip else {
        return ClientIpSpec {
            source: Source::XForwardedFor,
            trusted_proxies: legacy,
        };
    };
    if !s.trusted_proxies.is_empty() {
        e.push(
            "server.trusted_proxies",
            "set client_ip.trusted_proxies or server.trusted_proxies, not both",
        );
    }
    let source = c
        .source
        .as_deref()
        .and_then(|raw| e.take("server.client_ip.source", Source::parse(raw)))
        .unwrap_or_default();
    let trusted_proxies = cidrs(e, "server.client_ip.trusted_proxies", &c.trusted_proxies);
    if c.trusted_proxies.is_empty() && source != Source::Peer && c.source.is_some() {
        e.push(
            "server.client_ip.trusted_proxies",
            "a header source needs trusted_proxies: only their headers are believed (use source: peer to ignore headers)",
        );
    }
    ClientIpSpec {
        source,
        trusted_proxies,
    }
}

fn server_cache(e: &mut Errors, c: Option<&wire::ServerCache>) -> CacheSettings {
    let mut settings = CacheSettings::default();
    let Some(c) = c else {
        return settings;
    };
    match c.max_bytes {
        Some(n) if n < 65_536 => {
            e.push("server.cache.max_bytes", "max_bytes must be at least 65536")
        }
        Some(n) => settings.max_bytes = usize::try_from(n).unwrap_or(usize::MAX),
        None => {}
    }
    settings.lock_timeout = opt_duration(
        e,
        "server.cache.lock_timeout",
        c.lock_timeout.as_deref(),
        settings.lock_timeout,
    );
    settings
}

/// The listeners, their TLS settings, and the files those read (watched for changes).
pub(super) fn listener_specs(
    e: &mut Errors,
    listeners: &[wire::Listener],
    max_header: usize,
) -> (Vec<ListenerSpec>, Vec<TlsSpec>, Vec<PathBuf>) {
    if listeners.is_empty() {
        e.push("listeners", "at least one listener is required");
    }
    let mut out = Vec::new();
    let mut tls_out = Vec::new();
    let mut files = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if !names.insert(l.name.as_str()) {
            e.push(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        let http2 = tls::http2_limits(e, &format!("{path}.http2"), l.http2.as_ref(), max_header);
        if let Some(t) = &l.tls {
            if l.h2c {
                e.push(
                    format!("{path}.h2c"),
                    "h2c is HTTP/2 on a plaintext listener; a TLS listener offers h2 by alpn",
                );
            }
            files.extend(tls::tls_files(t));
            if let Some(spec) = tls::tls_spec(e, &format!("{path}.tls"), &l.name, t) {
                tls_out.push(spec);
            }
        }
        if let Some(address) = e.take(format!("{path}.address"), socket_addr(&l.address)) {
            if !addrs.insert(address) {
                e.push(
                    format!("{path}.address"),
                    format!("address {address} is used twice"),
                );
            }
            out.push(ListenerSpec {
                name: l.name.clone(),
                address,
                h2c: l.h2c,
                http2,
            });
        }
    }
    (out, tls_out, files)
}
