//! Owns the state that must outlive a reload: per endpoint, requests in flight, a
//! peak-EWMA of response-head latency, active health and passive ejection; per pool, the
//! retry budget and the in-flight limit. Each is an `Arc` handed from one runtime's pool
//! to the next for every endpoint (or upstream) that survives a reload.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::policy::{OutlierDetection, RetryBudgetPolicy};

/// How fast the latency estimate forgets: after `DECAY` of calm, an old peak weighs 1/e.
const DECAY: Duration = Duration::from_secs(10);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process epoch: the clock of ejections and the latency estimate.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

#[derive(Debug)]
pub struct EndpointState {
    outstanding: AtomicU32,
    /// Peak-EWMA latency in nanoseconds, as `f64` bits.
    ewma_bits: AtomicU64,
    /// When `ewma_bits` was last updated (ns since the process epoch).
    stamp_ns: AtomicU64,
    /// Times this endpoint was selected, for `/admin/upstreams`.
    selected: AtomicU64,
    /// Verdict of the active checker; endpoints without one stay healthy.
    healthy: AtomicBool,
    /// Consecutive failures the proxy saw (5xx, connect failures); reset by a success.
    consecutive_failures: AtomicU32,
    /// How often this endpoint was ejected; scales the next ejection.
    ejections: AtomicU32,
    /// Ejected until this instant (ns since the epoch); 0 = never ejected.
    ejected_until_ns: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            outstanding: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(0),
            stamp_ns: AtomicU64::new(0),
            selected: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
        }
    }
}

impl EndpointState {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Set by the active checker; returns whether the verdict changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ns.load(Ordering::Relaxed) > now
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Healthy and not ejected: may take new requests outside panic mode.
    pub fn available(&self, now: u64) -> bool {
        self.healthy() && !self.is_ejected(now)
    }

