//! Cost of JWT authentication per request.
//!
//! `jwt/verify_cold/<alg>`: `auth::validate::validate` of a token never seen before:
//! split, base64 and JSON decoding, key choice, signature (aws-lc-rs), claims. Keys are
//! fresh (RSA 2048, P-256, Ed25519, 32-byte HMAC); the claims are those the sample auth
//! service issues.
//! `jwt/authenticate_cached/<alg>`: the whole request-phase step (`auth::authenticate`)
//! for a token already verified: token extraction from `Authorization`, one SipHash of
//! the token, the cache lookup and token comparison, the route's claim requirement, the
//! metric, and building the `claims_to_headers` values. Results: benches/README.md.

// Benchmarks are test code: a fixture that does not build should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::auth::keys::KeySet;
use gateway::auth::testkeys::{SigningKey, jwks};
use gateway::auth::validate::{Policy, validate};
use gateway::auth::{self, AuthOutcome, unix_now};
use gateway::metrics::Metrics;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use serde_json::json;

const ALGS: [Algorithm; 4] = [
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

fn claims() -> serde_json::Value {
    let now = unix_now();
    json!({
        "iss": "http://127.0.0.1:8080/auth",
        "aud": "api",
        "sub": "0b9c7a52-7f39-4a53-a2a7-5d1f3c1e9a10",
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "scope": "profile orders:read orders:write",
        "roles": ["customer"],
        "email": "ada@example.com",
    })
}

fn verify_cold(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt/verify_cold");
    for alg in ALGS {
        let key = SigningKey::generate(alg, Some("k1")).unwrap();
        let (keys, _) = KeySet::from_jwks(jwks(&[&key]).to_string().as_bytes()).unwrap();
        let keys = KeySet {
            keys,
            generation: 1,
            ..KeySet::default()
        };
        let policy = Policy {
            algorithms: vec![alg],
            issuers: vec!["http://127.0.0.1:8080/auth".into()],
            audiences: vec!["api".into()],
            leeway: 30,
            require_exp: true,
            required_claims: vec!["sub".into()],
            max_token_bytes: 8192,
        };
        let token = key.sign(&claims()).unwrap();
        let now = unix_now();
        validate(&token, &policy, &keys, now).unwrap();
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{alg:?}")),
            &token,
            |b, t| b.iter(|| black_box(validate(black_box(t), &policy, &keys, now).unwrap())),
        );
    }
    group.finish();
}

/// Poll a future that never waits (the cached path) to completion, without a runtime.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the cached path must not wait"),
    }
}

fn authenticate_cached(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt/authenticate_cached");
    let dir = std::env::temp_dir().join(format!("jwt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = Metrics::new().unwrap();
    for alg in [Algorithm::RS256, Algorithm::EdDSA] {
        let key = SigningKey::generate(alg, Some("k1")).unwrap();
        let file = dir.join(format!("{alg:?}.json"));
        std::fs::write(&file, jwks(&[&key]).to_string()).unwrap();
        let yaml = format!(
            r#"
listeners: [{{name: m, address: "127.0.0.1:1"}}]
upstreams: {{u: {{endpoints: [{{address: "127.0.0.1:2"}}]}}}}
jwt_providers:
  p:
    algorithms: [{alg:?}]
    jwks_file: {}
    issuer: http://127.0.0.1:8080/auth
    audiences: [api]
routes:
  - id: r
    upstream: u
    auth:
      jwt:
        providers: [p]
        claims: [{{claim: scope, contains: "orders:read"}}]
        claims_to_headers: {{sub: X-User-Id, roles: X-User-Roles}}
"#,
            file.display()
        );
        let spec = gateway::config::parse(&yaml, "bench.yaml").unwrap();
        let runtime = gateway::runtime::compile(&spec, 1, None).unwrap();
        let route = runtime.routes[0].jwt.as_ref().unwrap();
        let token = key.sign(&claims()).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        // Verify once: from now on the token is in the cache.
        assert!(matches!(
            ready(auth::authenticate(route, &headers, None, &metrics)),
            AuthOutcome::Verified { .. }
        ));
        group.bench_function(BenchmarkId::from_parameter(format!("{alg:?}")), |b| {
            b.iter(|| {
                let outcome = ready(auth::authenticate(
                    route,
                    black_box(&headers),
                    None,
                    &metrics,
                ));
                let AuthOutcome::Verified { claims, .. } = outcome else {
                    panic!("not verified: {outcome:?}");
                };
                // The identity headers the proxy then sets are part of the cost.
                black_box(route.identity_headers(&claims))
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, verify_cold, authenticate_cached);
criterion_main!(benches);
