//! Owns the serde mirror of the protocol blocks: a route's `websocket` and
//! `match.grpc`, an upstream's `protocol` and `tls`, field for field. A sibling of
//! `wire`, which re-exports it; like `wire`, nothing here leaves the config module.

use serde::Deserialize;

/// `routes[].websocket`: how upgraded WebSocket connections of the route behave.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocket {
    /// Close a tunnel after this long with no frame in either direction (default 1h).
    pub idle_timeout: Option<String>,
}

/// `routes[].match.grpc`: a gRPC service, and optionally one of its methods.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMatch {
    /// Fully qualified: `package.Service` (`shop.Inventory`).
    pub service: String,
    pub method: Option<String>,
}

/// `upstreams.NAME.tls`: TLS to the upstream's endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent and verified; default: the endpoint's host.
    pub sni: Option<String>,
    /// PEM bundle of the CAs that may sign the upstream's certificate; default: the
    /// system's roots.
    pub ca_file: Option<String>,
    /// Accept any certificate: refused unless written as `true`.
    pub insecure_skip_verify: Option<bool>,
    /// Client certificate (PEM chain, leaf first) for mTLS, with its key.
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}
