//! Owns counting open client connections per listener and per client address, and
//! refusing one over `max_connections` / `max_connections_per_client_ip`. The counts
//! live for the whole process (a reload changes the limits, never the counts); a
//! [`ConnectionGuard`] holds a connection's place until it is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

/// Why a connection was refused; the `reason` label of
/// `gateway_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerClientIp,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerClientIp => "max_connections_per_client_ip",
        }
    }
}

/// One listener's open connections: the total, and per client address (always kept, so
/// a reload that turns the per-address limit on counts the connections already open).
#[derive(Debug)]
pub struct ConnectionCounts {
    active: AtomicU32,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    gauge: IntGauge,
}

impl ConnectionCounts {
    /// `gauge`: this listener's `gateway_connections_active`.
    pub fn new(gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            active: AtomicU32::new(0),
            per_ip: Mutex::new(HashMap::new()),
            gauge,
        })
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Take a place for a connection from `ip`, within `max` connections in all and
    /// `max_per_ip` from one address (0: no limit).
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max: u32,
        max_per_ip: u32,
    ) -> Result<ConnectionGuard, Refusal> {
        let admitted = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(Refusal::MaxConnections);
        }
        // Same client whether it came over IPv4 or as an IPv4-mapped IPv6 address.
        let ip = ip.map(|ip| ip.to_canonical());
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if max_per_ip != 0 && *n >= max_per_ip {
                if *n == 0 {
                    map.remove(&ip);
                }
                drop(map);
                self.active.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::MaxConnectionsPerClientIp);
            }
            *n += 1;
        }
        self.gauge.inc();
        Ok(ConnectionGuard {
            counts: Arc::clone(self),
            ip,
        })
    }

    fn release(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }

    /// Open connections from `ip` (for tests and the admin view).
    pub fn from_ip(&self, ip: IpAddr) -> u32 {
        let map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// A connection's place in its listener's counts, given back on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    counts: Arc<ConnectionCounts>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.counts.release(self.ip);
    }
}
