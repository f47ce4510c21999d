//! Builds the `rate_limit_policies` section into the rate-limit feature's `PolicySpec`s.

use std::time::Duration;

use super::{Errors, header_name, opt_duration, route_id_ok, wire};
use crate::ratelimit::{Batch, ClusterSpec, FailurePolicy, KeyPart, PolicySpec};

pub(super) fn rate_limit_policy(
    e: &mut Errors,
    path: &str,
    name: &str,
    p: &wire::RateLimitPolicy,
    have_redis: bool,
) -> Option<PolicySpec> {
    let before = e.0.len();
    let rate = p.rate.replace(' ', "");
    let parsed = rate.split_once('/').and_then(|(n, unit)| {
        let period = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        n.parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| (n, period))
    });
    let (count, period) = match parsed {
        Some(v) => v,
        None => {
            e.push(
                format!("{path}.rate"),
                format!("invalid rate {:?}: write N/s, N/m or N/h", p.rate),
            );
            (1, Duration::from_secs(1))
        }
    };
    let burst = p.burst.unwrap_or(count);
    if burst == 0 {
        e.push(format!("{path}.burst"), "burst must be at least 1");
    }
    let mut key = Vec::new();
    for (i, k) in p.key.iter().enumerate() {
        match k.as_str() {
            "client_ip" => key.push(KeyPart::ClientIp),
            "route" => key.push(KeyPart::RouteId),
            "consumer" => key.push(KeyPart::Consumer),
            other => match other.strip_prefix("header:").map(header_name) {
                Some(Ok(h)) => key.push(KeyPart::Header(h)),
                _ => e.push(
                    format!("{path}.key[{i}]"),
                    format!(
                        "invalid key part {other:?}: use client_ip, route, consumer or header:NAME"
                    ),
                ),
            },
        }
    }
    if key.is_empty() {
        key.push(KeyPart::ClientIp);
    }
    let cluster = match p.scope.as_deref() {
        None | Some("local") => {
            if p.on_redis_failure.is_some()
                || p.expected_replicas.is_some()
                || p.mode.is_some()
                || p.batch_size.is_some()
                || p.batch_interval.is_some()
            {
                e.push(
                    path,
                    "on_redis_failure, expected_replicas, mode and batch settings need scope: cluster",
                );
            }
            None
        }
        Some("cluster") => {
            if !have_redis {
                e.push(format!("{path}.scope"), "scope cluster needs server.redis");
            }
            let on_failure = p
                .on_redis_failure
                .as_deref()
                .map_or(Ok(FailurePolicy::LocalFallback), FailurePolicy::parse);
            let replicas = p.expected_replicas.unwrap_or(1);
            if replicas == 0 {
                e.push(
                    format!("{path}.expected_replicas"),
                    "expected_replicas must be at least 1",
                );
            }
            let batch = match p.mode.as_deref() {
                None | Some("strict") => {
                    if p.batch_size.is_some() || p.batch_interval.is_some() {
                        e.push(path, "batch_size and batch_interval need mode: batched");
                    }
                    None
                }
                Some("batched") => {
                    let size = p.batch_size.unwrap_or(10);
                    if !(1..=10_000).contains(&size) {
                        e.push(format!("{path}.batch_size"), "batch_size must be 1-10000");
                    }
                    Some(Batch {
                        size: size.max(1),
                        interval: opt_duration(
                            e,
                            &format!("{path}.batch_interval"),
                            p.batch_interval.as_deref(),
                            Duration::from_millis(100),
                        ),
                    })
                }
                Some(other) => {
                    e.push(
                        format!("{path}.mode"),
                        format!("mode {other:?} must be strict or batched"),
                    );
                    None
                }
            };
            e.take(format!("{path}.on_redis_failure"), on_failure)
                .map(|on_failure| ClusterSpec {
                    on_failure,
                    expected_replicas: replicas.max(1),
                    batch,
                })
        }
        Some(other) => {
            e.push(
                format!("{path}.scope"),
                format!("scope {other:?} must be local or cluster"),
            );
            None
        }
    };
    if p.max_keys == Some(0) {
        e.push(format!("{path}.max_keys"), "max_keys must be at least 1");
    }
    if !route_id_ok(name) {
        e.push(
            path,
            format!("policy name {name:?} must be 1-128 of A-Z a-z 0-9 - _ . :"),
        );
    }
    (e.0.len() == before).then(|| PolicySpec {
        name: name.to_owned(),
        count,
        period,
        burst,
        key,
        max_keys: p.max_keys.unwrap_or(100_000),
        legacy_headers: p.legacy_headers,
        cluster,
    })
}
