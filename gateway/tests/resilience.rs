//! Upstream resilience through the real gateway, against a fleet of upstreams that can
//! be made unhealthy, failing, slow, or killed: active health checks, passive ejection
//! and re-admission, retries with a budget, draining, in-flight limits, deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, Member, render, write_atomic};
use serde_json::Value;

const HEAD: &str = r#"
server: {reload_debounce: 10ms}
listeners: [{name: public, address: "127.0.0.1:{PORT}"}]
admin: {address: "127.0.0.1:{ADMIN}"}
"#;

fn endpoints(members: &[&Member]) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("{{address: \"{}\"}}", m.addr))
        .collect();
    format!("[{}]", list.join(", "))
}

/// Poll `/admin/upstreams` until `pred` holds for the upstream `name` (10 s at most).
async fn wait_upstream(gw: &Gateway, name: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = gw.admin_json("/admin/upstreams").await;
        let u = v["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .cloned()
            .unwrap();
        if pred(&u) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {u:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn endpoint<'a>(u: &'a Value, m: &Member) -> &'a Value {
    u["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == m.addr.to_string())
        .unwrap()
}

async fn served_by(c: &reqwest::Client, url: &str) -> String {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-served-by"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_follow_the_endpoint_set() {
    let a = Member::start("a");
    let b = Member::start("b");
    let pool = |members: &[&Member]| {
        format!(
            "upstreams:\n  app:\n    load_balancing: round_robin\n    health_check: {{path: /ready, interval: 50ms, jitter: 0s, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n    endpoints: {}\nroutes: [{{id: all, upstream: app}}]\n",
            endpoints(members)
        )
    };
    let gw = Gateway::start(&format!("{HEAD}{}", pool(&[&a, &b]))).await;
    let c = reqwest::Client::new();

    b.healthy.store(false, Ordering::SeqCst);
    wait_upstream(&gw, "app", "b unhealthy", |u| {
        endpoint(u, &b)["healthy"] == false
    })
    .await;
    for _ in 0..20 {
        assert_eq!(served_by(&c, &gw.url("/x")).await, "a");
    }
    b.healthy.store(true, Ordering::SeqCst);
    wait_upstream(&gw, "app", "b healthy", |u| {
        endpoint(u, &b)["healthy"] == true
    })
    .await;
    let mut seen_b = false;
    for _ in 0..10 {
        seen_b |= served_by(&c, &gw.url("/x")).await == "b";
    }
    assert!(seen_b, "b gets traffic again once healthy");

    // Remove b: its checker stops, and it is never probed again.
    write_atomic(
        &gw.config,
        &render(&format!("{HEAD}{}", pool(&[&a])), gw.port, gw.admin_port),
    );
    gw.wait_config("version 2", |v| v["version"] == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probes = b.probes.load(Ordering::SeqCst);
    let a_probes = a.probes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b.probes.load(Ordering::SeqCst) <= probes + 1,
        "removed endpoint still probed"
    );
    assert!(
        a.probes.load(Ordering::SeqCst) > a_probes,
        "remaining endpoint no longer probed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_endpoint_costs_no_client_errors_and_comes_back() {
    let a = Member::start("a");
    let mut b = Member::start("b");
    let c3 = Member::start("c");
    let text = format!(
        "{HEAD}upstreams:\n  app:\n    load_balancing: round_robin\n    outlier_detection: {{consecutive_failures: 3, base_ejection_time: 1s, max_ejection_time: 5s, max_ejection_percent: 50}}\n    endpoints: {}\nroutes:\n  - id: all\n    upstream: app\n    retry: {{attempts: 3, retry_on: [connect_failure, gateway_error, timeout], backoff_base: 5ms, backoff_max: 20ms}}\n",
        endpoints(&[&a, &b, &c3])
    );
    let gw = Arc::new(Gateway::start(&text).await);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (gw, stop, failures, sent) = (gw.clone(), stop.clone(), failures.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                let ok = c
                    .get(gw.url("/x"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                sent.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.kill();
    let killed_at = sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Ejected after a bounded number of failures.
    wait_upstream(&gw, "app", "b ejected", |u| {
        endpoint(u, &b)["ejections"].as_u64() >= Some(1)
    })
    .await;
    b.restart();
    let hits_before = b.hits();
    // Re-admitted once its ejection ends (1 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.hits() == hits_before {
        assert!(Instant::now() < deadline, "b never got traffic back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let total = sent.load(Ordering::SeqCst);
    assert!(total > killed_at + 100, "too little load: {total}");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "client-visible errors out of {total}"
    );
    let metrics = gw
        .wait_metrics(&["gateway_upstream_ejections_total{upstream=\"app\"}"])
        .await;
    // The dead endpoint cost a bounded number of retries: a few failures per ejection
    // (3 in a row eject it), not one per request sent while it was down.
    let retries: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gateway_upstream_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (1.0..=20.0).contains(&retries),
        "{retries} retries for {total} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_when_everything_fails() {
    let members = [Member::start("a"), Member::start("b"), Member::start("c")];
    let text = format!(
        "{HEAD}upstreams:\n  app:\n    retry_budget: {{ratio: 0.1, min_per_second: 1}}\n    endpoints: {}\nroutes:\n  - id: fail\n    upstream: app\n    rewrite: {{path: \"/status/503\"}}\n    match: {{path: {{template: \"/fail/{{*rest}}\"}}}}\n    retry: {{attempts: 3, retry_on: [gateway_error], backoff_base: 1ms, backoff_max: 2ms}}\n",
        endpoints(&members.iter().collect::<Vec<_>>())
    );
    let gw = Gateway::start(&text).await;
    let c = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..100 {
        let r = c.get(gw.url(&format!("/fail/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 503, "the upstream's own 503 comes through");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "failures were not fast"
    );
    let upstream_attempts: usize = members.iter().map(Member::hits).sum();
    // 100 first tries + at most 10% of them + the 1/s floor over the 10 s window.
    assert!(
        upstream_attempts <= 100 + 10 + 10,
        "{upstream_attempts} upstream attempts"
    );
    assert!(upstream_attempts > 100, "no retries at all");
    gw.wait_metrics(&["gateway_upstream_retry_budget_exhausted_total{upstream=\"app\"}"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_endpoint_finishes_in_flight_work_but_gets_nothing_new() {
    let a = Member::start("a");
    let b = Member::start("b");
    let pool = |drain_a: bool| {
        format!(
            "{HEAD}upstreams:\n  app:\n    load_balancing: round_robin\n    endpoints: [{{address: \"{}\", draining: {drain_a}}}, {{address: \"{}\"}}]\nroutes: [{{id: all, upstream: app}}]\n",
            a.addr, b.addr
        )
    };
    let gw = Gateway::start(&pool(false)).await;
    // A fresh round-robin pool starts with the first endpoint: a.
    let long = tokio::spawn({
        let url = gw.url("/delay/1200");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (
                r.status(),
                r.headers()["x-served-by"].to_str().unwrap().to_owned(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    write_atomic(&gw.config, &render(&pool(true), gw.port, gw.admin_port));
    gw.wait_config("version 2", |v| v["version"] == 2).await;
    let c = reqwest::Client::new();
    let a_before = a.hits();
    for _ in 0..20 {
        assert_eq!(served_by(&c, &gw.url("/x")).await, "b");
    }
    assert_eq!(a.hits(), a_before, "a draining endpoint got a new request");
    let (status, by) = long.await.unwrap();
    assert_eq!((status.as_u16(), by.as_str()), (200, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_limits_answer_503_with_retry_after() {
    for limits in ["{max_in_flight: 1, max_pending: 0}", "{max_connections: 1}"] {
        let a = Member::start("a");
        let text = format!(
            "{HEAD}upstreams:\n  app:\n    limits: {limits}\n    endpoints: {}\nroutes: [{{id: all, upstream: app}}]\n",
            endpoints(&[&a])
        );
        let gw = Gateway::start(&text).await;
        let slow = tokio::spawn(reqwest::get(gw.url("/delay/800")));
        // Wait until the slow request holds the only slot.
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.hits() == 0 {
            assert!(Instant::now() < deadline, "slow request never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = reqwest::get(gw.url("/x")).await.unwrap();
        assert_eq!(r.status(), 503, "{limits}");
        assert_eq!(r.headers()["retry-after"], "1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "upstream_overloaded", "{limits}");
        assert_eq!(slow.await.unwrap().unwrap().status(), 200);
        // The slot is free again.
        assert_eq!(
            reqwest::get(gw.url("/x")).await.unwrap().status(),
            200,
            "{limits}"
        );
        gw.wait_metrics(&["gateway_upstream_overloaded_total{upstream=\"app\"} 1"])
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_all_tries() {
    let a = Member::start("a");
    let b = Member::start("b");
    let text = format!(
        "{HEAD}upstreams:\n  app: {{endpoints: {}}}\nroutes:\n  - id: all\n    upstream: app\n    timeout: 200ms\n    deadline: 500ms\n    retry: {{attempts: 5, retry_on: [timeout], backoff_base: 1ms, backoff_max: 1ms}}\n",
        endpoints(&[&a, &b])
    );
    let gw = Gateway::start(&text).await;
    let r = reqwest::get(gw.url("/delay/2000")).await.unwrap();
    assert_eq!(r.status(), 504);
    // Five tries of 200 ms would be allowed by the retry policy; the 500 ms deadline
    // leaves room for three at most (the last one cut short).
    let tries = a.hits() + b.hits();
    assert!((2..=3).contains(&tries), "{tries} tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_pins_a_client_until_its_endpoint_goes() {
    let members = [Member::start("a"), Member::start("b"), Member::start("c")];
    let pool = |drain: Option<&str>| {
        let list: Vec<String> = members
            .iter()
            .map(|m| {
                format!(
                    "{{address: \"{}\", draining: {}}}",
                    m.addr,
                    Some(m.name.as_str()) == drain
                )
            })
            .collect();
        format!(
            "{HEAD}upstreams:\n  app:\n    sticky_cookie: {{name: gw_affinity, ttl: 1h}}\n    endpoints: [{}]\nroutes: [{{id: all, upstream: app}}]\n",
            list.join(", ")
        )
    };
    let gw = Gateway::start(&pool(None)).await;
    let c = reqwest::Client::new();
    let first = c.get(gw.url("/x")).send().await.unwrap();
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("gw_affinity=")
            && cookie.contains("Max-Age=3600")
            && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let home = first.headers()["x-served-by"].to_str().unwrap().to_owned();
    let pair = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..15 {
        let r = c
            .get(gw.url("/x"))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-served-by"], home.as_str());
        assert!(
            r.headers().get("set-cookie").is_none(),
            "a pinned client is not re-pinned"
        );
    }
    // Its endpoint drains: the client moves and gets a new cookie.
    write_atomic(
        &gw.config,
        &render(&pool(Some(&home)), gw.port, gw.admin_port),
    );
    gw.wait_config("version 2", |v| v["version"] == 2).await;
    let r = c
        .get(gw.url("/x"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-served-by"], home.as_str());
    let moved = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(moved, pair);
    // A forged or stale cookie is ignored rather than trusted.
    let r = c
        .get(gw.url("/x"))
        .header("cookie", "gw_affinity=zzzz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("set-cookie"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_do_not_eject_endpoints() {
    use std::io::Write;
    let a = Member::start("a");
    let text = format!(
        "{HEAD}upstreams:\n  app:\n    outlier_detection: {{consecutive_failures: 2, base_ejection_time: 30s}}\n    endpoints: {}\nroutes: [{{id: all, upstream: app}}]\n",
        endpoints(&[&a])
    );
    let gw = Gateway::start(&text).await;
    for i in 0..4 {
        let before = a.hits();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.write_all(b"GET /delay/400 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.hits() == before {
            assert!(
                Instant::now() < deadline,
                "request {i} never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Hang up while the upstream is still working on it.
        drop(s);
    }
    // Let the gateway notice every hang-up (the upstream answers after 400 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = gw.admin_json("/admin/upstreams").await;
    let e = &v["upstreams"][0]["endpoints"][0];
    assert_eq!(
        e["ejections"], 0,
        "client hang-ups ejected a healthy endpoint: {e}"
    );
    assert_eq!(reqwest::get(gw.url("/x")).await.unwrap().status(), 200);
}
