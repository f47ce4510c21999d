//! Owns upstream pools: their endpoints (each with one prebuilt Pingora `HttpPeer` that
//! is cloned per request, so Pingora's connection pool reuses keepalive connections), and
//! endpoint selection ([`LoadBalancing`]). Per-endpoint load state lives in `state` and
//! outlives reloads; the consistent-hash ring lives in `ring`. Selection never allocates.

pub mod health;
pub mod kubernetes;
pub mod policy;
mod ring;
pub mod state;
pub mod transport;

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use pingora::upstreams::peer::HttpPeer;

use crate::metrics::Metrics;
use ring::HashRing;
pub use ring::hash64;
pub use state::{Attempt, ConnectionSlot, EndpointState, InFlightSlot, LimitError, PoolState};

use policy::{
    EndpointSpec, HealthCheck, Limits, OutlierDetection, RetryBudgetPolicy, StickyCookie,
};
pub use policy::{KubernetesUpstreamSpec, UpstreamSpec};

/// What a consistent-hash pool hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(Box<str>),
    ClientIp,
    Path,
}

/// How a pool picks an endpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadBalancing {
    /// Every endpoint in turn, ignoring weights.
    RoundRobin,
    /// Smooth weighted round robin (nginx's): proportional and evenly interleaved.
    WeightedRoundRobin,
    /// Weighted random.
    Random,
    /// The fewest requests in flight per unit of weight (ties rotate).
    LeastOutstanding,
    /// Power of two random choices, comparing peak-EWMA latency x (in flight + 1) / weight.
    PeakEwma,
    /// Ketama ring keyed by `on`; requests without a key are spread at random.
    /// `bounded_load` (> 1.0) caps an endpoint at that multiple of the average in-flight.
    ConsistentHash {
        on: HashOn,
        bounded_load: Option<f64>,
    },
}

impl LoadBalancing {
    /// Parse the simple algorithms; `consistent_hash` needs its key, see `config::spec`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "round_robin" => Ok(Self::RoundRobin),
            "weighted_round_robin" => Ok(Self::WeightedRoundRobin),
            "random" => Ok(Self::Random),
            "least_outstanding" => Ok(Self::LeastOutstanding),
            "peak_ewma" => Ok(Self::PeakEwma),
            other => Err(format!(
                "unknown load_balancing {other:?}; expected round_robin, weighted_round_robin, random, least_outstanding, peak_ewma or consistent_hash"
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::Random => "random",
            Self::LeastOutstanding => "least_outstanding",
            Self::PeakEwma => "peak_ewma",
            Self::ConsistentHash { .. } => "consistent_hash",
        }
    }
}

thread_local! {
    // xorshift64 state per thread: random choices without locks or allocation.
    static RNG: Cell<u64> = Cell::new(
        hash64(format!("{:?}", std::thread::current().id()).as_bytes()) | 1
    );
}

/// A uniform random number in [0, 1), for backoff jitter.
pub fn random_unit() -> f64 {
    random_below(1 << 53) as f64 / (1u64 << 53) as f64
}

/// A uniform random number below `n` (n > 0).
fn random_below(n: u64) -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        // Multiply-shift maps 64 random bits onto 0..n without modulo bias worth noting.
        ((u128::from(x) * u128::from(n)) >> 64) as u64
    })
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
    /// Load and health state, carried over from the previous runtime when the endpoint
    /// survives.
    pub state: Arc<EndpointState>,
    /// Takes no new requests (in-flight ones finish).
    pub draining: bool,
    /// Opaque, stable id for sticky-session cookies: a hash of the address.
    pub affinity: u64,
    /// The HTTP version `peer` speaks (`http1`, `h2c`, `h2`).
    pub protocol: transport::Protocol,
}

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: Arc<str>,
    pub endpoints: Vec<Endpoint>,
    pub load_balancing: LoadBalancing,
    schedule: WeightedSchedule,
    /// Prefix sums of weights, for weighted random.
    cumulative: Vec<u64>,
    ring: Option<HashRing>,
    /// Rotating start for least-outstanding scans, so ties do not pile on endpoint 0.
    next: AtomicUsize,
    /// The definition this pool was compiled from; an unchanged one is reused as is.
    pub fingerprint: String,
    pub health_check: Option<HealthCheck>,
    pub outlier_detection: Option<OutlierDetection>,
    pub panic_threshold: u32,
    pub retry_budget: RetryBudgetPolicy,
    pub limits: Limits,
    pub connect_timeout: Duration,
    pub sticky_cookie: Option<StickyCookie>,
    /// Retry budget and in-flight limit; carried over from the previous pool.
    pub state: Arc<PoolState>,
    /// Set for a `kubernetes` upstream: the Service port its endpoints come from.
    pub kubernetes: Option<KubernetesUpstreamSpec>,
}

