//! Builds the `upstreams` section: endpoints or a Kubernetes Service, load balancing,
//! timeouts, health checks, outlier detection, retry budget, limits, sticky cookies.

use std::time::Duration;

use http::StatusCode;

use super::{
    Errors, MAX_WEIGHT, discovery_spec, duration, endpoint_address, header_name, header_value,
    opt_duration, route_id_ok, wire,
};
use crate::router::matchers::PathPattern;
use crate::upstream::policy::{
    EndpointSpec, HealthCheck, Limits, OutlierDetection, Probe, RetryBudgetPolicy, StickyCookie,
};
use crate::upstream::transport::{Protocol, TlsSpec, TransportSpec};
use crate::upstream::{HashOn, LoadBalancing, UpstreamSpec};

pub(super) fn upstream_spec(
    e: &mut Errors,
    path: &str,
    name: &str,
    u: &wire::Upstream,
) -> Option<UpstreamSpec> {
    let before = e.0.len();
    if name.is_empty() || !route_id_ok(name) {
        e.push(
            path,
            format!("upstream name {name:?} must be 1-128 of A-Z a-z 0-9 - _ . :"),
        );
    }
    let kubernetes = match (&u.endpoints, &u.kubernetes) {
        (Some(_), Some(_)) => {
            e.push(path, "set only one of endpoints or kubernetes");
            None
        }
        (None, None) => {
            e.push(
                format!("{path}.endpoints"),
                "an upstream needs endpoints or kubernetes",
            );
            None
        }
        (Some(eps), None) => {
            if eps.is_empty() {
                e.push(
                    format!("{path}.endpoints"),
                    "an upstream needs at least one endpoint",
                );
            }
            None
        }
        (None, Some(k)) => discovery_spec::kubernetes_upstream(e, &format!("{path}.kubernetes"), k),
    };
    let mut endpoints = Vec::new();
    for (i, ep) in u.endpoints.iter().flatten().enumerate() {
        let p = format!("{path}.endpoints[{i}]");
        e.take(format!("{p}.address"), endpoint_address(&ep.address));
        let weight = ep.weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            e.push(
                format!("{p}.weight"),
                format!("weight must be between 1 and {MAX_WEIGHT}"),
            );
        }
        endpoints.push(EndpointSpec {
            address: ep.address.clone(),
            weight,
            draining: ep.draining,
            app_protocol: None,
        });
    }
    let load_balancing = load_balancing(e, path, u);
    let health_check = u
        .health_check
        .as_ref()
        .and_then(|h| health_check(e, &format!("{path}.health_check"), h));
    let outlier_detection = outlier_detection(
        e,
        &format!("{path}.outlier_detection"),
        u.outlier_detection.as_ref(),
    );
    let panic_threshold = match u.panic_threshold {
        Some(p) if p > 100 => {
            e.push(
                format!("{path}.panic_threshold"),
                "panic_threshold is a percent: 0-100",
            );
            50
        }
        Some(p) => p,
        None => 50,
    };
    let default_budget = RetryBudgetPolicy::default();
    let retry_budget = match &u.retry_budget {
        None => default_budget,
        Some(b) => {
            let ratio = b.ratio.unwrap_or(default_budget.ratio);
            if !(0.0..=10.0).contains(&ratio) {
                e.push(
                    format!("{path}.retry_budget.ratio"),
                    "ratio must be between 0 and 10",
                );
            }
            RetryBudgetPolicy {
                ratio,
                min_per_second: b.min_per_second.unwrap_or(default_budget.min_per_second),
            }
        }
    };
    let limits = match &u.limits {
        None => Limits::default(),
        Some(l) => {
            if l.max_connections == Some(0) {
                e.push(
                    format!("{path}.limits.max_connections"),
                    "max_connections must be at least 1",
                );
            }
            if l.max_in_flight == Some(0) {
                e.push(
                    format!("{path}.limits.max_in_flight"),
                    "max_in_flight must be at least 1",
                );
            }
            if l.max_pending.is_some() && l.max_in_flight.is_none() {
                e.push(
                    format!("{path}.limits.max_pending"),
                    "max_pending needs max_in_flight",
                );
            }
            Limits {
                max_connections: l.max_connections,
                max_in_flight: l.max_in_flight,
                max_pending: l.max_pending.unwrap_or(0),
            }
        }
    };
    let sticky_cookie = u.sticky_cookie.as_ref().and_then(|c| {
        let p = format!("{path}.sticky_cookie");
        let name_ok = !c.name.is_empty()
            && c.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            e.push(
                format!("{p}.name"),
                format!(
                    "cookie name {:?} must be letters, digits, '_', '-' or '.'",
                    c.name
                ),
            );
        }
        let ttl = c
            .ttl
            .as_deref()
            .and_then(|t| e.take(format!("{p}.ttl"), duration(t)));
        name_ok.then(|| StickyCookie {
            name: c.name.clone(),
            ttl,
        })
    });
    let transport = transport(e, path, u);
    let spec = UpstreamSpec {
        transport,
        endpoints,
        kubernetes,
        load_balancing,
        sticky_cookie,
        health_check,
        outlier_detection,
        panic_threshold,
        retry_budget,
        limits,
        connect_timeout: opt_duration(
            e,
            &format!("{path}.connect_timeout"),
            u.connect_timeout.as_deref(),
            Duration::from_secs(2),
        ),
        idle_timeout: opt_duration(
            e,
            &format!("{path}.idle_timeout"),
            u.idle_timeout.as_deref(),
            Duration::from_secs(60),
        ),
    };
    (e.0.len() == before).then_some(spec)
}

