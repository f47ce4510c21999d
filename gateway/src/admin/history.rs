//! Owns the status page's recent history: once a second a background thread reads the
//! counters the request path already updates (`gateway_requests_total`, the
//! `gateway_request_duration_seconds` histogram, cache lookups, rate-limit decisions)
//! from the metric registry and keeps, per route, the last [`SAMPLES`] seconds of
//! req/s, 4xx/s, 5xx/s and p50/p99 latency (estimated from the histogram buckets'
//! increase over the second, as Prometheus' `histogram_quantile` does). Nothing is
//! added to the request path: the one lock here is shared by this thread and admin
//! requests only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::proto::MetricFamily;
use serde::Serialize;

use crate::metrics::Metrics;

/// Seconds of history kept (five minutes).
pub const SAMPLES: usize = 300;
const TICK: Duration = Duration::from_secs(1);

/// One route's series, oldest first; latencies in milliseconds (`None`: no request
/// in that second).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RouteSeries {
    pub rps: VecDeque<f64>,
    pub rate_4xx: VecDeque<f64>,
    pub rate_5xx: VecDeque<f64>,
    pub p50_ms: VecDeque<Option<f64>>,
    pub p99_ms: VecDeque<Option<f64>>,
    pub total: u64,
}

/// Totals since start that the page shows beside the series.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Totals {
    /// Cache lookups by outcome (hit, miss, stale, ...).
    pub cache_lookups: BTreeMap<String, u64>,
    /// Rate-limit decisions by policy: (allowed, limited).
    pub rate_limits: BTreeMap<String, (u64, u64)>,
    /// Redis circuit state per backend (0 closed, 1 half-open, 2 open).
    pub redis_circuits: BTreeMap<String, i64>,
    /// Redis calls by backend and result.
    pub redis_calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Trace spans exported and dropped.
    pub trace_spans_exported: u64,
    pub trace_spans_dropped: u64,
}

/// One route's previous reading: counts by status class, and histogram buckets
/// (upper bound, cumulative count).
type Reading = (HashMap<String, u64>, Vec<(f64, u64)>);

#[derive(Debug, Default)]
struct State {
    routes: BTreeMap<String, RouteSeries>,
    totals: Totals,
    /// The previous reading, per route.
    last: HashMap<String, Reading>,
}

/// The shared history; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<State>>);

