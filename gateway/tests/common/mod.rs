//! Test harness: real Axum upstreams on loopback and the real `gateway` binary started
//! as a child process on free ports, stopped when the handle is dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

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
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, render(template, port, admin_port)).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let gw = Gateway {
            child,
            dir,
            config,
            port,
            admin_port,
        };
        gw.wait_ready().await;
        gw
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

    async fn wait_ready(&self) {
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

    /// The config version the admin API reports.
    pub async fn version(&self) -> u64 {
        let v: serde_json::Value = reqwest::get(self.admin_url("/admin/config"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["version"].as_u64().unwrap()
    }

    /// Poll `/admin/config` until `pred` holds or 10 s pass.
    pub async fn wait_config(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: serde_json::Value = reqwest::get(self.admin_url("/admin/config"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
