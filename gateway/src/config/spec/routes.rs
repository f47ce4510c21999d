//! Builds the `routes` section: match criteria, rewrites, header operations, the action
//! (upstream, split, redirect, direct response), timeouts, retries and cache.

use bytes::Bytes;
use http::StatusCode;
use indexmap::IndexMap;

use super::cache::route_cache;
use super::{
    ActionSpec, Errors, MAX_WEIGHT, RouteSpec, duration, header_name, header_value, opt_duration,
    route_id_ok, wire, writable_header_name,
};
use crate::actions::{DirectResponse, HeaderOps, PathRewrite, Redirect, RewritePart, Scheme};
use crate::pattern::compile_regex;
use crate::router::matchers::{
    HeaderMatcher, HostPattern, MethodSet, PathPattern, PathTemplate, QueryMatcher, ValueTest,
};
use crate::router::{Findings, PathOptions, RouteMatch};
use crate::upstream::policy::{RetryOn, RetryPolicy};

fn retry_policy(e: &mut Errors, path: &str, r: Option<&wire::Retry>) -> RetryPolicy {
    let d = RetryPolicy::default();
    let Some(r) = r else {
        return d;
    };
    let attempts = match r.attempts {
        Some(n) if !(1..=10).contains(&n) => {
            e.push(
                format!("{path}.attempts"),
                "attempts must be between 1 and 10 (tries, the first included)",
            );
            d.attempts
        }
        Some(n) => n,
        None => 3,
    };
    let mut retry_on = Vec::new();
    for (i, w) in r.retry_on.iter().enumerate() {
        match w.as_str() {
            "connect_failure" => retry_on.push(RetryOn::ConnectFailure),
            "gateway_error" => retry_on.push(RetryOn::GatewayError),
            "timeout" => retry_on.push(RetryOn::Timeout),
            "grpc_unavailable" => retry_on.push(RetryOn::GrpcUnavailable),
            other => e.push(
                format!("{path}.retry_on[{i}]"),
                format!(
                    "unknown retry_on {other:?}; expected connect_failure, gateway_error, timeout or grpc_unavailable"
                ),
            ),
        }
    }
    if r.retry_on.is_empty() {
        retry_on = vec![
            RetryOn::ConnectFailure,
            RetryOn::GatewayError,
            RetryOn::Timeout,
        ];
    }
    let backoff_base = opt_duration(
        e,
        &format!("{path}.backoff_base"),
        r.backoff_base.as_deref(),
        d.backoff_base,
    );
    let backoff_max = opt_duration(
        e,
        &format!("{path}.backoff_max"),
        r.backoff_max.as_deref(),
        d.backoff_max.max(backoff_base),
    );
    if backoff_max < backoff_base {
        e.push(
            format!("{path}.backoff_max"),
            "backoff_max is shorter than backoff_base",
        );
    }
    RetryPolicy {
        attempts,
        retry_on,
        non_idempotent: r.non_idempotent,
        backoff_base,
        backoff_max,
    }
}

