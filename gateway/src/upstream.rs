//! Owns upstream pools: their endpoints (each with one prebuilt Pingora `HttpPeer` that
//! is cloned per request, so Pingora's connection pool reuses keepalive connections), and
//! endpoint selection. Load-balancing algorithms plug in at [`LoadBalancing`]; health
//! state and retries will hang off [`UpstreamPool::select`] without touching callers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

/// How a pool picks an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadBalancing {
    /// Every endpoint in turn, ignoring weights.
    RoundRobin,
    /// Smooth weighted round robin (nginx's): proportional and evenly interleaved.
    WeightedRoundRobin,
}

impl LoadBalancing {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "round_robin" => Ok(Self::RoundRobin),
            "weighted_round_robin" => Ok(Self::WeightedRoundRobin),
            other => Err(format!(
                "unknown load_balancing {other:?}; expected round_robin or weighted_round_robin"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
        }
    }
}

/// A precomputed smooth weighted round-robin order, walked with one atomic counter:
/// lock-free, and the same spread as nginx's algorithm.
#[derive(Debug)]
pub struct WeightedSchedule {
    order: Vec<u32>,
    next: AtomicUsize,
}

/// Longest schedule we precompute; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 1 << 16;

impl WeightedSchedule {
    /// `weights` must be non-empty and contain at least one non-zero weight.
    pub fn new(weights: &[u32]) -> Self {
        let gcd = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
        let mut w: Vec<u64> = weights.iter().map(|x| u64::from(*x / gcd.max(1))).collect();
        let total: u64 = w.iter().sum();
        if total > MAX_SCHEDULE {
            for x in w.iter_mut().filter(|x| **x > 0) {
                *x = (*x * MAX_SCHEDULE / total).max(1);
            }
        }
        let total: i64 = w.iter().map(|x| *x as i64).sum();
        let mut current = vec![0i64; w.len()];
        let mut order = Vec::with_capacity(total.max(1) as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best as u32);
        }
        if order.is_empty() {
            order.push(0);
        }
        Self {
            order,
            next: AtomicUsize::new(0),
        }
    }

    pub fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.order[n % self.order.len()] as usize
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[derive(Debug)]
pub struct Endpoint {
    /// As written in the config (`host:port`).
    pub address: Box<str>,
    pub socket: SocketAddr,
    pub weight: u32,
    /// Built once at compile time and cloned per request.
    pub peer: HttpPeer,
}

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: Arc<str>,
    pub endpoints: Vec<Endpoint>,
    pub load_balancing: LoadBalancing,
    schedule: WeightedSchedule,
}

/// Upstream read/write timeout for routes that set no `timeout` (nginx's default too).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Options that shape the prebuilt peers of a pool.
#[derive(Clone, Copy, Debug)]
pub struct PeerOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("endpoint {address}: cannot resolve: {reason}")]
    Resolve { address: String, reason: String },
}

impl UpstreamPool {
    /// Resolve every endpoint (DNS names are looked up once, here, like nginx does at
    /// load) and prebuild its peer.
    pub fn compile(
        name: &str,
        endpoints: &[(String, u32)],
        load_balancing: LoadBalancing,
        options: PeerOptions,
    ) -> Result<Self, ResolveError> {
        let mut out = Vec::with_capacity(endpoints.len());
        for (address, weight) in endpoints {
            let socket = address
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.next().ok_or_else(|| "no addresses".to_owned()))
                .map_err(|reason| ResolveError::Resolve {
                    address: address.clone(),
                    reason,
                })?;
            let mut peer = HttpPeer::new(socket, false, String::new());
            peer.options.connection_timeout = Some(options.connect_timeout);
            peer.options.idle_timeout = Some(options.idle_timeout);
            // A hung upstream must not hold a request forever; routes may override.
            peer.options.read_timeout = Some(DEFAULT_ROUTE_TIMEOUT);
            peer.options.write_timeout = Some(DEFAULT_ROUTE_TIMEOUT);
            out.push(Endpoint {
                address: address.as_str().into(),
                socket,
                weight: *weight,
                peer,
            });
        }
        let weights: Vec<u32> = match load_balancing {
            LoadBalancing::RoundRobin => vec![1; out.len()],
            LoadBalancing::WeightedRoundRobin => out.iter().map(|e| e.weight).collect(),
        };
        Ok(Self {
            name: name.into(),
            schedule: WeightedSchedule::new(&weights),
            endpoints: out,
            load_balancing,
        })
    }

    /// Pick the endpoint for one request attempt.
    pub fn select(&self) -> Option<&Endpoint> {
        self.endpoints.get(self.schedule.pick())
    }
}

/// Where a proxied route sends traffic: one pool, or a weighted split across several.
#[derive(Debug)]
pub struct Backends {
    pub targets: Vec<(Arc<UpstreamPool>, u32)>,
    schedule: WeightedSchedule,
}

impl Backends {
    pub fn new(targets: Vec<(Arc<UpstreamPool>, u32)>) -> Self {
        let weights: Vec<u32> = targets.iter().map(|(_, w)| *w).collect();
        Self {
            schedule: WeightedSchedule::new(&weights),
            targets,
        }
    }

    /// Choose the pool for one request (weighted split; the same pool for its retries).
    pub fn choose(&self) -> Option<&Arc<UpstreamPool>> {
        self.targets.get(self.schedule.pick()).map(|(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &WeightedSchedule, n: usize, k: usize) -> Vec<usize> {
        let mut c = vec![0; k];
        for _ in 0..n {
            c[s.pick()] += 1;
        }
        c
    }

    #[test]
    fn weighted_schedule_is_proportional_and_smooth() {
        let s = WeightedSchedule::new(&[5, 1, 1]);
        // nginx's smooth WRR for {5,1,1}: a a b a c a a
        let seq: Vec<usize> = (0..7).map(|_| s.pick()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&s, 700, 3), vec![500, 100, 100]);
    }

    #[test]
    fn zero_weights_never_chosen() {
        let s = WeightedSchedule::new(&[0, 3]);
        assert_eq!(counts(&s, 30, 2), vec![0, 30]);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let s = WeightedSchedule::new(&[1_000_000, 1_000_000, 2_000_000]);
        let c = counts(&s, 4000, 3);
        assert_eq!(c, vec![1000, 1000, 2000]);
    }

    #[test]
    fn round_robin_ignores_weights() {
        let pool = UpstreamPool::compile(
            "p",
            &[("127.0.0.1:1".into(), 10), ("127.0.0.1:2".into(), 1)],
            LoadBalancing::RoundRobin,
            PeerOptions {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            },
        )
        .unwrap();
        let ports: Vec<u16> = (0..4)
            .map(|_| pool.select().unwrap().socket.port())
            .collect();
        assert_eq!(ports, vec![1, 2, 1, 2]);
    }
}
