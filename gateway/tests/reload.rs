//! Hot reload and shutdown, end to end: bad files keep the running config, SIGHUP
//! reloads, thousands of keepalive requests see no failure while the file flips between
//! two route sets, and SIGTERM/SIGINT drain in-flight requests before exiting 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, echo_upstream, render, write_atomic};
use serde_json::Value;

const HEAD: &str = r#"
server: {reload_debounce: 10ms, shutdown_grace_period: 10s}
listeners: [{name: public, address: "127.0.0.1:{PORT}"}]
admin: {address: "127.0.0.1:{ADMIN}"}
upstreams:
  one: {endpoints: [{address: "{U1}"}]}
routes:
"#;

/// Route set A or B, stamped with a generation number on every response.
fn route_set(set: char, generation: u64) -> String {
    let only = if set == 'A' { "alpha" } else { "beta" };
    format!(
        r#"  - id: common-{set}
    match: {{path: {{prefix: /common}}}}
    rewrite: {{regex: {{pattern: "^/common", replacement: "/{set}"}}}}
    response_headers: {{set: {{x-route: common-{set}, x-gen: "{generation}"}}}}
    upstream: one
  - id: {only}
    match: {{path: {{prefix: /{only}}}}}
    response_headers: {{set: {{x-route: {only}, x-gen: "{generation}"}}}}
    upstream: one
"#
    )
}

async fn start(set: char) -> (Gateway, String) {
    let u1 = echo_upstream("one").await;
    let head = HEAD.replace("{U1}", &u1.to_string());
    let gw = Gateway::start(&format!("{head}{}", route_set(set, 0))).await;
    (gw, head)
}

