//! Owns the compiled edge policies of a runtime: each route's (`RoutePolicies`: IP
//! rules, CORS, compression, API key, forward auth), each listener's rules and defaults
//! (`ListenerPolicies`, found by the address a request came in on), and the shared
//! consumer table. A route's CORS and compression fall back to its listener's default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use indexmap::IndexMap;

use crate::apikey::{ConsumerTable, RouteApiKey};
use crate::compression::{CompressionSpec, RouteCompression};
use crate::config::spec::policies::{
    CompressionChoice, CorsChoice, PoliciesSpec, RoutePoliciesSpec,
};
use crate::cors::{CorsPolicy, RouteCors};
use crate::forward_auth::ForwardAuth;
use crate::ip_rules::IpRules;

/// One route's compiled policies.
#[derive(Debug, Default)]
pub struct RoutePolicies {
    pub ip: Option<Arc<IpRules>>,
    pub cors: RouteCors,
    pub compression: RouteCompression,
    /// With the route's `jwt` also set, either passes (`any_of`).
    pub api_key: Option<RouteApiKey>,
    pub forward_auth: Option<Arc<ForwardAuth>>,
}

/// A listener's rules (always applied) and the defaults its routes inherit.
#[derive(Debug)]
pub struct ListenerPolicies {
    pub name: String,
    pub address: SocketAddr,
    pub ip: Option<Arc<IpRules>>,
    pub cors: Option<Arc<CorsPolicy>>,
    pub compression: Option<Arc<CompressionSpec>>,
}

/// The runtime's policy state shared by routes.
#[derive(Debug, Default)]
pub struct RuntimePolicies {
    pub consumers: Arc<ConsumerTable>,
    pub cors_policies: IndexMap<String, Arc<CorsPolicy>>,
    pub listeners: Vec<ListenerPolicies>,
}

impl RuntimePolicies {
    pub fn compile(spec: &PoliciesSpec) -> RuntimePolicies {
        let cors_policies: IndexMap<String, Arc<CorsPolicy>> = spec
            .cors_policies
            .iter()
            .map(|(n, s)| (n.clone(), Arc::new(CorsPolicy::compile(s))))
            .collect();
        let listeners = spec
            .listeners
            .iter()
            .map(|l| ListenerPolicies {
                name: l.name.clone(),
                address: l.address,
                ip: l.ip.as_ref().map(|r| Arc::new(IpRules::compile(r))),
                cors: match cors_choice(&l.cors, &cors_policies) {
                    RouteCors::On(p) => Some(p),
                    _ => None,
                },
                compression: l.compression.clone(),
            })
            .collect();
        RuntimePolicies {
            consumers: Arc::new(ConsumerTable::compile(&spec.consumers)),
            cors_policies,
            listeners,
        }
    }

    /// The listener a connection's local address belongs to: the exact address, else a
    /// wildcard (`0.0.0.0` / `[::]`) listener on the same port.
    pub fn listener(&self, local: Option<SocketAddr>) -> Option<&ListenerPolicies> {
        let local = local?;
        let ip = local.ip().to_canonical();
        self.listeners
            .iter()
            .find(|l| l.address.port() == local.port() && l.address.ip().to_canonical() == ip)
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| l.address.port() == local.port() && l.address.ip().is_unspecified())
            })
    }

    /// Compile one route's policies; `previous` holds the replaced runtime's forward
    /// auth by route id, so an unchanged one keeps its decision cache.
    pub fn compile_route(
        &self,
        id: &str,
        spec: &RoutePoliciesSpec,
        previous: &HashMap<&str, &Arc<ForwardAuth>>,
    ) -> RoutePolicies {
        RoutePolicies {
            ip: spec.ip.as_ref().map(|r| Arc::new(IpRules::compile(r))),
            cors: cors_choice(&spec.cors, &self.cors_policies),
            compression: match &spec.compression {
                CompressionChoice::Inherit => RouteCompression::Inherit,
                CompressionChoice::Off => RouteCompression::Off,
                CompressionChoice::On(c) => RouteCompression::On(Arc::clone(c)),
            },
            api_key: spec.api_key.as_ref().map(|k| RouteApiKey {
                spec: k.clone(),
                table: Arc::clone(&self.consumers),
            }),
            forward_auth: spec
                .forward_auth
                .as_ref()
                .map(|f| ForwardAuth::compile(f, previous.get(id).copied())),
        }
    }
}

fn cors_choice(c: &CorsChoice, named: &IndexMap<String, Arc<CorsPolicy>>) -> RouteCors {
    match c {
        CorsChoice::Inherit => RouteCors::Inherit,
        CorsChoice::Off => RouteCors::Off,
        // Validation guarantees the name exists.
        CorsChoice::Named(n) => named
            .get(n)
            .map_or(RouteCors::Off, |p| RouteCors::On(Arc::clone(p))),
        CorsChoice::Inline(s) => RouteCors::On(Arc::new(CorsPolicy::compile(s))),
    }
}
