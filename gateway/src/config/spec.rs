//! Owns the validated configuration: `Spec::try_from(wire::File)` parses every field into
//! a typed value (durations, socket addresses, regexes, header names, templates) and
//! reports *every* problem at once, each with its YAML path.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use indexmap::IndexMap;

use super::discovery_spec::{self, DiscoverySpec, KubernetesUpstreamSpec};
use super::wire;
use crate::actions::{DirectResponse, HeaderOps, PathRewrite, Redirect, RewritePart, Scheme};
use crate::auth::{ProviderSpec, RouteJwtSpec};
use crate::ratelimit::{ClusterSpec, KeyPart, PolicySpec};
use crate::ratelimit_cluster::{Batch, FailurePolicy};
use crate::router::RouteMatch;
use crate::router::matchers::{
    HeaderMatcher, HostPattern, MethodSet, PathPattern, PathTemplate, QueryMatcher, ValueTest,
    compile_regex,
};
use crate::upstream::policy::{
    EndpointSpec, HealthCheck, Limits, OutlierDetection, Probe, RetryBudgetPolicy, RetryOn,
    RetryPolicy, StickyCookie,
};
use crate::upstream::{HashOn, LoadBalancing};

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SpecError {
    /// YAML path such as `routes[3].match.path`; empty for the whole document.
    pub path: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ServerSpec {
    pub threads: usize,
    pub shutdown_grace_period: Duration,
    pub max_request_header_bytes: usize,
    pub reload_debounce: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `(url, per-call timeout)` for cluster rate limits.
    pub redis: Option<(String, Duration)>,
    pub cache: crate::cache::CacheSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSpec {
    pub address: SocketAddr,
}

#[derive(Debug)]
pub enum ActionSpec {
    /// Upstream names with weights (one entry for a plain `upstream:`).
    Proxy(Vec<(String, u32)>),
    Redirect(Redirect),
    Direct(DirectResponse),
}

#[derive(Debug)]
pub struct RouteSpec {
    pub id: Arc<str>,
    pub matcher: RouteMatch,
    pub rewrite: Option<PathRewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub action: ActionSpec,
    pub timeout: Option<Duration>,
    pub deadline: Option<Duration>,
    pub retry: RetryPolicy,
    /// Names of rate-limit policies, all checked.
    pub rate_limits: Vec<String>,
    /// JWT authentication, checked after the match and before rate limits.
    pub jwt: Option<RouteJwtSpec>,
    /// Response caching, when enabled.
    pub cache: Option<Arc<crate::cache::RouteCache>>,
}

#[derive(Debug)]
pub struct UpstreamSpec {
    /// Static endpoints; empty for a `kubernetes` upstream, whose endpoints come from
    /// the discovery snapshot at compile time.
    pub endpoints: Vec<EndpointSpec>,
    pub kubernetes: Option<KubernetesUpstreamSpec>,
    pub load_balancing: LoadBalancing,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub health_check: Option<HealthCheck>,
    /// `None`: passive ejection is off.
    pub outlier_detection: Option<OutlierDetection>,
    /// Percent (0-100) of available endpoints below which health is ignored.
    pub panic_threshold: u32,
    pub retry_budget: RetryBudgetPolicy,
    pub limits: Limits,
    pub sticky_cookie: Option<StickyCookie>,
}

/// A fully validated gateway configuration.
#[derive(Debug)]
pub struct Spec {
    pub server: ServerSpec,
    pub listeners: Vec<ListenerSpec>,
    pub admin: AdminSpec,
    pub routes: Vec<RouteSpec>,
    pub upstreams: IndexMap<String, UpstreamSpec>,
    pub rate_limit_policies: IndexMap<String, PolicySpec>,
    pub jwt_providers: IndexMap<String, ProviderSpec>,
    /// Where `kubernetes` upstreams get their endpoints; required when one exists.
    pub discovery: Option<DiscoverySpec>,
}

pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_WEIGHT: u32 = 10_000;
const MAX_ROUTE_ID: usize = 128;

/// Headers a route may not rewrite: they carry message framing or connection state
/// that the proxy itself manages.
const RESERVED_HEADERS: [&str; 7] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<SpecError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Keep the value, or record the error at `path` and return `None`.
    pub(super) fn take<T>(&mut self, path: impl Into<String>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(path, e);
                None
            }
        }
    }
}

pub(super) fn duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("invalid duration {raw:?}: {e} (write e.g. 250ms, 5s, 1m)"))?;
    if d.is_zero() {
        return Err(format!("duration {raw:?} must be greater than zero"));
    }
    if d > MAX_TIMEOUT {
        return Err(format!("duration {raw:?} is longer than the 1h maximum"));
    }
    Ok(d)
}

