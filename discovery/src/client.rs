//! Owns the gateway's side of control-plane mode: a task that subscribes to a
//! `discovery` server's stream and turns it into the same [`SnapshotReceiver`] the
//! embedded watcher gives, and the [`ClientStatus`] that says how that subscription
//! stands (connected or for how long not, the last error, the last contact).
//!
//! While disconnected the receiver keeps the last snapshot. The task reconnects with
//! exponential backoff (reset once a connection delivered something) and resumes with
//! `since`, so the server sends only what was missed. A Service whose content did not
//! change keeps its `Arc`, and a message that changes nothing publishes nothing, except
//! a snapshot from a new epoch (a restarted control plane), which is published so the
//! gateway reports what it now follows. Over `https` the server is verified against
//! the configured CA file only (read again before each connection, so a rotated CA
//! needs no restart). The task ends when every receiver is dropped.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::metrics::DiscoveryMetrics;
use crate::protocol::{self, Message, STREAM_PATH};
use crate::snapshot::{Snapshot, SnapshotReceiver, SnapshotSender};
use crate::token::TokenFile;

/// A line longer than this is a broken or hostile server.
const MAX_LINE: usize = 256 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL of the control plane, e.g. `https://discovery.gateway-system:8081`.
    pub url: String,
    pub token: Option<String>,
    /// Where `token` came from: read again before every connection, so a rotated
    /// Secret is picked up without a restart (`token` stays in use while it cannot be
    /// read).
    pub token_file: Option<std::path::PathBuf>,
    /// PEM file of the CA certificates that may sign the control plane's certificate
    /// (`https` only); `None` trusts the system's roots.
    pub ca_file: Option<PathBuf>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Reconnect when no line (update or heartbeat) arrived for this long.
    pub idle_timeout: Duration,
    pub metrics: DiscoveryMetrics,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, metrics: DiscoveryMetrics) -> Self {
        Self {
            url: url.into(),
            token: None,
            token_file: None,
            ca_file: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            metrics,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{}", chain(.0))]
    Http(#[from] reqwest::Error),
    #[error("control plane answered {0}")]
    Status(reqwest::StatusCode),
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("stream ended")]
    Ended,
    #[error("bad message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("update for version {base} while at {at}: resuming")]
    OutOfSync { base: u64, at: u64 },
    #[error("{0}")]
    Tls(String),
}

/// An error with its causes: reqwest's own message hides why a connection failed
/// (an unknown certificate issuer, a refused connection).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl SessionError {
    /// The `reason` label of `discovery_client_errors_total`.
    fn reason(&self) -> &'static str {
        match self {
            Self::Status(s) if s.as_u16() == 401 || s.as_u16() == 403 => "unauthorized",
            Self::Status(_) => "status",
            Self::Http(e) => {
                let text = chain(e).to_ascii_lowercase();
                if text.contains("certificate")
                    || text.contains("tls")
                    || text.contains("handshake")
                {
                    "tls"
                } else if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "http"
                }
            }
            Self::Tls(_) => "tls",
            Self::Idle(_) => "idle",
            Self::Ended => "ended",
            Self::Decode(_) | Self::TooLong => "decode",
            Self::OutOfSync { .. } => "resync",
        }
    }
}

/// Where the subscriber stands in the server's sequence.
#[derive(Default)]
struct Position {
    epoch: String,
    version: u64,
}

/// How the subscription stands, for the admin API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientState {
    pub connected: bool,
    /// The control plane's epoch and version of the last message applied.
    pub epoch: Option<String>,
    pub version: Option<u64>,
    /// Since the last line (update, snapshot or heartbeat) arrived.
    pub last_contact_age: Option<Duration>,
    /// Length of the current outage (from the first failed attempt after the last
    /// good connection); `None` while connected.
    pub outage: Option<Duration>,
    /// Why the last session or attempt failed (kept after reconnecting, for context).
    pub last_error: Option<String>,
    pub last_error_age: Option<Duration>,
    /// How long the control plane itself has been cut off from its source, as its last
    /// heartbeat said.
    pub source_outage: Option<Duration>,
    /// The control plane's data is this old at most: the longer of our own outage
    /// and the control plane's.
    pub stale: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    connected: bool,
    epoch: Option<String>,
    version: Option<u64>,
    last_contact: Option<Instant>,
    outage_since: Option<Instant>,
    last_error: Option<(String, Instant)>,
    source_outage: Option<(Duration, Instant)>,
}

