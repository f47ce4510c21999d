//! Load benchmark of the response cache through the real gateway binary on 127.0.0.1:
//! throughput of cache hits against proxied misses (and a route without cache), with
//! the origin's request count proving hits never reach it.
//!
//! Needs the release gateway next to this bench binary:
//! `cargo build --release -p gateway && cargo bench -p benches --bench cache_load`.
//! Optional arguments: `--seconds N` per scenario (default 3), `--connections N` (32);
//! `GATEWAY_BIN` names another gateway binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const BODY: usize = 1024;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The release `gateway` binary: `$GATEWAY_BIN`, else next to this bench binary
/// (bench binaries live in `<target>/release/deps/`).
fn gateway_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = release.join("gateway");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --release -p gateway` with the same CARGO_TARGET_DIR",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_origin(hits: Arc<AtomicU64>) -> SocketAddr {
    let body = "x".repeat(BODY);
    let cached = {
        let (hits, body) = (Arc::clone(&hits), body.clone());
        move || {
            hits.fetch_add(1, Ordering::Relaxed);
            let body = body.clone();
            async move {
                (
                    [
                        (header::CACHE_CONTROL, "public, max-age=600"),
                        (header::CONTENT_TYPE, "text/plain"),
                    ],
                    body,
                )
                    .into_response()
            }
        }
    };
    let uncached = {
        let (hits, body) = (Arc::clone(&hits), body.clone());
        move || {
            hits.fetch_add(1, Ordering::Relaxed);
            let body = body.clone();
            async move {
                (
                    [
                        (header::CACHE_CONTROL, "no-store"),
                        (header::CONTENT_TYPE, "text/plain"),
                    ],
                    body,
                )
                    .into_response()
            }
        }
    };
    let app = Router::new()
        .route("/c/hot", get(cached.clone()))
        .route("/c/cold", get(uncached.clone()))
        .route("/p/plain", get(uncached));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// One keepalive HTTP/1.1 connection issuing GETs until `stop`; returns responses read.
async fn client(port: u16, path: &'static str, stop: Arc<AtomicBool>) -> u64 {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\n\r\n");
    let mut done = 0;
    let mut head = Vec::with_capacity(1024);
    let mut body = vec![0u8; BODY * 2];
    while !stop.load(Ordering::Relaxed) {
        w.write_all(request.as_bytes()).await.unwrap();
        head.clear();
        // Read the head byte by byte from the buffer up to the blank line.
        loop {
            let b = r.read_u8().await.unwrap();
            head.push(b);
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let len: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("content-length");
        r.read_exact(&mut body[..len]).await.unwrap();
        done += 1;
    }
    done
}

async fn run(port: u16, path: &'static str, connections: u64, seconds: u64) -> f64 {
    // Warm up: fill the cache, open upstream keepalive connections.
    let stop = Arc::new(AtomicBool::new(false));
    let warm: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(client(port, path, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in warm {
        t.await.unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(client(port, path, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds = arg("--seconds", 3);
    let connections = arg("--connections", 32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let hits = Arc::new(AtomicU64::new(0));
        let origin = start_origin(Arc::clone(&hits)).await;
        let dir = std::env::temp_dir().join(format!("cache-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, admin) = (free_port(), free_port());
        let config = dir.join("gateway.yaml");
        std::fs::write(
            &config,
            format!(
                r#"
server: {{threads: 2}}
listeners: [{{name: main, address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
upstreams:
  origin: {{endpoints: [{{address: "{origin}"}}]}}
routes:
  - {{id: cached, match: {{path: {{prefix: /c/}}}}, upstream: origin, cache: {{}}}}
  - {{id: plain, match: {{path: {{prefix: /p/}}}}, upstream: origin}}
"#
            ),
        )
        .unwrap();
        let _gw = Gateway(
            Command::new(gateway_binary())
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "gateway did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        println!(
            "cache_load: {connections} keepalive connections, {seconds}s per scenario, {BODY}-byte bodies"
        );
        let hit_rps = {
            // Fill once, then count origin requests during the measurement only.
            client_once(port, "/c/hot").await;
            let before = hits.load(Ordering::Relaxed);
            let rps = run(port, "/c/hot", connections, seconds).await;
            let origin_requests = hits.load(Ordering::Relaxed) - before;
            println!("hit:   {rps:>9.0} req/s  (origin requests during hits: {origin_requests})");
            assert_eq!(origin_requests, 0, "a hit must not touch the upstream");
            rps
        };
        let miss_rps = run(port, "/c/cold", connections, seconds).await;
        println!("miss:  {miss_rps:>9.0} req/s  (cache route, origin says no-store: proxied)");
        let plain_rps = run(port, "/p/plain", connections, seconds).await;
        println!("plain: {plain_rps:>9.0} req/s  (route without cache)");
        println!("hit / miss throughput ratio: {:.2}", hit_rps / miss_rps);
        std::fs::remove_dir_all(&dir).ok();
    });
}

async fn client_once(port: u16, path: &'static str) {
    let stop = Arc::new(AtomicBool::new(false));
    let t = tokio::spawn(client(port, path, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    t.await.unwrap();
}