fn opt_duration(e: &mut Errors, path: &str, raw: Option<&str>, default: Duration) -> Duration {
    raw.and_then(|r| e.take(path, duration(r)))
        .unwrap_or(default)
}

fn socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.parse::<SocketAddr>().map_err(|_| {
        format!("invalid address {raw:?}: expected IP:PORT such as 0.0.0.0:8080 or [::]:8080")
    })
}

/// `host:port` with a non-zero port; hosts may be DNS names (resolved at compile).
fn endpoint_address(raw: &str) -> Result<(), String> {
    let bad = || format!("invalid endpoint address {raw:?}: expected HOST:PORT");
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(bad());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{}: IPv6 hosts go in brackets, e.g. [::1]:8080",
            bad()
        ));
    }
    Ok(())
}

fn header_name(raw: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(raw.as_bytes()).map_err(|_| format!("invalid header name {raw:?}"))
}

fn writable_header_name(raw: &str) -> Result<HeaderName, String> {
    let name = header_name(raw)?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "header {raw:?} is managed by the proxy and cannot be changed by a route"
        ));
    }
    Ok(name)
}

fn header_value(raw: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(raw).map_err(|_| format!("invalid header value {raw:?}"))
}

fn route_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ROUTE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[path = "jwt.rs"]
mod jwt;

impl TryFrom<wire::File> for Spec {
    type Error = Vec<SpecError>;

    fn try_from(file: wire::File) -> Result<Self, Self::Error> {
        let mut e = Errors::default();
        let server = server_spec(&mut e, &file.server);
        let listeners = listener_specs(&mut e, &file.listeners);
        let admin = AdminSpec {
            address: e
                .take(
                    "admin.address",
                    socket_addr(
                        file.admin
                            .address
                            .as_deref()
                            .unwrap_or(DEFAULT_ADMIN_ADDRESS),
                    ),
                )
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901))),
        };
        if listeners.iter().any(|l| l.address == admin.address) {
            e.push("admin.address", "admin address is also used by a listener");
        }

        let discovery = file
            .discovery
            .as_ref()
            .and_then(|d| discovery_spec::discovery(&mut e, d));
        let mut upstreams = IndexMap::new();
        for (name, u) in &file.upstreams {
            if u.kubernetes.is_some() && file.discovery.is_none() {
                e.push(
                    format!("upstreams.{name}.kubernetes"),
                    "a kubernetes upstream needs a top-level discovery section (kubernetes or control_plane)",
                );
            }
            if let Some(spec) = upstream_spec(&mut e, &format!("upstreams.{name}"), name, u) {
                upstreams.insert(name.clone(), spec);
            }
        }

        let mut rate_limit_policies = IndexMap::new();
        for (name, p) in &file.rate_limit_policies {
            if let Some(spec) = rate_limit_policy(
                &mut e,
                &format!("rate_limit_policies.{name}"),
                name,
                p,
                file.server.redis.is_some(),
            ) {
                rate_limit_policies.insert(name.clone(), spec);
            }
        }
        let mut jwt_providers = IndexMap::new();
        for (name, p) in &file.jwt_providers {
            if let Some(spec) =
                jwt::provider_spec(&mut e, &format!("jwt_providers.{name}"), name, p)
            {
                jwt_providers.insert(name.clone(), spec);
            }
        }
        for (i, r) in file.routes.iter().enumerate() {
            for (j, name) in r.rate_limits.iter().enumerate() {
                if !file.rate_limit_policies.contains_key(name) {
                    e.push(
                        format!("routes[{i}].rate_limits[{j}]"),
                        format!("unknown rate limit policy {name:?}"),
                    );
                }
            }
        }

        let mut routes = Vec::new();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut signatures: HashMap<String, usize> = HashMap::new();
        for (i, r) in file.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if let Some(first) = ids.insert(r.id.as_str(), i) {
                e.push(
                    format!("{path}.id"),
                    format!(
                        "duplicate route id {:?} (first used by routes[{first}])",
                        r.id
                    ),
                );
            }
            let route_jwt = r.auth.as_ref().and_then(|a| {
                jwt::route_auth(&mut e, &format!("{path}.auth"), a, &file.jwt_providers)
            });
            if let Some(mut spec) = route_spec(&mut e, &path, r, &file.upstreams) {
                spec.jwt = route_jwt;
                if let Some(c) = spec.cache.as_mut()
                    && r.cache
                        .as_ref()
                        .is_some_and(|w| w.max_object_size.is_none())
                {
                    // The default never exceeds a small cache's cap.
                    let c = Arc::make_mut(c);
                    c.max_object_size = c.max_object_size.min(server.cache.max_bytes);
                }
                if let Some(c) = &spec.cache
                    && c.max_object_size > server.cache.max_bytes
                {
                    e.push(
                        format!("{path}.cache.max_object_size"),
                        format!(
                            "max_object_size {} is larger than server.cache.max_bytes {}",
                            c.max_object_size, server.cache.max_bytes
                        ),
                    );
                }
                // Two routes with identical match criteria: the second can never win.
                let sig = match_signature(&spec.matcher);
                if let Some(first) = signatures.insert(sig, i) {
                    e.push(
                        format!("{path}.match"),
                        format!(
                            "route {:?} has the same match as routes[{first}] and could never be selected",
                            r.id
                        ),
                    );
                }
                routes.push(spec);
            }
        }

        if e.0.is_empty() {
            Ok(Spec {
                server,
                listeners,
                admin,
                routes,
                upstreams,
                rate_limit_policies,
                jwt_providers,
                discovery,
            })
        } else {
            Err(e.0)
        }
    }
}

