//! Owns `Runtime`: the compiled, immutable product of one `Spec` (route table, upstream
//! pools, request limits) with a monotonically increasing version. Requests pin one
//! `Arc<Runtime>` for their whole life; reloads build a new one and swap it whole.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indexmap::IndexMap;

use crate::config::{ActionSpec, Spec, SpecError};
use crate::router::{Route, RouteAction, RouteTable};
use crate::upstream::{Backends, PeerOptions, UpstreamPool};

#[derive(Debug)]
pub struct Runtime {
    pub version: u64,
    pub compiled_at: SystemTime,
    pub routes: RouteTable,
    pub upstreams: IndexMap<String, Arc<UpstreamPool>>,
    pub max_request_header_bytes: usize,
    /// Listener, admin and server settings this runtime was started with; a reload
    /// that changes them is reported as needing a restart.
    pub restart_settings: String,
    pub shutdown_grace_period: Duration,
}

/// The settings that only take effect at process start, as comparable text.
pub fn restart_settings(spec: &Spec) -> String {
    format!(
        "listeners={:?} admin={:?} threads={} grace={:?} debounce={:?}",
        spec.listeners,
        spec.admin.address,
        spec.server.threads,
        spec.server.shutdown_grace_period,
        spec.server.reload_debounce
    )
}

/// Build a runtime from a validated spec. Fails only on what validation cannot know
/// (an endpoint host that does not resolve, a regex set too large to build); every
/// failure is reported, with its path.
pub fn compile(spec: &Spec, version: u64) -> Result<Runtime, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut upstreams = IndexMap::new();
    for (name, u) in &spec.upstreams {
        let options = PeerOptions {
            connect_timeout: u.connect_timeout,
            idle_timeout: u.idle_timeout,
        };
        match UpstreamPool::compile(name, &u.endpoints, u.load_balancing, options) {
            Ok(pool) => {
                upstreams.insert(name.clone(), Arc::new(pool));
            }
            Err(e) => errors.push(SpecError {
                path: format!("upstreams.{name}.endpoints"),
                message: e.to_string(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

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
            matcher: r.matcher.clone(),
            rewrite: r.rewrite.clone(),
            request_headers: r.request_headers.clone(),
            response_headers: r.response_headers.clone(),
            action,
            timeout: r.timeout,
        });
    }
    let routes = RouteTable::compile(routes).map_err(|e| {
        vec![SpecError {
            path: "routes".into(),
            message: e.to_string(),
        }]
    })?;
    Ok(Runtime {
        version,
        compiled_at: SystemTime::now(),
        routes,
        upstreams,
        max_request_header_bytes: spec.server.max_request_header_bytes,
        restart_settings: restart_settings(spec),
        shutdown_grace_period: spec.server.shutdown_grace_period,
    })
}
