//! Cost of picking an endpoint (`UpstreamPool::select`) per load-balancing algorithm, at
//! 10 and 1,000 endpoints. Results: benches/README.md.

// Bench code: a fixture that does not build should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::upstream::{UpstreamPool, hash64};

const ALGORITHMS: [(&str, &str); 7] = [
    ("round_robin", "load_balancing: round_robin"),
    (
        "weighted_round_robin",
        "load_balancing: weighted_round_robin",
    ),
    ("random", "load_balancing: random"),
    ("least_outstanding", "load_balancing: least_outstanding"),
    ("peak_ewma", "load_balancing: peak_ewma"),
    (
        "consistent_hash",
        "load_balancing: consistent_hash, hash_on: 'header:x-user'",
    ),
    (
        "consistent_hash_bounded",
        "load_balancing: consistent_hash, hash_on: 'header:x-user', bounded_load: 1.25",
    ),
];

fn pool(settings: &str, n: usize) -> std::sync::Arc<UpstreamPool> {
    let endpoints: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{address: '127.0.{}.{}:8080', weight: {}}}",
                i / 250,
                i % 250 + 1,
                1 + i % 3
            )
        })
        .collect();
    let text = format!(
        "listeners: [{{name: m, address: '127.0.0.1:1'}}]\nupstreams:\n  u: {{{settings}, endpoints: [{}]}}\nroutes: [{{id: r, upstream: u}}]\n",
        endpoints.join(", ")
    );
    let spec = gateway::config::parse(&text, "bench.yaml").unwrap();
    let rt = gateway::runtime::compile(&spec, 1, None).unwrap();
    std::sync::Arc::clone(&rt.upstreams["u"])
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [10, 1_000] {
        for (name, settings) in ALGORITHMS {
            let pool = pool(settings, n);
            // Some traffic history, so load-aware algorithms compare real numbers.
            for (i, e) in pool.endpoints.iter().enumerate() {
                e.state
                    .observe(std::time::Duration::from_micros(500 + (i as u64 % 7) * 100));
            }
            let keys: Vec<u64> = (0..1024u64).map(|k| hash64(&k.to_le_bytes())).collect();
            let mut i = 0usize;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(
                        pool.select(Some(black_box(keys[i])), &[])
                            .map(|(idx, _)| idx),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