impl History {
    /// Start the sampling thread (for the life of the process).
    pub fn start(metrics: Arc<Metrics>) -> History {
        let history = History::default();
        let h = history.clone();
        let spawned = std::thread::Builder::new()
            .name("status-history".into())
            .spawn(move || {
                loop {
                    h.sample(&metrics.registry().gather());
                    std::thread::sleep(TICK);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no status page history (cannot start its thread)");
        }
        history
    }

    /// The series and totals as they are now.
    pub fn snapshot(&self) -> (BTreeMap<String, RouteSeries>, Totals) {
        match self.0.lock() {
            Ok(s) => (s.routes.clone(), s.totals.clone()),
            Err(_) => Default::default(),
        }
    }

    /// Take one reading of the registry's families (one second after the previous).
    pub fn sample(&self, families: &[MetricFamily]) {
        let Ok(mut state) = self.0.lock() else {
            return;
        };
        let mut counts: HashMap<String, HashMap<String, u64>> = HashMap::new();
        let mut buckets: HashMap<String, Vec<(f64, u64)>> = HashMap::new();
        let mut totals = Totals::default();
        for f in families {
            match f.name() {
                "gateway_requests_total" => {
                    for m in f.get_metric() {
                        let route = label(m, "route");
                        let class = label(m, "status_class");
                        *counts.entry(route).or_default().entry(class).or_default() +=
                            m.get_counter().get_value() as u64;
                    }
                }
                "gateway_request_duration_seconds" => {
                    for m in f.get_metric() {
                        let h = m.get_histogram();
                        let b: Vec<(f64, u64)> = h
                            .get_bucket()
                            .iter()
                            .map(|b| (b.upper_bound(), b.cumulative_count()))
                            .chain(std::iter::once((f64::INFINITY, h.get_sample_count())))
                            .collect();
                        buckets.insert(label(m, "route"), b);
                    }
                }
                "gateway_cache_requests_total" => {
                    for m in f.get_metric() {
                        *totals.cache_lookups.entry(label(m, "outcome")).or_default() +=
                            m.get_counter().get_value() as u64;
                    }
                }
                "gateway_ratelimit_decisions_total" => {
                    for m in f.get_metric() {
                        let e = totals.rate_limits.entry(label(m, "policy")).or_default();
                        let n = m.get_counter().get_value() as u64;
                        if label(m, "result") == "limited" {
                            e.1 += n;
                        } else {
                            e.0 += n;
                        }
                    }
                }
                "gateway_redis_circuit_state" => {
                    for m in f.get_metric() {
                        totals
                            .redis_circuits
                            .insert(label(m, "backend"), m.get_gauge().get_value() as i64);
                    }
                }
                "gateway_redis_calls_total" => {
                    for m in f.get_metric() {
                        *totals
                            .redis_calls
                            .entry(label(m, "backend"))
                            .or_default()
                            .entry(label(m, "result"))
                            .or_default() += m.get_counter().get_value() as u64;
                    }
                }
                "gateway_trace_spans_exported_total" => {
                    totals.trace_spans_exported = f
                        .get_metric()
                        .iter()
                        .map(|m| m.get_counter().get_value() as u64)
                        .sum();
                }
                "gateway_trace_spans_dropped_total" => {
                    totals.trace_spans_dropped = f
                        .get_metric()
                        .iter()
                        .map(|m| m.get_counter().get_value() as u64)
                        .sum();
                }
                _ => {}
            }
        }
        state.totals = totals;
        for (route, now) in counts {
            let hist = buckets.remove(&route).unwrap_or_default();
            let (before, before_hist) = state.last.get(&route).cloned().unwrap_or_default();
            let delta = |class: &str| {
                now.get(class)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(before.get(class).copied().unwrap_or(0))
            };
            let all: u64 = now
                .values()
                .sum::<u64>()
                .saturating_sub(before.values().sum());
            let increase: Vec<(f64, u64)> = hist
                .iter()
                .map(|(le, c)| {
                    let prev = before_hist
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0, |(_, p)| *p);
                    (*le, c.saturating_sub(prev))
                })
                .collect();
            let series = state.routes.entry(route.clone()).or_default();
            push(&mut series.rps, all as f64);
            push(&mut series.rate_4xx, delta("4xx") as f64);
            push(&mut series.rate_5xx, delta("5xx") as f64);
            push(
                &mut series.p50_ms,
                quantile(&increase, 0.5).map(|s| s * 1000.0),
            );
            push(
                &mut series.p99_ms,
                quantile(&increase, 0.99).map(|s| s * 1000.0),
            );
            series.total = now.values().sum();
            state.last.insert(route, (now, hist));
        }
    }
}

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == SAMPLES {
        q.pop_front();
    }
    q.push_back(v);
}

fn label(m: &prometheus::proto::Metric, name: &str) -> String {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value().to_owned())
        .unwrap_or_default()
}

/// The `q` quantile of cumulative `(upper bound, count)` buckets, interpolated
/// linearly inside the bucket it falls in (the last finite bound for +Inf).
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = (count - lower.1) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(0.01, 50), (0.1, 90), (1.0, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 0.5), Some(0.01));
        let p90 = quantile(&b, 0.9).unwrap();
        assert!((p90 - 0.1).abs() < 1e-9);
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None);
        // Beyond the last finite bound: that bound.
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 4)], 0.99), Some(0.1));
    }

    #[test]
    fn series_are_deltas_of_the_counters() {
        let metrics = Metrics::new().unwrap();
        let h = History::default();
        h.sample(&metrics.registry().gather());
        for _ in 0..3 {
            metrics
                .requests
                .with_label_values(&["r1", "GET", "2xx"])
                .inc();
        }
        metrics
            .requests
            .with_label_values(&["r1", "GET", "5xx"])
            .inc();
        metrics
            .request_duration
            .with_label_values(&["r1"])
            .observe(0.004);
        h.sample(&metrics.registry().gather());
        h.sample(&metrics.registry().gather());
        let (routes, _) = h.snapshot();
        let r = &routes["r1"];
        assert_eq!(Vec::from(r.rps.clone()), [4.0, 0.0]);
        assert_eq!(Vec::from(r.rate_5xx.clone()), [1.0, 0.0]);
        assert!(r.p99_ms[0].is_some_and(|p| p > 2.5 && p <= 5.0));
        assert_eq!(r.p99_ms[1], None);
        assert_eq!(r.total, 4);
    }
}