/// At most this many endpoints are remembered as already tried by one request.
pub const MAX_TRIED: usize = 8;

/// Upstream read/write timeout for routes that set no `timeout` (nginx's default too).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("endpoint {address}: cannot resolve: {reason}")]
    Resolve { address: String, reason: String },
}

/// Find the value of cookie `name` in the request's Cookie headers, without allocating.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
}

impl UpstreamPool {
    /// Resolve every endpoint (DNS names are looked up once, here, like nginx does at
    /// load) and prebuild its peer. State of endpoints (by address) and of the pool that
    /// `previous` already had is carried over, so a reload does not reset it.
    pub fn compile(
        name: &str,
        spec: &UpstreamSpec,
        fingerprint: String,
        previous: Option<&UpstreamPool>,
    ) -> Result<Self, ResolveError> {
        Self::compile_endpoints(name, spec, &spec.endpoints, fingerprint, previous)
    }

    /// [`Self::compile`] with the endpoints given separately: a `kubernetes` upstream
    /// takes them from the discovery snapshot, not from its spec.
    pub fn compile_endpoints(
        name: &str,
        spec: &UpstreamSpec,
        endpoints: &[EndpointSpec],
        fingerprint: String,
        previous: Option<&UpstreamPool>,
    ) -> Result<Self, ResolveError> {
        let mut out = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let address = &ep.address;
            let socket = address
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.next().ok_or_else(|| "no addresses".to_owned()))
                .map_err(|reason| ResolveError::Resolve {
                    address: address.clone(),
                    reason,
                })?;
            let protocol = spec.transport.effective(ep.app_protocol.as_deref());
            let mut peer = spec.transport.peer(socket, address, protocol);
            peer.options.connection_timeout = Some(spec.connect_timeout);
            peer.options.idle_timeout = Some(spec.idle_timeout);
            // A hung upstream must not hold a request forever; routes may override.
            peer.options.read_timeout = Some(DEFAULT_ROUTE_TIMEOUT);
            peer.options.write_timeout = Some(DEFAULT_ROUTE_TIMEOUT);
            let state = previous
                .and_then(|p| p.endpoints.iter().find(|e| *e.address == **address))
                .map(|e| Arc::clone(&e.state))
                .unwrap_or_default();
            out.push(Endpoint {
                address: address.as_str().into(),
                socket,
                weight: ep.weight,
                peer,
                state,
                draining: ep.draining,
                affinity: hash64(address.as_bytes()),
                protocol,
            });
        }
        let load_balancing = spec.load_balancing.clone();
        let weights: Vec<u32> = match load_balancing {
            LoadBalancing::RoundRobin => vec![1; out.len()],
            _ => out.iter().map(|e| e.weight).collect(),
        };
        let cumulative = out
            .iter()
            .scan(0u64, |sum, e| {
                *sum += u64::from(e.weight);
                Some(*sum)
            })
            .collect();
        let ring = matches!(load_balancing, LoadBalancing::ConsistentHash { .. })
            .then(|| HashRing::new(&out));
        Ok(Self {
            name: name.into(),
            schedule: WeightedSchedule::new(&weights),
            cumulative,
            ring,
            next: AtomicUsize::new(0),
            endpoints: out,
            load_balancing,
            fingerprint,
            health_check: spec.health_check.clone(),
            outlier_detection: spec.outlier_detection,
            panic_threshold: spec.panic_threshold,
            retry_budget: spec.retry_budget,
            limits: spec.limits,
            connect_timeout: spec.connect_timeout,
            sticky_cookie: spec.sticky_cookie.clone(),
            state: previous.map(|p| Arc::clone(&p.state)).unwrap_or_default(),
            kubernetes: spec.kubernetes.clone(),
        })
    }

    /// The hash key for a request, for consistent-hash pools (`None` otherwise, or when
    /// the request lacks the header/cookie).
    pub fn hash_key(&self, headers: &HeaderMap, path: &str, client: Option<IpAddr>) -> Option<u64> {
        let LoadBalancing::ConsistentHash { on, .. } = &self.load_balancing else {
            return None;
        };
        match on {
            HashOn::Header(name) => headers.get(name).map(|v| hash64(v.as_bytes())),
            HashOn::Cookie(name) => cookie(headers, name).map(hash64),
            HashOn::Path => Some(hash64(path.as_bytes())),
            HashOn::ClientIp => client.map(|ip| match ip {
                IpAddr::V4(v4) => hash64(&v4.octets()),
                IpAddr::V6(v6) => hash64(&v6.octets()),
            }),
        }
    }

    fn weighted_random(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let r = random_below(total);
        self.cumulative.partition_point(|c| *c <= r)
    }

    fn least_outstanding(&self, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut best = None;
        let mut best_load = f64::INFINITY;
        for i in 0..n {
            let idx = (start + i) % n;
            if !usable(idx) {
                continue;
            }
            let e = &self.endpoints[idx];
            let load = f64::from(e.state.outstanding()) / f64::from(e.weight.max(1));
            if load < best_load {
                best = Some(idx);
                best_load = load;
            }
        }
        best
    }

    fn peak_ewma(&self) -> usize {
        let n = self.endpoints.len() as u64;
        if n < 2 {
            return 0;
        }
        let a = random_below(n) as usize;
        // A second, different endpoint.
        let b = (a + 1 + random_below(n - 1) as usize) % n as usize;
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        if eb.state.cost(eb.weight) < ea.state.cost(ea.weight) {
            b
        } else {
            a
        }
    }

    /// The algorithm's first choice, before health is considered (except where the
    /// algorithm can skip unusable endpoints itself at no extra cost).
    fn first_choice(&self, key: Option<u64>, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        match &self.load_balancing {
            LoadBalancing::RoundRobin | LoadBalancing::WeightedRoundRobin => {
                Some(self.schedule.pick())
            }
            LoadBalancing::Random => Some(self.weighted_random()),
            LoadBalancing::LeastOutstanding => self.least_outstanding(usable),
            LoadBalancing::PeakEwma => Some(self.peak_ewma()),
            LoadBalancing::ConsistentHash { bounded_load, .. } => match (key, &self.ring) {
                (Some(k), Some(ring)) => ring.find(
                    k,
                    &self.endpoints,
                    *bounded_load,
                    self.in_flight_tries(),
                    usable,
                ),
                _ => Some(self.weighted_random()),
            },
        }
    }

    /// Health doesn't count when too few endpoints are available (panic mode): spreading
    /// over all of them beats piling everything onto the few survivors.
    fn panicking(&self, now: u64) -> bool {
        let (mut candidates, mut available) = (0u32, 0u32);
        for e in self.endpoints.iter().filter(|e| !e.draining) {
            candidates += 1;
            available += u32::from(e.state.available(now));
        }
        available * 100 < self.panic_threshold * candidates
    }

    /// Pick the endpoint for one attempt: `key` is [`Self::hash_key`]'s answer, `tried`
    /// the endpoints this request already failed on (avoided while others are usable).
    /// Draining endpoints are never picked; unhealthy or ejected ones only in panic mode.
    pub fn select(&self, key: Option<u64>, tried: &[usize]) -> Option<(usize, &Endpoint)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let now = state::now_ns();
        let strict = |i: usize| {
            let e = &self.endpoints[i];
            !e.draining && !tried.contains(&i) && e.state.available(now)
        };
        // Fast path: the algorithm's choice is fine.
        if let Some(i) = self.first_choice(key, &strict).filter(|i| strict(*i)) {
            return Some((i, &self.endpoints[i]));
        }
        // Slow path: the choice was unavailable or already tried.
        let panic = self.panicking(now);
        let relaxed = |i: usize| {
            let e = &self.endpoints[i];
            !e.draining && (panic || e.state.available(now))
        };
        let fresh = |i: usize| relaxed(i) && !tried.contains(&i);
        for ok in [&fresh as &dyn Fn(usize) -> bool, &relaxed] {
            let found = match (&self.load_balancing, key, &self.ring) {
                (LoadBalancing::LeastOutstanding, _, _) => self.least_outstanding(&|i| ok(i)),
                (LoadBalancing::ConsistentHash { bounded_load, .. }, Some(k), Some(ring)) => ring
                    .find(
                        k,
                        &self.endpoints,
                        *bounded_load,
                        self.in_flight_tries(),
                        &|i| ok(i),
                    ),
                _ => {
                    // Scan from a random start so the fallback load spreads evenly.
                    let start = random_below(n as u64) as usize;
                    (0..n).map(|k| (start + k) % n).find(|i| ok(*i))
                }
            };
            if let Some(i) = found {
                return Some((i, &self.endpoints[i]));
            }
        }
        None
    }

    /// The endpoint a sticky-session cookie in `headers` names, if it may take this
    /// request (not draining, healthy, not ejected, not already tried).
    pub fn sticky_choice(
        &self,
        headers: &HeaderMap,
        tried: &[usize],
    ) -> Option<(usize, &Endpoint)> {
        let sticky = self.sticky_cookie.as_ref()?;
        let value = cookie(headers, &sticky.name)?;
        let id = std::str::from_utf8(value)
            .ok()
            .and_then(|v| u64::from_str_radix(v, 16).ok())?;
        let now = state::now_ns();
        self.endpoints.iter().enumerate().find(|(i, e)| {
            e.affinity == id && !e.draining && !tried.contains(i) && e.state.available(now)
        })
    }

    /// The `Set-Cookie` value that pins a client to `endpoint`.
    pub fn sticky_set_cookie(&self, endpoint: &Endpoint) -> Option<String> {
        let sticky = self.sticky_cookie.as_ref()?;
        let max_age = sticky
            .ttl
            .map(|t| format!("; Max-Age={}", t.as_secs()))
            .unwrap_or_default();
        Some(format!(
            "{}={:016x}; Path=/; HttpOnly; SameSite=Lax{max_age}",
            sticky.name, endpoint.affinity
        ))
    }

    /// Tries in progress across the pool, for bounded-load hashing: the pool's own
    /// counter, so the bound costs O(1), not a sum over every endpoint.
    fn in_flight_tries(&self) -> u64 {
        u64::from(self.state.connections_in_use())
    }

    /// How many endpoints may be ejected at once under the outlier policy.
    pub fn may_eject(&self) -> bool {
        let Some(od) = &self.outlier_detection else {
            return false;
        };
        let now = state::now_ns();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state.is_ejected(now))
            .count();
        (ejected + 1) * 100 <= od.max_ejection_percent as usize * self.endpoints.len()
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

