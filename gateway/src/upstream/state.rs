//! Owns per-endpoint load state: requests in flight and a peak-EWMA of response-head
//! latency. It lives outside `Runtime` (an `Arc` handed from one runtime's pool to the
//! next for every endpoint that survives a reload), so a reload does not reset it.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How fast the latency estimate forgets: after `DECAY` of calm, an old peak weighs 1/e.
const DECAY: Duration = Duration::from_secs(10);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

#[derive(Debug, Default)]
pub struct EndpointState {
    outstanding: AtomicU32,
    /// Peak-EWMA latency in nanoseconds, as `f64` bits.
    ewma_bits: AtomicU64,
    /// When `ewma_bits` was last updated (ns since the process epoch).
    stamp_ns: AtomicU64,
    /// Times this endpoint was selected, for `/admin/upstreams`.
    selected: AtomicU64,
}

impl EndpointState {
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn selected(&self) -> u64 {
        self.selected.load(Ordering::Relaxed)
    }

    /// Latency estimate in nanoseconds (0 until the first response).
    pub fn ewma_ns(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Ordering::Relaxed))
    }

    /// Peak EWMA (Finagle, linkerd): a slower sample replaces the estimate at once, faster
    /// samples pull it down with a time-based decay. Concurrent updates may lose one
    /// sample to another; the estimate stays within the samples' range either way.
    pub fn observe(&self, rtt: Duration) {
        let now = now_ns();
        let rtt = rtt.as_nanos() as f64;
        let prev = self.ewma_ns();
        let elapsed = now.saturating_sub(self.stamp_ns.swap(now, Ordering::Relaxed)) as f64;
        let next = if rtt > prev {
            rtt
        } else {
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Expected cost of one more request here, per unit of weight: an estimate of the
    /// wait (latency x queue) that also works before any latency is known.
    pub fn cost(&self, weight: u32) -> f64 {
        // 1 µs floor so that outstanding counts still rank endpoints with no samples.
        let latency = self.ewma_ns().max(1_000.0);
        latency * f64::from(self.outstanding() + 1) / f64::from(weight.max(1))
    }
}

/// One attempt on one endpoint: counts as outstanding until dropped.
#[derive(Debug)]
pub struct Attempt {
    state: Arc<EndpointState>,
    started: Instant,
}

impl Attempt {
    pub fn begin(state: &Arc<EndpointState>) -> Self {
        state.outstanding.fetch_add(1, Ordering::Relaxed);
        state.selected.fetch_add(1, Ordering::Relaxed);
        Self {
            state: Arc::clone(state),
            started: Instant::now(),
        }
    }

    /// The upstream's response head arrived: feed the latency estimate.
    pub fn response_head(&self) -> Duration {
        let rtt = self.started.elapsed();
        self.state.observe(rtt);
        rtt
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_outstanding() {
        let s = Arc::new(EndpointState::default());
        let a = Attempt::begin(&s);
        let b = Attempt::begin(&s);
        assert_eq!((s.outstanding(), s.selected()), (2, 2));
        drop(a);
        assert_eq!(s.outstanding(), 1);
        drop(b);
        assert_eq!((s.outstanding(), s.selected()), (0, 2));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = Arc::new(EndpointState::default());
        s.observe(Duration::from_millis(10));
        assert_eq!(s.ewma_ns(), 10e6);
        s.observe(Duration::from_millis(100));
        assert_eq!(s.ewma_ns(), 100e6, "a slower sample is taken at once");
        s.observe(Duration::from_millis(1));
        // Back-to-back samples barely move a peak: decay is by time, not by count.
        assert!(s.ewma_ns() > 99e6, "{}", s.ewma_ns());
        // Cost grows with the queue and shrinks with weight.
        let idle = s.cost(1);
        let busy = Attempt::begin(&s);
        assert!(s.cost(1) > idle);
        assert!(s.cost(4) < s.cost(1));
        drop(busy);
        assert_eq!(s.cost(1), idle);
    }
}
