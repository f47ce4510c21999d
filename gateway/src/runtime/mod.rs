//! Owns `Runtime`: the compiled, immutable product of one `Spec` (route table, upstream
//! pools, request limits) with a monotonically increasing version. Requests pin one
//! `Arc<Runtime>` for their whole life; reloads build a new one and swap it whole.
//! Inputs are the `Spec` and the latest discovery snapshot: `kubernetes` upstreams
//! take their endpoints from it (see `upstream::kubernetes`), so a new snapshot is just
//! another compile and swap. `route` holds the compiled `Route`; `discovery` what a
//! runtime knows of discovery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indexmap::IndexMap;

pub mod discovery_state;
pub mod policies;
pub mod route;

use crate::auth::{JwtRuntime, RouteJwt};
use crate::config::{ActionSpec, Spec, SpecError};
use crate::ratelimit::{ClusterPolicy, PolicyLimiter, RedisBackend};
use crate::router::RouteTable;
use crate::upstream::{Backends, UpstreamPool};
pub use discovery_state::DiscoveryState;
pub use policies::{ListenerPolicies, RoutePolicies, RuntimePolicies};
pub use route::{Route, RouteAction};

#[derive(Debug)]
pub struct Runtime {
    pub version: u64,
    pub compiled_at: SystemTime,
    /// Every route, by index (declaration order).
    pub routes: Vec<Route>,
    /// Finds the index of a request's route.
    pub table: RouteTable,
    pub upstreams: IndexMap<String, Arc<UpstreamPool>>,
    /// Limiters by policy name; an unchanged policy keeps its limiter across reloads.
    pub rate_limiters: IndexMap<String, Arc<PolicyLimiter>>,
    /// Who the client is behind trusted proxies.
    pub client_ip: crate::client_ip::ClientIpSpec,
    /// The Redis connection of cluster rate limits; kept across reloads while unchanged.
    pub redis: Option<Arc<RedisBackend>>,
    pub max_request_header_bytes: usize,
    /// Listener, admin and server settings this runtime was started with; a reload
    /// that changes them is reported as needing a restart.
    pub restart_settings: String,
    pub shutdown_grace_period: Duration,
    /// JWT providers; their key stores outlive reloads while unchanged.
    pub jwt: JwtRuntime,
    /// Every header some route sets from verified claims (`claims_to_headers`). A client
    /// never supplies these on any route: a service behind a route without auth must not
    /// believe an identity the gateway did not verify.
    pub identity_headers: Vec<http::HeaderName>,
    /// `server.cache`; the storage itself lives outside the runtime (see `cache`).
    pub cache: crate::cache::CacheSettings,
    /// The discovery snapshot this runtime was compiled with, and whether a route
    /// waits for one.
    pub discovery: DiscoveryState,
    /// Client-side timeouts, connection and body limits; read per connection and per
    /// request head, so a reload changes them for what comes next.
    pub edge: Arc<crate::edge::EdgeSpec>,
    /// Consumers, CORS policies and the listeners' rules and defaults.
    pub policies: RuntimePolicies,
    /// The sampling ratio of `tracing:` (the exporter is the process's: see
    /// `telemetry::start`); `None`: no tracing, trace headers pass through.
    pub tracing: Option<crate::telemetry::TraceSettings>,
    /// TLS listeners' acceptors by listener name; a listener not here is plaintext.
    pub tls: HashMap<String, Arc<TlsListener>>,
}

/// A TLS listener's acceptor and the spec it was built from (a recompile with the same
/// certificates, e.g. for a discovery snapshot, keeps the acceptor and its session
/// tickets).
#[derive(Debug)]
pub struct TlsListener {
    pub spec: crate::tls::TlsSpec,
    pub compiled: crate::tls::ListenerTls,
}

fn same_tls(a: &crate::tls::TlsSpec, b: &crate::tls::TlsSpec) -> bool {
    a.certificates.len() == b.certificates.len()
        && a.certificates
            .iter()
            .zip(&b.certificates)
            .all(|(x, y)| Arc::ptr_eq(x, y))
        && match (&a.client_ca, &b.client_ca) {
            (None, None) => true,
            (Some((_, x)), Some((_, y))) => Arc::ptr_eq(x, y),
            _ => false,
        }
        && a.min_version == b.min_version
        && a.alpn == b.alpn
        && a.handshake_timeout == b.handshake_timeout
}