/// Set the per-upstream gauges from the pools serving requests; upstreams that are gone
/// are dropped from the gauges.
pub fn export_metrics<'a>(metrics: &Metrics, pools: impl Iterator<Item = &'a Arc<UpstreamPool>>) {
    for g in [
        &metrics.endpoints,
        &metrics.in_flight,
        &metrics.endpoint_healthy,
        &metrics.endpoint_in_flight,
        &metrics.endpoint_selected,
    ] {
        g.reset();
    }
    let now = state::now_ns();
    for pool in pools {
        let mut counts = [0i64; 4];
        for e in &pool.endpoints {
            let slot = if e.draining {
                3
            } else if !e.state.healthy() {
                1
            } else if e.state.is_ejected(now) {
                2
            } else {
                0
            };
            counts[slot] += 1;
            let labels = [&*pool.name, &*e.address];
            metrics
                .endpoint_healthy
                .with_label_values(&labels)
                .set(i64::from(slot == 0));
            metrics
                .endpoint_in_flight
                .with_label_values(&labels)
                .set(i64::from(e.state.outstanding()));
            metrics
                .endpoint_selected
                .with_label_values(&labels)
                .set(e.state.selected() as i64);
        }
        for (state, n) in ["healthy", "unhealthy", "ejected", "draining"]
            .iter()
            .zip(counts)
        {
            metrics
                .endpoints
                .with_label_values(&[&*pool.name, *state])
                .set(n);
        }
        metrics
            .in_flight
            .with_label_values(&[&pool.name])
            .set(i64::from(pool.state.in_flight()));
    }
}

#[cfg(test)]
mod tests;
