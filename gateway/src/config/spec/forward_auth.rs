//! Builds a route's `auth.forward` into the forward-auth feature's `ForwardAuthSpec`:
//! the check URL, timeout, headers sent and copied back, body forwarding, the decision
//! cache (its key parts) and `on_error`.

use std::time::Duration;

use http::HeaderName;

use super::{Errors, duration, header_name, wire, writable_header_name};
use crate::forward_auth::{CacheSpec, ForwardAuthSpec, KeyPart, OnError, SendHeaders};

/// The retry buffer Pingora replays a read body from: the most a check can send along.
const MAX_BODY: u64 = 64 * 1024;

fn key_part(raw: &str) -> Result<KeyPart, String> {
    match raw {
        "client_ip" => return Ok(KeyPart::ClientIp),
        "method" => return Ok(KeyPart::Method),
        "path" => return Ok(KeyPart::Path),
        _ => {}
    }
    match raw.split_once(':') {
        Some(("header", n)) => header_name(n).map(KeyPart::Header),
        Some(("cookie", n)) if !n.is_empty() && !n.contains([';', '=', ' ']) => {
            Ok(KeyPart::Cookie(n.into()))
        }
        Some(("query", n)) if !n.is_empty() && !n.contains(['&', '=', ' ']) => {
            Ok(KeyPart::Query(n.into()))
        }
        _ => Err(format!(
            "invalid cache key part {raw:?}: use header:NAME, cookie:NAME, query:NAME, client_ip, method or path"
        )),
    }
}

pub(super) fn forward_auth(
    e: &mut Errors,
    path: &str,
    f: &wire::ForwardAuth,
) -> Option<ForwardAuthSpec> {
    let before = e.len();
    let uri_ok =
        f.url.parse::<http::Uri>().ok().filter(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
    if uri_ok.is_none() || f.url.contains('#') {
        e.push(
            format!("{path}.url"),
            format!(
                "invalid URL {:?}: expected http(s)://host[:port]/path",
                f.url
            ),
        );
    }
    let timeout = f
        .timeout
        .as_deref()
        .map_or(Some(Duration::from_secs(2)), |t| {
            e.take(format!("{path}.timeout"), duration(t))
        });
    let send_headers = match &f.send_headers {
        None => SendHeaders::List(vec![http::header::AUTHORIZATION, http::header::COOKIE]),
        Some(list) if list.iter().any(|h| h == "*") => {
            if list.len() > 1 {
                e.push(
                    format!("{path}.send_headers"),
                    "\"*\" sends every header; list nothing beside it",
                );
            }
            SendHeaders::All
        }
        Some(list) => SendHeaders::List(
            list.iter()
                .enumerate()
                .filter_map(|(i, h)| e.take(format!("{path}.send_headers[{i}]"), header_name(h)))
                .collect(),
        ),
    };
    let max_body = match f.max_body {
        Some(_) if !f.send_body => {
            e.push(
                format!("{path}.max_body"),
                "max_body applies only with send_body: true",
            );
            MAX_BODY
        }
        Some(n) if n == 0 || n > MAX_BODY => {
            e.push(
                format!("{path}.max_body"),
                format!("max_body must be 1-{MAX_BODY} (the body is buffered to be sent twice)"),
            );
            MAX_BODY
        }
        Some(n) => n,
        None => MAX_BODY,
    };
    let copy: Vec<HeaderName> = f
        .copy_response_headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let p = format!("{path}.copy_response_headers[{i}]");
            let name = e.take(p.clone(), writable_header_name(h))?;
            // Copied headers are removed from every client request (on every route), which
            // these must never be.
            if [
                http::header::AUTHORIZATION,
                http::header::COOKIE,
                http::header::HOST,
            ]
            .contains(&name)
            {
                e.push(p, format!("{name} cannot be copied from the auth service"));
                return None;
            }
            Some(name)
        })
        .collect();
    let cache = f.cache.as_ref().and_then(|c| {
        let cp = format!("{path}.cache");
        let ttl = e.take(format!("{cp}.ttl"), duration(&c.ttl));
        if c.key.is_empty() {
            e.push(
                format!("{cp}.key"),
                "name what a decision depends on, e.g. [\"header:authorization\", \"cookie:session\"]",
            );
        }
        let key: Vec<KeyPart> = c
            .key
            .iter()
            .enumerate()
            .filter_map(|(i, k)| e.take(format!("{cp}.key[{i}]"), key_part(k)))
            .collect();
        let max_entries = c.max_entries.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_entries) {
            e.push(format!("{cp}.max_entries"), "max_entries must be 1-1000000");
        }
        Some(CacheSpec {
            ttl: ttl?,
            key,
            max_entries,
        })
    });
    let on_error = match f.on_error.as_deref() {
        None | Some("deny") => OnError::Deny,
        Some("allow") => OnError::Allow,
        Some(other) => {
            e.push(
                format!("{path}.on_error"),
                format!("on_error {other:?} must be deny or allow"),
            );
            OnError::Deny
        }
    };
    if e.len() != before {
        return None;
    }
    Some(ForwardAuthSpec {
        url: f.url.clone(),
        timeout: timeout?,
        send_headers,
        send_body: f.send_body,
        max_body: max_body as usize,
        copy_response_headers: copy,
        cache,
        on_error,
    })
}