fn compile_tls(
    spec: &Spec,
    previous: Option<&Runtime>,
    errors: &mut Vec<SpecError>,
) -> HashMap<String, Arc<TlsListener>> {
    let mut out = HashMap::new();
    for t in &spec.tls {
        if let Some(old) = previous
            .and_then(|p| p.tls.get(&t.listener))
            .filter(|o| same_tls(&o.spec, t))
        {
            out.insert(t.listener.clone(), Arc::clone(old));
            continue;
        }
        match crate::tls::compile(t) {
            Ok(compiled) => {
                out.insert(
                    t.listener.clone(),
                    Arc::new(TlsListener {
                        spec: t.clone(),
                        compiled,
                    }),
                );
            }
            Err(message) => {
                let i = spec.listeners.iter().position(|l| l.name == t.listener);
                errors.push(SpecError {
                    path: format!("listeners[{}].tls", i.unwrap_or_default()),
                    message,
                });
            }
        }
    }
    out
}

/// The settings that only take effect at process start, as comparable text.
pub fn restart_settings(spec: &Spec) -> String {
    format!(
        "listeners={:?} admin={:?} threads={} work_stealing={} grace={:?} debounce={:?} cache={:?} discovery={:?} access_log={:?} tracing={:?}",
        spec.listeners,
        spec.admin,
        spec.server.threads,
        spec.server.work_stealing,
        spec.server.shutdown_grace_period,
        spec.server.reload_debounce,
        spec.server.cache,
        spec.discovery,
        spec.access_log,
        spec.tracing
            .as_ref()
            .map(crate::telemetry::TracingSpec::restart_key)
    )
}

/// Build a runtime from a validated spec. Fails only on what validation cannot know
/// (an endpoint host that does not resolve, a regex set too large to build); every
/// failure is reported, with its path.
///
/// `previous` is the runtime being replaced: an upstream whose definition is unchanged
/// (and names only IP addresses, so there is nothing to re-resolve) is reused whole, with
/// its ring and counters; every other pool takes over the load state of the endpoints
/// it shares with its predecessor.
pub fn compile(
    spec: &Spec,
    version: u64,
    previous: Option<&Runtime>,
) -> Result<Runtime, Vec<SpecError>> {
    compile_with(spec, None, version, previous)
}