fn health_check(e: &mut Errors, path: &str, h: &wire::HealthCheck) -> Option<HealthCheck> {
    let before = e.0.len();
    let probe = match h.protocol.as_deref().unwrap_or("http") {
        "tcp" => {
            if h.path.is_some() || h.host.is_some() || !h.expected_statuses.is_empty() {
                e.push(
                    path,
                    "path, host and expected_statuses apply to http checks only",
                );
            }
            Probe::Tcp
        }
        "http" => {
            let check_path = h.path.clone().unwrap_or_else(|| "/healthz".to_owned());
            e.take(format!("{path}.path"), PathPattern::exact(&check_path));
            let host = h
                .host
                .as_deref()
                .and_then(|v| e.take(format!("{path}.host"), header_value(v)));
            let mut expected = Vec::new();
            for (i, s) in h.expected_statuses.iter().enumerate() {
                match StatusCode::from_u16(*s) {
                    Ok(code) if (100..=599).contains(s) => expected.push(code),
                    _ => e.push(
                        format!("{path}.expected_statuses[{i}]"),
                        format!("{s} is not an HTTP status"),
                    ),
                }
            }
            if expected.is_empty() {
                expected.push(StatusCode::OK);
            }
            Probe::Http {
                path: check_path,
                host,
                expected,
            }
        }
        other => {
            e.push(
                format!("{path}.protocol"),
                format!("protocol {other:?} must be http or tcp"),
            );
            Probe::Tcp
        }
    };
    let threshold = |e: &mut Errors, field: &str, v: Option<u32>, default: u32| match v {
        Some(0) => {
            e.push(
                format!("{path}.{field}"),
                format!("{field} must be at least 1"),
            );
            default
        }
        Some(n) => n,
        None => default,
    };
    let check = HealthCheck {
        probe,
        interval: opt_duration(
            e,
            &format!("{path}.interval"),
            h.interval.as_deref(),
            Duration::from_secs(5),
        ),
        jitter: match h.jitter.as_deref() {
            Some("0s" | "0") => Duration::ZERO,
            other => opt_duration(
                e,
                &format!("{path}.jitter"),
                other,
                Duration::from_millis(500),
            ),
        },
        timeout: opt_duration(
            e,
            &format!("{path}.timeout"),
            h.timeout.as_deref(),
            Duration::from_secs(1),
        ),
        healthy_threshold: threshold(e, "healthy_threshold", h.healthy_threshold, 2),
        unhealthy_threshold: threshold(e, "unhealthy_threshold", h.unhealthy_threshold, 3),
    };
    (e.0.len() == before).then_some(check)
}

fn outlier_detection(
    e: &mut Errors,
    path: &str,
    o: Option<&wire::OutlierDetection>,
) -> Option<OutlierDetection> {
    let d = OutlierDetection::default();
    let Some(o) = o else {
        return Some(d);
    };
    if o.consecutive_failures == Some(0) {
        return None;
    }
    let percent = o.max_ejection_percent.unwrap_or(d.max_ejection_percent);
    if percent > 100 {
        e.push(
            format!("{path}.max_ejection_percent"),
            "max_ejection_percent is a percent: 0-100",
        );
    }
    let base = opt_duration(
        e,
        &format!("{path}.base_ejection_time"),
        o.base_ejection_time.as_deref(),
        d.base_ejection_time,
    );
    let max = opt_duration(
        e,
        &format!("{path}.max_ejection_time"),
        o.max_ejection_time.as_deref(),
        d.max_ejection_time.max(base),
    );
    if max < base {
        e.push(
            format!("{path}.max_ejection_time"),
            "max_ejection_time is shorter than base_ejection_time",
        );
    }
    Some(OutlierDetection {
        consecutive_failures: o.consecutive_failures.unwrap_or(d.consecutive_failures),
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: percent.min(100),
    })
}