fn path_pattern(e: &mut Errors, path: &str, p: Option<&wire::PathMatch>) -> Option<PathPattern> {
    let Some(p) = p else {
        return PathPattern::prefix("/").ok();
    };
    let set: Vec<(&str, &String)> = [
        ("exact", &p.exact),
        ("prefix", &p.prefix),
        ("regex", &p.regex),
        ("template", &p.template),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    match set.as_slice() {
        [(kind, raw)] => {
            if *kind != "regex"
                && let Err(msg) = normal_literal(kind, raw, path_options(p).allow)
            {
                e.push(format!("{path}.{kind}"), msg);
                return None;
            }
            if p.case_insensitive && !matches!(*kind, "exact" | "prefix") {
                e.push(
                    format!("{path}.case_insensitive"),
                    format!(
                        "case_insensitive applies to exact and prefix paths; a {kind} can say (?i) or list the spellings"
                    ),
                );
            }
            let r = match *kind {
                "exact" => PathPattern::exact(raw),
                "prefix" => PathPattern::prefix(raw),
                "regex" => PathPattern::regex(raw),
                _ => PathTemplate::parse(raw).map(PathPattern::Template),
            };
            e.take(format!("{path}.{kind}"), r)
        }
        [] => {
            e.push(path, "set one of exact, prefix, regex or template");
            None
        }
        _ => {
            e.push(path, "set only one of exact, prefix, regex or template");
            None
        }
    }
}

fn path_options(p: &wire::PathMatch) -> PathOptions {
    let mut allow = Findings::default();
    if p.allow_encoded_slashes {
        allow = allow.union(Findings::ENCODED_SLASH);
    }
    if p.allow_path_parameters {
        allow = allow.union(Findings::PATH_PARAMETERS);
    }
    PathOptions {
        case_insensitive: p.case_insensitive,
        allow,
    }
}

/// A literal path (exact, prefix, template) must already be in the normal form requests
/// are matched in, or it could never match.
fn normal_literal(kind: &str, raw: &str, allow: Findings) -> Result<(), String> {
    let n = crate::router::path::normalize(raw)
        .map_err(|e| format!("{kind} path {raw:?}: {e}; no request could match it"))?;
    let trimmed = if kind == "prefix" && raw.len() > 1 {
        raw.trim_end_matches('/')
    } else {
        raw
    };
    let normal = if kind == "prefix" && n.path.len() > 1 {
        n.path.trim_end_matches('/')
    } else {
        &n.path
    };
    if normal != trimmed {
        return Err(format!(
            "{kind} path {raw:?} is not in normal form (requests are matched as {normal:?}: escapes of letters, digits and -._~ decoded, dot segments resolved, slashes merged)"
        ));
    }
    let refused = n.findings.without(allow);
    if !refused.is_empty() {
        return Err(format!(
            "{kind} path {raw:?} has {}; set allow_encoded_slashes / allow_path_parameters to accept such paths",
            crate::router::PathError::for_findings(refused)
        ));
    }
    Ok(())
}

fn route_match(e: &mut Errors, path: &str, m: &wire::Match) -> Option<RouteMatch> {
    let before = e.0.len();
    let hosts: Vec<HostPattern> = m
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| e.take(format!("{path}.hosts[{i}]"), HostPattern::parse(h)))
        .collect();
    let grpc = m.grpc.as_ref().and_then(|g| {
        if m.path.is_some() {
            e.push(
                format!("{path}.grpc"),
                "set only one of path or grpc (grpc sets the path /package.Service/Method)",
            );
        }
        super::protocols::grpc_match(e, &format!("{path}.grpc"), g)
    });
    let (path_pattern, grpc_header) = match grpc {
        Some((p, h)) => (Some(p), Some(h)),
        None => (
            path_pattern(e, &format!("{path}.path"), m.path.as_ref()),
            None,
        ),
    };
    let methods = if m.methods.is_empty() {
        None
    } else {
        e.take(
            format!("{path}.methods"),
            MethodSet::parse(m.methods.iter().map(String::as_str)),
        )
    };
    let headers = grpc_header
        .into_iter()
        .chain(m.headers.iter().enumerate().filter_map(|(i, h)| {
            let p = format!("{path}.headers[{i}]");
            let name = e.take(format!("{p}.name"), header_name(&h.name));
            let test = e.take(
                p,
                ValueTest::from_fields(h.exact.as_deref(), h.regex.as_deref(), h.present),
            );
            Some(HeaderMatcher {
                name: name?,
                test: test?,
            })
        }))
        .collect();
    let query = m
        .query
        .iter()
        .enumerate()
        .filter_map(|(i, q)| {
            let p = format!("{path}.query[{i}]");
            if q.name.is_empty() {
                e.push(
                    format!("{p}.name"),
                    "query parameter name must not be empty",
                );
            }
            let test = e.take(
                p,
                ValueTest::from_fields(q.exact.as_deref(), q.regex.as_deref(), q.present),
            )?;
            Some(QueryMatcher {
                name: q.name.as_str().into(),
                test,
            })
        })
        .collect();
    if e.0.len() != before {
        return None;
    }
    Some(RouteMatch {
        hosts,
        path: path_pattern?,
        methods,
        headers,
        query,
        path_options: m.path.as_ref().map(path_options).unwrap_or_default(),
    })
}

fn header_ops(e: &mut Errors, path: &str, ops: Option<&wire::HeaderOps>) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let pairs = |e: &mut Errors, kind: &str, map: &IndexMap<String, String>| {
        map.iter()
            .filter_map(|(k, v)| {
                let p = format!("{path}.{kind}.{k}");
                let name = e.take(p.clone(), writable_header_name(k));
                let value = e.take(p, header_value(v));
                Some((name?, value?))
            })
            .collect()
    };
    HeaderOps {
        set: pairs(e, "set", &ops.set),
        add: pairs(e, "add", &ops.add),
        remove: ops
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, n)| e.take(format!("{path}.remove[{i}]"), writable_header_name(n)))
            .collect(),
    }
}

