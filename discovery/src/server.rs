//! Owns the control-plane HTTP server: one watcher's snapshots streamed to any number of
//! gateways (see [`crate::protocol`] for the format), plus probes, metrics, status and
//! the confirmation of a held mass deletion.
//!
//! Every published snapshot is turned into one serialized update line, shared by all
//! subscribers, and kept in a bounded history so a gateway that reconnects with `since`
//! receives only what it missed. Subscribers read from a bounded broadcast buffer: a
//! slow one never blocks the others; when it falls behind by more than the buffer it is
//! sent a fresh full snapshot instead of the updates it missed.
//!
//! Routes: `GET /v1/stream[?since=V&epoch=E]`, `GET /v1/snapshot`, `GET /v1/status`,
//! `POST /v1/mass-deletion/confirm` (all with `Authorization: Bearer <token>` when a
//! token is configured), and unauthenticated `GET /healthz`, `/readyz`, `/metrics`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::metrics::DiscoveryMetrics;
use crate::protocol::{self, Message, STREAM_PATH};
use crate::snapshot::{Snapshot, SnapshotReceiver};
use crate::token::TokenFile;
use crate::watcher::WatchHandle;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Bearer token every `/v1` request must carry; `None` disables the check.
    pub token: Option<String>,
    /// Where `token` came from: read again on every `/v1` request, so a rotated Secret
    /// takes effect without a restart (`token` stays in use while it cannot be read).
    pub token_file: Option<std::path::PathBuf>,
    /// A line is sent at least this often, so subscribers notice a dead connection.
    pub heartbeat: Duration,
    /// Updates kept for resuming subscribers.
    pub history: usize,
    /// Updates a subscriber may fall behind before it is resent a full snapshot.
    pub subscriber_buffer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            heartbeat: Duration::from_secs(10),
            history: 256,
            subscriber_buffer: 64,
        }
    }
}

/// One published snapshot as subscribers receive it.
#[derive(Debug)]
struct Entry {
    /// `None` for the first snapshot, which has nothing to apply to.
    base: Option<u64>,
    version: u64,
    line: Bytes,
}

#[derive(Default)]
struct Hub {
    current: Option<Arc<Snapshot>>,
    history: VecDeque<Arc<Entry>>,
}

