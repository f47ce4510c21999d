//! Owns the circuit breaker of one Redis backend, so a slow or dead Redis costs one
//! failed call per probe interval instead of one per request, and one slow reply does
//! not flip a policy into its failure mode.
//!
//! - closed: every decision calls Redis; it opens after `consecutive_failures` failures
//!   in a row, or when at least `min_calls` calls of the current `window` failed at
//!   `error_ratio` or more;
//! - open: Redis is skipped (the policies' `on_redis_failure` applies); one request per
//!   `probe_interval` probes it;
//! - half-open (a probe succeeded): one call at a time probes; `close_after` successes
//!   in a row close it, a failure opens it again.
//!
//! Each transition is logged once and shown in `gateway_redis_circuit_state{backend}`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// `server.redis.circuit_breaker`.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSpec {
    pub consecutive_failures: u32,
    pub error_ratio: f64,
    pub window: Duration,
    pub min_calls: u32,
    pub probe_interval: Duration,
    pub close_after: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_ratio: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            probe_interval: Duration::from_secs(1),
            close_after: 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { next_probe: Instant },
    HalfOpen,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive: u32,
    window_start: Instant,
    calls: u32,
    errors: u32,
    probe_in_flight: bool,
    successes: u32,
}

/// What a caller may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Closed: call Redis.
    Call,
    /// Open or half-open: this call is the probe.
    Probe,
    /// Open: do not call Redis.
    Skip,
}

#[derive(Debug)]
pub struct Breaker {
    spec: BreakerSpec,
    /// The backend's metric label (its URL without credentials).
    label: String,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(spec: BreakerSpec, label: String) -> Self {
        Self {
            spec,
            label,
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive: 0,
                window_start: Instant::now(),
                calls: 0,
                errors: 0,
                probe_in_flight: false,
                successes: 0,
            }),
        }
    }

    pub fn spec(&self) -> &BreakerSpec {
        &self.spec
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a few assignments: a poisoned state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn acquire(&self) -> Permit {
        let mut s = self.lock();
        match s.phase {
            Phase::Closed => Permit::Call,
            Phase::Open { next_probe } if !s.probe_in_flight && Instant::now() >= next_probe => {
                s.probe_in_flight = true;
                Permit::Probe
            }
            Phase::HalfOpen if !s.probe_in_flight => {
                s.probe_in_flight = true;
                Permit::Probe
            }
            _ => Permit::Skip,
        }
    }

    /// Is Redis being skipped (open, or probing)?
    pub fn is_open(&self) -> bool {
        self.lock().phase != Phase::Closed
    }

    /// The outcome of a call made with `permit`.
    pub fn record(&self, permit: Permit, ok: bool, metrics: &Metrics) {
        let now = Instant::now();
        let mut s = self.lock();
        match permit {
            Permit::Skip => {}
            Permit::Call => {
                if now.duration_since(s.window_start) > self.spec.window {
                    s.window_start = now;
                    s.calls = 0;
                    s.errors = 0;
                }
                s.calls += 1;
                if ok {
                    s.consecutive = 0;
                    return;
                }
                s.errors += 1;
                s.consecutive += 1;
                let ratio = f64::from(s.errors) / f64::from(s.calls.max(1));
                let why = if s.consecutive >= self.spec.consecutive_failures {
                    Some("consecutive failures")
                } else if s.calls >= self.spec.min_calls && ratio >= self.spec.error_ratio {
                    Some("error ratio")
                } else {
                    None
                };
                if let (Some(why), Phase::Closed) = (why, s.phase) {
                    s.phase = Phase::Open {
                        next_probe: now + self.spec.probe_interval,
                    };
                    tracing::warn!(backend = %self.label, reason = why, failures = s.consecutive, calls = s.calls, errors = s.errors, "redis circuit opened: skipping Redis, probing once per interval");
                    self.export(metrics, 2, "open");
                }
            }
            Permit::Probe => {
                s.probe_in_flight = false;
                if ok {
                    s.successes += 1;
                    if s.successes >= self.spec.close_after {
                        *s = State {
                            phase: Phase::Closed,
                            consecutive: 0,
                            window_start: now,
                            calls: 0,
                            errors: 0,
                            probe_in_flight: false,
                            successes: 0,
                        };
                        tracing::info!(backend = %self.label, "redis circuit closed: Redis answers again");
                        self.export(metrics, 0, "closed");
                    } else if s.phase != Phase::HalfOpen {
                        s.phase = Phase::HalfOpen;
                        tracing::info!(backend = %self.label, "redis circuit half-open: probing");
                        self.export(metrics, 1, "half_open");
                    }
                } else {
                    s.successes = 0;
                    let was = s.phase;
                    s.phase = Phase::Open {
                        next_probe: now + self.spec.probe_interval,
                    };
                    if was == Phase::HalfOpen {
                        tracing::warn!(backend = %self.label, "redis circuit opened again: a probe failed");
                        self.export(metrics, 2, "open");
                    }
                }
            }
        }
    }

    fn export(&self, metrics: &Metrics, state: i64, name: &str) {
        metrics
            .redis_circuit_state
            .with_label_values(&[&self.label])
            .set(state);
        metrics
            .redis_circuit_transitions
            .with_label_values(&[&self.label, name])
            .inc();
    }

    /// The backend's metric label.
    pub fn label(&self) -> &str {
        &self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(probe: Duration) -> Breaker {
        Breaker::new(
            BreakerSpec {
                consecutive_failures: 3,
                min_calls: 10,
                probe_interval: probe,
                ..BreakerSpec::default()
            },
            "redis://test".into(),
        )
    }

    #[test]
    fn opens_probes_and_closes() {
        let m = Metrics::new().unwrap();
        let b = breaker(Duration::ZERO);
        for _ in 0..2 {
            assert_eq!(b.acquire(), Permit::Call);
            b.record(Permit::Call, false, &m);
        }
        assert!(!b.is_open(), "two failures are not enough");
        b.record(Permit::Call, true, &m);
        for _ in 0..3 {
            b.record(Permit::Call, false, &m);
        }
        assert!(b.is_open());
        // One probe at a time.
        assert_eq!(b.acquire(), Permit::Probe);
        assert_eq!(b.acquire(), Permit::Skip);
        b.record(Permit::Probe, false, &m);
        assert_eq!(b.acquire(), Permit::Probe);
        b.record(Permit::Probe, true, &m);
        assert!(b.is_open(), "half-open after one success");
        assert_eq!(b.acquire(), Permit::Probe);
        b.record(Permit::Probe, true, &m);
        assert!(!b.is_open());
        assert_eq!(b.acquire(), Permit::Call);
    }

    #[test]
    fn error_ratio_opens_without_a_streak() {
        let m = Metrics::new().unwrap();
        let b = breaker(Duration::from_secs(3600));
        for i in 0..10 {
            b.record(Permit::Call, i % 2 == 0, &m);
        }
        assert!(b.is_open());
        assert_eq!(b.acquire(), Permit::Skip, "no probe before the interval");
    }
}