fn rewrite(
    e: &mut Errors,
    path: &str,
    r: &wire::Rewrite,
    pattern: Option<&PathPattern>,
) -> Option<PathRewrite> {
    let set = [
        r.strip_prefix.is_some(),
        r.regex.is_some(),
        r.path.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        e.push(path, "set exactly one of strip_prefix, regex or path");
        return None;
    }
    if let Some(prefix) = &r.strip_prefix {
        let p = e.take(format!("{path}.strip_prefix"), PathPattern::prefix(prefix))?;
        return Some(PathRewrite::StripPrefix(p.source().into()));
    }
    if let Some(rx) = &r.regex {
        let regex = e.take(format!("{path}.regex.pattern"), compile_regex(&rx.pattern))?;
        return Some(PathRewrite::Regex {
            regex,
            replacement: rx.replacement.as_str().into(),
        });
    }
    let target = r.path.as_deref().unwrap_or("");
    let p = format!("{path}.path");
    let Some(PathPattern::Template(t)) = pattern else {
        e.push(
            p,
            "a `path` rewrite needs a `template` path match to take captures from",
        );
        return None;
    };
    if !target.starts_with('/') {
        e.push(p, format!("rewrite path {target:?} must start with '/'"));
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = target;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(RewritePart::Literal(rest[..open].into()));
        }
        let Some(close) = rest[open..].find('}') else {
            e.push(p, format!("unclosed '{{' in {target:?}"));
            return None;
        };
        let name = rest[open + 1..open + close].trim_start_matches('*');
        match t.params.iter().position(|n| **n == *name) {
            Some(i) => parts.push(RewritePart::Capture(i)),
            None => {
                e.push(
                    p,
                    format!("{{{name}}} is not a capture of template {:?}", t.source),
                );
                return None;
            }
        }
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(RewritePart::Literal(rest.into()));
    }
    Some(PathRewrite::Template {
        source: target.into(),
        parts,
    })
}

fn redirect(e: &mut Errors, path: &str, r: &wire::Redirect) -> Option<Redirect> {
    let before = e.0.len();
    let status = match r.status.unwrap_or(302) {
        s @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(s).ok(),
        s => {
            e.push(
                format!("{path}.status"),
                format!("redirect status {s} must be one of 301, 302, 303, 307, 308"),
            );
            None
        }
    };
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some("http") => Some(Scheme::Http),
        Some("https") => Some(Scheme::Https),
        Some(other) => {
            e.push(
                format!("{path}.scheme"),
                format!("scheme {other:?} must be http or https"),
            );
            None
        }
    };
    let host = r.host.as_deref().and_then(|h| {
        e.take(format!("{path}.host"), HostPattern::parse(h))
            .and_then(|p| match p {
                HostPattern::Exact(h) => Some(h),
                HostPattern::Wildcard(_) => {
                    e.push(
                        format!("{path}.host"),
                        "a redirect host cannot be a wildcard",
                    );
                    None
                }
            })
    });
    if let Some(p) = r.path.as_deref() {
        e.take(format!("{path}.path"), PathPattern::exact(p));
    }
    if r.port == Some(0) {
        e.push(format!("{path}.port"), "port must be between 1 and 65535");
    }
    if e.0.len() != before {
        return None;
    }
    Some(Redirect {
        status: status?,
        scheme,
        host,
        port: r.port,
        path: r.path.as_deref().map(Into::into),
        strip_query: r.strip_query,
    })
}

fn direct(e: &mut Errors, path: &str, d: &wire::DirectResponse) -> Option<DirectResponse> {
    let status = match StatusCode::from_u16(d.status) {
        Ok(s) if (200..=599).contains(&d.status) => Some(s),
        _ => {
            e.push(
                format!("{path}.status"),
                format!("status {} must be 200-599", d.status),
            );
            None
        }
    };
    let content_type = e.take(
        format!("{path}.content_type"),
        header_value(
            d.content_type
                .as_deref()
                .unwrap_or("text/plain; charset=utf-8"),
        ),
    );
    Some(DirectResponse {
        status: status?,
        body: Bytes::from(d.body.clone().unwrap_or_default()),
        content_type: content_type?,
    })
}

