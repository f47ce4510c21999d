//! Cost of one local rate-limit decision (key building + GCRA check + header values) for
//! a key the limiter already tracks. Results: benches/README.md.

// Bench code: a fixture that does not build should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::ratelimit::{self, KeyInput, KeyPart, PolicyLimiter, PolicySpec};
use http::{HeaderMap, HeaderName};

fn spec(key: Vec<KeyPart>) -> PolicySpec {
    PolicySpec {
        name: "bench".into(),
        // Generous, so the measured decisions are admissions, the common case.
        count: 1_000_000_000,
        period: Duration::from_secs(1),
        burst: 1_000_000_000,
        key,
        max_keys: 1_000_000,
        legacy_headers: false,
        cluster: None,
    }
}

fn decisions(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "user-42".parse().unwrap());
    let input = KeyInput {
        client_ip: Some("203.0.113.7".parse().unwrap()),
        headers: &headers,
        route_id: "orders",
    };
    let mut group = c.benchmark_group("ratelimit");

    let by_ip = PolicyLimiter::new(spec(vec![KeyPart::ClientIp]));
    by_ip.check("203.0.113.7");
    group.bench_function("check_existing_key", |b| {
        b.iter(|| black_box(by_ip.check(black_box("203.0.113.7"))))
    });

    // 10,000 other keys live, the decision is for one of them.
    for i in 0..10_000 {
        by_ip.check(&format!("10.0.{}.{}", i / 250, i % 250));
    }
    group.bench_function("check_existing_key_10k_keys", |b| {
        b.iter(|| black_box(by_ip.check(black_box("10.0.20.20"))))
    });

    let per_user = vec![Arc::new(PolicyLimiter::new(spec(vec![
        KeyPart::Header(HeaderName::from_static("x-user")),
        KeyPart::RouteId,
    ])))];
    ratelimit::decide_local(&per_user, &input);
    group.bench_function("decide_with_headers", |b| {
        b.iter(|| {
            black_box(ratelimit::decide_local(black_box(&per_user), black_box(&input)).headers())
        })
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
