//! Owns the one `ArcSwap<Runtime>` and the single writer that replaces it: the config
//! file watcher and SIGHUP feed one debounced loop that parses, validates and compiles
//! before swapping. A failed reload keeps the running runtime, logs every error, bumps
//! `gateway_config_reload_failures_total` and is shown at `/admin/config`.
//!
//! The same loop owns the second input, the discovery snapshot stream: a new snapshot
//! recompiles the last good spec with it and swaps the whole runtime, and a config
//! reload compiles with the latest snapshot. One writer, one swap: routes and
//! endpoints can never disagree.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use discovery::SnapshotReceiver;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::config::{self, ConfigError, ConfigErrors, Spec};
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

/// `gateway_tls_certificate_expiry_seconds` for the certificates `runtime` serves (and
/// none for those it no longer does).
fn export_certificates(runtime: &Runtime, metrics: &Metrics) {
    let gauge = &metrics.protocols.tls_certificate_expiry;
    gauge.reset();
    for (listener, tls) in &runtime.tls {
        for c in &tls.spec.certificates {
            gauge
                .with_label_values(&[listener.as_str(), c.label.as_str()])
                .set(c.not_after as f64);
        }
    }
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl RuntimeStore {
    pub fn new(initial: Runtime, source: &Path, metrics: Arc<Metrics>) -> Self {
        metrics.config_version.set(initial.version as i64);
        export_certificates(&initial, &metrics);
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

    /// Swap in `runtime` (the one writer calls this).
    fn publish(&self, runtime: Runtime) {
        export_certificates(&runtime, &self.metrics);
        self.current.store(Arc::new(runtime));
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

/// The discovery input of the writer: the snapshot stream and the last good spec to
/// recompile when a snapshot arrives.
#[derive(Debug)]
struct DiscoveryInput {
    snapshots: SnapshotReceiver,
    spec: Mutex<Arc<Spec>>,
    /// The snapshot the running runtime was compiled with. Compared by pointer, not
    /// version: a restarted control plane numbers its snapshots afresh.
    applied: Mutex<Option<Arc<discovery::Snapshot>>>,
}

/// The single writer of the `RuntimeStore`.
#[derive(Debug)]
pub struct Reloader {
    store: Arc<RuntimeStore>,
    path: PathBuf,
    debounce: Duration,
    last_text: Mutex<String>,
    discovery: Option<DiscoveryInput>,
    /// Files the running spec read besides the config (`keys_file`s) with the bytes it
    /// read: a change to one reloads like a change to the config itself.
    inputs: Mutex<Vec<(PathBuf, Option<Vec<u8>>)>>,
    /// File names the watcher reports (the config's and the inputs').
    watched_names: Arc<Mutex<Vec<std::ffi::OsString>>>,
}

/// Read each file (`None` when unreadable: that is a state to compare too).
fn read_inputs(paths: &[PathBuf]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).ok()))
        .collect()
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
            discovery: None,
            inputs: Mutex::new(Vec::new()),
            watched_names: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Also watch `files` (the running spec's `keys_file`s): their changes reload.
    pub fn with_inputs(self, files: &[PathBuf]) -> Self {
        if let Ok(mut i) = self.inputs.lock() {
            *i = read_inputs(files);
        }
        self
    }

    fn input_paths(&self) -> Vec<PathBuf> {
        self.inputs
            .lock()
            .map(|i| i.iter().map(|(p, _)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// Also follow `snapshots`: each new one recompiles `spec` (and later, the last
    /// good spec of a reload) with it and swaps the runtime.
    pub fn with_discovery(mut self, spec: Arc<Spec>, snapshots: SnapshotReceiver) -> Self {
        self.discovery = Some(DiscoveryInput {
            snapshots,
            spec: Mutex::new(spec),
            applied: Mutex::new(None),
        });
        self
    }

    /// The latest snapshot, if discovery is configured and has synced.
    fn latest_snapshot(&self) -> Option<Arc<discovery::Snapshot>> {
        self.discovery
            .as_ref()
            .and_then(|d| d.snapshots.borrow().clone())
    }

    /// Recompile the last good spec with the latest snapshot and swap, unless the
    /// running runtime already has that snapshot. A failure (which needs an address the
    /// snapshot cannot produce) keeps the running runtime and is logged.
    pub fn apply_snapshot(&self) -> ReloadOutcome {
        let Some(input) = &self.discovery else {
            return ReloadOutcome::Unchanged;
        };
        let Some(snapshot) = input.snapshots.borrow().clone() else {
            return ReloadOutcome::Unchanged;
        };
        let already = input
            .applied
            .lock()
            .is_ok_and(|a| a.as_ref().is_some_and(|a| Arc::ptr_eq(a, &snapshot)));
        if already {
            return ReloadOutcome::Unchanged;
        }
        let current = self.store.load();
        let Ok(spec) = input.spec.lock().map(|s| Arc::clone(&s)) else {
            return ReloadOutcome::Unchanged;
        };
        let version = current.version + 1;
        match runtime::compile_with(&spec, Some(&snapshot), version, Some(&current)) {
            Ok(rt) => {
                self.store.publish(rt);
                if let Ok(mut a) = input.applied.lock() {
                    *a = Some(Arc::clone(&snapshot));
                }
                let metrics = &self.store.metrics;
                metrics.config_version.set(version as i64);
                metrics.discovery_updates.inc();
                tracing::debug!(
                    version,
                    snapshot = snapshot.version,
                    "discovery snapshot applied"
                );
                ReloadOutcome::Swapped { version }
            }
            Err(errors) => {
                self.store.metrics.discovery_update_failures.inc();
                for e in &errors {
                    tracing::error!(path = %e.path, error = %e.message, snapshot = snapshot.version, "discovery snapshot rejected; keeping the running endpoints");
                }
                ReloadOutcome::Rejected
            }
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
        let inputs = read_inputs(&self.input_paths());
        if !force
            && self.last_text.lock().is_ok_and(|t| *t == text)
            && self.inputs.lock().is_ok_and(|i| *i == inputs)
        {
            return ReloadOutcome::Unchanged;
        }
        let spec = match config::parse(&text, &name) {
            Ok(s) => s,
            Err(errors) => return self.reject(attempt, errors),
        };
        let current = self.store.load();
        let version = current.version + 1;
        let snapshot = self.latest_snapshot();
        let runtime =
            match runtime::compile_with(&spec, snapshot.as_deref(), version, Some(&current)) {
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
        self.store.publish(runtime);
        metrics.config_version.set(version as i64);
        metrics.config_reloads.inc();
        if let Ok(mut t) = self.last_text.lock() {
            *t = text;
        }
        if let Ok(mut i) = self.inputs.lock() {
            *i = read_inputs(&spec.watched_files());
        }
        if let Some(input) = &self.discovery {
            if let Ok(mut s) = input.spec.lock() {
                *s = Arc::new(spec);
            }
            if let Ok(mut a) = input.applied.lock() {
                *a = snapshot;
            }
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

    async fn apply_snapshot_blocking(self: &Arc<Self>) {
        let this = Arc::clone(self);
        if let Err(e) = tokio::task::spawn_blocking(move || this.apply_snapshot()).await {
            tracing::error!(error = %e, "discovery snapshot task failed");
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
        let names = Arc::clone(&self.watched_names);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Only events about the config file itself (or a file it names, such as a
            // keys_file), or Kubernetes' `..data` symlink swap; other files in the
            // directory (logs, say) must not keep the debounce from ever going quiet.
            let relevant = |e: &notify::Event| {
                !e.kind.is_access()
                    && (e.paths.is_empty()
                        || e.paths.iter().any(|p| {
                            p.file_name().is_some_and(|n| {
                                names.lock().is_ok_and(|names| names.iter().any(|w| w == n))
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
        let mut watcher = match watcher {
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
        // A private receiver: `changed` marks what this loop has seen.
        let mut snapshots = self.discovery.as_ref().map(|d| d.snapshots.clone());
        let mut dirs = vec![watch_dir];
        self.sync_watches(watcher.as_mut(), &mut dirs);
        // A snapshot may have arrived between start-up and this loop.
        self.apply_snapshot_blocking().await;
        loop {
            let force = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                changed = async { match snapshots.as_mut() { Some(s) => s.changed().await, None => std::future::pending().await } } => {
                    if changed.is_err() {
                        // The source is gone (it only ends with the process); keep the
                        // last snapshot rather than spin on a closed channel.
                        tracing::error!("discovery source stopped; keeping the last snapshot");
                        snapshots = None;
                    } else {
                        self.apply_snapshot_blocking().await;
                    }
                    continue;
                }
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
            self.sync_watches(watcher.as_mut(), &mut dirs);
        }
    }

    /// Watch the directories of the running spec's input files too (once each), and
    /// report their names as well as the config's.
    fn sync_watches(
        &self,
        watcher: Option<&mut notify::RecommendedWatcher>,
        dirs: &mut Vec<PathBuf>,
    ) {
        let paths = self.input_paths();
        if let Ok(mut names) = self.watched_names.lock() {
            *names = std::iter::once(&self.path)
                .chain(&paths)
                .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
                .collect();
        }
        let Some(watcher) = watcher else { return };
        for p in &paths {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            if dirs.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => dirs.push(dir),
                Err(e) => {
                    tracing::error!(error = %e, dir = %dir.display(), "cannot watch a keys_file's directory; reload with SIGHUP");
                }
            }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use discovery::{Backend, Service, ServiceKey, Snapshot};

    use super::*;

    const CONFIG: &str = "
listeners: [{name: m, address: '127.0.0.1:1'}]
discovery: {kubernetes: {}}
upstreams:
  orders: {kubernetes: {namespace: shop, service: orders, port: 8080}, load_balancing: LB}
routes: [{id: o, upstream: orders}]
";

    fn snapshot(version: u64, ports: &[u16]) -> Option<Arc<Snapshot>> {
        let backends = ports
            .iter()
            .map(|p| Backend {
                address: std::net::SocketAddr::from(([127, 0, 0, 1], *p)),
                draining: false,
                app_protocol: None,
                for_zones: vec![],
            })
            .collect();
        Some(Arc::new(Snapshot {
            version,
            services: BTreeMap::from([(
                ServiceKey::new("shop", "orders"),
                Arc::new(Service {
                    ports: vec![discovery::ServicePort {
                        name: String::new(),
                        port: 8080,
                    }],
                    backends: BTreeMap::from([(String::new(), backends)]),
                }),
            )]),
        }))
    }

    fn ports(store: &RuntimeStore) -> Vec<u16> {
        store.load().upstreams["orders"]
            .endpoints
            .iter()
            .map(|e| e.socket.port())
            .collect()
    }

    #[test]
    fn snapshots_and_reloads_go_through_the_one_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.yaml");
        let text = CONFIG.replace("LB", "round_robin");
        std::fs::write(&path, &text).unwrap();
        let spec = config::parse(&text, "gw.yaml").unwrap();
        let initial = runtime::compile(&spec, 1, None).unwrap();
        assert!(initial.discovery.waiting);
        let metrics = Arc::new(Metrics::new().unwrap());
        let store = Arc::new(RuntimeStore::new(initial, &path, Arc::clone(&metrics)));
        let (tx, rx) = tokio::sync::watch::channel(None);
        let reloader = Reloader::new(Arc::clone(&store), path.clone(), Duration::ZERO, text)
            .with_discovery(Arc::new(spec), rx);

        // Nothing before the first sync.
        assert_eq!(reloader.apply_snapshot(), ReloadOutcome::Unchanged);
        tx.send_replace(snapshot(1, &[1001]));
        assert_eq!(
            reloader.apply_snapshot(),
            ReloadOutcome::Swapped { version: 2 }
        );
        assert_eq!(ports(&store), [1001]);
        assert!(!store.load().discovery.waiting);
        // The same snapshot again is not a new runtime.
        assert_eq!(reloader.apply_snapshot(), ReloadOutcome::Unchanged);

        // A config reload compiles with the latest snapshot...
        tx.send_replace(snapshot(2, &[1001, 1002]));
        std::fs::write(&path, CONFIG.replace("LB", "least_outstanding")).unwrap();
        assert_eq!(
            reloader.reload(false),
            ReloadOutcome::Swapped { version: 3 }
        );
        let rt = store.load();
        assert_eq!(ports(&store), [1001, 1002]);
        assert_eq!(
            rt.upstreams["orders"].load_balancing.as_str(),
            "least_outstanding"
        );
        assert_eq!(rt.discovery.snapshot_version, Some(2));
        // ...and later snapshots recompile the reloaded spec, not the first one.
        tx.send_replace(snapshot(3, &[1003]));
        assert_eq!(
            reloader.apply_snapshot(),
            ReloadOutcome::Swapped { version: 4 }
        );
        let rt = store.load();
        assert_eq!(ports(&store), [1003]);
        assert_eq!(
            rt.upstreams["orders"].load_balancing.as_str(),
            "least_outstanding"
        );
        assert_eq!(metrics.discovery_updates.get(), 2);
        // A restarted control plane numbers afresh: the same version with other
        // content is still a new snapshot.
        tx.send_replace(snapshot(3, &[1004]));
        assert_eq!(
            reloader.apply_snapshot(),
            ReloadOutcome::Swapped { version: 5 }
        );
        assert_eq!(ports(&store), [1004]);
        // A bad reload keeps serving the last snapshot's endpoints.
        std::fs::write(&path, "listeners: [").unwrap();
        assert_eq!(reloader.reload(false), ReloadOutcome::Rejected);
        assert_eq!(ports(&store), [1004]);
    }
}
