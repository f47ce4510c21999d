//! Owns `gateway explain`: run one request through the real routing decision and say
//! which route won, why the closest others did not, what the route does to the request
//! and where it goes.

use std::fmt::Write as _;

use pingora::http::RequestHeader;

use crate::proxy::decide::{self, Decision};
use crate::router::matchers::{HostPattern, MAX_HOST_LEN};
use crate::router::{self, RequestView, RouteMatch, normalize_host, normalize_path};
use crate::runtime::Runtime;
use crate::runtime::{Route, RouteAction};

/// Build the request head `explain` routes: `url` is `http://host/path?q` or `/path?q`.
pub fn build_request(method: &str, url: &str, headers: &[String]) -> Result<RequestHeader, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(method, target.as_bytes(), None)
        .map_err(|e| format!("invalid request: {e}"))?;
    if let Some(authority) = uri.authority() {
        req.insert_header("host", authority.as_str())
            .map_err(|e| format!("invalid host: {e}"))?;
    }
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header {h:?} must look like 'name: value'"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name in {h:?}"))?;
        // A Host given with -H replaces the one taken from the URL.
        let added = if name == http::header::HOST {
            req.insert_header(name, value.trim())
        } else {
            req.append_header(name, value.trim()).map(|_| ())
        };
        added.map_err(|_| format!("invalid header value in {h:?}"))?;
    }
    Ok(req)
}

/// Every check a route with match criteria `m` fails for the request, in evaluation
/// order.
fn mismatches(m: &RouteMatch, req: &RequestView<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if router::host_tier(m, req.host).is_none() {
        let hosts: Vec<String> = m.hosts.iter().map(HostPattern::to_string).collect();
        out.push(format!(
            "host {:?} is not one of [{}]",
            req.host,
            hosts.join(", ")
        ));
    }
    if !m.path_matches(req.path) {
        out.push(format!(
            "path {} does not match {} {}",
            req.path,
            m.path.kind(),
            m.path.source()
        ));
    }
    if let Some(methods) = &m.methods
        && !methods.contains(req.method)
    {
        out.push(format!(
            "method {} is not one of {:?}",
            req.method,
            methods.names()
        ));
    }
    for h in &m.headers {
        if !h.matches(req.headers) {
            out.push(format!("{} failed", h.describe()));
        }
    }
    for q in &m.query {
        if !q.matches(req.query) {
            out.push(format!("{} failed", q.describe()));
        }
    }
    out
}

