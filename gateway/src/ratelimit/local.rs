//! Owns local rate limiting: one policy's GCRA limiter (`governor` keyed limiters) and
//! its per-key decision. Memory is bounded: idle keys are evicted every few thousand
//! decisions, and while `max_keys` keys are live every request is counted in one shared
//! overflow bucket until a sweep frees room (degraded, counted in a metric, but still
//! limited: never unlimited).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::PolicySpec;
use super::cluster::ClusterPolicy;

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Decisions between two sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;
const OVERFLOW_KEY: &str = "\u{0}overflow";

#[derive(Debug)]
pub struct PolicyLimiter<C: Clock = DefaultClock> {
    pub spec: PolicySpec,
    /// Identity of the definition; an unchanged one keeps its limiter across reloads.
    pub fingerprint: String,
    limiter: Keyed<C>,
    decisions: AtomicU64,
    /// Times a new key went to the overflow bucket because `max_keys` were live.
    pub overflowed: AtomicU64,
    /// Set for `scope: cluster` policies.
    pub cluster: Option<ClusterPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

impl PolicyLimiter<DefaultClock> {
    pub fn new(spec: PolicySpec) -> Self {
        Self::with_clock(spec, DefaultClock::default())
    }
}

impl<C: Clock> PolicyLimiter<C> {
    pub fn with_clock(spec: PolicySpec, clock: C) -> Self {
        // One cell every period/count; at most `burst` at once.
        let per_cell = spec.period / spec.count.max(1);
        let burst = NonZeroU32::new(spec.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            fingerprint: format!("{spec:?}"),
            limiter: RateLimiter::dashmap_with_clock(quota, clock).with_middleware(),
            spec,
            decisions: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            cluster: None,
        }
    }

    /// Seconds in the policy window (for the `w` parameter).
    pub(super) fn window_secs(&self) -> u64 {
        self.spec.period.as_secs().max(1)
    }

    pub fn check(&self, key: &str) -> Verdict {
        let n = self.decisions.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let key = if self.limiter.len() >= self.spec.max_keys {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            OVERFLOW_KEY
        } else {
            key
        };
        match self.limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => Verdict::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Limited {
                retry_after: not_until.wait_time_from(self.limiter.clock().now()),
            },
        }
    }

    /// Time until the bucket is full again, given what remains.
    pub(super) fn reset_after(&self, remaining: u32) -> Duration {
        let per_cell = self.spec.period / self.spec.count.max(1);
        per_cell * self.spec.burst.saturating_sub(remaining)
    }
}
