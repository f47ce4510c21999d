//! Load balancing through the real gateway: load-aware algorithms shift traffic away
//! from a slow endpoint, consistent hashing pins a key to one endpoint, and
//! `/admin/upstreams` shows the live per-endpoint state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Gateway, echo_upstream, slow_echo_upstream};
use serde_json::Value;

async fn gateway_for(pools: &str) -> Gateway {
    let text = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
{pools}
routes:
  - {{id: lo, match: {{path: {{prefix: /lo}}}}, upstream: lo}}
  - {{id: ewma, match: {{path: {{prefix: /ewma}}}}, upstream: ewma}}
  - {{id: rr, match: {{path: {{prefix: /rr}}}}, upstream: rr}}
  - {{id: hash, match: {{path: {{prefix: /hash}}}}, upstream: hash}}
"#
    );
    Gateway::start(&text).await
}

/// Send `per_client` requests from each of `clients` concurrent keepalive clients and
/// count which upstream answered.
async fn spread(
    gw: &Gateway,
    path: &str,
    clients: usize,
    per_client: usize,
) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = gw.url(path);
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut seen = Vec::new();
            for _ in 0..per_client {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                seen.push(r.headers()["x-served-by"].to_str().unwrap().to_owned());
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for name in t.await.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_aware_algorithms_avoid_a_slow_endpoint() {
    let fast = echo_upstream("fast").await;
    let slow = slow_echo_upstream("slow", Duration::from_millis(100)).await;
    let pools = format!(
        r#"  lo: {{load_balancing: least_outstanding, endpoints: [{{address: "{fast}"}}, {{address: "{slow}"}}]}}
  ewma: {{load_balancing: peak_ewma, endpoints: [{{address: "{fast}"}}, {{address: "{slow}"}}]}}
  rr: {{load_balancing: round_robin, endpoints: [{{address: "{fast}"}}, {{address: "{slow}"}}]}}
  hash: {{load_balancing: consistent_hash, hash_on: "header:x-user", endpoints: [{{address: "{fast}"}}]}}"#
    );
    let gw = gateway_for(&pools).await;

    // Round robin, the baseline: half of the requests wait on the slow endpoint.
    let rr = spread(&gw, "/rr", 4, 10).await;
    assert_eq!(rr["slow"], 20, "{rr:?}");

    for path in ["/lo", "/ewma"] {
        let counts = spread(&gw, path, 4, 50).await;
        let slow_share = counts.get("slow").copied().unwrap_or(0) as f64 / 200.0;
        assert!(slow_share < 0.25, "{path}: {counts:?}");
        assert!(counts["fast"] > 150, "{path}: {counts:?}");
    }

    // Nothing is left in flight, and selections are counted per endpoint.
    let v: Value = gw.admin_json("/admin/upstreams").await;
    let lo = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "lo")
        .unwrap();
    assert_eq!(lo["load_balancing"], "least_outstanding");
    let endpoints = lo["endpoints"].as_array().unwrap();
    assert!(endpoints.iter().all(|e| e["in_flight"] == 0), "{lo:#}");
    let selected: u64 = endpoints
        .iter()
        .map(|e| e["selected_total"].as_u64().unwrap())
        .sum();
    assert_eq!(selected, 200);
    let slow_ewma = endpoints
        .iter()
        .find(|e| e["address"] == slow.to_string())
        .map(|e| e["latency_ewma_ms"].as_f64().unwrap())
        .unwrap();
    assert!(
        slow_ewma == 0.0 || slow_ewma >= 90.0,
        "slow endpoint's latency estimate {slow_ewma}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_pins_each_key_to_one_endpoint() {
    let a = echo_upstream("a").await;
    let b = echo_upstream("b").await;
    let c = echo_upstream("c").await;
    let pools = format!(
        r#"  lo: {{load_balancing: least_outstanding, endpoints: [{{address: "{a}"}}]}}
  ewma: {{load_balancing: peak_ewma, endpoints: [{{address: "{a}"}}]}}
  rr: {{endpoints: [{{address: "{a}"}}]}}
  hash: {{load_balancing: consistent_hash, hash_on: "header:x-user", endpoints: [{{address: "{a}"}}, {{address: "{b}"}}, {{address: "{c}"}}]}}"#
    );
    let gw = gateway_for(&pools).await;
    let client = reqwest::Client::new();
    let mut homes: HashMap<String, String> = HashMap::new();
    for round in 0..5 {
        for user in 0..30 {
            let r = client
                .get(gw.url("/hash/profile"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            let served = r.headers()["x-served-by"].to_str().unwrap().to_owned();
            let home = homes
                .entry(format!("user-{user}"))
                .or_insert_with(|| served.clone());
            assert_eq!(*home, served, "user-{user} moved in round {round}");
        }
    }
    let used: std::collections::HashSet<&String> = homes.values().collect();
    assert_eq!(
        used.len(),
        3,
        "30 keys should reach all three endpoints: {homes:?}"
    );
}