/// Reads how the subscription stands.
#[derive(Clone, Debug, Default)]
pub struct ClientStatus(Arc<Mutex<Shared>>);

impl ClientStatus {
    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn state(&self) -> ClientState {
        self.with(|s| {
            let outage = s.outage_since.map(|t| t.elapsed());
            // The control plane's own outage, aged by the time since it said so.
            let source_outage = s.source_outage.map(|(d, at)| d + at.elapsed());
            ClientState {
                connected: s.connected,
                epoch: s.epoch.clone(),
                version: s.version,
                last_contact_age: s.last_contact.map(|t| t.elapsed()),
                outage,
                last_error: s.last_error.as_ref().map(|(e, _)| e.clone()),
                last_error_age: s.last_error.as_ref().map(|(_, t)| t.elapsed()),
                source_outage,
                stale: outage
                    .unwrap_or_default()
                    .max(source_outage.unwrap_or_default()),
            }
        })
    }
}

/// Subscribe on the current tokio runtime. The receiver holds `None` until the first
/// snapshot arrives.
pub fn spawn(config: ClientConfig) -> SnapshotReceiver {
    start(config).0
}

/// [`spawn`], with the status of the subscription.
pub fn start(config: ClientConfig) -> (SnapshotReceiver, ClientStatus) {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let status = ClientStatus::default();
    let task_status = status.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = run(config, &tx, &task_status) => {}
            () = tx.closed() => {}
        }
    });
    (rx, status)
}

/// The HTTP client for the next connection, rebuilt when the CA file changed.
struct Http {
    client: reqwest::Client,
    ca_pem: Option<Vec<u8>>,
}

fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, SessionError> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if let Some(path) = ca_file {
        let tls = crate::tls::client_config(path).map_err(|e| SessionError::Tls(e.to_string()))?;
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().map_err(SessionError::Http)
}

