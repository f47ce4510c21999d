//! Owns the validated configuration: `Spec::try_from(wire::File)` parses every field into
//! a typed value (durations, socket addresses, regexes, header names, templates) and
//! reports *every* problem at once, each with its YAML path.
//!
//! This file assembles the `Spec` and checks what spans sections (route ids, references
//! between routes, upstreams and policies); each section has a file of its own that
//! builds that section's feature types (`server`, `routes`, `upstreams`, `ratelimit`,
//! `cache`, `jwt`, `discovery`). The types a section produces belong to the feature
//! that uses them (`crate::upstream::UpstreamSpec`, `crate::ratelimit::PolicySpec`...);
//! only the types of the file's own structure live here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use indexmap::IndexMap;

use super::wire;
use crate::actions::{DirectResponse, HeaderOps, PathRewrite, Redirect};
use crate::auth::{ProviderSpec, RouteJwtSpec};
pub use crate::diag::{Errors, SpecError};
use crate::ratelimit::PolicySpec;
use crate::router::RouteMatch;
use crate::router::matchers::{HeaderMatcher, MethodSet, QueryMatcher};
use crate::units::duration;
use crate::upstream::UpstreamSpec;
use crate::upstream::policy::RetryPolicy;
pub use admin::{AdminSpec, AdminToken};
use discovery_spec::DiscoverySpec;

mod access_log;
pub mod admin;
mod auth;
mod cache;
mod compression;
mod consumers;
mod cors;
pub mod discovery_spec;
mod edge;
mod forward_auth;
mod ip_rules;
mod jwt;
pub mod policies;
mod protocols;
mod ratelimit;
mod routes;
mod server;
mod tls;
mod tracing;
mod upstreams;

#[derive(Debug)]
pub struct ServerSpec {
    pub threads: usize,
    pub work_stealing: bool,
    pub shutdown_grace_period: Duration,
    pub max_request_header_bytes: usize,
    pub reload_debounce: Duration,
    /// Who the client is behind trusted proxies (also `server.trusted_proxies`).
    pub client_ip: crate::client_ip::ClientIpSpec,
    /// Where cluster rate limits keep their state.
    pub redis: Option<crate::ratelimit::RedisSpec>,
    /// `server.redis.circuit_breaker` (defaults without Redis).
    pub redis_breaker: crate::ratelimit::BreakerSpec,
    pub cache: crate::cache::CacheSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    /// HTTP/2 with prior knowledge on this plaintext listener.
    pub h2c: bool,
    pub http2: crate::edge::http2::Http2Limits,
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
    /// The route's own body size limit, as written (`Some(0)`: unlimited); `None`:
    /// `server.max_request_body_bytes`.
    pub max_request_body_bytes: Option<u64>,
    /// IP rules, CORS, compression, API key and forward auth.
    pub policies: policies::RoutePoliciesSpec,
    /// Upgraded WebSocket connections (idle timeout).
    pub websocket: crate::websocket::WebSocketSpec,
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
    /// Client-side timeouts, connection and body limits (reloadable).
    pub edge: crate::edge::EdgeSpec,
    /// Consumers, CORS policies, listener policy defaults.
    pub policies: policies::PoliciesSpec,
    /// Where access-log lines go (process-wide: a change takes a restart).
    pub access_log: crate::access_log::AccessLogSpec,
    /// OpenTelemetry tracing (`tracing:`), when configured.
    pub tracing: Option<crate::telemetry::TracingSpec>,
    /// The TLS listeners' settings, certificates loaded (reloadable).
    pub tls: Vec<crate::tls::TlsSpec>,
    /// The certificate, key and CA files the listeners name (watched for changes).
    pub tls_files: Vec<std::path::PathBuf>,
}

impl Spec {
    /// Every file besides the config that this spec read: a change to one reloads.
    pub fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let mut files = self.policies.watched_files.clone();
        files.extend(self.tls_files.iter().cloned());
        files
    }
}

pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
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

fn opt_duration(e: &mut Errors, path: &str, raw: Option<&str>, default: Duration) -> Duration {
    raw.and_then(|r| e.take(path, duration(r)))
        .unwrap_or(default)
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

impl TryFrom<wire::File> for Spec {
    type Error = Vec<SpecError>;

    fn try_from(file: wire::File) -> Result<Self, Self::Error> {
        let mut e = Errors::default();
        let server = server::server_spec(&mut e, &file.server);
        let (listeners, tls, tls_files) =
            server::listener_specs(&mut e, &file.listeners, server.max_request_header_bytes);
        let edge = edge::edge_spec(&mut e, &file.server, &file.listeners);
        let admin = admin::admin_spec(&mut e, &file.admin);
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
            if let Some(spec) =
                upstreams::upstream_spec(&mut e, &format!("upstreams.{name}"), name, u)
            {
                upstreams.insert(name.clone(), spec);
            }
        }

        let mut rate_limit_policies = IndexMap::new();
        for (name, p) in &file.rate_limit_policies {
            if let Some(spec) = ratelimit::rate_limit_policy(
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

        let policies = policies::file_policies(&mut e, &file, &listeners);
        let tracing = file
            .tracing
            .as_ref()
            .and_then(|t| tracing::tracing_spec(&mut e, t));
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
            let (route_jwt, route_policies) = policies::route_policies(&mut e, &path, r, &file);
            let body_limit = edge::route_body_limit(&mut e, &path, r);
            if let Some(mut spec) = routes::route_spec(&mut e, &path, r, &file.upstreams) {
                // The origin sees the claims a route forwards as headers, and may answer
                // per identity while saying `public`: key the cache on those claims too,
                // so one caller's answer never reaches another (or an anonymous one).
                if let (Some(c), Some(j)) = (spec.cache.as_mut(), route_jwt.as_ref()) {
                    let c = Arc::make_mut(c);
                    for (claim, _) in &j.claims_to_headers {
                        if !c.key.claims.contains(claim) {
                            c.key.claims.push(claim.clone());
                        }
                    }
                }
                spec.jwt = route_jwt;
                spec.max_request_body_bytes = body_limit;
                spec.policies = route_policies;
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

        let access_log = access_log::access_log_spec(&mut e, file.access_log.as_ref());
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
                edge,
                policies,
                access_log,
                tracing,
                tls,
                tls_files,
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
    let source = if m.path_options.case_insensitive {
        m.path.source().to_ascii_lowercase()
    } else {
        m.path.source().to_owned()
    };
    format!(
        "{hosts:?}|{}:{source}:{:?}|{methods:?}|{headers:?}|{query:?}",
        m.path.kind(),
        m.path_options.case_insensitive,
    )
}

#[cfg(test)]
mod tests;
