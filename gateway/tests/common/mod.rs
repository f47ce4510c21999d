//! Test harness: real Axum upstreams on loopback and the real `gateway` binary started
//! as a child process on free ports, stopped when the handle is dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod otlp;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a [`header_recorder`] saw: per request, the values of the headers it was asked
/// to keep ("" when absent), in order.
pub type Recorded = std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>;

/// A service that answers `GET {path}` with 200 `ok` (a forward-auth check that allows
/// everything) and keeps the values of `names` of every request.
pub async fn header_recorder(path: &str, names: &[&'static str]) -> (SocketAddr, Recorded) {
    let seen: Recorded = Recorded::default();
    let s = std::sync::Arc::clone(&seen);
    let names = names.to_vec();
    let app = axum::Router::new().route(
        path,
        axum::routing::get(move |h: axum::http::HeaderMap| {
            let s = std::sync::Arc::clone(&s);
            let names = names.clone();
            async move {
                let values = names
                    .iter()
                    .map(|n| {
                        h.get(*n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    })
                    .collect();
                s.lock().unwrap().push(values);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Start an echo upstream named `name` on a free port; runs until the test's runtime ends.
pub async fn echo_upstream(name: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example_services::echo::app(name);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

pub struct Gateway {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub admin_port: u16,
}

/// Config text with `{PORT}` and `{ADMIN}` replaced by the gateway's ports.
pub fn render(template: &str, port: u16, admin_port: u16) -> String {
    template
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN}", &admin_port.to_string())
}

/// Write atomically (temp file + rename), as config management tools do.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Gateway {
    /// Start the gateway with `template` (see [`render`]) and wait until it is ready.
    pub async fn start(template: &str) -> Gateway {
        Self::start_wrapped(template, &[]).await
    }

    /// Like [`Gateway::start`], but only waits until the admin API answers (with any
    /// status) and the proxy port accepts: for gateways that start not ready.
    pub async fn start_unready(template: &str) -> Gateway {
        let gw = Self::launch(template, &[]);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let admin = client.get(gw.admin_url("/readyz")).send().await;
            let proxy = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await;
            if admin.is_ok() && proxy.is_ok() {
                return gw;
            }
            assert!(Instant::now() < deadline, "gateway not up:\n{}", gw.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`Gateway::start`], with the binary run under `wrapper` (e.g. `faketime`).
    pub async fn start_wrapped(template: &str, wrapper: &[&str]) -> Gateway {
        let gw = Self::launch(template, wrapper);
        gw.wait_ready().await;
        gw
    }

    /// Like [`Gateway::start`], with extra environment variables for the process.
    pub async fn start_with_env(template: &str, env: &[(&str, &str)]) -> Gateway {
        let gw = Self::launch_with_env(template, &[], env);
        gw.wait_ready().await;
        gw
    }

    /// Start the gateway without waiting for it to be ready (see [`Gateway::wait_ready`]).
    pub fn launch(template: &str, wrapper: &[&str]) -> Gateway {
        Self::launch_with_env(template, wrapper, &[])
    }

    /// [`Gateway::launch`] with extra environment variables.
    pub fn launch_with_env(template: &str, wrapper: &[&str], env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, render(template, port, admin_port)).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_gateway"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_gateway")),
        };
        // Its own process group, so that dropping the harness also stops a process a
        // wrapper (such as `faketime`, which forks) started underneath it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Gateway {
            child,
            dir,
            config,
            port,
            admin_port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The output once it contains `needle` (up to 10 s): access-log lines are written
    /// in batches by the writer thread, up to `flush_interval` (1 s) after the response.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{log}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let admin = client.get(self.admin_url("/readyz")).send().await;
            let proxy = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await;
            if admin.is_ok_and(|r| r.status() == 200) && proxy.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// An admin API path (`/admin/upstreams`, `/admin/jwt`...) as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.admin_url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `/admin/config` as JSON.
    pub async fn admin_config(&self) -> serde_json::Value {
        self.admin_json("/admin/config").await
    }

    /// Poll `/admin/config` until `pred` holds or 10 s pass.
    pub async fn wait_config(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.admin_config().await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `/metrics` once it contains every line in `needles`. Metrics are recorded in the
    /// logging phase, after the client already has its response, so poll (up to 10 s).
    pub async fn wait_metrics(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = reqwest::get(self.admin_url("/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let missing: Vec<&&str> = needles.iter().filter(|n| !text.contains(**n)).collect();
            if missing.is_empty() {
                return text;
            }
            assert!(Instant::now() < deadline, "missing {missing:?} in\n{text}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Value of an unlabelled metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Wait for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener that counts the connections it accepts.
pub struct CountingListener {
    inner: tokio::net::TcpListener,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl axum::serve::Listener for CountingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok(conn) = self.inner.accept().await {
                self.accepted
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return conn;
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Like [`echo_upstream`], also returning the count of TCP connections it accepted.
pub async fn counting_echo_upstream(
    name: &str,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = CountingListener {
        inner,
        accepted: std::sync::Arc::clone(&accepted),
    };
    let app = example_services::echo::app(name);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, accepted)
}

/// An echo upstream that waits `delay` before answering every request.
pub async fn slow_echo_upstream(name: &str, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example_services::echo::app(name).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            tokio::time::sleep(delay).await;
            next.run(req).await
        },
    ));
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// An upstream on its own Tokio runtime, so that killing it really closes every
/// connection (aborting a server task would leave its connection tasks running).
/// `GET /ready` answers 200 or 503 as `healthy` says; everything else is the echo app.
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    pub healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Health probes received (`/ready`).
    pub probes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Other requests received.
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Member {
    pub fn start(name: &str) -> Member {
        Self::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serve on `addr` (say 127.0.0.2:P, so several members share one port on
    /// different loopback addresses, as pods of one Service do).
    pub fn start_at(name: &str, addr: SocketAddr) -> Member {
        let mut m = Member {
            name: name.to_owned(),
            addr,
            healthy: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            probes: std::sync::Arc::default(),
            hits: std::sync::Arc::default(),
            rt: None,
        };
        m.serve();
        m
    }

    fn serve(&mut self) {
        use std::sync::atomic::Ordering;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        let _guard = rt.enter();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(1024).unwrap();
        self.addr = listener.local_addr().unwrap();
        let (healthy, probes, hits) =
            (self.healthy.clone(), self.probes.clone(), self.hits.clone());
        let ready = axum::routing::get(move || {
            let (healthy, probes) = (healthy.clone(), probes.clone());
            async move {
                probes.fetch_add(1, Ordering::SeqCst);
                if healthy.load(Ordering::SeqCst) {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        });
        let echo = example_services::echo::app(&self.name).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                hits.fetch_add(1, Ordering::SeqCst);
                next.run(req)
            },
        ));
        let app = axum::Router::new().route("/ready", ready).merge(echo);
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.rt = Some(rt);
    }

    /// Stop answering at once: the listener and every open connection close.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Serve again on the same address.
    pub fn restart(&mut self) {
        self.kill();
        self.serve();
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real `redis-server` on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Started with extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        r.restart();
        r
    }

    /// (Re)start on the same port and wait until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/deps installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused server still dies of SIGKILL; continue it anyway for a clean wait.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Send `signal` (`STOP`, `CONT`) to the server: a paused Redis accepts connections
    /// and never answers.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
