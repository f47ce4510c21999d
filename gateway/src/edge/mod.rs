//! Owns what a client may send and for how long, before and around the request phases:
//! the client-side timeouts (`request_header`, `request_body_idle`, `keepalive_idle`,
//! `downstream_write`), connection limits per listener and per client address
//! (`connections`), the request body size limit (`body`), strict HTTP/1 framing
//! (`framing`), reading a request head under those deadlines (`head`), and the HTTP/2
//! limits of a connection (`http2`).
//!
//! Settings are server-wide (`server:`) with a per-listener override
//! (`listeners[].timeouts`, `max_connections`, `max_connections_per_client_ip`); they
//! are reloadable: each new connection and each request head reads the running ones.

use std::net::SocketAddr;
use std::time::Duration;

pub mod body;
pub mod connections;
pub mod framing;
pub mod head;
pub mod http2;

/// The default `max_connections` of a listener: well under the 20,000 open files the
/// process is allowed, so that a flood of idle connections cannot exhaust them.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

/// Client-side timeouts of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time to receive a whole request head; then 408 if any byte came, else close.
    pub request_header: Duration,
    /// Longest gap between two reads of a request body; then 408 (or a close once the
    /// response started).
    pub request_body_idle: Duration,
    /// How long a connection may wait for its next request.
    pub keepalive_idle: Duration,
    /// Longest a write to the client may block (a client that stopped reading).
    pub downstream_write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request_header: Duration::from_secs(10),
            request_body_idle: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(60),
            downstream_write: Duration::from_secs(60),
        }
    }
}

/// The client-side limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub timeouts: Timeouts,
    /// Open connections at once; beyond, a new one is closed at accept. 0: no limit.
    pub max_connections: u32,
    /// Open connections from one client address; 0: no limit.
    pub max_connections_per_client_ip: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client_ip: 0,
        }
    }
}

/// One listener's resolved limits (server-wide values with its overrides applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerEdge {
    pub name: String,
    pub address: SocketAddr,
    pub limits: ConnectionLimits,
}

/// The edge settings of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSpec {
    /// `server:` values, for a listener this config does not name.
    pub defaults: ConnectionLimits,
    pub listeners: Vec<ListenerEdge>,
    /// `server.max_request_body_bytes`; `None`: unlimited.
    pub max_request_body_bytes: Option<u64>,
}

impl Default for EdgeSpec {
    fn default() -> Self {
        Self {
            defaults: ConnectionLimits::default(),
            listeners: Vec::new(),
            max_request_body_bytes: Some(body::DEFAULT_MAX_REQUEST_BODY),
        }
    }
}

impl EdgeSpec {
    /// The limits of the listener named `name` (the server-wide ones if it is gone from
    /// the config, which happens when a reload renames a listener before a restart).
    pub fn limits(&self, name: &str) -> &ConnectionLimits {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map_or(&self.defaults, |l| &l.limits)
    }

    /// The listener a connection accepted on `local` belongs to: the one bound to that
    /// address, else one bound to the unspecified address on that port.
    pub fn listener_at(&self, local: SocketAddr) -> Option<&ListenerEdge> {
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.listeners
            .iter()
            .find(|l| l.address == local)
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| l.address.port() == local.port() && l.address.ip().is_unspecified())
            })
    }
}

#[cfg(test)]
mod tests;