fn describe_action(route: &Route, out: &mut String) {
    match &route.action {
        RouteAction::Proxy(backends) => {
            let total: u32 = backends.targets.iter().map(|(_, w)| *w).sum();
            for (pool, weight) in &backends.targets {
                let mut endpoints: Vec<String> = pool
                    .endpoints
                    .iter()
                    .map(|e| format!("{} (weight {})", e.address, e.weight))
                    .collect();
                if let Some(k) = &pool.kubernetes {
                    // `explain` compiles without a discovery snapshot.
                    endpoints.push(format!(
                        "endpoints of Kubernetes Service {} port {}, from discovery at run time",
                        k.service, k.port
                    ));
                }
                let _ = writeln!(
                    out,
                    "  upstream: {} [{} of {} by weight], {}: {}",
                    pool.name,
                    weight,
                    total,
                    pool.load_balancing.as_str(),
                    endpoints.join(", ")
                );
            }
        }
        RouteAction::Redirect(r) => {
            let _ = writeln!(out, "  redirect: status {}", r.status.as_u16());
        }
        RouteAction::Direct(d) => {
            let _ = writeln!(
                out,
                "  direct response: status {}, {} byte body",
                d.status.as_u16(),
                d.body.len()
            );
        }
    }
    if let Some(t) = route.timeout {
        let _ = writeln!(out, "  timeout: {}", humantime::format_duration(t));
    }
    if let Some(d) = route.deadline {
        let _ = writeln!(out, "  deadline: {}", humantime::format_duration(d));
    }
    if let Some(jwt) = &route.jwt {
        let names: Vec<&str> = jwt.providers.iter().map(|p| &*p.name).collect();
        let _ = writeln!(
            out,
            "  jwt: {} token from [{}], {} claim requirement(s), headers from claims: [{}]",
            if jwt.required { "required" } else { "optional" },
            names.join(", "),
            jwt.claims.len(),
            jwt.claims_to_headers
                .iter()
                .map(|(c, h)| format!("{c} -> {h}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    describe_policies(route, out);
    for l in &route.rate_limits {
        let scope = if l.cluster.is_some() {
            "cluster"
        } else {
            "local"
        };
        let _ = writeln!(
            out,
            "  rate limit: {} ({} per {}, burst {}, {scope})",
            l.spec.name,
            l.spec.count,
            humantime::format_duration(l.spec.period),
            l.spec.burst
        );
    }
    if let Some(c) = &route.cache {
        let query = match &c.key.query {
            crate::cache::QueryKey::All => "all".to_owned(),
            crate::cache::QueryKey::None => "none".to_owned(),
            crate::cache::QueryKey::Names(n) => format!("[{}]", n.join(", ")),
        };
        let headers: Vec<&str> = c.key.headers.iter().map(|h| h.as_str()).collect();
        let _ = writeln!(
            out,
            "  cache: default ttl {}, max object {} bytes, key query {query}, headers [{}], claims [{}]",
            c.default_ttl.map_or_else(
                || "none".to_owned(),
                |t| humantime::format_duration(t).to_string()
            ),
            c.max_object_size,
            headers.join(", "),
            c.key.claims.join(", ")
        );
    }
    let ops = [
        ("request", &route.request_headers),
        ("response", &route.response_headers),
    ];
    for (kind, o) in ops {
        for name in &o.remove {
            let _ = writeln!(out, "  {kind} header: remove {name}");
        }
        for (k, v) in &o.set {
            let _ = writeln!(
                out,
                "  {kind} header: set {k}: {}",
                v.to_str().unwrap_or("<binary>")
            );
        }
        for (k, v) in &o.add {
            let _ = writeln!(
                out,
                "  {kind} header: add {k}: {}",
                v.to_str().unwrap_or("<binary>")
            );
        }
    }
}

/// The explanation text for one request against a compiled runtime.
pub fn explain(runtime: &Runtime, req: &RequestHeader) -> String {
    let mut out = String::new();
    let raw_host = decide::raw_host(req);
    let mut buf = [0u8; MAX_HOST_LEN];
    let host = normalize_host(raw_host, &mut buf);
    let path = normalize_path(req.uri.path()).unwrap_or_default();
    let _ = writeln!(
        out,
        "request: {} {}{} (host {:?}, config version {})",
        req.method,
        path,
        req.uri.query().map(|q| format!("?{q}")).unwrap_or_default(),
        host,
        runtime.version
    );
    let view = RequestView {
        method: &req.method,
        host,
        path: &path,
        query: req.uri.query(),
        headers: &req.headers,
    };
    let decision = decide::decide(runtime, req);
    let winner = match &decision {
        Decision::Reject(reply) => {
            let _ = writeln!(
                out,
                "result: {} {} ({})",
                reply.status, reply.code, reply.message
            );
            None
        }
        Decision::Redirect {
            route,
            status,
            location,
        } => {
            let _ = writeln!(
                out,
                "result: route {}, redirect {} to {location}",
                route_name(runtime, *route),
                status.as_u16()
            );
            Some(*route)
        }
        Decision::Direct { route } => {
            let _ = writeln!(
                out,
                "result: route {}, direct response",
                route_name(runtime, *route)
            );
            Some(*route)
        }
        Decision::Proxy {
            route,
            pool,
            upstream_target,
        } => {
            let _ = writeln!(
                out,
                "result: route {}, proxy to upstream {}{}",
                route_name(runtime, *route),
                pool.name,
                upstream_target
                    .as_deref()
                    .map(|t| format!(" as {t}"))
                    .unwrap_or_default()
            );
            Some(*route)
        }
    };
    let routes = &runtime.routes;
    if let Some(route) = winner.and_then(|w| routes.get(w)) {
        let _ = writeln!(out, "matched: {}", route_name(runtime, route.index));
        let m = &runtime.table.matchers()[route.index];
        let host_why = match router::host_tier(m, host) {
            Some((0, _)) => "exact host".to_owned(),
            Some((1, _)) => "wildcard host".to_owned(),
            _ => "any host (route has no hosts)".to_owned(),
        };
        let _ = writeln!(
            out,
            "  because: {host_why}; path {} {}; {} more matcher(s)",
            m.path.kind(),
            m.path.source(),
            m.extra_matchers()
        );
        if let Some(rw) = &route.rewrite {
            let _ = writeln!(out, "  rewrite: {}", rw.describe());
        }
        describe_action(route, &mut out);
    }

    // The closest losers: routes that matched but lost on precedence first, then those
    // failing the fewest checks.
    let mut others: Vec<(usize, usize, Vec<String>)> = routes
        .iter()
        .filter(|r| Some(r.index) != winner)
        .map(|r| {
            let mut why = mismatches(&runtime.table.matchers()[r.index], &view);
            if why.is_empty() {
                why.push("matches too, but has lower precedence".to_owned());
            }
            let failed = if why.len() == 1 && why[0].starts_with("matches too") {
                0
            } else {
                why.len()
            };
            (failed, r.index, why)
        })
        .collect();
    others.sort_by_key(|(failed, index, _)| (*failed, *index));
    if !others.is_empty() {
        let _ = writeln!(out, "closest other routes:");
    }
    for (_, index, why) in others.iter().take(5) {
        let _ = writeln!(out, "  {}: {}", route_name(runtime, *index), why.join("; "));
    }
    out
}

fn route_name(runtime: &Runtime, index: usize) -> String {
    runtime
        .routes
        .get(index)
        .map(|r| format!("{} (routes[{}])", r.id, r.index))
        .unwrap_or_else(|| format!("routes[{index}]"))
}

/// The route's edge policies, one line each (consumers and keys are never shown).
fn describe_policies(route: &Route, out: &mut String) {
    let p = &route.policies;
    if let Some(ip) = &p.ip {
        let _ = writeln!(out, "  ip rules: {}", ip.describe());
    }
    match &p.cors {
        crate::cors::RouteCors::On(c) => {
            let _ = writeln!(out, "  cors: {}", c.describe());
        }
        crate::cors::RouteCors::Off => {
            let _ = writeln!(out, "  cors: off (listener default not used)");
        }
        crate::cors::RouteCors::Inherit => {}
    }
    if let Some(k) = &p.api_key {
        let either = if route.jwt.is_some() {
            " (or the jwt above: any_of)"
        } else {
            ""
        };
        let _ = writeln!(out, "  api key{either}: {}", k.describe());
    }
    if let Some(f) = &p.forward_auth {
        let _ = writeln!(out, "  forward auth: {}", f.describe());
    }
    match &p.compression {
        crate::compression::RouteCompression::On(c) => {
            let _ = writeln!(out, "  compression: {}", c.describe());
        }
        crate::compression::RouteCompression::Off => {
            let _ = writeln!(out, "  compression: off (listener default not used)");
        }
        crate::compression::RouteCompression::Inherit => {}
    }
}