    /// A response that was not a failure: the failure streak ends. An endpoint that has
    /// stayed out of ejection for a whole maximum ejection time starts its count afresh.
    pub fn record_success(&self, od: &OutlierDetection) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let until = self.ejected_until_ns.load(Ordering::Relaxed);
        if until != 0 && now_ns() > until + od.max_ejection_time.as_nanos() as u64 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A 5xx or connect failure. Ejects the endpoint when the streak reaches the
    /// threshold and `may_eject` (the pool's ejection cap) allows; returns whether it did.
    pub fn record_failure(&self, od: &OutlierDetection, may_eject: impl FnOnce() -> bool) -> bool {
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ns();
        if streak < od.consecutive_failures || self.is_ejected(now) || !may_eject() {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = od
            .base_ejection_time
            .saturating_mul(n)
            .min(od.max_ejection_time);
        self.ejected_until_ns
            .store(now + time.as_nanos() as u64, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }

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

/// Length of the retry budget's sliding window, in one-second buckets.
const BUDGET_WINDOW: u64 = 10;

#[derive(Debug, Default)]
struct BudgetBucket {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// A sliding ten-second count of requests and retries for one upstream. Updates race
/// benignly: a bucket rolled over by two threads at once may lose a count.
#[derive(Debug, Default)]
pub struct RetryBudget {
    buckets: [BudgetBucket; BUDGET_WINDOW as usize],
}

impl RetryBudget {
    fn bucket(&self, second: u64) -> &BudgetBucket {
        let b = &self.buckets[(second % BUDGET_WINDOW) as usize];
        if b.second.swap(second, Ordering::Relaxed) != second {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    fn totals(&self, second: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| second.saturating_sub(b.second.load(Ordering::Relaxed)) < BUDGET_WINDOW)
            .fold((0, 0), |(q, r), b| {
                (
                    q + u64::from(b.requests.load(Ordering::Relaxed)),
                    r + u64::from(b.retries.load(Ordering::Relaxed)),
                )
            })
    }

    /// Count one request (a first try).
    pub fn deposit(&self) {
        let second = now_ns() / 1_000_000_000;
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Take one retry from the budget, if the window has room for it.
    pub fn withdraw(&self, policy: &RetryBudgetPolicy) -> bool {
        let second = now_ns() / 1_000_000_000;
        let (requests, retries) = self.totals(second);
        let allowed = policy.ratio * requests as f64
            + f64::from(policy.min_per_second) * BUDGET_WINDOW as f64;
        if (retries as f64) < allowed {
            self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// Per-upstream state that outlives reloads: the retry budget and the in-flight limit.
#[derive(Debug, Default)]
pub struct PoolState {
    pub budget: RetryBudget,
    /// Tries in progress: with HTTP/1.1 upstreams, connections in use.
    connections: AtomicU32,
    in_flight: AtomicU32,
    pending: AtomicU32,
    freed: Notify,
}

/// Why a request could not get an in-flight slot.
#[derive(Debug, PartialEq, Eq)]
pub enum LimitError {
    /// The pool is full and so is its waiting line.
    Overloaded,
}

impl PoolState {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn connections_in_use(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Take a connection for one try, unless `max` are already in use.
    pub fn try_connection(self: &Arc<Self>, max: Option<u32>) -> Option<ConnectionSlot> {
        let limit = max.unwrap_or(u32::MAX);
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(Arc::clone(self)))
    }

    fn try_take(&self, max: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Take an in-flight slot: at once when one is free, else wait (up to `wait`) in a
    /// line of at most `max_pending`; `Overloaded` when the line is full or the wait ends.
    pub async fn acquire(
        self: &Arc<Self>,
        max_in_flight: Option<u32>,
        max_pending: u32,
        wait: Duration,
    ) -> Result<InFlightSlot, LimitError> {
        let Some(max) = max_in_flight else {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return Ok(InFlightSlot(Arc::clone(self)));
        };
        if self.try_take(max) {
            return Ok(InFlightSlot(Arc::clone(self)));
        }
        if self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_pending).then_some(n + 1)
            })
            .is_err()
        {
            return Err(LimitError::Overloaded);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let result = loop {
            let freed = self.freed.notified();
            if self.try_take(max) {
                break Ok(InFlightSlot(Arc::clone(self)));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break Err(LimitError::Overloaded);
            }
        };
        self.pending.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

/// One try's hold on its upstream's connection limit, released on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<PoolState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request's hold on its upstream's in-flight limit, released on drop.
#[derive(Debug)]
pub struct InFlightSlot(Arc<PoolState>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
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

    pub fn state(&self) -> &Arc<EndpointState> {
        &self.state
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
    fn ejection_grows_with_repeat_offences_and_respects_the_cap() {
        let od = OutlierDetection {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 100,
        };
        let s = EndpointState::default();
        assert!(!s.record_failure(&od, || true));
        assert!(!s.record_failure(&od, || true));
        s.record_success(&od);
        assert!(
            !s.record_failure(&od, || true),
            "a success resets the streak"
        );
        assert!(!s.record_failure(&od, || true));
        assert!(
            s.record_failure(&od, || true),
            "third failure in a row ejects"
        );
        let now = now_ns();
        assert!(s.is_ejected(now) && !s.available(now));
        let until = s.ejected_until_ns.load(Ordering::Relaxed) - now;
        assert!(until <= 10_000_000_000 && until > 9_000_000_000);
        // Second ejection: twice the base; third: capped at the maximum.
        s.ejected_until_ns.store(1, Ordering::Relaxed);
        for _ in 0..3 {
            s.record_failure(&od, || true);
        }
        let until = s.ejected_until_ns.load(Ordering::Relaxed) - now_ns();
        assert!(until > 19_000_000_000 && until <= 20_000_000_000);
        s.ejected_until_ns.store(1, Ordering::Relaxed);
        for _ in 0..3 {
            s.record_failure(&od, || true);
        }
        let until = s.ejected_until_ns.load(Ordering::Relaxed) - now_ns();
        assert!(until > 24_000_000_000 && until <= 25_000_000_000);
        // The pool's cap can refuse an ejection.
        let t = EndpointState::default();
        for _ in 0..5 {
            assert!(!t.record_failure(&od, || false));
        }
        assert!(t.available(now_ns()));
    }

    #[test]
    fn retry_budget_is_a_share_of_requests_plus_a_floor() {
        let policy = RetryBudgetPolicy {
            ratio: 0.2,
            min_per_second: 1,
        };
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.deposit();
        }
        // 20% of 100 requests plus 1/s over the 10 s window = 30 retries.
        let granted = (0..100).filter(|_| b.withdraw(&policy)).count();
        assert_eq!(granted, 30);
    }

    #[tokio::test]
    async fn in_flight_limit_queues_then_refuses() {
        let pool = Arc::new(PoolState::default());
        let wait = Duration::from_millis(200);
        let a = pool.acquire(Some(2), 1, wait).await.unwrap();
        let _b = pool.acquire(Some(2), 1, wait).await.unwrap();
        assert_eq!(pool.in_flight(), 2);
        // One may wait; it gets the slot when `a` is released.
        let waiter = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move {
                pool.acquire(Some(2), 1, Duration::from_secs(5))
                    .await
                    .map(|_| ())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The line is full: refused at once.
        assert_eq!(
            pool.acquire(Some(2), 1, wait).await.err(),
            Some(LimitError::Overloaded)
        );
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Waiting longer than `wait` ends in a refusal too.
        let _c = pool.acquire(Some(2), 1, wait).await.unwrap();
        assert_eq!(
            pool.acquire(Some(2), 1, Duration::from_millis(20))
                .await
                .err(),
            Some(LimitError::Overloaded)
        );
        // No limit: always granted, still counted.
        let _d = pool.acquire(None, 0, wait).await.unwrap();
        assert_eq!(pool.in_flight(), 3);
    }

    #[test]
    fn connection_limit() {
        let pool = Arc::new(PoolState::default());
        let a = pool.try_connection(Some(2)).unwrap();
        let _b = pool.try_connection(Some(2)).unwrap();
        assert!(pool.try_connection(Some(2)).is_none());
        assert_eq!(pool.connections_in_use(), 2);
        drop(a);
        assert!(pool.try_connection(Some(2)).is_some());
        assert!(pool.try_connection(None).is_some());
    }

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