fn match_signature(m: &RouteMatch) -> String {
    let mut hosts: Vec<String> = m.hosts.iter().map(ToString::to_string).collect();
    hosts.sort();
    let mut methods = m.methods.as_ref().map(MethodSet::names).unwrap_or_default();
    methods.sort();
    let mut headers: Vec<String> = m.headers.iter().map(HeaderMatcher::describe).collect();
    headers.sort();
    let mut query: Vec<String> = m.query.iter().map(QueryMatcher::describe).collect();
    query.sort();
    format!(
        "{hosts:?}|{}:{}|{methods:?}|{headers:?}|{query:?}",
        m.path.kind(),
        m.path.source()
    )
}

fn server_spec(e: &mut Errors, s: &wire::Server) -> ServerSpec {
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
            ok.then(|| (r.url.clone(), timeout))
        }),
        trusted_proxies: s
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| {
                let parsed = raw
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("invalid CIDR {raw:?}: expected e.g. 10.0.0.0/8 or 10.1.2.3")
                    });
                e.take(format!("server.trusted_proxies[{i}]"), parsed)
            })
            .collect(),
        reload_debounce: opt_duration(
            e,
            "server.reload_debounce",
            s.reload_debounce.as_deref(),
            Duration::from_millis(200),
        ),
        cache: server_cache(e, s.cache.as_ref()),
    }
}

fn server_cache(e: &mut Errors, c: Option<&wire::ServerCache>) -> crate::cache::CacheSettings {
    let mut settings = crate::cache::CacheSettings::default();
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

/// Longest `default_ttl`: a year, as for `max-age` in practice.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

fn route_cache(
    e: &mut Errors,
    path: &str,
    c: &wire::RouteCache,
) -> Option<Arc<crate::cache::RouteCache>> {
    use crate::cache::{KeySpec, QueryKey, SetCookie};
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
        None => crate::cache::DEFAULT_MAX_OBJECT_SIZE,
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
    Some(Arc::new(crate::cache::RouteCache {
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

fn listener_specs(e: &mut Errors, listeners: &[wire::Listener]) -> Vec<ListenerSpec> {
    if listeners.is_empty() {
        e.push("listeners", "at least one listener is required");
    }
    let mut out = Vec::new();
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
            });
        }
    }
    out
}

fn upstream_spec(
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
    let spec = UpstreamSpec {
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
            other => e.push(
                format!("{path}.retry_on[{i}]"),
                format!(
                    "unknown retry_on {other:?}; expected connect_failure, gateway_error or timeout"
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

fn rate_limit_policy(
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
            other => match other.strip_prefix("header:").map(header_name) {
                Some(Ok(h)) => key.push(KeyPart::Header(h)),
                _ => e.push(
                    format!("{path}.key[{i}]"),
                    format!("invalid key part {other:?}: use client_ip, route or header:NAME"),
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

fn route_match(e: &mut Errors, path: &str, m: &wire::Match) -> Option<RouteMatch> {
    let before = e.0.len();
    let hosts: Vec<HostPattern> = m
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| e.take(format!("{path}.hosts[{i}]"), HostPattern::parse(h)))
        .collect();
    let path_pattern = path_pattern(e, &format!("{path}.path"), m.path.as_ref());
    let methods = if m.methods.is_empty() {
        None
    } else {
        e.take(
            format!("{path}.methods"),
            MethodSet::parse(m.methods.iter().map(String::as_str)),
        )
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
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
        })
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

fn route_spec(
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
    })
}
