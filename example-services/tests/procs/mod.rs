//! Process helpers for tests that start the real service binaries: free ports, a
//! service child process (logs in a file, SIGKILL to crash it, SIGTERM to stop it), a
//! `redis-server` on a free port, metrics scraping and waiting with generous deadlines.
//! Every process is stopped by PID when its handle drops.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Deadline for anything a test waits for: long, because the machine may be loaded.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `check` every 50 ms until it gives `Some`, or panic with `what` after [`PATIENCE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One of the example-services binaries, run as a child process.
pub struct Service {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Start `bin` (a `CARGO_BIN_EXE_*` path) listening on a free port with `args`;
    /// waits until `/readyz` answers 200.
    pub async fn start(name: &str, bin: &str, args: &[String], log_dir: &Path) -> Service {
        let port = free_port();
        Self::start_on(name, bin, port, args, log_dir).await
    }

    pub async fn start_on(
        name: &str,
        bin: &str,
        port: u16,
        args: &[String],
        log_dir: &Path,
    ) -> Service {
        Self::start_with_env(name, bin, port, args, &[], log_dir).await
    }

    /// As [`Service::start_on`], with `envs` set for the child.
    pub async fn start_with_env(
        name: &str,
        bin: &str,
        port: u16,
        args: &[String],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> Service {
        let log = log_dir.join(format!("{name}-{}.log", free_port()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .env_remove("HOSTNAME")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let svc = Service {
            name: name.to_owned(),
            port,
            log,
            child: Some(child),
        };
        let client = reqwest::Client::new();
        let url = svc.url("/readyz");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become ready:\n{}",
                svc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        svc
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash, nothing runs after it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(status.success(), "{} exited with {status}", self.name);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("{} did not stop on SIGTERM", self.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The value of the metric line starting with `series` (name and labels) in
    /// `/metrics`, if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `bin` with `args` and `envs` to its exit (it is expected to refuse to start):
/// whether it exited 0, and its stdout and stderr. Killed after [`PATIENCE`].
pub fn run_to_exit(bin: &str, args: &[String], envs: &[(&str, &str)]) -> (bool, String) {
    let mut child = Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        .env_remove("HOSTNAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (status.success(), text)
}

/// A `redis-server` on a free port without persistence, stopped by PID on drop. It can
/// be created without starting, to have a URL that nothing answers yet.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn reserved() -> RedisServer {
        RedisServer {
            port: free_port(),
            child: None,
        }
    }

    pub fn started() -> RedisServer {
        let mut r = Self::reserved();
        r.start();
        r
    }

    pub fn start(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/deps installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection for the test's own look at the stream.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
