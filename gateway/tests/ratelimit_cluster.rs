//! Cluster rate limits against a real `redis-server`: two gateway processes share one
//! limit exactly (strict mode), and when Redis dies each failure policy does what it says
//! (never a 500), reverting once Redis is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, RedisServer, echo_upstream};

fn config(redis: &str, upstream: &str) -> String {
    format!(
        r#"
server: {{redis: {{url: "{redis}", timeout: 250ms}}}}
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
rate_limit_policies:
  shared: {{rate: 20/h, burst: 20, key: [route], scope: cluster}}
  closed: {{rate: 100/m, key: [route], scope: cluster, on_redis_failure: fail_closed}}
  open: {{rate: 1/m, burst: 1, key: [route], scope: cluster, on_redis_failure: fail_open}}
  fallback: {{rate: 4/m, burst: 4, key: [route], scope: cluster, on_redis_failure: local_fallback, expected_replicas: 2}}
  batched: {{rate: 20/m, burst: 20, key: [route], scope: cluster, mode: batched, batch_size: 5, batch_interval: 10s}}
upstreams:
  one: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - {{id: shared, match: {{path: {{prefix: /shared}}}}, rate_limits: [shared], upstream: one}}
  - {{id: closed, match: {{path: {{prefix: /closed}}}}, rate_limits: [closed], upstream: one}}
  - {{id: open, match: {{path: {{prefix: /open}}}}, rate_limits: [open], upstream: one}}
  - {{id: fallback, match: {{path: {{prefix: /fallback}}}}, rate_limits: [fallback], upstream: one}}
  - {{id: batched, match: {{path: {{prefix: /batched}}}}, rate_limits: [batched], upstream: one}}
"#
    )
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    reqwest::get(gw.url(path)).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_limit_exactly() {
    let redis = RedisServer::start();
    let up = echo_upstream("one").await.to_string();
    let a = std::sync::Arc::new(Gateway::start(&config(&redis.url(), &up)).await);
    let b = std::sync::Arc::new(Gateway::start(&config(&redis.url(), &up)).await);
    // Open both replicas' Redis connections first (through another cluster policy), so a
    // slow first connect under load cannot push decisions onto the local fallback.
    assert_eq!(status(&a, "/closed").await, 200);
    assert_eq!(status(&b, "/closed").await, 200);
    // Eight concurrent clients, four per replica, 15 requests each: 120 tries for a
    // limit of 20 (burst 20, 20/h: nothing refills during the test).
    let mut clients = Vec::new();
    for i in 0..8 {
        let gw = std::sync::Arc::clone(if i % 2 == 0 { &a } else { &b });
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut admitted = 0;
            for _ in 0..15 {
                match c
                    .get(gw.url("/shared"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
                {
                    200 => admitted += 1,
                    429 => {}
                    other => panic!("unexpected {other}"),
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for c in clients {
        admitted += c.await.unwrap();
    }
    assert_eq!(
        admitted, 20,
        "strict mode admits the limit exactly across two replicas"
    );
}

/// Replica clocks two hours apart (one gateway runs under `faketime`) still share one
/// limit exactly: strict decisions take their time from Redis `TIME` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_replica_clocks_agree() {
    let redis = RedisServer::start();
    let up = echo_upstream("one").await.to_string();
    let a = Gateway::start(&config(&redis.url(), &up)).await;
    let b = Gateway::start_wrapped(&config(&redis.url(), &up), &["faketime", "-f", "+2h"]).await;
    assert_eq!(status(&a, "/closed").await, 200);
    // The wrapper really skews the clock: the gateway's own Date header says so.
    let r = reqwest::get(b.url("/shared")).await.unwrap();
    assert_eq!(r.status(), 200);
    let date = r.headers()["date"].to_str().unwrap().to_owned();
    let skewed = httpdate::parse_http_date(&date).unwrap();
    assert!(
        skewed > std::time::SystemTime::now() + Duration::from_secs(3600),
        "faketime did not skew the gateway's clock: {date}"
    );
    let mut admitted = 1; // the request above
    for i in 0..39 {
        let gw = if i % 2 == 0 { &a } else { &b };
        if status(gw, "/shared").await == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_follows_each_failure_policy() {
    let mut redis = RedisServer::start();
    let up = echo_upstream("one").await.to_string();
    let gw = Gateway::start(&config(&redis.url(), &up)).await;
    // Redis up: `open` allows one request a minute, cluster-wide.
    assert_eq!(status(&gw, "/open").await, 200);
    assert_eq!(status(&gw, "/open").await, 429);

    redis.kill();
    // The circuit opens after a few failed calls (5 by default); until then a failure
    // is decided by the local fallback, not by the failure mode.
    let mut tries = 0;
    while status(&gw, "/closed").await != 503 {
        tries += 1;
        assert!(tries < 10, "the circuit never opened");
    }
    assert!(tries >= 4, "one failed call flipped fail_closed ({tries})");
    gw.wait_metrics(&[&format!(
        "gateway_redis_circuit_state{{backend=\"{}\"}} 2",
        redis.url()
    )])
    .await;
    // fail_closed: 503 with a JSON body, never a 500.
    let r = reqwest::get(gw.url("/closed")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "rate_limit_unavailable"
    );
    // fail_open: allowed although the cluster limit is spent.
    assert_eq!(status(&gw, "/open").await, 200);
    // local_fallback: limit / replicas = burst 2 locally.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(status(&gw, "/fallback").await);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429, 429]);
    gw.wait_metrics(&[
        "gateway_ratelimit_fallback_active{policy=\"closed\"} 1",
        "gateway_ratelimit_fallback_active{policy=\"fallback\"} 1",
    ])
    .await;

    // Redis back: cluster limiting resumes (a fresh Redis has no state).
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&gw, "/closed").await != 200 {
        assert!(
            Instant::now() < deadline,
            "never recovered after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.wait_metrics(&["gateway_ratelimit_fallback_active{policy=\"closed\"} 0"])
        .await;
    assert_eq!(status(&gw, "/open").await, 200);
    assert_eq!(
        status(&gw, "/open").await,
        429,
        "strict again: the cluster limit applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_never_overshoots_and_stays_within_its_bound() {
    let redis = RedisServer::start();
    let up = echo_upstream("one").await.to_string();
    let a = Gateway::start(&config(&redis.url(), &up)).await;
    let b = Gateway::start(&config(&redis.url(), &up)).await;
    let mut admitted = 0;
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        match status(gw, "/batched").await {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    // Cells are taken in Redis before they are spent: never above the limit (20). Each
    // replica can strand at most batch_size - 1 = 4 cells: never below 20 - 2 x 4.
    assert!((12..=20).contains(&admitted), "{admitted} admitted");
}

/// Concurrent clients while Redis dies and comes back: only the configured answers
/// (200, 429, 503 for fail_closed), never a 500, and service continues throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_never_gives_500() {
    let mut redis = RedisServer::start();
    let up = echo_upstream("one").await.to_string();
    let gw = std::sync::Arc::new(Gateway::start(&config(&redis.url(), &up)).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (gw, stop) = (std::sync::Arc::clone(&gw), std::sync::Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let path = ["/closed", "/open", "/fallback", "/batched"][i];
            let mut seen = std::collections::BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let s = c.get(gw.url(path)).send().await.unwrap().status().as_u16();
                *seen.entry(s).or_insert(0u32) += 1;
            }
            (path, seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        let (path, seen) = c.await.unwrap();
        let allowed: &[u16] = if path == "/closed" {
            &[200, 429, 503]
        } else {
            &[200, 429]
        };
        assert!(seen.keys().all(|s| allowed.contains(s)), "{path}: {seen:?}");
        assert!(seen.get(&200).is_some_and(|n| *n > 0), "{path}: {seen:?}");
    }
    gw.wait_metrics(&["gateway_ratelimit_backend_errors_total{policy=\"closed\"}"])
        .await;
}

fn breaker_config(redis: &str, upstream: &str) -> String {
    format!(
        r#"
server:
  redis:
    url: "{redis}"
    timeout: 250ms
    circuit_breaker: {{consecutive_failures: 3, probe_interval: 300ms, close_after: 2}}
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
rate_limit_policies:
  closed: {{rate: 1000/m, key: [route], scope: cluster, on_redis_failure: fail_closed}}
  open: {{rate: 1000/m, key: [route], scope: cluster, on_redis_failure: fail_open}}
upstreams:
  one: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - {{id: closed, match: {{path: {{prefix: /closed}}}}, rate_limits: [closed], upstream: one}}
  - {{id: open, match: {{path: {{prefix: /open}}}}, rate_limits: [open], upstream: one}}
"#
    )
}

/// A metric line's value, 0 when absent.
async fn metric_value(gw: &Gateway, line_start: &str) -> f64 {
    let text = reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Issue 20, finding 10: a paused Redis (SIGSTOP: connections hang) opens the circuit,
/// after which Redis is skipped instead of paying a timeout per request; one slow reply
/// alone never flips fail_closed; after SIGCONT the probes close it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_opens_the_circuit_and_probes_close_it() {
    let redis = RedisServer::start();
    let up = echo_upstream("one").await.to_string();
    let gw = Gateway::start(&breaker_config(&redis.url(), &up)).await;
    let backend = redis.url();
    assert_eq!(status(&gw, "/closed").await, 200);

    // One slow reply: decided locally, not a 503.
    redis.signal("STOP");
    assert_eq!(
        status(&gw, "/closed").await,
        200,
        "one slow reply gave a 503"
    );
    redis.signal("CONT");
    assert_eq!(status(&gw, "/closed").await, 200);
    let state = format!("gateway_redis_circuit_state{{backend=\"{backend}\"}} ");
    assert_eq!(metric_value(&gw, &state).await, 0.0, "still closed");

    // A real outage: the circuit opens and Redis is skipped.
    redis.signal("STOP");
    let skipped = format!("gateway_redis_calls_total{{backend=\"{backend}\",result=\"skipped\"}} ");
    let before = metric_value(&gw, &skipped).await;
    for _ in 0..30 {
        assert_eq!(status(&gw, "/open").await, 200);
    }
    assert_eq!(metric_value(&gw, &state).await, 2.0, "open");
    let skipped_now = metric_value(&gw, &skipped).await - before;
    assert!(
        skipped_now >= 20.0,
        "only {skipped_now} of 30 calls skipped Redis"
    );
    assert_eq!(status(&gw, "/closed").await, 503);
    assert!(gw.log().contains("redis circuit opened"), "{}", gw.log());

    // Redis answers again: probes close the circuit.
    redis.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric_value(&gw, &state).await != 0.0 {
        assert!(Instant::now() < deadline, "the circuit never closed");
        let _ = status(&gw, "/open").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&gw, "/closed").await, 200);
    let log = gw.log();
    assert_eq!(log.matches("redis circuit closed").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_calls_are_spans_of_the_request_trace() {
    use common::otlp::{receiver, wait_spans};
    const TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
    let redis = RedisServer::start();
    let up = echo_upstream("one").await.to_string();
    let (recv, store) = receiver().await;
    let cfg = format!(
        "{}tracing: {{sample_ratio: 0, batch_interval: 50ms, otlp: {{endpoint: 'http://{recv}'}}}}\n",
        config(&redis.url(), &up)
    );
    let gw = Gateway::start(&cfg).await;
    let c = reqwest::Client::new();
    // Unsampled: no span for its Redis call.
    assert_eq!(status(&gw, "/shared/quiet").await, 200);
    let r = c
        .get(gw.url("/shared/traced"))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log());
    let got = wait_spans(&store, "the Redis call span", |g| {
        g.iter().any(|s| s.span.name == "EVALSHA") && g.iter().any(|s| s.span.name == "rate_limit")
    })
    .await;
    let limit = got.iter().find(|s| s.span.name == "rate_limit").unwrap();
    let calls: Vec<_> = got.iter().filter(|s| s.span.name == "EVALSHA").collect();
    assert_eq!(
        calls.len(),
        1,
        "one call for the traced request: {calls:#?}"
    );
    let call = calls[0];
    assert_eq!(call.trace_id(), TRACE);
    assert_eq!(
        call.parent_id(),
        limit.span_id(),
        "a child of the rate-limit span"
    );
    assert_eq!(call.span.kind, 3, "client");
    assert_eq!(call.attr("db.system.name").as_deref(), Some("redis"));
    assert_eq!(call.attr("server.port"), Some(redis.port.to_string()));
    assert_eq!(
        call.attr("gateway.rate_limit.policy").as_deref(),
        Some("shared")
    );
    assert_eq!(
        call.attr("gateway.rate_limit.granted").as_deref(),
        Some("1")
    );
    assert!(
        call.span.status.as_ref().is_none_or(|s| s.code != 2),
        "{call:?}"
    );

    // Redis gone: the failed call is an error span (the policy answers for it).
    drop(redis);
    let r = c
        .get(gw.url("/open/x"))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b8-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "fail_open");
    let got = wait_spans(&store, "the failed Redis call span", |g| {
        g.iter()
            .any(|s| s.span.name == "EVALSHA" && s.attr("error.type").is_some())
    })
    .await;
    let failed = got
        .iter()
        .find(|s| s.span.name == "EVALSHA" && s.attr("error.type").is_some())
        .unwrap();
    assert_eq!(failed.span.status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(
        failed.attr("gateway.rate_limit.policy").as_deref(),
        Some("open")
    );
}