/// The state behind the router.
pub struct ControlPlane {
    epoch: String,
    config: ServerConfig,
    hub: Mutex<Hub>,
    updates: broadcast::Sender<Arc<Entry>>,
    metrics: DiscoveryMetrics,
    registry: prometheus::Registry,
    watch: Option<WatchHandle>,
    token_file: Option<TokenFile>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn line(message: &Message) -> Bytes {
    // Serializing these types cannot fail (string keys, no non-finite floats); an
    // empty line is skipped by clients should it ever happen.
    let mut out = serde_json::to_vec(message).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

impl ControlPlane {
    /// Serve the snapshots of `snapshots`. `watch` (when the snapshots come from a
    /// watcher) answers `/v1/status` and confirms mass deletions; `registry` is what
    /// `/metrics` exposes.
    pub fn start(
        config: ServerConfig,
        snapshots: SnapshotReceiver,
        watch: Option<WatchHandle>,
        registry: prometheus::Registry,
        metrics: DiscoveryMetrics,
    ) -> Arc<Self> {
        let (updates, _) = broadcast::channel(config.subscriber_buffer.max(1));
        let token_file = config
            .token_file
            .clone()
            .map(|path| TokenFile::new(path, config.token.clone()));
        let cp = Arc::new(Self {
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            token_file,
            config,
            hub: Mutex::new(Hub::default()),
            updates,
            metrics,
            registry,
            watch,
        });
        tokio::spawn(follow(Arc::downgrade(&cp), snapshots));
        cp
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let v1 = Router::new()
            .route(STREAM_PATH, get(stream))
            .route("/v1/snapshot", get(snapshot))
            .route("/v1/status", get(status))
            .route("/v1/mass-deletion/confirm", post(confirm))
            .layer(middleware::from_fn_with_state(self.clone(), authorize));
        Router::new()
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .merge(v1)
            .with_state(self.clone())
    }

    /// Serve [`ControlPlane::router`] on `listener`; drop the future to stop. (There
    /// is no graceful variant: streams never end by themselves, and a gateway simply
    /// reconnects.) Updates are small writes that must leave at once: Nagle's algorithm
    /// would hold each behind the peer's delayed ACK (about 40 ms), so every connection
    /// gets `TCP_NODELAY`.
    pub async fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "discovery: cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router()).await
    }

    /// [`ControlPlane::serve`] over TLS (see [`crate::tls`]; the listener sets
    /// `TCP_NODELAY` itself).
    pub async fn serve_tls(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        let listener = crate::tls::TlsListener::new(listener, tls, self.metrics.clone())?;
        axum::serve(listener, self.router()).await
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.hub().current.clone()
    }

    fn publish(&self, next: Arc<Snapshot>) {
        let mut hub = self.hub();
        let entry = match &hub.current {
            Some(prev) if prev.version == next.version => return,
            Some(prev) => Entry {
                base: Some(prev.version),
                version: next.version,
                line: line(&protocol::diff(&self.epoch, prev, &next)),
            },
            None => Entry {
                base: None,
                version: next.version,
                line: self.full_line(&next),
            },
        };
        let entry = Arc::new(entry);
        if entry.base.is_some() {
            hub.history.push_back(entry.clone());
            while hub.history.len() > self.config.history {
                hub.history.pop_front();
            }
        }
        hub.current = Some(next);
        // Sent under the lock, so a subscriber that registers while holding it sees
        // either the state before this entry plus the entry, or the state after it.
        let _ = self.updates.send(entry);
    }

    fn full_line(&self, snap: &Snapshot) -> Bytes {
        line(&Message::Snapshot {
            epoch: self.epoch.clone(),
            version: snap.version,
            services: snap.services.clone(),
        })
    }

    /// What a new subscriber gets first, and its receiver of later updates.
    fn subscribe(&self, resume: &Resume) -> (Vec<Bytes>, u64, broadcast::Receiver<Arc<Entry>>) {
        let hub = self.hub();
        let rx = self.updates.subscribe();
        let Some(current) = &hub.current else {
            return (Vec::new(), 0, rx);
        };
        let same_epoch = resume.epoch.as_deref().is_none_or(|e| e == self.epoch);
        if let Some(since) = resume.since.filter(|_| same_epoch) {
            if since == current.version {
                return (Vec::new(), since, rx);
            }
            if let Some(start) = hub.history.iter().position(|e| e.base == Some(since)) {
                let lines = hub
                    .history
                    .iter()
                    .skip(start)
                    .map(|e| e.line.clone())
                    .collect();
                return (lines, current.version, rx);
            }
        }
        (vec![self.full_line(current)], current.version, rx)
    }
}

/// Copy each snapshot of `snapshots` into the hub until the server or source goes away.
async fn follow(cp: std::sync::Weak<ControlPlane>, mut snapshots: SnapshotReceiver) {
    loop {
        let next = snapshots.borrow_and_update().clone();
        let Some(cp) = cp.upgrade() else { return };
        if let Some(next) = next {
            cp.publish(next);
        }
        drop(cp);
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Resume {
    since: Option<u64>,
    epoch: Option<String>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"status": status.as_u16(), "code": code, "message": message}})),
    )
        .into_response()
}

