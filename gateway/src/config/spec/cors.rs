//! Builds CORS policies (`cors_policies` entries, inline `cors:` blocks) into the CORS
//! feature's `CorsSpec`, and resolves `cors:` references. The Fetch standard's rules that
//! a config can break are errors here: credentials with a `*` origin, `*` expose headers
//! with credentials.

use std::time::Duration;

use http::Method;
use indexmap::IndexMap;

use super::policies::CorsChoice;
use super::{Errors, header_name, wire};
use crate::cors::{Allowed, CorsSpec, OriginRule};

/// Browsers cap a preflight's cache (Firefox at 24h, Chromium at 2h); more says nothing.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

fn header_list(e: &mut Errors, path: &str, list: &[String]) -> Allowed<http::HeaderName> {
    if list.iter().any(|h| h == "*") {
        if list.len() > 1 {
            e.push(
                path,
                "\"*\" stands for every header; list nothing beside it",
            );
        }
        return Allowed::Any;
    }
    Allowed::List(
        list.iter()
            .enumerate()
            .filter_map(|(i, h)| e.take(format!("{path}[{i}]"), header_name(h)))
            .collect(),
    )
}

pub(super) fn cors_spec(
    e: &mut Errors,
    path: &str,
    name: Option<&str>,
    c: &wire::Cors,
) -> Option<CorsSpec> {
    let before = e.len();
    if c.allow_origins.is_empty() {
        e.push(
            format!("{path}.allow_origins"),
            "list the allowed origins (https://app.example.com, https://*.example.com, or *)",
        );
    }
    let origins: Vec<OriginRule> = c
        .allow_origins
        .iter()
        .enumerate()
        .filter_map(|(i, o)| e.take(format!("{path}.allow_origins[{i}]"), OriginRule::parse(o)))
        .collect();
    if c.allow_credentials && origins.contains(&OriginRule::Any) {
        e.push(
            format!("{path}.allow_credentials"),
            "allow_credentials: true cannot be used with allow_origins \"*\" (the Fetch standard forbids a wildcard origin with credentials): list the origins",
        );
    }
    let methods = match &c.allow_methods {
        None => Allowed::List(vec![Method::GET, Method::HEAD, Method::POST]),
        Some(list) if list.iter().any(|m| m == "*") => Allowed::Any,
        Some(list) => Allowed::List(
            list.iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    let parsed = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("invalid method {m:?}"));
                    e.take(format!("{path}.allow_methods[{i}]"), parsed)
                })
                .collect(),
        ),
    };
    let headers = header_list(e, &format!("{path}.allow_headers"), &c.allow_headers);
    let expose = header_list(e, &format!("{path}.expose_headers"), &c.expose_headers);
    if c.allow_credentials && expose == Allowed::Any {
        e.push(
            format!("{path}.expose_headers"),
            "with allow_credentials, browsers read \"*\" as a header named *: list the headers",
        );
    }
    let max_age = c.max_age.as_deref().and_then(|raw| {
        let parsed = humantime::parse_duration(raw.trim())
            .map_err(|err| format!("invalid duration {raw:?}: {err} (write e.g. 10m, 2h)"))
            .and_then(|d| {
                if d > MAX_AGE {
                    Err(format!(
                        "max_age {raw:?} is longer than 24h, which browsers ignore"
                    ))
                } else {
                    Ok(d.as_secs())
                }
            });
        e.take(format!("{path}.max_age"), parsed)
    });
    (e.len() == before).then(|| CorsSpec {
        name: name.map(str::to_owned),
        origins,
        methods,
        headers,
        expose,
        credentials: c.allow_credentials,
        max_age,
    })
}

/// A route's or listener's `cors:`.
pub(super) fn cors_choice(
    e: &mut Errors,
    path: &str,
    c: &wire::CorsRef,
    named: &IndexMap<String, wire::Cors>,
) -> CorsChoice {
    match c {
        wire::CorsRef::Off => CorsChoice::Off,
        wire::CorsRef::Name(n) => {
            if named.contains_key(n) {
                CorsChoice::Named(n.clone())
            } else {
                let mut names: Vec<&str> = named.keys().map(String::as_str).collect();
                names.sort_unstable();
                e.push(
                    path,
                    format!(
                        "unknown CORS policy {n:?} (cors_policies: {})",
                        names.join(", ")
                    ),
                );
                CorsChoice::Inherit
            }
        }
        wire::CorsRef::Inline(spec) => cors_spec(e, path, None, spec)
            .map(CorsChoice::Inline)
            .unwrap_or_default(),
    }
}
