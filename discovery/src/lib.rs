//! The endpoint model shared by the discovery control plane and the gateway.
//!
//! Besides the published types ([`snapshot`]) the crate holds the Kubernetes watcher
//! ([`watcher`], with the publishing rules in [`engine`] and the stripped object model
//! in [`model`]), the control-plane server that streams snapshots to gateways
//! ([`server`]), the gateway's client of that stream ([`client`]), the protocol they
//! share ([`protocol`]), TLS for it ([`tls`]), the tracing of snapshot builds
//! ([`trace`]) and the metrics ([`metrics`]). This file owns the rules every source of
//! endpoints must follow when deciding which endpoints receive traffic, as the
//! EndpointSlice API documents them:
//! an unset `ready` means ready, an unset `serving` means the value of `ready`, an unset
//! `terminating` means false. Traffic goes to ready endpoints; only when there are none,
//! to endpoints that are serving while terminating (so a draining Deployment still
//! answers). Duplicates (one address in several slices) count once.

use std::collections::BTreeSet;
use std::net::SocketAddr;

pub mod client;
pub mod config;
pub mod engine;
#[cfg(feature = "fake")]
pub mod fake;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod selector;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod token;
pub mod trace;
pub mod watcher;

pub use snapshot::{
    Backend, PortRef, Service, ServiceKey, ServicePort, Snapshot, SnapshotReceiver, SnapshotSender,
    for_zone,
};

/// EndpointSlice conditions exactly as the API carries them: each may be absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl Conditions {
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }

    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.is_ready())
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub conditions: Conditions,
}

/// The addresses that should receive traffic, sorted and without duplicates.
pub fn backends(endpoints: &[Endpoint]) -> Vec<SocketAddr> {
    let ready: BTreeSet<SocketAddr> = endpoints
        .iter()
        .filter(|e| e.conditions.is_ready())
        .map(|e| e.address)
        .collect();
    if !ready.is_empty() {
        return ready.into_iter().collect();
    }
    endpoints
        .iter()
        .filter(|e| e.conditions.is_serving() && e.conditions.is_terminating())
        .map(|e| e.address)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(
        port: u16,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Endpoint {
        Endpoint {
            address: SocketAddr::from(([10, 0, 0, 1], port)),
            conditions: Conditions {
                ready,
                serving,
                terminating,
            },
        }
    }

    fn ports(v: Vec<SocketAddr>) -> Vec<u16> {
        v.into_iter().map(|a| a.port()).collect()
    }

    #[test]
    fn unset_conditions_follow_the_api_defaults() {
        let c = Conditions::default();
        assert!(c.is_ready() && c.is_serving() && !c.is_terminating());
        let not_ready = Conditions {
            ready: Some(false),
            ..Conditions::default()
        };
        assert!(!not_ready.is_serving());
    }

    #[test]
    fn ready_endpoints_win_and_duplicates_collapse() {
        let eps = [
            ep(1, None, None, None),
            ep(1, Some(true), None, None),
            ep(2, Some(false), Some(true), Some(true)),
            ep(3, Some(true), None, None),
        ];
        assert_eq!(ports(backends(&eps)), vec![1, 3]);
    }

    #[test]
    fn serving_terminating_endpoints_when_none_is_ready() {
        let eps = [
            ep(1, Some(false), Some(true), Some(true)),
            ep(2, Some(false), Some(false), Some(true)),
            ep(3, Some(false), Some(true), None),
        ];
        assert_eq!(ports(backends(&eps)), vec![1]);
        assert!(backends(&[ep(4, Some(false), None, None)]).is_empty());
    }
}