/// [`compile`] with the latest discovery snapshot (`None` before the first sync, or
/// without discovery): `kubernetes` upstreams get the snapshot's backends of their
/// Service port (zone hints applied), or no endpoints at all. A pool's fingerprint
/// includes its backend set, so a snapshot that leaves a Service alone leaves its pool
/// (ring, counters, state) untouched.
pub fn compile_with(
    spec: &Spec,
    snapshot: Option<&discovery::Snapshot>,
    version: u64,
    previous: Option<&Runtime>,
) -> Result<Runtime, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut upstreams = IndexMap::new();
    let zone = spec.discovery.as_ref().and_then(|d| d.zone.as_deref());
    for (name, u) in &spec.upstreams {
        let discovered = u
            .kubernetes
            .as_ref()
            .map(|k| crate::upstream::kubernetes::endpoints(snapshot, k, zone));
        let endpoints = discovered.as_deref().unwrap_or(&u.endpoints);
        let fingerprint = match &discovered {
            Some(eps) => format!("{u:?}|{eps:?}"),
            None => format!("{u:?}"),
        };
        let old = previous.and_then(|p| p.upstreams.get(name));
        if let Some(old) = old.filter(|o| {
            o.fingerprint == fingerprint
                && endpoints
                    .iter()
                    .all(|e| e.address.parse::<std::net::SocketAddr>().is_ok())
        }) {
            upstreams.insert(name.clone(), Arc::clone(old));
            continue;
        }
        match UpstreamPool::compile_endpoints(name, u, endpoints, fingerprint, old.map(|o| &**o)) {
            Ok(pool) => {
                upstreams.insert(name.clone(), Arc::new(pool));
            }
            Err(e) => errors.push(SpecError {
                path: format!("upstreams.{name}.endpoints"),
                message: e.to_string(),
            }),
        }
    }
    let tls = compile_tls(spec, previous, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }

    let redis = spec.server.redis.as_ref().map(|redis| {
        let breaker = &spec.server.redis_breaker;
        previous
            .and_then(|p| p.redis.as_ref())
            .filter(|b| b.identity() == redis && b.breaker_spec() == breaker)
            .map_or_else(
                || Arc::new(RedisBackend::new(redis.clone(), breaker.clone())),
                Arc::clone,
            )
    });
    let mut rate_limiters = IndexMap::new();
    for (name, policy) in &spec.rate_limit_policies {
        let mut fresh = PolicyLimiter::new(policy.clone());
        if let (Some(c), Some(backend)) = (&policy.cluster, &redis) {
            // The local fallback shares the limit with the other replicas.
            let mut local = policy.clone();
            local.cluster = None;
            local.count = policy.count.div_ceil(c.expected_replicas).max(1);
            local.burst = policy.burst.div_ceil(c.expected_replicas).max(1);
            let mut cluster =
                ClusterPolicy::new(Arc::clone(backend), c.on_failure, PolicyLimiter::new(local));
            cluster.batch = c.batch;
            fresh.cluster = Some(cluster);
            // A different Redis is a different limiter, even for the same policy.
            fresh
                .fingerprint
                .push_str(&format!("|{:?}", backend.identity()));
        }
        let limiter = previous
            .and_then(|p| p.rate_limiters.get(name))
            .filter(|old| old.fingerprint == fresh.fingerprint)
            .map_or_else(|| Arc::new(fresh), Arc::clone);
        rate_limiters.insert(name.clone(), limiter);
    }

    let jwt = JwtRuntime::compile(&spec.jwt_providers, previous.map(|p| &p.jwt));
    let table = RouteTable::compile(spec.routes.iter().map(|r| r.matcher.clone()).collect())
        .map_err(|e| {
            vec![SpecError {
                path: "routes".into(),
                message: e.to_string(),
            }]
        })?;
    let policies = RuntimePolicies::compile(&spec.policies);
    let previous_forward: std::collections::HashMap<&str, &Arc<crate::forward_auth::ForwardAuth>> =
        previous
            .iter()
            .flat_map(|p| p.routes.iter())
            .filter_map(|r| r.policies.forward_auth.as_ref().map(|f| (&*r.id, f)))
            .collect();
    let mut routes = Vec::with_capacity(spec.routes.len());
    for (index, r) in spec.routes.iter().enumerate() {
        let action = match &r.action {
            ActionSpec::Proxy(targets) => {
                // Spec validation guarantees every name exists.
                let resolved: Vec<_> = targets
                    .iter()
                    .filter_map(|(name, w)| upstreams.get(name).map(|p| (Arc::clone(p), *w)))
                    .collect();
                RouteAction::Proxy(Backends::new(resolved))
            }
            ActionSpec::Redirect(rd) => RouteAction::Redirect(rd.clone()),
            ActionSpec::Direct(d) => RouteAction::Direct(d.clone()),
        };
        routes.push(Route {
            id: Arc::clone(&r.id),
            index,
            rewrite: r.rewrite.clone(),
            request_headers: r.request_headers.clone(),
            response_headers: r.response_headers.clone(),
            action,
            timeout: r.timeout,
            deadline: r.deadline,
            retry: r.retry.clone(),
            rate_limits: r
                .rate_limits
                .iter()
                .filter_map(|n| rate_limiters.get(n).map(Arc::clone))
                .collect(),
            jwt: r.jwt.as_ref().map(|j| RouteJwt::compile(j, &jwt)),
            cache: r.cache.clone(),
            max_request_body: crate::edge::body::effective(
                r.max_request_body_bytes,
                spec.edge.max_request_body_bytes,
            ),
            max_grpc_body: crate::edge::body::effective(r.max_request_body_bytes, None),
            policies: policies.compile_route(&r.id, &r.policies, &previous_forward),
            websocket: r.websocket,
        });
    }
    let mut identity_headers: Vec<http::HeaderName> = spec
        .routes
        .iter()
        .filter_map(|r| r.jwt.as_ref())
        .flat_map(|j| j.claims_to_headers.iter().map(|(_, h)| h.clone()))
        .collect();
    identity_headers.extend(
        crate::config::spec::policies::PoliciesSpec::identity_headers(
            spec.routes.iter().map(|r| &r.policies),
        ),
    );
    identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    identity_headers.dedup();
    let discovery = DiscoveryState::new(
        spec.discovery.as_ref().map(|d| d.mode()),
        snapshot,
        &routes,
        previous.map(|p| &p.discovery),
    );
    Ok(Runtime {
        discovery,
        version,
        compiled_at: SystemTime::now(),
        routes,
        table,
        upstreams,
        rate_limiters,
        client_ip: spec.server.client_ip.clone(),
        redis,
        max_request_header_bytes: spec.server.max_request_header_bytes,
        restart_settings: restart_settings(spec),
        shutdown_grace_period: spec.server.shutdown_grace_period,
        jwt,
        identity_headers,
        cache: spec.server.cache.clone(),
        edge: Arc::new(spec.edge.clone()),
        policies,
        tracing: crate::telemetry::compile(spec.tracing.as_ref()),
        tls,
    })
}

#[cfg(test)]
mod tests;