impl Http {
    /// Build (or rebuild, when the CA file's content changed) the client. A CA file
    /// that cannot be read or parsed keeps the last good client.
    fn refresh(
        slot: &mut Option<Http>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<(), SessionError> {
        let pem = match ca_file {
            Some(path) => match std::fs::read(path) {
                Ok(pem) => Some(pem),
                Err(e) if slot.is_some() => {
                    tracing::warn!(path = %path.display(), error = %e, "discovery client: cannot read the CA file; keeping the last one");
                    return Ok(());
                }
                Err(e) => return Err(SessionError::Tls(format!("{}: {e}", path.display()))),
            },
            None => None,
        };
        if let Some(http) = slot.as_ref()
            && http.ca_pem == pem
        {
            return Ok(());
        }
        match http_client(ca_file) {
            Ok(client) => {
                if slot.is_some() {
                    tracing::info!("discovery client: CA file changed; using the new one");
                }
                *slot = Some(Http {
                    client,
                    ca_pem: pem,
                });
                Ok(())
            }
            Err(e) if slot.is_some() => {
                tracing::warn!(error = %e, "discovery client: new CA file refused; keeping the last one");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Refresh the gauges that change with time alone (ages, outage) once a second.
async fn tick_metrics(metrics: DiscoveryMetrics, status: ClientStatus) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        export(&metrics, &status.state());
    }
}

fn export(metrics: &DiscoveryMetrics, state: &ClientState) {
    metrics.client_connected.set(i64::from(state.connected));
    metrics.source_connected.set(i64::from(state.connected));
    metrics
        .source_outage_seconds
        .set(state.outage.map_or(0.0, |d| d.as_secs_f64()));
    metrics
        .last_contact_age_seconds
        .set(state.last_contact_age.map_or(0.0, |d| d.as_secs_f64()));
    metrics.stale_seconds.set(state.stale.as_secs_f64());
}

async fn run(config: ClientConfig, tx: &SnapshotSender, status: &ClientStatus) {
    let ticker = tokio::spawn(tick_metrics(config.metrics.clone(), status.clone()));
    let _ticker = AbortOnDrop(ticker);
    let token_file = config
        .token_file
        .clone()
        .map(|path| TokenFile::new(path, config.token.clone()));
    let mut http: Option<Http> = None;
    let mut position: Option<Position> = None;
    let mut backoff = config.min_backoff;
    let mut attempt = 0u64;
    loop {
        if attempt > 0 {
            config.metrics.client_reconnects.inc();
        }
        attempt += 1;
        let mut progressed = false;
        let token = match &token_file {
            Some(file) => file.current().await,
            None => config.token.clone(),
        };
        let result = match Http::refresh(&mut http, config.ca_file.as_deref()) {
            Ok(()) => match &http {
                Some(h) => {
                    session(
                        &h.client,
                        &config,
                        token.as_deref(),
                        tx,
                        status,
                        &mut position,
                        &mut progressed,
                    )
                    .await
                }
                None => Err(SessionError::Tls("no HTTP client".into())),
            },
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(()) => SessionError::Ended,
            Err(e) => e,
        };
        let text = error.to_string();
        status.with(|s| {
            s.connected = false;
            s.outage_since.get_or_insert_with(Instant::now);
            s.last_error = Some((text.clone(), Instant::now()));
        });
        config
            .metrics
            .client_errors
            .with_label_values(&[error.reason()])
            .inc();
        export(&config.metrics, &status.state());
        if progressed {
            backoff = config.min_backoff;
        }
        tracing::warn!(error = %text, url = %config.url, retry_in = ?backoff, "discovery client: disconnected; keeping the last snapshot");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn session(
    http: &reqwest::Client,
    config: &ClientConfig,
    token: Option<&str>,
    tx: &SnapshotSender,
    status: &ClientStatus,
    position: &mut Option<Position>,
    progressed: &mut bool,
) -> Result<(), SessionError> {
    let mut url = format!("{}{}", config.url.trim_end_matches('/'), STREAM_PATH);
    if let Some(p) = position.as_ref() {
        url.push_str(&format!("?since={}&epoch={}", p.version, p.epoch));
    }
    let mut request = http.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(config.idle_timeout, request.send())
        .await
        .map_err(|_| SessionError::Idle(config.idle_timeout))??;
    if response.status() != reqwest::StatusCode::OK {
        return Err(SessionError::Status(response.status()));
    }
    status.with(|s| {
        s.connected = true;
        s.outage_since = None;
        s.last_contact = Some(Instant::now());
    });
    export(&config.metrics, &status.state());
    tracing::info!(url = %config.url, "discovery client: connected");
    let mut body = response.bytes_stream();
    let mut buffer = BytesMut::new();
    let mut deadline = Instant::now() + config.idle_timeout;
    loop {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .map_err(|_| SessionError::Idle(config.idle_timeout))?;
        let Some(chunk) = chunk else {
            return Ok(());
        };
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line = buffer.split_to(end + 1);
            deadline = Instant::now() + config.idle_timeout;
            let text = &line[..end];
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message: Message = serde_json::from_slice(text)?;
            let source_outage = match &message {
                Message::Heartbeat {
                    source_outage_seconds,
                    ..
                } => Some(source_outage_seconds.unwrap_or(0.0)),
                _ => None,
            };
            if let Some(published) = handle(message, tx, position)? {
                export_snapshot(&config.metrics, &published);
            }
            status.with(|s| {
                let now = Instant::now();
                s.last_contact = Some(now);
                if let Some(p) = position.as_ref() {
                    s.epoch = Some(p.epoch.clone());
                    s.version = Some(p.version);
                }
                if let Some(secs) = source_outage {
                    s.source_outage = (secs > 0.0)
                        .then(|| (Duration::try_from_secs_f64(secs).unwrap_or_default(), now));
                }
            });
            *progressed = true;
        }
        if buffer.len() > MAX_LINE {
            buffer.advance(buffer.len());
            return Err(SessionError::TooLong);
        }
    }
}

/// The snapshot gauges, as the embedded watcher sets them, for the snapshot in use.
fn export_snapshot(metrics: &DiscoveryMetrics, snapshot: &Snapshot) {
    let endpoints: usize = snapshot
        .services
        .values()
        .map(|svc| crate::model::endpoint_count(svc))
        .sum();
    metrics.synced.set(1);
    metrics.publishes.inc();
    metrics.snapshot_version.set(snapshot.version as i64);
    metrics.services.set(snapshot.services.len() as i64);
    metrics.endpoints.set(endpoints as i64);
}

/// Apply one message; publish only when the services changed, or the epoch did.
/// Returns what was published.
fn handle(
    message: Message,
    tx: &SnapshotSender,
    position: &mut Option<Position>,
) -> Result<Option<Arc<Snapshot>>, SessionError> {
    let current = tx.borrow().clone();
    let next = match message {
        Message::Heartbeat { .. } => return Ok(None),
        Message::Snapshot {
            epoch,
            version,
            services,
        } => {
            let snapshot = Snapshot {
                epoch: epoch.as_str().into(),
                version,
                services,
            };
            *position = Some(Position { epoch, version });
            snapshot
        }
        Message::Update {
            epoch,
            base,
            version,
            changed,
            removed,
        } => {
            match position.as_ref() {
                Some(p) if p.epoch == epoch && p.version == base => {}
                other => {
                    let at = other.map_or(0, |p| p.version);
                    return Err(SessionError::OutOfSync { base, at });
                }
            }
            let empty = Snapshot::default();
            let mut next = protocol::apply(
                current.as_deref().unwrap_or(&empty),
                version,
                changed,
                &removed,
            );
            next.epoch = epoch.as_str().into();
            *position = Some(Position { epoch, version });
            next
        }
    };
    Ok(publish(tx, current, next))
}

/// Send `next`, reusing `current`'s `Arc` for every equal Service; nothing is sent when
/// no Service changed (except the very first snapshot, which marks the sync, and the
/// first of a new epoch, which tells a restarted control plane apart).
fn publish(
    tx: &SnapshotSender,
    current: Option<Arc<Snapshot>>,
    mut next: Snapshot,
) -> Option<Arc<Snapshot>> {
    let Some(current) = current else {
        let next = Arc::new(next);
        tx.send_replace(Some(next.clone()));
        return Some(next);
    };
    let mut changed = next.services.len() != current.services.len() || next.epoch != current.epoch;
    for (key, svc) in next.services.iter_mut() {
        match current.services.get(key) {
            Some(old) if Arc::ptr_eq(old, svc) => {}
            Some(old) if **old == **svc => *svc = old.clone(),
            _ => changed = true,
        }
    }
    changed.then(|| {
        let next = Arc::new(next);
        tx.send_replace(Some(next.clone()));
        next
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Service, ServiceKey};
    use std::collections::BTreeMap;

    fn snap(version: u64, keys: &[&str]) -> Snapshot {
        Snapshot {
            epoch: "".into(),
            version,
            services: keys
                .iter()
                .map(|k| (ServiceKey::new("ns", *k), Arc::new(Service::default())))
                .collect(),
        }
    }

    #[test]
    fn equal_content_publishes_nothing_and_keeps_arcs() {
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        publish(&tx, None, snap(1, &["a"]));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let first = rx.borrow().clone();
        publish(&tx, first.clone(), snap(7, &["a"]));
        assert!(!rx.has_changed().unwrap());
        publish(&tx, first.clone(), snap(8, &["a", "b"]));
        let now = rx.borrow().clone().unwrap();
        let a = ServiceKey::new("ns", "a");
        assert!(Arc::ptr_eq(&now.services[&a], &first.unwrap().services[&a]));
        // A restarted control plane (new epoch) with the same content is published.
        let mut restarted = snap(1, &["a", "b"]);
        restarted.epoch = "e2".into();
        let published = publish(&tx, Some(now.clone()), restarted).unwrap();
        assert_eq!((&*published.epoch, published.version), ("e2", 1));
        assert!(Arc::ptr_eq(&published.services[&a], &now.services[&a]));
    }

    #[test]
    fn an_update_for_another_version_asks_to_resume() {
        let (tx, _rx) = tokio::sync::watch::channel(None);
        let mut position = Some(Position {
            epoch: "e".into(),
            version: 3,
        });
        let update = Message::Update {
            epoch: "e".into(),
            base: 4,
            version: 5,
            changed: BTreeMap::new(),
            removed: vec![],
        };
        assert!(matches!(
            handle(update, &tx, &mut position),
            Err(SessionError::OutOfSync { base: 4, at: 3 })
        ));
    }
}