/// Byte comparison whose time does not depend on where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(
    State(cp): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let expected = match &cp.token_file {
        Some(file) => file.current().await,
        None => cp.config.token.clone(),
    };
    if let Some(token) = &expected {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            cp.metrics.unauthorized.inc();
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

/// Counts a subscriber for as long as its stream lives.
struct Subscriber {
    metrics: DiscoveryMetrics,
}

impl Subscriber {
    fn new(metrics: DiscoveryMetrics) -> Self {
        metrics.subscribers.inc();
        Self { metrics }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.metrics.subscribers.dec();
    }
}

struct StreamState {
    cp: Arc<ControlPlane>,
    pending: VecDeque<Bytes>,
    version: u64,
    rx: broadcast::Receiver<Arc<Entry>>,
    _subscriber: Subscriber,
}

impl StreamState {
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            let heartbeat = tokio::time::sleep(self.cp.config.heartbeat);
            tokio::select! {
                received = self.rx.recv() => match received {
                    Ok(entry) => {
                        // Already covered by what this subscriber was sent on connect.
                        if entry.version <= self.version {
                            continue;
                        }
                        self.version = entry.version;
                        return Some(entry.line.clone());
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.cp.metrics.subscriber_lagged.inc();
                        let current = self.cp.current()?;
                        self.version = current.version;
                        return Some(self.cp.full_line(&current));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = heartbeat => {
                    let outage = self.cp.watch.as_ref().and_then(|w| w.status().outage);
                    return Some(line(&Message::Heartbeat {
                        epoch: self.cp.epoch.clone(),
                        version: self.version,
                        source_outage_seconds: outage.map(|d| d.as_secs_f64()),
                    }));
                }
            }
        }
    }
}

async fn stream(State(cp): State<Arc<ControlPlane>>, Query(resume): Query<Resume>) -> Response {
    let (lines, version, rx) = cp.subscribe(&resume);
    let state = StreamState {
        cp: cp.clone(),
        pending: lines.into(),
        version,
        rx,
        _subscriber: Subscriber::new(cp.metrics.clone()),
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        let line = state.next_line().await?;
        Some((Ok::<_, Infallible>(line), state))
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

async fn snapshot(State(cp): State<Arc<ControlPlane>>) -> Response {
    match cp.current() {
        Some(snap) => Json(Message::Snapshot {
            epoch: cp.epoch.clone(),
            version: snap.version,
            services: snap.services.clone(),
        })
        .into_response(),
        None => not_synced(),
    }
}

fn not_synced() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_synced",
        "the first complete list of Services and endpoints has not arrived yet",
    )
}

async fn status(State(cp): State<Arc<ControlPlane>>) -> Response {
    let current = cp.current();
    let watch = cp.watch.as_ref().map(WatchHandle::status);
    Json(serde_json::json!({
        "epoch": cp.epoch,
        "synced": current.is_some(),
        "version": current.as_ref().map_or(0, |s| s.version),
        "services": current.as_ref().map_or(0, |s| s.services.len()),
        "subscribers": cp.metrics.subscribers.get(),
        "last_contact_seconds": watch.as_ref().and_then(|w| w.last_contact_age).map(|d| d.as_secs_f64()),
        "outage_seconds": watch.as_ref().and_then(|w| w.outage).map(|d| d.as_secs_f64()),
        "held_mass_deletion": watch.as_ref().and_then(|w| w.held_mass_deletion).map(|h| serde_json::json!({
            "removed_endpoints": h.removed_endpoints,
            "total_endpoints": h.total_endpoints,
            "held_seconds": h.since.elapsed().as_secs_f64(),
        })),
    }))
    .into_response()
}

async fn confirm(State(cp): State<Arc<ControlPlane>>) -> Response {
    let Some(watch) = &cp.watch else {
        return error(
            StatusCode::NOT_FOUND,
            "no_watcher",
            "this server does not run a watcher",
        );
    };
    let held = watch.status().held_mass_deletion;
    if held.is_some() {
        watch.confirm_mass_deletion();
    }
    Json(serde_json::json!({"confirmed": held.is_some()})).into_response()
}

async fn readyz(State(cp): State<Arc<ControlPlane>>) -> Response {
    if cp.current().is_some() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        not_synced()
    }
}

async fn metrics(State(cp): State<Arc<ControlPlane>>) -> Response {
    let families = cp.registry.gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "metrics", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
