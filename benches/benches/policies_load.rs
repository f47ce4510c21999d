//! The cost of the edge policies in the whole request pipeline, through the real release
//! `gateway` binary on 127.0.0.1 (an in-process origin, one keepalive HTTP/1.1 client
//! sending requests one after another):
//!
//! - `--callgrind`: the gateway runs under `valgrind --tool=callgrind`; counters are zeroed
//!   before each scenario and dumped after it, so each scenario's instructions per request
//!   cover everything the gateway process executed for it (every thread). Instruction
//!   counts do not depend on what else runs on the machine.
//! - otherwise: CPU time (user + system, from `/proc/PID/stat`) of the gateway per request
//!   and, for the compression scenarios, megabytes of response body compressed per CPU
//!   second; `--nginx PATH` measures nginx (`gzip on`, same body, same levels) the same way.
//!
//! Scenarios: `plain` (no policy), `apikey_cors` (API key among 1,000 consumers + a CORS
//! policy, an allowed origin), `forward_cached` (forward auth, decision from the cache),
//! and a 64 KiB JSON body in identity, gzip 1, gzip 6, zstd 3 and br 4.
//! `GATEWAY_BIN` names another gateway binary; `--requests N` (default 2000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn gateway_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("gateway");
    assert!(
        bin.exists(),
        "{} not found: cargo build --release -p gateway",
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

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same 64 KiB JSON list as the `policies` criterion benchmark.
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

async fn origin(big: Vec<u8>) -> SocketAddr {
    let small = format!("{{\"items\":[{}0]}}", "1,".repeat(500));
    let app = Router::new()
        .route("/check", any(|| async { ([("x-auth-user", "ada")], "") }))
        .route(
            "/big",
            get(move || {
                let big = big.clone();
                async move { ([("content-type", "application/json")], big).into_response() }
            }),
        )
        .fallback(move || {
            let small = small.clone();
            async move { ([("content-type", "application/json")], small).into_response() }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn config(port: u16, admin: u16, origin: SocketAddr) -> String {
    let mut consumers = String::new();
    for i in 0..1000 {
        let d = hex::encode(gateway::apikey::digest(
            format!("key-{i:04}-0123456789").as_bytes(),
        ));
        consumers.push_str(&format!("  - {{name: c{i}, keys: ['{d}']}}\n"));
    }
    let comp = |level: &str, algo: &str| {
        format!("{{algorithms: [{algo}], level: {level}, content_types: [application/json]}}")
    };
    format!(
        "
server: {{threads: 1}}
listeners: [{{name: main, address: '127.0.0.1:{port}'}}]
admin: {{address: '127.0.0.1:{admin}'}}
upstreams: {{o: {{endpoints: [{{address: '{origin}'}}]}}}}
consumers:
{consumers}
cors_policies:
  web: {{allow_origins: ['https://app.example.com'], allow_headers: [x-api-key], allow_credentials: true, expose_headers: [x-request-id]}}
routes:
  - {{id: plain, match: {{path: {{prefix: /plain}}}}, upstream: o}}
  - {{id: apikey_cors, match: {{path: {{prefix: /keyed}}}}, cors: web, auth: {{api_key: {{}}}}, upstream: o}}
  - id: forward_cached
    match: {{path: {{prefix: /fwd}}}}
    auth: {{forward: {{url: 'http://{origin}/check', copy_response_headers: [x-auth-user], cache: {{ttl: 1h, key: ['header:authorization']}}}}}}
    upstream: o
  - {{id: identity, match: {{path: {{exact: /c/identity}}}}, rewrite: {{regex: {{pattern: '^.*$', replacement: /big}}}}, upstream: o}}
  - {{id: gzip1, match: {{path: {{exact: /c/gzip1}}}}, rewrite: {{regex: {{pattern: '^.*$', replacement: /big}}}}, compression: {}, upstream: o}}
  - {{id: gzip6, match: {{path: {{exact: /c/gzip6}}}}, rewrite: {{regex: {{pattern: '^.*$', replacement: /big}}}}, compression: {}, upstream: o}}
  - {{id: zstd3, match: {{path: {{exact: /c/zstd3}}}}, rewrite: {{regex: {{pattern: '^.*$', replacement: /big}}}}, compression: {}, upstream: o}}
  - {{id: br4, match: {{path: {{exact: /c/br4}}}}, rewrite: {{regex: {{pattern: '^.*$', replacement: /big}}}}, compression: {}, upstream: o}}
",
        comp("1", "gzip"),
        comp("6", "gzip"),
        comp("3", "zstd"),
        comp("4", "br"),
    )
}

/// One keepalive connection; reads each response whole (Content-Length or chunked).
struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// Send one GET; returns the body bytes received.
    async fn get(&mut self, path: &str, headers: &str) -> usize {
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\n{headers}\r\n");
        self.w.write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        let (mut len, mut chunked) = (None, false);
        let mut first = true;
        loop {
            line.clear();
            self.r.read_line(&mut line).await.unwrap();
            if first {
                assert!(line.starts_with("HTTP/1.1 200"), "{path}: {line}");
                first = false;
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut buf = vec![0u8; 128 * 1024];
        if !chunked {
            let n = len.unwrap_or(0);
            self.r.read_exact(&mut buf[..n]).await.unwrap();
            return n;
        }
        let mut total = 0;
        loop {
            line.clear();
            self.r.read_line(&mut line).await.unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            self.r.read_exact(&mut buf[..n + 2]).await.unwrap();
            total += n;
            if n == 0 {
                return total;
            }
        }
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime), counted from the state field (3).
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn callgrind_total(dir: &Path, pid: u32, before: &[PathBuf]) -> f64 {
    let status = Command::new("callgrind_control")
        .args(["-d", &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "callgrind_control -d failed");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let new: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("cg.out")
                    && !before.contains(p)
            })
            .collect();
        for p in &new {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            if let Some(total) = text.lines().find_map(|l| {
                l.strip_prefix("totals: ")
                    .or_else(|| l.strip_prefix("summary: "))
            }) {
                return total.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no callgrind dump appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dumps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

struct Scenario {
    name: &'static str,
    path: &'static str,
    headers: &'static str,
}

const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "plain",
        path: "/plain/x",
        headers: "",
    },
    Scenario {
        name: "apikey_cors",
        path: "/keyed/x",
        headers: "X-Api-Key: key-0421-0123456789\r\nOrigin: https://app.example.com\r\n",
    },
    Scenario {
        name: "forward_cached",
        path: "/fwd/x",
        headers: "Authorization: Bearer abcdef0123456789\r\n",
    },
    Scenario {
        name: "identity_64k",
        path: "/c/identity",
        headers: "Accept-Encoding: gzip\r\n",
    },
    Scenario {
        name: "gzip1_64k",
        path: "/c/gzip1",
        headers: "Accept-Encoding: gzip\r\n",
    },
    Scenario {
        name: "gzip6_64k",
        path: "/c/gzip6",
        headers: "Accept-Encoding: gzip\r\n",
    },
    Scenario {
        name: "zstd3_64k",
        path: "/c/zstd3",
        headers: "Accept-Encoding: zstd\r\n",
    },
    Scenario {
        name: "br4_64k",
        path: "/c/br4",
        headers: "Accept-Encoding: br\r\n",
    },
];

async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "server on {port} did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// nginx serving the same body from a file, `gzip on` at `level`, one worker, CPU time
/// per megabyte (of uncompressed body) measured like the gateway's.
async fn nginx(bin: &str, dir: &Path, body: &[u8], requests: usize) {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/big.json"), body).unwrap();
    for level in [0, 1, 6] {
        let port = free_port();
        let gzip = if level == 0 {
            "gzip off;".to_owned()
        } else {
            format!(
                "gzip on; gzip_comp_level {level}; gzip_types application/json; gzip_min_length 1024;"
            )
        };
        let conf = dir.join(format!("nginx-{level}.conf"));
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes 1; error_log {d}/error.log; pid {d}/nginx-{level}.pid;
events {{ worker_connections 64; }}
http {{ access_log off; types {{ application/json json; }} {gzip}
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}",
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let child = Proc(
            Command::new(bin)
                .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(port).await;
        let mut c = Client::connect(port).await;
        for _ in 0..50 {
            c.get("/big.json", "Accept-Encoding: gzip\r\n").await;
        }
        let cpu0 = cpu_seconds(child.0.id());
        let mut bytes = 0;
        for _ in 0..requests {
            bytes += c.get("/big.json", "Accept-Encoding: gzip\r\n").await;
        }
        let cpu = cpu_seconds(child.0.id()) - cpu0;
        let mb = (requests * body.len()) as f64 / 1e6;
        println!(
            "nginx gzip level {level}: {:.1} us CPU/request, {:.0} MB/s per core, {:.1}% of the body sent",
            cpu * 1e6 / requests as f64,
            mb / cpu,
            100.0 * bytes as f64 / (requests * body.len()) as f64
        );
    }
}

fn main() {
    let requests: usize = arg("--requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let callgrind = flag("--callgrind");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let body = json_body();
        let origin = origin(body.clone()).await;
        let dir = std::env::temp_dir().join(format!("policies-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(bin) = arg("--nginx") {
            nginx(&bin, &dir, &body, requests).await;
        }
        let (port, admin) = (free_port(), free_port());
        let cfg = dir.join("gateway.yaml");
        std::fs::write(&cfg, config(port, admin, origin)).unwrap();
        let mut cmd = if callgrind {
            let mut c = Command::new("valgrind");
            c.args([
                "--tool=callgrind",
                &format!("--callgrind-out-file={}/cg.out", dir.display()),
                "--dump-instr=no",
            ])
            .arg(gateway_binary());
            c
        } else {
            Command::new(gateway_binary())
        };
        let gw = Proc(
            cmd.args(["run", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = gw.0.id();
        wait_port(port).await;
        println!(
            "policies_load: {requests} requests per scenario, one keepalive connection, {} ({} bytes for the 64k body)",
            if callgrind { "instructions (callgrind)" } else { "CPU time" },
            body.len()
        );
        let mut c = Client::connect(port).await;
        let mut plain = None;
        for s in &SCENARIOS {
            for _ in 0..50 {
                c.get(s.path, s.headers).await;
            }
            let before = dumps(&dir);
            let cpu0 = cpu_seconds(pid);
            if callgrind {
                let z = Command::new("callgrind_control")
                    .args(["-z", &pid.to_string()])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(z.success());
            }
            let mut bytes = 0;
            for _ in 0..requests {
                bytes += c.get(s.path, s.headers).await;
            }
            let sent = 100.0 * bytes as f64 / (requests * body.len()) as f64;
            let mb = (requests * body.len()) as f64 / 1e6;
            if callgrind {
                let per = callgrind_total(&dir, pid, &before) / requests as f64;
                let base = *plain.get_or_insert(per);
                let extra = if s.path.starts_with("/c/") {
                    format!(", {:.1} instructions per body byte, {sent:.1}% sent", per / body.len() as f64)
                } else {
                    String::new()
                };
                println!(
                    "{:<16} {:>10.0} instructions/request ({:+.1}% vs plain){extra}",
                    s.name,
                    per,
                    100.0 * (per - base) / base
                );
            } else {
                let cpu = cpu_seconds(pid) - cpu0;
                let per = cpu * 1e6 / requests as f64;
                let extra = if s.path.starts_with("/c/") {
                    format!(", {:.0} MB/s per core, {sent:.1}% of the body sent", mb / cpu)
                } else {
                    String::new()
                };
                println!("{:<16} {per:>8.1} us CPU/request{extra}", s.name);
            }
        }
        drop(gw);
        std::fs::remove_dir_all(&dir).ok();
    });
}