fn write_config(gw: &Gateway, head: &str, body: &str) {
    write_atomic(
        &gw.config,
        &render(&format!("{head}{body}"), gw.port, gw.admin_port),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_keeps_running_config() {
    let (gw, head) = start('A').await;
    let c = reqwest::Client::new();

    // Invalid YAML, then valid YAML with semantic errors: both rejected.
    write_config(
        &gw,
        &head,
        "  - {id: broken, match: {path: {regex: '('}}, upstream: nope}\n",
    );
    let cfg = gw
        .wait_config("a rejected reload", |v| v["last_reload"]["ok"] == false)
        .await;
    let errors = cfg["last_reload"]["error_text"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{cfg:#}");
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("gateway.yaml:8:33: routes[0].match.path.regex"),
        "{cfg:#}"
    );
    assert!(errors.iter().any(|e| {
        e.as_str()
            .unwrap()
            .contains("routes[0].match.path.regex: invalid regex")
    }));
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("unknown upstream \"nope\""))
    );
    assert_eq!(cfg["version"], 1);
    assert_eq!(gw.metric("gateway_config_reload_failures_total").await, 1.0);
    // Still serving the old routes.
    let r = c.get(gw.url("/alpha")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    std::fs::write(&gw.config, "routes: [\n").unwrap();
    gw.wait_config("a second rejection", |v| {
        v["last_reload"]["error_text"][0]
            .as_str()
            .is_some_and(|e| e.contains("gateway.yaml:"))
            && v["last_reload"]["errors"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(c.get(gw.url("/alpha")).send().await.unwrap().status(), 200);

    // A good file is picked up and clears the error.
    write_config(&gw, &head, &route_set('B', 1));
    let cfg = gw.wait_config("version 2", |v| v["version"] == 2).await;
    assert_eq!(cfg["last_reload"]["ok"], true);
    assert_eq!(c.get(gw.url("/alpha")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(gw.url("/beta")).send().await.unwrap().status(), 200);
    assert_eq!(gw.metric("gateway_config_version").await, 2.0);
    assert_eq!(gw.metric("gateway_config_reloads_total").await, 1.0);
    assert!(gw.metric("gateway_config_reload_failures_total").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_forces_a_reload() {
    let (gw, _head) = start('A').await;
    gw.signal("HUP");
    gw.wait_config("version 2 after SIGHUP", |v| v["version"] == 2)
        .await;
    gw.signal("HUP");
    gw.wait_config("version 3 after SIGHUP", |v| v["version"] == 3)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing() {
    const REWRITES: u64 = 24;
    const MIN_REQUESTS: usize = 2_000;
    const CLIENTS: usize = 4;
    let (gw, head) = start('A').await;
    let gw = Arc::new(gw);
    // Generation -> route set written in it; 0 is the start-up file.
    let sets: Arc<std::sync::Mutex<HashMap<u64, char>>> =
        Arc::new(std::sync::Mutex::new(HashMap::from([(0, 'A')])));
    let writer_done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));

    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let gw = Arc::clone(&gw);
        let done = Arc::clone(&writer_done);
        let sent = Arc::clone(&sent);
        clients.push(tokio::spawn(async move {
            // One keepalive connection per client.
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0usize;
            while !(done.load(Ordering::Acquire) && sent.load(Ordering::Relaxed) >= MIN_REQUESTS) {
                assert!(Instant::now() < deadline, "load did not finish in time");
                let path = ["/common/x", "/alpha/y", "/beta/z", "/common"][(i + n) % 4];
                i += 1;
                let r = c.get(gw.url(path)).send().await;
                sent.fetch_add(1, Ordering::Relaxed);
                let r = r.unwrap_or_else(|e| panic!("request {path} failed: {e}"));
                let status = r.status().as_u16();
                let route = r
                    .headers()
                    .get("x-route")
                    .map(|v| v.to_str().unwrap().to_owned());
                let generation: Option<u64> = r
                    .headers()
                    .get("x-gen")
                    .map(|v| v.to_str().unwrap().parse().unwrap());
                let body: Value = r.json().await.unwrap();
                seen.push((path, status, route, generation, body));
            }
            seen
        }));
    }

    // Flip between A and B while the clients run.
    for generation in 1..=REWRITES {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let set = if generation % 2 == 1 { 'B' } else { 'A' };
        sets.lock().unwrap().insert(generation, set);
        write_config(&gw, &head, &route_set(set, generation));
    }
    writer_done.store(true, Ordering::Release);

    let mut total = 0;
    let mut per_set = HashMap::new();
    let sets = sets.lock().unwrap().clone();
    for client in clients {
        for (path, status, route, generation, body) in client.await.unwrap() {
            total += 1;
            // No failures: every /common request is answered by the upstream, and the
            // set-specific paths either hit their route or get the gateway's 404.
            match (status, route.as_deref()) {
                (200, Some(route)) => {
                    let generation = generation.expect("x-gen on every routed response");
                    let set = sets[&generation];
                    *per_set.entry(set).or_insert(0) += 1;
                    // The route existed in the version that routed the request, and its
                    // rewrite came from that same version.
                    let expected_route = match (path, set) {
                        ("/alpha/y", 'A') => "alpha".to_owned(),
                        ("/beta/z", 'B') => "beta".to_owned(),
                        (p, s) if p.starts_with("/common") => format!("common-{s}"),
                        _ => panic!(
                            "{path} routed by {route} in generation {generation} (set {set})"
                        ),
                    };
                    assert_eq!(route, expected_route, "{path} gen {generation}");
                    if path.starts_with("/common") {
                        let upstream_path = body["path"].as_str().unwrap();
                        assert!(
                            upstream_path.starts_with(&format!("/{set}")),
                            "{path} -> {upstream_path} in set {set}"
                        );
                    }
                }
                (404, None) => {
                    assert!(!path.starts_with("/common"), "/common must never 404");
                    assert_eq!(body["error"]["code"], "route_not_found");
                }
                other => panic!("{path}: unexpected {other:?} {body}"),
            }
        }
    }
    assert!(total >= MIN_REQUESTS, "only {total} requests");
    // Both route sets really served traffic, and the gateway really reloaded many times.
    assert!(
        per_set.get(&'A').is_some_and(|n| *n > 0) && per_set.get(&'B').is_some_and(|n| *n > 0),
        "{per_set:?}"
    );
    let reloads = gw.metric("gateway_config_reloads_total").await;
    assert!(
        reloads >= (REWRITES / 2) as f64,
        "only {reloads} reloads for {REWRITES} rewrites"
    );
    assert_eq!(gw.metric("gateway_config_reload_failures_total").await, 0.0);
}

/// Start a gateway with a route to the echo service's `/delay/{ms}`, start a slow
/// request, send `signal`, and check that the request completes, new requests are not
/// accepted, and the process exits 0 without waiting out the 10 s grace period.
async fn graceful_shutdown_on(signal: &str) {
    let (u1, accepted) = common::counting_echo_upstream("one").await;
    let text = format!(
        "{}  - {{id: slow, match: {{path: {{prefix: /delay}}}}, upstream: one}}\n",
        HEAD.replace("{U1}", &u1.to_string())
    );
    let mut gw = Gateway::start(&text).await;
    let in_flight = tokio::spawn({
        let url = gw.url("/delay/1500");
        async move {
            let r = reqwest::get(url).await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
    });
    // Signal only once the request has reached the upstream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    gw.signal(signal);

    // New requests are refused once the listener is closed (which happens at once).
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    loop {
        if fresh.get(gw.url("/delay/0")).send().await.is_err() {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "new requests still accepted while draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/delay/1500");

    let exit = gw
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("gateway did not exit\n{}", gw.log()));
    assert!(exit.success(), "exit status {exit:?}\n{}", gw.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "shutdown waited out the grace period instead of ending when idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    graceful_shutdown_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_exits_zero() {
    graceful_shutdown_on("INT").await;
}
