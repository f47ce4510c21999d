//! Cost of one rate-limit decision for a key the limiter already tracks: local (GCRA in
//! process), and cluster in Redis, strict (one round trip) and batched (one round trip
//! per batch). The Redis benchmarks start their own `redis-server` on a free port.
//! Results: benches/README.md.

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
        consumer: None,
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

struct Redis(std::process::Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child, port)
}

fn cluster(c: &mut Criterion) {
    use gateway::ratelimit::{Batch, ClusterPolicy, FailurePolicy, RedisBackend, RedisSpec};
    let redis = redis_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = gateway::metrics::Metrics::new().unwrap();
    let backend = Arc::new(RedisBackend::new(
        RedisSpec {
            url: format!("redis://127.0.0.1:{}", redis.1),
            timeout: Duration::from_secs(1),
            password_file: None,
        },
        gateway::ratelimit::BreakerSpec::default(),
    ));
    let policy = spec(vec![KeyPart::ClientIp]);
    let mut group = c.benchmark_group("ratelimit_redis");
    for (name, batch) in [
        ("strict", None),
        (
            "batched_100",
            Some(Batch {
                size: 100,
                interval: Duration::from_secs(1),
            }),
        ),
    ] {
        let mut p = ClusterPolicy::new(
            Arc::clone(&backend),
            FailurePolicy::FailOpen,
            PolicyLimiter::new(policy.clone()),
        );
        p.batch = batch;
        rt.block_on(p.check(&policy, "203.0.113.7", &metrics));
        group.bench_function(name, |b| {
            b.iter(|| black_box(rt.block_on(p.check(&policy, black_box("203.0.113.7"), &metrics))))
        });
    }
    group.finish();
}

criterion_group!(benches, decisions, cluster);
criterion_main!(benches);