pub(super) fn route_spec(
    e: &mut Errors,
    path: &str,
    r: &wire::Route,
    upstreams: &IndexMap<String, wire::Upstream>,
) -> Option<RouteSpec> {
    let before = e.0.len();
    if !route_id_ok(&r.id) {
        e.push(
            format!("{path}.id"),
            format!("route id {:?} must be 1-128 of A-Z a-z 0-9 - _ . :", r.id),
        );
    }
    let matcher = route_match(e, &format!("{path}.match"), &r.matcher);
    let rewrite = r.rewrite.as_ref().and_then(|rw| {
        rewrite(
            e,
            &format!("{path}.rewrite"),
            rw,
            matcher.as_ref().map(|m| &m.path),
        )
    });
    let request_headers = header_ops(
        e,
        &format!("{path}.request_headers"),
        r.request_headers.as_ref(),
    );
    let response_headers = header_ops(
        e,
        &format!("{path}.response_headers"),
        r.response_headers.as_ref(),
    );
    let timeout = r
        .timeout
        .as_deref()
        .and_then(|t| e.take(format!("{path}.timeout"), duration(t)));
    let deadline = r
        .deadline
        .as_deref()
        .and_then(|t| e.take(format!("{path}.deadline"), duration(t)));
    let retry = retry_policy(e, &format!("{path}.retry"), r.retry.as_ref());
    let cache = r
        .cache
        .as_ref()
        .and_then(|c| route_cache(e, &format!("{path}.cache"), c));

    let known = |e: &mut Errors, p: String, name: &str| {
        if !upstreams.contains_key(name) {
            let mut names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            names.sort_unstable();
            e.push(
                p,
                format!("unknown upstream {name:?} (defined: {})", names.join(", ")),
            );
        }
    };
    let chosen = [
        r.upstream.is_some(),
        r.split.is_some(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    let action = if chosen != 1 {
        e.push(
            path,
            "a route needs exactly one of upstream, split, redirect or direct_response",
        );
        None
    } else if let Some(name) = &r.upstream {
        known(e, format!("{path}.upstream"), name);
        Some(ActionSpec::Proxy(vec![(name.clone(), 1)]))
    } else if let Some(split) = &r.split {
        if split.is_empty() {
            e.push(format!("{path}.split"), "split needs at least one upstream");
        }
        if split.iter().all(|t| t.weight == 0) {
            e.push(
                format!("{path}.split"),
                "at least one split weight must be above zero",
            );
        }
        for (i, t) in split.iter().enumerate() {
            known(e, format!("{path}.split[{i}].upstream"), &t.upstream);
            if t.weight > MAX_WEIGHT {
                e.push(
                    format!("{path}.split[{i}].weight"),
                    format!("weight must be at most {MAX_WEIGHT}"),
                );
            }
        }
        Some(ActionSpec::Proxy(
            split
                .iter()
                .map(|t| (t.upstream.clone(), t.weight))
                .collect(),
        ))
    } else if let Some(rd) = &r.redirect {
        redirect(e, &format!("{path}.redirect"), rd).map(ActionSpec::Redirect)
    } else {
        r.direct_response
            .as_ref()
            .and_then(|d| direct(e, &format!("{path}.direct_response"), d))
            .map(ActionSpec::Direct)
    };
    let proxies = matches!(action, Some(ActionSpec::Proxy(_)));
    if !proxies
        && (r.rewrite.is_some()
            || r.request_headers.is_some()
            || r.timeout.is_some()
            || r.deadline.is_some()
            || r.retry.is_some())
    {
        e.push(
            path,
            "rewrite, request_headers, timeout, deadline and retry only apply to routes with upstream or split",
        );
    }
    if !proxies && r.cache.is_some() {
        e.push(
            format!("{path}.cache"),
            "cache only applies to routes with upstream or split",
        );
    }
    if e.0.len() != before {
        return None;
    }
    Some(RouteSpec {
        id: r.id.as_str().into(),
        matcher: matcher?,
        rewrite,
        request_headers,
        response_headers,
        action: action?,
        timeout,
        deadline,
        retry,
        rate_limits: r.rate_limits.clone(),
        jwt: None,
        cache,
        max_request_body_bytes: None,
        policies: Default::default(),
        websocket: super::protocols::websocket(
            e,
            &format!("{path}.websocket"),
            r.websocket.as_ref(),
        ),
    })
}
