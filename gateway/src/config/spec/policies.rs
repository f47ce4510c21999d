//! Builds the edge policies of the file (`consumers`, `cors_policies`, and each
//! listener's `ip` / `cors` / `compression` defaults) and of each route (`ip`, `cors`,
//! `compression`, `auth`), calling the section builders (`consumers`, `cors`,
//! `ip_rules`, `compression`, `auth`). The types here are the glue a `Spec` carries;
//! each policy's own types belong to its feature.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;

use super::{Errors, wire};
use crate::apikey::{ConsumerSpec, RouteApiKeySpec};
use crate::auth::RouteJwtSpec;
use crate::compression::CompressionSpec;
use crate::cors::CorsSpec;
use crate::forward_auth::ForwardAuthSpec;
use crate::ip_rules::IpRulesSpec;

/// A `cors:` reference, resolved against `cors_policies` when the runtime compiles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CorsChoice {
    #[default]
    Inherit,
    Off,
    /// A `cors_policies` name (validation guarantees it exists).
    Named(String),
    Inline(CorsSpec),
}

/// A route's `compression:`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CompressionChoice {
    #[default]
    Inherit,
    Off,
    On(Arc<CompressionSpec>),
}

/// The policies of one route.
#[derive(Clone, Debug, Default)]
pub struct RoutePoliciesSpec {
    pub ip: Option<IpRulesSpec>,
    pub cors: CorsChoice,
    pub compression: CompressionChoice,
    pub api_key: Option<RouteApiKeySpec>,
    pub forward_auth: Option<ForwardAuthSpec>,
}

/// A listener's defaults and rules, by the listener's address.
#[derive(Clone, Debug)]
pub struct ListenerPoliciesSpec {
    pub name: String,
    pub address: SocketAddr,
    pub ip: Option<IpRulesSpec>,
    pub cors: CorsChoice,
    pub compression: Option<Arc<CompressionSpec>>,
}

/// The file-level policy sections.
#[derive(Clone, Debug, Default)]
pub struct PoliciesSpec {
    pub consumers: Vec<ConsumerSpec>,
    pub cors_policies: IndexMap<String, CorsSpec>,
    pub listeners: Vec<ListenerPoliciesSpec>,
    /// Files this spec read besides the config (`keys_file`s): a change to one reloads
    /// the config like a change to the file itself.
    pub watched_files: Vec<PathBuf>,
}

impl PoliciesSpec {
    /// The header names some route sets for the upstream from what the gateway verified
    /// (the consumer header, forward-auth copies): clients never supply them.
    pub fn identity_headers<'a>(
        routes: impl Iterator<Item = &'a RoutePoliciesSpec>,
    ) -> Vec<http::HeaderName> {
        let mut out = Vec::new();
        for r in routes {
            if let Some(k) = &r.api_key {
                out.push(k.consumer_header.clone());
            }
            if let Some(f) = &r.forward_auth {
                out.extend(f.copy_response_headers.iter().cloned());
            }
        }
        out
    }
}

/// `consumers`, `cors_policies` and the listeners' policies.
pub(super) fn file_policies(
    e: &mut Errors,
    file: &wire::File,
    listeners: &[super::ListenerSpec],
) -> PoliciesSpec {
    let (consumers, watched_files) = super::consumers::consumers(e, &file.consumers);
    let mut cors_policies = IndexMap::new();
    for (name, c) in &file.cors_policies {
        let path = format!("cors_policies.{name}");
        if !super::route_id_ok(name) {
            e.push(
                &path,
                format!("policy name {name:?} must be 1-128 of A-Z a-z 0-9 - _ . :"),
            );
        }
        if let Some(spec) = super::cors::cors_spec(e, &path, Some(name), c) {
            cors_policies.insert(name.clone(), spec);
        }
    }
    let mut out = Vec::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let ip =
            l.ip.as_ref()
                .and_then(|r| super::ip_rules::ip_rules(e, &format!("{path}.ip"), r));
        let cors = l.cors.as_ref().map_or(CorsChoice::Inherit, |c| {
            super::cors::cors_choice(e, &format!("{path}.cors"), c, &file.cors_policies)
        });
        let compression = match l
            .compression
            .as_ref()
            .map(|c| super::compression::compression(e, &format!("{path}.compression"), c))
        {
            Some(CompressionChoice::On(c)) => Some(c),
            _ => None,
        };
        // Listeners with a bad address are reported by `listener_specs`.
        if let Some(spec) = listeners.iter().find(|s| s.name == l.name) {
            out.push(ListenerPoliciesSpec {
                name: l.name.clone(),
                address: spec.address,
                ip,
                cors,
                compression,
            });
        }
    }
    PoliciesSpec {
        consumers,
        cors_policies,
        listeners: out,
        watched_files,
    }
}

/// A route's policies, and its JWT requirement (which keeps its own place on the
/// route). `auth` errors are reported here.
pub(super) fn route_policies(
    e: &mut Errors,
    path: &str,
    r: &wire::Route,
    file: &wire::File,
) -> (Option<RouteJwtSpec>, RoutePoliciesSpec) {
    let ip =
        r.ip.as_ref()
            .and_then(|rules| super::ip_rules::ip_rules(e, &format!("{path}.ip"), rules));
    let cors = r.cors.as_ref().map_or(CorsChoice::Inherit, |c| {
        super::cors::cors_choice(e, &format!("{path}.cors"), c, &file.cors_policies)
    });
    let compression = r
        .compression
        .as_ref()
        .map_or(CompressionChoice::Inherit, |c| {
            super::compression::compression(e, &format!("{path}.compression"), c)
        });
    let auth = r
        .auth
        .as_ref()
        .map(|a| super::auth::route_auth(e, &format!("{path}.auth"), a, file))
        .unwrap_or_default();
    (
        auth.jwt,
        RoutePoliciesSpec {
            ip,
            cors,
            compression,
            api_key: auth.api_key,
            forward_auth: auth.forward,
        },
    )
}
