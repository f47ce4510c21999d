//! Owns the one `ArcSwap<Runtime>` and the single writer that replaces it: the config
//! file watcher and SIGHUP feed one debounced loop that parses, validates and compiles
//! before swapping. A failed reload keeps the running runtime, logs every error, bumps
//! `gateway_config_reload_failures_total` and is shown at `/admin/config`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::config::{self, ConfigError, ConfigErrors};
use crate::metrics::Metrics;
use crate::runtime::{self, Runtime};

/// What `/admin/config` shows about reloads.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub source: String,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    /// Errors of the most recent attempt; empty when it succeeded.
    pub last_errors: Vec<ConfigError>,
    /// Set when the file on disk changes listeners/admin/server settings, which only
    /// take effect after a restart.
    pub restart_required: bool,
}

/// The published runtime, plus reload bookkeeping for the admin API.
#[derive(Debug)]
pub struct RuntimeStore {
    current: ArcSwap<Runtime>,
    status: Mutex<ReloadStatus>,
    metrics: Arc<Metrics>,
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl RuntimeStore {
    pub fn new(initial: Runtime, source: &Path, metrics: Arc<Metrics>) -> Self {
        metrics.config_version.set(initial.version as i64);
        Self {
            current: ArcSwap::from_pointee(initial),
            status: Mutex::new(ReloadStatus {
                source: source.display().to_string(),
                last_success: Some(now_text()),
                ..ReloadStatus::default()
            }),
            metrics,
        }
    }

    /// The runtime a new request should pin.
    pub fn load(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn record(&self, f: impl FnOnce(&mut ReloadStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// Outcome of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Swapped { version: u64 },
    Unchanged,
    Rejected,
}

/// The single writer of the `RuntimeStore`.
#[derive(Debug)]
pub struct Reloader {
    store: Arc<RuntimeStore>,
    path: PathBuf,
    debounce: Duration,
    last_text: Mutex<String>,
}

/// Longest we wait for a burst of file events to go quiet before reloading anyway.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

impl Reloader {
    pub fn new(store: Arc<RuntimeStore>, path: PathBuf, debounce: Duration, text: String) -> Self {
        Self {
            store,
            path,
            debounce,
            last_text: Mutex::new(text),
        }
    }

    /// Read, validate, compile and swap. `force` reloads even if the bytes are the same
    /// (SIGHUP); file events skip identical content, which editors and ConfigMap
    /// symlink swaps produce in bursts.
    pub fn reload(&self, force: bool) -> ReloadOutcome {
        let metrics = &self.store.metrics;
        let name = self.path.display().to_string();
        let attempt = now_text();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let errors = ConfigErrors(vec![ConfigError {
                    file: name,
                    line: None,
                    column: None,
                    path: String::new(),
                    message: format!("cannot read config file: {e}"),
                }]);
                return self.reject(attempt, errors);
            }
        };
        if !force && self.last_text.lock().is_ok_and(|t| *t == text) {
            return ReloadOutcome::Unchanged;
        }
        let spec = match config::parse(&text, &name) {
            Ok(s) => s,
            Err(errors) => return self.reject(attempt, errors),
        };
        let current = self.store.load();
        let version = current.version + 1;
        let runtime = match runtime::compile(&spec, version, Some(&current)) {
            Ok(r) => r,
            Err(errors) => {
                let errors = ConfigErrors(
                    errors
                        .into_iter()
                        .map(|e| ConfigError {
                            file: name.clone(),
                            line: None,
                            column: None,
                            path: e.path,
                            message: e.message,
                        })
                        .collect(),
                );
                return self.reject(attempt, errors);
            }
        };
        let restart_required = runtime.restart_settings != current.restart_settings;
        if restart_required {
            tracing::warn!(
                "config changes listeners, admin or server settings; those take effect after a restart"
            );
        }
        self.store.current.store(Arc::new(runtime));
        metrics.config_version.set(version as i64);
        metrics.config_reloads.inc();
        if let Ok(mut t) = self.last_text.lock() {
            *t = text;
        }
        self.store.record(|s| {
            s.last_attempt = Some(attempt.clone());
            s.last_success = Some(attempt);
            s.last_errors.clear();
            s.restart_required = restart_required;
        });
        tracing::info!(version, "config reloaded");
        ReloadOutcome::Swapped { version }
    }

    fn reject(&self, attempt: String, errors: ConfigErrors) -> ReloadOutcome {
        self.store.metrics.config_reload_failures.inc();
        for e in &errors.0 {
            tracing::error!(error = %e, "config reload rejected; keeping the running config");
        }
        self.store.record(|s| {
            s.last_attempt = Some(attempt);
            s.last_errors = errors.0;
        });
        ReloadOutcome::Rejected
    }

    async fn reload_blocking(self: &Arc<Self>, force: bool) {
        let this = Arc::clone(self);
        if let Err(e) = tokio::task::spawn_blocking(move || this.reload(force)).await {
            tracing::error!(error = %e, "config reload task failed");
        }
    }

    /// Watch the file's directory (so atomic renames and Kubernetes ConfigMap symlink
    /// swaps are seen) and SIGHUP, debounce, reload, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let watch_dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let file_name = self.path.file_name().map(|n| n.to_os_string());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Only events about the config file itself, or Kubernetes' `..data` symlink
            // swap; other files in the directory (logs, say) must not keep the debounce
            // from ever going quiet.
            let relevant = |e: &notify::Event| {
                !e.kind.is_access()
                    && (e.paths.is_empty()
                        || e.paths.iter().any(|p| {
                            p.file_name().is_some_and(|n| {
                                Some(n) == file_name.as_deref()
                                    || n.to_string_lossy().starts_with("..")
                            })
                        }))
            };
            if res.is_ok_and(|e| relevant(&e)) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&watch_dir, RecursiveMode::NonRecursive).map(|()| w));
        // Keep the watcher alive for the loop's lifetime.
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            let force = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            if !force {
                // Debounce: wait for `debounce` of quiet, but no longer than MAX_DEBOUNCE.
                let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE.max(self.debounce);
                loop {
                    let quiet = tokio::time::sleep(self.debounce);
                    tokio::select! {
                        _ = quiet => break,
                        _ = tokio::time::sleep_until(deadline) => break,
                        Some(()) = rx.recv() => continue,
                    }
                }
            }
            self.reload_blocking(force).await;
        }
    }
}

/// Runs the reloader on Pingora's background-service runtime.
#[derive(Debug)]
pub struct ReloadService(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.0).run(shutdown).await;
    }
}
