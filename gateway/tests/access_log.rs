//! The access log through the real binary: lines reach the file (whatever `RUST_LOG`
//! says, without credentials or the query), a writer that cannot keep up drops and
//! counts instead of stalling requests, SIGUSR1 reopens the file after logrotate renamed
//! it, SIGTERM writes what is queued, `off` writes nothing, and config errors are located.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, echo_upstream};
use serde_json::Value;

fn config(upstream: &str, access_log: &str) -> String {
    format!(
        r#"
server: {{shutdown_grace_period: 5s}}
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams: {{app: {{endpoints: [{{address: "{upstream}"}}]}}}}
routes:
  - {{id: app, match: {{path: {{prefix: /}}}}, upstream: app}}
access_log: {access_log}
"#
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The file's lines as JSON, once `pred` holds for them (up to 10 s).
async fn wait_lines(path: &Path, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = read(path)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if pred(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} in {}:\n{}",
            path.display(),
            read(path)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn has_path(lines: &[Value], path: &str) -> bool {
    lines.iter().any(|l| l["path"] == path)
}

async fn get(gw: &Gateway, path: &str) -> u16 {
    reqwest::get(gw.url(path)).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_reach_the_file_whatever_rust_log_says() {
    let up = echo_upstream("app").await.to_string();
    // Relative: next to the config file.
    let gw = Gateway::start_with_env(
        &config(
            &up,
            "{path: access.log, format: json, buffer_bytes: 65536, flush_interval: 50ms}",
        ),
        &[("RUST_LOG", "warn")],
    )
    .await;
    let file = gw.dir.path().join("access.log");
    let r = reqwest::Client::new()
        .get(gw.url("/secret/path?access_token=query-secret"))
        .header("authorization", "Bearer header-secret")
        .header("cookie", "session=cookie-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines = wait_lines(&file, "the request's line", |l| has_path(l, "/secret/path")).await;
    let line = lines.iter().find(|l| l["path"] == "/secret/path").unwrap();
    assert_eq!(line["target"], "access_log");
    assert_eq!(line["route"], "app");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], "app");
    assert_eq!(line["upstream_addr"], up.as_str());
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert!(line["request_id"].as_str().is_some_and(|s| s.len() == 32));
    assert!(line["duration_ms"].as_f64().is_some());
    assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    let text = read(&file);
    for secret in ["query-secret", "header-secret", "cookie-secret"] {
        assert!(!text.contains(secret), "{secret} reached the access log");
    }
    // The access log is its own stream: nothing of it on stdout.
    assert!(
        !gw.log().contains("\"target\":\"access_log\""),
        "{}",
        gw.log()
    );
    let lines_total = gw.metric("gateway_access_log_lines_total").await;
    assert!(lines_total >= 1.0, "{lines_total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_what_is_queued() {
    let up = echo_upstream("app").await.to_string();
    // Neither the batch size nor the interval is ever reached: only shutdown writes.
    let mut gw = Gateway::start(&config(
        &up,
        "{path: access.log, buffer_bytes: 16MiB, flush_interval: 1h}",
    ))
    .await;
    let file = gw.dir.path().join("access.log");
    for i in 0..20 {
        assert_eq!(get(&gw, &format!("/queued/{i}")).await, 200);
    }
    gw.wait_metrics(&[
        "gateway_requests_total{method=\"GET\",route=\"app\",status_class=\"2xx\"} 20",
    ])
    .await;
    assert_eq!(read(&file), "", "written before shutdown");
    gw.signal("TERM");
    let exit = gw
        .wait_exit(Duration::from_secs(20))
        .expect("gateway did not exit");
    assert!(exit.success(), "{exit:?}\n{}", gw.log());
    let text = read(&file);
    for i in 0..20 {
        assert!(
            text.contains(&format!("\"path\":\"/queued/{i}\"")),
            "line {i} lost at shutdown:\n{text}"
        );
    }
    assert_eq!(text.lines().count(), 20, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_a_rename() {
    let up = echo_upstream("app").await.to_string();
    let gw = Gateway::start(&config(&up, "{path: access.log, flush_interval: 50ms}")).await;
    let file = gw.dir.path().join("access.log");
    let rotated = gw.dir.path().join("access.log.1");
    assert_eq!(get(&gw, "/before").await, 200);
    wait_lines(&file, "/before", |l| has_path(l, "/before")).await;

    // logrotate: rename, then SIGUSR1. Until the signal, lines follow the open file.
    std::fs::rename(&file, &rotated).unwrap();
    assert_eq!(get(&gw, "/renamed").await, 200);
    wait_lines(&rotated, "/renamed", |l| has_path(l, "/renamed")).await;
    gw.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("access log reopened") {
        assert!(Instant::now() < deadline, "no reopen:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(get(&gw, "/after").await, 200);
    let new = wait_lines(&file, "/after", |l| has_path(l, "/after")).await;
    assert!(!has_path(&new, "/before"), "{new:?}");
    let old = read(&rotated);
    assert!(!old.contains("/after"), "{old}");
    assert!(old.contains("/before") && old.contains("/renamed"), "{old}");
    // The process is still up: SIGUSR1 did not end it.
    assert_eq!(get(&gw, "/still-up").await, 200);
}

/// Open a FIFO for reading without waiting for a writer (O_NONBLOCK).
fn open_fifo_reader(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// Everything the FIFO holds right now.
fn drain(fifo: &mut std::fs::File, into: &mut Vec<u8>) {
    let mut buf = [0u8; 65536];
    loop {
        match fifo.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_falls_behind_drops_and_counts() {
    let up = echo_upstream("app").await.to_string();
    // The log is a FIFO nobody reads until the end: once the pipe (64 KiB) and the
    // queue are full, the writer is stuck in `write` and lines must be dropped.
    let dir = tempfile::tempdir().unwrap();
    let fifo_path: PathBuf = dir.path().join("access.fifo");
    let made = Command::new("mkfifo").arg(&fifo_path).status().unwrap();
    assert!(made.success());
    let mut fifo = open_fifo_reader(&fifo_path);
    let gw = Gateway::start(&config(
        &up,
        &format!(
            "{{path: '{}', buffer_bytes: 1024, max_queued_bytes: 4096, flush_interval: 10ms}}",
            fifo_path.display()
        ),
    ))
    .await;
    // Every request is answered although its line has nowhere to go.
    let client = reqwest::Client::new();
    let mut sent = 0;
    while gw.metric("gateway_access_log_dropped_total").await == 0.0 {
        for _ in 0..100 {
            let r = client.get(gw.url("/flood")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        sent += 100;
        assert!(sent <= 5000, "nothing dropped after {sent} requests");
    }
    let dropped = gw.metric("gateway_access_log_dropped_total").await;
    assert!(dropped >= 1.0);

    // Once the reader catches up, lines flow again.
    let mut got = Vec::new();
    let marker = "/after-the-stall";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut asked = false;
    loop {
        drain(&mut fifo, &mut got);
        if !asked {
            // After a first drain the writer's stuck batch went through.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drain(&mut fifo, &mut got);
            assert_eq!(get(&gw, marker).await, 200);
            asked = true;
        }
        if String::from_utf8_lossy(&got).contains(marker) {
            break;
        }
        assert!(Instant::now() < deadline, "no line after the stall");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Whole lines only: a dropped line is never half written.
    let text = String::from_utf8(got).unwrap();
    for l in text.lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    let written = text.lines().count() as f64;
    assert!(
        written + dropped <= (sent + 1) as f64 + 1.0,
        "{written} + {dropped} > {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_writes_no_line() {
    let up = echo_upstream("app").await.to_string();
    let gw = Gateway::start(&config(&up, "off")).await;
    assert_eq!(get(&gw, "/quiet").await, 200);
    gw.wait_metrics(&[
        "gateway_requests_total{method=\"GET\",route=\"app\",status_class=\"2xx\"} 1",
    ])
    .await;
    // The default writer would have flushed within 1 s; `off` has none.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!gw.log().contains("/quiet"), "{}", gw.log());
    assert_eq!(gw.metric("gateway_access_log_lines_total").await, 0.0);
}

#[test]
fn config_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "listeners: [{name: a, address: '127.0.0.1:8080'}]
access_log:
  path: /var/log/gw/
  format: xml
  buffer_bytes: 10
  flush_interval: soon
",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    for expected in [
        format!("{f}:3:3: access_log.path:"),
        format!("{f}:4:3: access_log.format: unknown format \"xml\""),
        format!("{f}:5:3: access_log.buffer_bytes:"),
        format!("{f}:6:3: access_log.flush_interval: invalid duration"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }

    std::fs::write(&file, "access_log: on\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{f}:1:13:")) && err.contains("write `off` or a mapping"),
        "{err}"
    );
}
