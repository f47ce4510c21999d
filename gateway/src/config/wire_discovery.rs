//! Owns the serde mirror of the `discovery:` section and of `kubernetes:` upstreams
//! (split from `wire` to keep files readable; same rules: shape only, no validation).

use serde::Deserialize;

/// Exactly one of `kubernetes` (embedded watcher) or `control_plane`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// This gateway's zone, for EndpointSlice topology hints.
    pub zone: Option<String>,
    pub kubernetes: Option<KubernetesDiscovery>,
    pub control_plane: Option<ControlPlane>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Default: in-cluster config, else `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<String>,
    /// Default: all namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    pub label_selector: Option<String>,
    /// `endpointslices` (default) or `endpoints` (the legacy v1 API).
    pub source: Option<String>,
    /// Coalescing: publish after this much quiet (default 100ms)...
    pub quiet: Option<String>,
    /// ...but at most this long after the first change (default 1s).
    pub max_delay: Option<String>,
    /// Mass-deletion guard: hold a change removing more than this percent of all
    /// endpoints (default 50; 100 turns the guard off).
    pub max_removed_percent: Option<u32>,
    /// Full relist this often, jittered (default 5m), repairing drift...
    pub relist_interval: Option<String>,
    /// ...and when a watch comes back after failing for longer than this (default 30s).
    pub relist_after_gap: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// `http://host:port` of a `discovery` server.
    pub url: String,
    /// Bearer token read from this file at start...
    pub token_file: Option<String>,
    /// ...or from this environment variable.
    pub token_env: Option<String>,
    /// PEM CA certificates that sign the control plane's certificate (`https`); read
    /// at start and again before each connection. Default: the system's roots.
    pub ca_file: Option<String>,
    /// Allow `http://` to a host other than loopback (the stream, and the token with
    /// it, then travel unencrypted).
    #[serde(default)]
    pub insecure_plaintext: bool,
}

/// A Kubernetes Service port as the upstream's endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesUpstream {
    pub namespace: String,
    pub service: String,
    /// The Service port's name, or its number.
    pub port: PortValue,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(i64),
    Name(String),
}
