//! Builds a route's `cache` block into the cache feature's `RouteCache`.

use std::sync::Arc;
use std::time::Duration;

use super::{Errors, header_name, wire};
use crate::cache::{DEFAULT_MAX_OBJECT_SIZE, KeySpec, QueryKey, RouteCache, SetCookie};

/// Longest `default_ttl`: a year, as for `max-age` in practice.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub(super) fn route_cache(
    e: &mut Errors,
    path: &str,
    c: &wire::RouteCache,
) -> Option<Arc<RouteCache>> {
    let before = e.0.len();
    let default_ttl = c.default_ttl.as_deref().and_then(|raw| {
        let parsed = humantime::parse_duration(raw.trim())
            .map_err(|err| format!("invalid duration {raw:?}: {err} (write e.g. 30s, 5m, 1h)"))
            .and_then(|d| {
                if d.is_zero() {
                    Err(format!("default_ttl {raw:?} must be greater than zero"))
                } else if d > MAX_TTL {
                    Err(format!("default_ttl {raw:?} is longer than a year"))
                } else {
                    Ok(d)
                }
            });
        e.take(format!("{path}.default_ttl"), parsed)
    });
    let max_object_size = match c.max_object_size {
        Some(0) => {
            e.push(
                format!("{path}.max_object_size"),
                "max_object_size must be at least 1",
            );
            0
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => DEFAULT_MAX_OBJECT_SIZE,
    };
    let query = match &c.key.query {
        None => QueryKey::All,
        Some(wire::CacheKeyQuery::Mode(m)) if m == "all" => QueryKey::All,
        Some(wire::CacheKeyQuery::Mode(m)) if m == "none" => QueryKey::None,
        Some(wire::CacheKeyQuery::Mode(m)) => {
            e.push(
                format!("{path}.key.query"),
                format!("unknown query mode {m:?}: use all, none or a list of parameter names"),
            );
            QueryKey::All
        }
        Some(wire::CacheKeyQuery::Names(names)) => {
            for (i, n) in names.iter().enumerate() {
                if n.is_empty() {
                    e.push(
                        format!("{path}.key.query[{i}]"),
                        "parameter name must not be empty",
                    );
                }
            }
            if names.is_empty() {
                e.push(
                    format!("{path}.key.query"),
                    "an empty list keys on no parameter: write none",
                );
            }
            QueryKey::Names(names.clone())
        }
    };
    let headers = c
        .key
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| e.take(format!("{path}.key.headers[{i}]"), header_name(h)))
        .collect();
    for (i, claim) in c.key.claims.iter().enumerate() {
        if claim.is_empty() {
            e.push(
                format!("{path}.key.claims[{i}]"),
                "claim name must not be empty",
            );
        }
    }
    let set_cookie = match c.set_cookie.as_deref() {
        None | Some("bypass") => SetCookie::Bypass,
        Some("strip") => SetCookie::Strip,
        Some(other) => {
            e.push(
                format!("{path}.set_cookie"),
                format!("unknown set_cookie mode {other:?}: use bypass or strip"),
            );
            SetCookie::Bypass
        }
    };
    if e.0.len() != before || c.enabled == Some(false) {
        return None;
    }
    Some(Arc::new(RouteCache {
        default_ttl,
        max_object_size,
        key: KeySpec {
            query,
            headers,
            claims: c.key.claims.clone(),
        },
        set_cookie,
    }))
}