fn hash_on(raw: &str) -> Result<HashOn, String> {
    match raw.split_once(':') {
        Some(("header", name)) => header_name(name).map(HashOn::Header),
        Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
            Ok(HashOn::Cookie(name.into()))
        }
        None if raw == "client_ip" => Ok(HashOn::ClientIp),
        None if raw == "path" => Ok(HashOn::Path),
        _ => Err(format!(
            "invalid hash_on {raw:?}: expected header:NAME, cookie:NAME, client_ip or path"
        )),
    }
}

fn load_balancing(e: &mut Errors, path: &str, u: &wire::Upstream) -> LoadBalancing {
    let p = format!("{path}.load_balancing");
    let fallback = LoadBalancing::WeightedRoundRobin;
    match u.load_balancing.as_deref() {
        Some("consistent_hash") => {
            let on = match &u.hash_on {
                Some(raw) => e.take(format!("{path}.hash_on"), hash_on(raw)),
                None => {
                    e.push(format!("{path}.hash_on"), "consistent_hash needs hash_on");
                    None
                }
            };
            let bounded_load = match u.bounded_load {
                Some(f) if !(f > 1.0 && f <= 10.0) => {
                    e.push(
                        format!("{path}.bounded_load"),
                        format!("bounded_load {f} must be above 1.0 and at most 10"),
                    );
                    None
                }
                other => other,
            };
            on.map_or(fallback, |on| LoadBalancing::ConsistentHash {
                on,
                bounded_load,
            })
        }
        other => {
            if u.hash_on.is_some() || u.bounded_load.is_some() {
                e.push(
                    p.clone(),
                    "hash_on and bounded_load need load_balancing: consistent_hash",
                );
            }
            other
                .and_then(|raw| e.take(p, LoadBalancing::parse(raw)))
                .unwrap_or(fallback)
        }
    }
}

/// `protocol` and `tls`: the files are read and checked here, so a bad one is a
/// config error at its field.
fn transport(e: &mut Errors, path: &str, u: &wire::Upstream) -> TransportSpec {
    let protocol = u
        .protocol
        .as_deref()
        .and_then(|p| e.take(format!("{path}.protocol"), Protocol::parse(p)));
    let tls = u.tls.as_ref().and_then(|t| {
        let p = format!("{path}.tls");
        if protocol == Some(Protocol::H2c) {
            e.push(
                format!("{path}.protocol"),
                "h2c is HTTP/2 without TLS; for HTTP/2 over TLS say protocol: h2",
            );
        }
        let insecure = t.insecure_skip_verify == Some(true);
        if insecure && t.ca_file.is_some() {
            e.push(
                format!("{p}.insecure_skip_verify"),
                "insecure_skip_verify ignores ca_file; set only one",
            );
        }
        let client = match (&t.client_cert_file, &t.client_key_file) {
            (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
            (None, None) => None,
            (Some(_), None) => {
                e.push(
                    format!("{p}.client_key_file"),
                    "client_cert_file needs client_key_file",
                );
                None
            }
            (None, Some(_)) => {
                e.push(
                    format!("{p}.client_cert_file"),
                    "client_key_file needs client_cert_file",
                );
                None
            }
        };
        let sni = t.sni.as_deref().and_then(|s| {
            // A DNS name or an IP address, as rustls will need it.
            if rustls_pki_types::ServerName::try_from(s).is_ok() {
                Some(s.to_owned())
            } else {
                e.push(
                    format!("{p}.sni"),
                    format!("sni {s:?} is not a DNS name or IP address"),
                );
                None
            }
        });
        match TlsSpec::load(sni, t.ca_file.as_deref(), client, insecure) {
            Ok(spec) => Some(spec),
            Err(errors) => {
                for (field, message) in errors {
                    e.push(format!("{p}.{field}"), message);
                }
                None
            }
        }
    });
    TransportSpec { protocol, tls }
}
