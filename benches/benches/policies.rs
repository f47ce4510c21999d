//! Criterion benchmarks of the edge policies' own work per request, on routes compiled
//! from YAML as the gateway compiles them: an API-key lookup (SHA-256 of the key, one
//! hash lookup among 1,000 consumers' keys), the CORS headers of an actual request and a
//! preflight answer, both together, a forward-auth decision served from its cache, IP
//! rules over 1,000 networks, and compression throughput per core (Pingora's gzip and
//! zstd encoders, the gateway's brotli one) on a 64 KiB JSON body fed in 16 KiB chunks.
//! `benches/README.md` has the numbers and how they compare to a whole request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::compression::Algo;
use gateway::forward_auth::{CheckRequest, Decision};
use gateway::runtime::{Route, Runtime};
use http::{HeaderMap, HeaderValue, Method};

fn runtime() -> Runtime {
    let mut consumers = String::new();
    for i in 0..1000 {
        let digest = hex::encode(gateway::apikey::digest(
            format!("key-{i:04}-0123456789").as_bytes(),
        ));
        consumers.push_str(&format!(
            "  - {{name: c{i}, groups: [g{}], keys: ['{digest}']}}\n",
            i % 10
        ));
    }
    let mut nets = String::new();
    for i in 0..1000 {
        nets.push_str(&format!("'10.{}.{}.0/24', ", i / 256, i % 256));
    }
    let yaml = format!(
        "
listeners: [{{name: m, address: '127.0.0.1:1'}}]
upstreams: {{u: {{endpoints: [{{address: '127.0.0.1:1'}}]}}}}
consumers:
{consumers}
cors_policies:
  web:
    allow_origins: ['https://app.example.com', 'https://*.example.org']
    allow_methods: [GET, POST, DELETE]
    allow_headers: [content-type, x-api-key]
    expose_headers: [x-request-id]
    allow_credentials: true
    max_age: 10m
routes:
  - id: keyed
    match: {{path: {{prefix: /k}}}}
    cors: web
    ip: {{allow: [{nets}]}}
    auth: {{api_key: {{allow_groups: [g1, g2, g3]}}}}
    upstream: u
  - id: forward
    match: {{path: {{prefix: /f}}}}
    auth:
      forward:
        url: http://127.0.0.1:9/check
        copy_response_headers: [x-auth-user]
        cache: {{ttl: 1h, key: ['header:authorization', 'cookie:session']}}
    upstream: u
"
    );
    let spec = gateway::config::parse(&yaml, "bench.yaml").unwrap_or_else(|e| panic!("{e}"));
    gateway::runtime::compile(&spec, 1, None).unwrap()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (bench)"),
    );
    h.insert("accept", HeaderValue::from_static("application/json"));
    h
}

fn poll_once<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a cached decision must not wait"),
    }
}

fn route<'a>(rt: &'a Runtime, id: &str) -> &'a Route {
    rt.routes.iter().find(|r| &*r.id == id).unwrap()
}

fn per_request(c: &mut Criterion) {
    let rt = runtime();
    let keyed = route(&rt, "keyed");
    let key = keyed.policies.api_key.as_ref().unwrap();
    let cors = match &keyed.policies.cors {
        gateway::cors::RouteCors::On(p) => Arc::clone(p),
        _ => unreachable!(),
    };
    let req = headers(&[
        ("x-api-key", "key-0421-0123456789"),
        ("origin", "https://app.example.com"),
    ]);
    let mut g = c.benchmark_group("policies");
    g.bench_function("api_key", |b| {
        b.iter(|| black_box(key.authenticate(black_box(&req), Some("page=2"))))
    });
    g.bench_function("cors_actual", |b| {
        b.iter(|| black_box(cors.actual(black_box(&req))))
    });
    g.bench_function("api_key_and_cors", |b| {
        b.iter(|| {
            let k = key.authenticate(black_box(&req), Some("page=2"));
            let a = cors.actual(black_box(&req));
            black_box((k, a))
        })
    });
    let pre = headers(&[
        ("origin", "https://shop.example.org"),
        ("access-control-request-method", "DELETE"),
        ("access-control-request-headers", "content-type, x-api-key"),
    ]);
    g.bench_function("cors_preflight", |b| {
        b.iter(|| black_box(cors.preflight(black_box(&pre))))
    });
    let ip = keyed.policies.ip.as_ref().unwrap();
    let addr = Some("10.3.200.17".parse().unwrap());
    g.bench_function("ip_rules_1000_networks", |b| {
        b.iter(|| black_box(ip.allows(black_box(addr))))
    });

    let fa = route(&rt, "forward")
        .policies
        .forward_auth
        .as_ref()
        .unwrap();
    let fh = headers(&[
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLW9mLWEtdG9rZW4tb2Ytc29tZS1sZW5ndGg",
        ),
        (
            "cookie",
            "theme=dark; session=9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        ),
    ]);
    let cache = fa.cache.as_ref().unwrap();
    let k = cache.key(&Method::GET, "/f/orders?page=2", None, &fh);
    let copied = vec![(
        http::HeaderName::from_static("x-auth-user"),
        HeaderValue::from_static("ada"),
    )];
    cache.insert(k, &Decision::Allow(Arc::new(copied)), Instant::now());
    let method = Method::GET;
    g.bench_function("forward_auth_cached", |b| {
        b.iter(|| {
            let check = CheckRequest {
                method: &method,
                uri: "/f/orders?page=2",
                host: "api.example.com",
                proto: "http",
                client_ip: None,
                request_id: "0123456789abcdef0123456789abcdef",
                headers: black_box(&fh),
                body: None,
                trace: None,
            };
            let (d, cached) = poll_once(fa.check(&check));
            assert!(cached);
            black_box(d)
        })
    });
    g.finish();
}

/// A 64 KiB JSON body like an API list response.
fn json_body() -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < 64 * 1024 {
        s.push_str(&format!(
            r#"{{"id":{i},"name":"Product {i}","description":"A fine product, number {i}, in stock","price_cents":{},"tags":["tag{}","sale"],"updated_at":"2026-11-27T17:57:{:02}Z"}},"#,
            1000 + i * 7 % 5000,
            i % 13,
            i % 60
        ));
        i += 1;
    }
    s.pop();
    s.push(']');
    s.into_bytes()
}

fn compression(c: &mut Criterion) {
    let body = json_body();
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for (algo, level) in [
        (Algo::Gzip, 1),
        (Algo::Gzip, 6),
        (Algo::Zstd, 1),
        (Algo::Zstd, 3),
        (Algo::Brotli, 4),
    ] {
        let mut out_len = 0;
        g.bench_function(BenchmarkId::new(algo.token(), level), |b| {
            b.iter(|| {
                let mut enc = algo.encoder(level).unwrap();
                let chunks: Vec<&[u8]> = body.chunks(16 * 1024).collect();
                let mut n = 0;
                for (i, chunk) in chunks.iter().enumerate() {
                    n += enc.encode(chunk, i + 1 == chunks.len()).unwrap().len();
                }
                out_len = n;
                black_box(n)
            })
        });
        println!(
            "compression/{}/{level}: {} -> {out_len} bytes ({:.1}%)",
            algo.token(),
            body.len(),
            100.0 * out_len as f64 / body.len() as f64
        );
    }
    g.finish();
}

criterion_group!(benches, per_request, compression);
criterion_main!(benches);
