//! Writes the gateway configs of the load benchmark (`benches/load/run.sh`) into a
//! directory, and prints the bearer token the full pipeline needs:
//!
//! - `plain.yaml`: one route to the upstream, `access_log: off`, one thread;
//! - `full.yaml`: 1,000 routes (the benchmarked one in the middle of the table), RS256
//!   JWT (keys from `jwks.json`, verified-token cache), a local rate limit far above the
//!   offered load, the access log to `access.log` in the directory, metrics (always on);
//! - with the optional last five arguments, `full_ratio0.yaml` and `full_ratio1.yaml`: the
//!   full pipeline plus `tracing:` exporting OTLP/HTTP to `OTLP_ADDR` (`otlp_sink`) with
//!   `sample_ratio: 0` and `1.0`, on their own ports and access logs (`access_ratio0.log`,
//!   `access_ratio1.log`), so `run.sh` can run them beside the others.
//!
//! `load_fixtures DIR UPSTREAM PLAIN_PORT PLAIN_ADMIN FULL_PORT FULL_ADMIN
//!  [OTLP_ADDR RATIO0_PORT RATIO0_ADMIN RATIO1_PORT RATIO1_ADMIN]`

// A fixture that cannot be written should stop the benchmark loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use gateway::auth::testkeys::{SigningKey, jwks};
use gateway::auth::unix_now;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() == 7 || args.len() == 12,
        "usage: load_fixtures DIR UPSTREAM PLAIN_PORT PLAIN_ADMIN FULL_PORT FULL_ADMIN \
         [OTLP_ADDR RATIO0_PORT RATIO0_ADMIN RATIO1_PORT RATIO1_ADMIN]"
    );
    let dir = PathBuf::from(&args[1]);
    let (upstream, plain, plain_admin, full, full_admin) =
        (&args[2], &args[3], &args[4], &args[5], &args[6]);
    std::fs::create_dir_all(&dir).unwrap();

    std::fs::write(
        dir.join("plain.yaml"),
        format!(
            "server: {{threads: 1}}
listeners: [{{name: main, address: '127.0.0.1:{plain}'}}]
admin: {{address: '127.0.0.1:{plain_admin}'}}
upstreams: {{o: {{endpoints: [{{address: '{upstream}'}}]}}}}
routes:
  - {{id: plain, match: {{path: {{prefix: /}}}}, upstream: o}}
access_log: off
"
        ),
    )
    .unwrap();

    let key = SigningKey::generate(Algorithm::RS256, Some("bench")).unwrap();
    std::fs::write(dir.join("jwks.json"), jwks(&[&key]).to_string()).unwrap();
    let now = unix_now();
    let token = key
        .sign(&json!({
            "iss": "https://id.bench.local",
            "aud": "api",
            "sub": "0b9c7a52-7f39-4a53-a2a7-5d1f3c1e9a10",
            "exp": now + 24 * 3600,
            "iat": now,
            "scope": "orders:read",
        }))
        .unwrap();
    let mut routes = String::new();
    for i in 0..1000 {
        let path = if i == 500 {
            "/bench".to_owned()
        } else {
            format!("/svc{i}/api")
        };
        routes.push_str(&format!(
            "  - {{id: r{i}, match: {{hosts: [h{}.bench.local, bench.local], path: {{prefix: {path}}}}}, upstream: o, rate_limits: [per-client], auth: {{jwt: {{providers: [idp]}}}}}}\n",
            i % 50
        ));
    }
    let jwks = dir.join("jwks.json");
    let full_yaml = |port: &str, admin: &str, log: &str, tracing: &str| {
        format!(
            "server: {{threads: 1}}
listeners: [{{name: main, address: '127.0.0.1:{port}'}}]
admin: {{address: '127.0.0.1:{admin}'}}
upstreams: {{o: {{endpoints: [{{address: '{upstream}'}}]}}}}
jwt_providers:
  idp:
    algorithms: [RS256]
    jwks_file: '{jwks}'
    issuer: https://id.bench.local
    audiences: [api]
    cache: {{max_entries: 10000, ttl: 5m}}
rate_limit_policies:
  per-client: {{rate: 10000000/s, burst: 10000000}}
access_log: {{path: {log}, format: json, buffer_bytes: 65536, flush_interval: 1s}}
{tracing}routes:
{routes}",
            jwks = jwks.display()
        )
    };
    std::fs::write(
        dir.join("full.yaml"),
        full_yaml(full, full_admin, "access.log", ""),
    )
    .unwrap();
    if let [otlp, r0, r0_admin, r1, r1_admin] = &args[7..] {
        // The same pipeline with the exporter configured: ratio 0 pays for the ids and
        // the sampling decision only, ratio 1 records and exports every request's spans.
        for (name, port, admin, ratio) in [
            ("ratio0", r0, r0_admin, "0"),
            ("ratio1", r1, r1_admin, "1.0"),
        ] {
            let tracing = format!(
                "tracing: {{sample_ratio: {ratio}, otlp: {{endpoint: 'http://{otlp}', protocol: http}}}}\n"
            );
            std::fs::write(
                dir.join(format!("full_{name}.yaml")),
                full_yaml(port, admin, &format!("access_{name}.log"), &tracing),
            )
            .unwrap();
        }
    }
    println!("{token}");
}
