//! Local rate limiting through the real gateway: 429 with Retry-After and the IETF
//! headers, per-key buckets, state that survives reloads of an unchanged policy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Gateway, echo_upstream, render, write_atomic};
use serde_json::Value;

fn config(upstream: &str, rate: &str, extra_route: bool) -> String {
    let extra = if extra_route {
        "  - {id: other, match: {path: {exact: /other}}, direct_response: {status: 200}}\n"
    } else {
        ""
    };
    format!(
        r#"
server: {{reload_debounce: 10ms}}
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
rate_limit_policies:
  per-user: {{rate: "{rate}", burst: 3, key: ["header:x-user"], legacy_headers: true}}
upstreams:
  one: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - {{id: limited, match: {{path: {{prefix: /api}}}}, rate_limits: [per-user], upstream: one}}
{extra}"#
    )
}

async fn get(gw: &Gateway, user: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(gw.url("/api/x"))
        .header("x-user", user)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_429_with_headers_and_survive_reloads() {
    let up = echo_upstream("one").await.to_string();
    let gw = Gateway::start(&config(&up, "5/m", false)).await;

    for remaining in [2, 1, 0] {
        let r = get(&gw, "alice").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"per-user\";q=5;w=60");
        let state = r.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            state.starts_with(&format!("\"per-user\";r={remaining};t=")),
            "{state}"
        );
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let r = get(&gw, "alice").await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=12).contains(&retry_after),
        "one request per 12 s: {retry_after}"
    );
    assert!(r.headers()["ratelimit"].to_str().unwrap().contains(";r=0;"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    // Another key has its own bucket; a missing header falls back to the client IP.
    assert_eq!(get(&gw, "bob").await.status(), 200);

    // A reload that leaves the policy alone keeps the budget: still limited.
    write_atomic(
        &gw.config,
        &render(&config(&up, "5/m", true), gw.port, gw.admin_port),
    );
    gw.wait_config("version 2", |v| v["version"] == 2).await;
    assert_eq!(get(&gw, "alice").await.status(), 429);
    // A changed policy starts afresh.
    write_atomic(
        &gw.config,
        &render(&config(&up, "6/m", true), gw.port, gw.admin_port),
    );
    gw.wait_config("version 3", |v| v["version"] == 3).await;
    assert_eq!(get(&gw, "alice").await.status(), 200);

    gw.wait_metrics(&[
        r#"gateway_ratelimit_decisions_total{policy="per-user",result="limited"} 2"#,
    ])
    .await;
}
