//! Owns the discovery input of the gateway: starting the snapshot source the config
//! names (the embedded watcher or a control-plane subscription) on a Tokio runtime of
//! its own, what the admin API may see and do about it, and how `/admin/upstreams`
//! describes where discovery stands. Snapshots become endpoints in
//! `upstream::kubernetes`, compiled by `runtime::compile_with` and swapped by `reload`.

use std::sync::Arc;

use discovery::SnapshotReceiver;
use discovery::client::ClientStatus;
use discovery::metrics::DiscoveryMetrics;
use discovery::watcher::{self, Coalesce, MassDeletionGuard, WatchConfig, WatchHandle};
use serde_json::{Value, json};

use crate::config::{ApiSource, DiscoverySource, DiscoverySpec, KubernetesWatchSpec, TokenSource};
use crate::runtime::DiscoveryState;

/// `/admin/upstreams`: where discovery stands (and the running source's health).
pub fn describe(d: &DiscoveryState, control: Option<&DiscoveryControl>) -> Value {
    json!({
        "mode": d.mode,
        "snapshot_epoch": d.snapshot_epoch.as_deref(),
        "snapshot_version": d.snapshot_version,
        "snapshot_applied_at": d.snapshot_at.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "waiting_for_first_snapshot": d.waiting,
        "source": control.map(DiscoveryControl::status),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("discovery: cannot start its runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("discovery: {0}")]
    Metrics(#[from] discovery::metrics::MetricsError),
    #[error("discovery: cannot read kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error(
        "discovery: no Kubernetes config (not in a cluster, no KUBECONFIG or ~/.kube/config): {0}"
    )]
    Infer(String),
    #[error("discovery: cannot build the Kubernetes client: {0}")]
    Client(String),
    #[error("discovery: cannot read the control-plane token from {what}: {reason}")]
    Token { what: String, reason: String },
    #[error("discovery: control-plane CA file: {0}")]
    Ca(String),
}

/// A running snapshot source. It lives on a Tokio runtime of its own, apart from
/// Pingora's per-service runtimes, for as long as this value: the whole process.
pub struct DiscoveryRunner {
    /// `None` until the source's first full sync, then every published snapshot.
    pub snapshots: SnapshotReceiver,
    control: DiscoveryControl,
    runtime: Option<tokio::runtime::Runtime>,
}

/// What the admin API may see and do about the running source: the embedded
/// watcher's or the control-plane subscription's health, and confirming a change the
/// embedded mass-deletion guard holds.
#[derive(Clone, Debug)]
pub struct DiscoveryControl {
    mode: &'static str,
    watch: Option<Arc<WatchHandle>>,
    client: Option<ClientStatus>,
}

/// Why a held mass deletion cannot be confirmed here.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    #[error(
        "this gateway subscribes to a control plane: confirm there (POST /v1/mass-deletion/confirm)"
    )]
    ControlPlane,
}

impl DiscoveryControl {
    /// The running source's health: the embedded watcher's view of the API server,
    /// or the subscription to the control plane (connected, for how long not, why).
    pub fn status(&self) -> Value {
        let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
        if let Some(client) = &self.client {
            let s = client.state();
            return json!({
                "mode": self.mode,
                "connected": s.connected,
                "synced": s.version.is_some(),
                "epoch": s.epoch,
                "version": s.version,
                "last_contact_age_seconds": secs(s.last_contact_age),
                "outage_seconds": secs(s.outage),
                "last_error": s.last_error,
                "last_error_age_seconds": secs(s.last_error_age),
                "control_plane_source_outage_seconds": secs(s.source_outage),
                "stale_seconds": s.stale.as_secs_f64(),
            });
        }
        let Some(watch) = &self.watch else {
            return json!({"mode": self.mode});
        };
        let s = watch.status();
        json!({
            "mode": self.mode,
            "connected": s.outage.is_none() && s.last_contact_age.is_some(),
            "synced": s.synced,
            "version": s.version,
            "last_contact_age_seconds": secs(s.last_contact_age),
            "api_outage_seconds": secs(s.outage),
            "outage_seconds": secs(s.outage),
            "stale_seconds": secs(s.outage).unwrap_or(0.0),
            "held_mass_deletion": s.held_mass_deletion.map(|h| json!({
                "removed_endpoints": h.removed_endpoints,
                "total_endpoints": h.total_endpoints,
                "held_seconds": h.since.elapsed().as_secs_f64(),
            })),
        })
    }

