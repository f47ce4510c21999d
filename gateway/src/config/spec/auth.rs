//! Builds a route's `auth` block: `jwt` (through `jwt::route_jwt`), `api_key` into the
//! API-key feature's `RouteApiKeySpec`, `any_of` (a JWT *or* an API key), and `forward`
//! (through `forward_auth`). The one place that checks how they combine.

use http::HeaderName;

use super::{Errors, header_name, route_id_ok, wire, writable_header_name};
use crate::apikey::{KeySource, RouteApiKeySpec};
use crate::auth::RouteJwtSpec;
use crate::forward_auth::ForwardAuthSpec;

/// What a route's `auth` asks for. With both `jwt` and `api_key`, either passes (they
/// can only both be set through `any_of`).
#[derive(Debug, Default)]
pub(super) struct AuthSpec {
    pub jwt: Option<RouteJwtSpec>,
    pub api_key: Option<RouteApiKeySpec>,
    pub forward: Option<ForwardAuthSpec>,
}

fn key_source(raw: &str) -> Result<KeySource, String> {
    let bad =
        || format!("invalid key source {raw:?}: expected header:NAME, query:NAME or cookie:NAME");
    match raw.split_once(':') {
        Some(("header", name)) => header_name(name).map(KeySource::Header),
        Some(("query", name)) if !name.is_empty() && !name.contains(['&', '=', ' ', '#']) => {
            Ok(KeySource::Query(name.into()))
        }
        Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
            Ok(KeySource::Cookie(name.into()))
        }
        _ => Err(bad()),
    }
}

fn api_key(e: &mut Errors, path: &str, k: &wire::RouteApiKey) -> Option<RouteApiKeySpec> {
    let before = e.len();
    let sources: Vec<KeySource> = if k.sources.is_empty() {
        vec![KeySource::Header(HeaderName::from_static("x-api-key"))]
    } else {
        k.sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| e.take(format!("{path}.sources[{i}]"), key_source(s)))
            .collect()
    };
    let consumer_header = e.take(
        format!("{path}.consumer_header"),
        writable_header_name(k.consumer_header.as_deref().unwrap_or("x-consumer")).and_then(|h| {
            if h == http::header::AUTHORIZATION || h == http::header::HOST {
                Err(format!("{h} cannot carry the consumer name"))
            } else {
                Ok(h)
            }
        }),
    );
    for (field, groups) in [
        ("allow_groups", &k.allow_groups),
        ("deny_groups", &k.deny_groups),
    ] {
        for (i, g) in groups.iter().enumerate() {
            if !route_id_ok(g) {
                e.push(
                    format!("{path}.{field}[{i}]"),
                    format!("group {g:?} must be 1-128 of A-Z a-z 0-9 - _ . :"),
                );
            }
        }
    }
    if e.len() != before {
        return None;
    }
    Some(RouteApiKeySpec {
        sources,
        consumer_header: consumer_header?,
        allow_groups: k.allow_groups.clone(),
        deny_groups: k.deny_groups.clone(),
        strip: k.strip.unwrap_or(true),
    })
}

pub(super) fn route_auth(
    e: &mut Errors,
    path: &str,
    a: &wire::RouteAuth,
    file: &wire::File,
) -> AuthSpec {
    let providers = &file.jwt_providers;
    let mut out = AuthSpec::default();
    if a.jwt.is_none() && a.api_key.is_none() && a.any_of.is_none() && a.forward.is_none() {
        e.push(path, "auth needs jwt, api_key, any_of or forward");
        return out;
    }
    if a.any_of.is_some() && (a.jwt.is_some() || a.api_key.is_some()) {
        e.push(
            path,
            "set any_of, or jwt / api_key, not both (any_of lists the alternatives itself)",
        );
    } else if a.jwt.is_some() && a.api_key.is_some() {
        e.push(
            path,
            "jwt and api_key together: to accept either, write any_of: [{jwt: ...}, {api_key: ...}]",
        );
    }
    if let Some(jwt) = &a.jwt {
        out.jwt = super::jwt::route_jwt(e, &format!("{path}.jwt"), jwt, providers);
    }
    if let Some(k) = &a.api_key {
        out.api_key = api_key(e, &format!("{path}.api_key"), k);
    }
    if let Some(alts) = &a.any_of {
        let p = format!("{path}.any_of");
        let (mut jwts, mut keys) = (0, 0);
        for (i, alt) in alts.iter().enumerate() {
            let ap = format!("{p}[{i}]");
            match (&alt.jwt, &alt.api_key) {
                (Some(jwt), None) => {
                    jwts += 1;
                    out.jwt = super::jwt::route_jwt(e, &format!("{ap}.jwt"), jwt, providers);
                }
                (None, Some(k)) => {
                    keys += 1;
                    out.api_key = api_key(e, &format!("{ap}.api_key"), k);
                }
                _ => e.push(ap, "each alternative is exactly one of jwt or api_key"),
            }
        }
        if jwts != 1 || keys != 1 {
            e.push(
                p,
                "any_of takes one jwt and one api_key alternative (list several providers inside jwt)",
            );
        }
    }
    if let Some(f) = &a.forward {
        out.forward = super::forward_auth::forward_auth(e, &format!("{path}.forward"), f);
    }
    // One route must not set the same upstream header from two verified sources.
    let mut targets: Vec<(&HeaderName, &str)> = Vec::new();
    if let Some(j) = &out.jwt {
        targets.extend(
            j.claims_to_headers
                .iter()
                .map(|(_, h)| (h, "claims_to_headers")),
        );
    }
    if let Some(k) = &out.api_key {
        targets.push((&k.consumer_header, "api_key.consumer_header"));
    }
    if let Some(f) = &out.forward {
        targets.extend(
            f.copy_response_headers
                .iter()
                .map(|h| (h, "forward.copy_response_headers")),
        );
    }
    for (i, (h, from)) in targets.iter().enumerate() {
        if let Some((_, first)) = targets[..i].iter().find(|(o, _)| o == h) {
            e.push(
                path,
                format!("header {h} is set by both {first} and {from}"),
            );
        }
    }
    out
}