    /// Publish the change the mass-deletion guard holds. Returns whether one was held.
    pub fn confirm_mass_deletion(&self) -> Result<bool, ConfirmError> {
        let watch = self.watch.as_ref().ok_or(ConfirmError::ControlPlane)?;
        let held = watch.status().held_mass_deletion.is_some();
        if held {
            tracing::warn!("discovery: held mass deletion confirmed through the admin API");
            watch.confirm_mass_deletion();
        }
        Ok(held)
    }
}

impl std::fmt::Debug for DiscoveryRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryRunner")
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl Drop for DiscoveryRunner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never block process exit on an in-flight watch request.
            rt.shutdown_background();
        }
    }
}

/// Start the source `spec` names: the embedded watcher (Kubernetes client from the
/// configured kubeconfig, else in-cluster config or `KUBECONFIG`) or a control-plane
/// subscription (reconnecting with backoff and resuming). Its metrics register in
/// `registry`. Fails fast on what start-up can know: an unreadable kubeconfig or token.
/// Blocks while it builds the Kubernetes client, so call it outside async code.
pub fn start(
    spec: &DiscoverySpec,
    registry: &prometheus::Registry,
) -> Result<DiscoveryRunner, StartError> {
    let metrics = DiscoveryMetrics::new(registry)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("discovery")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let (snapshots, watch, client) = match &spec.source {
        DiscoverySource::Kubernetes(k) => {
            let client = runtime.block_on(kube_client(k))?;
            // kube's client and the watcher tasks are spawned on this runtime.
            let _guard = runtime.enter();
            let (rx, handle) = watcher::spawn(client, watch_config(k, metrics));
            (rx, Some(handle), None)
        }
        DiscoverySource::ControlPlane {
            url,
            token,
            ca_file,
        } => {
            let mut config = discovery::client::ClientConfig::new(url.clone(), metrics);
            config.token = read_token(token)?;
            if let TokenSource::File(path) = token {
                // Read again before each connection: a rotated Secret needs no restart.
                config.token_file = Some(path.clone());
            }
            if let Some(path) = ca_file {
                // Fail start-up on a CA file that cannot be used at all; later changes
                // are picked up before each connection.
                discovery::tls::client_config(path).map_err(|e| StartError::Ca(e.to_string()))?;
                config.ca_file = Some(path.clone());
            }
            let _guard = runtime.enter();
            let (rx, status) = discovery::client::start(config);
            (rx, None, Some(status))
        }
    };
    tracing::info!(
        mode = spec.mode(),
        "discovery started; waiting for the first snapshot"
    );
    Ok(DiscoveryRunner {
        snapshots,
        control: DiscoveryControl {
            mode: spec.mode(),
            watch: watch.map(Arc::new),
            client,
        },
        runtime: Some(runtime),
    })
}

impl DiscoveryRunner {
    /// A handle for the admin API.
    pub fn control(&self) -> DiscoveryControl {
        self.control.clone()
    }
}

fn watch_config(k: &KubernetesWatchSpec, metrics: DiscoveryMetrics) -> WatchConfig {
    let mut config = WatchConfig::new(metrics);
    config.source = match k.source {
        ApiSource::EndpointSlices => watcher::Source::EndpointSlices,
        ApiSource::Endpoints => watcher::Source::Endpoints,
    };
    config.namespaces = k.namespaces.clone();
    config.label_selector = k.label_selector.clone();
    config.coalesce = Coalesce {
        quiet: k.quiet,
        max_delay: k.max_delay,
    };
    config.mass_deletion = MassDeletionGuard {
        max_removed_share: f64::from(k.max_removed_percent) / 100.0,
        ..MassDeletionGuard::default()
    };
    config.relist = watcher::Relist {
        interval: k.relist_interval,
        after_gap: k.relist_after_gap,
    };
    config
}

async fn kube_client(k: &KubernetesWatchSpec) -> Result<kube::Client, StartError> {
    let config = match &k.kubeconfig {
        Some(path) => {
            let bad = |reason: String| StartError::Kubeconfig {
                path: path.display().to_string(),
                reason,
            };
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| bad(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| StartError::Infer(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| StartError::Client(e.to_string()))
}

fn read_token(token: &TokenSource) -> Result<Option<String>, StartError> {
    match token {
        TokenSource::None => Ok(None),
        TokenSource::File(path) => std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|e| StartError::Token {
                what: path.display().to_string(),
                reason: e.to_string(),
            }),
        TokenSource::Env(var) => std::env::var(var)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|e| StartError::Token {
                what: format!("${var}"),
                reason: e.to_string(),
            }),
    }
}
