//! Owns the gateway's side of control-plane mode: a task that subscribes to a
//! `discovery` server's stream and turns it into the same [`SnapshotReceiver`] the
//! embedded watcher gives.
//!
//! While disconnected the receiver keeps the last snapshot. The task reconnects with
//! exponential backoff (reset once a connection delivered something) and resumes with
//! `since`, so the server sends only what was missed. A Service whose content did not
//! change keeps its `Arc`, and a message that changes nothing publishes nothing. The
//! task ends when every receiver is dropped.

use std::sync::Arc;
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
    /// Base URL of the control plane, e.g. `http://discovery.gateway-system:8081`.
    pub url: String,
    pub token: Option<String>,
    /// Where `token` came from: read again before every connection, so a rotated
    /// Secret is picked up without a restart (`token` stays in use while it cannot be
    /// read).
    pub token_file: Option<std::path::PathBuf>,
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
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            metrics,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("request failed: {0}")]
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
}

/// Where the subscriber stands in the server's sequence.
#[derive(Default)]
struct Position {
    epoch: String,
    version: u64,
}

/// Subscribe on the current tokio runtime. The receiver holds `None` until the first
/// snapshot arrives.
pub fn spawn(config: ClientConfig) -> SnapshotReceiver {
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        tokio::select! {
            () = run(config, &tx) => {}
            () = tx.closed() => {}
        }
    });
    rx
}

async fn run(config: ClientConfig, tx: &SnapshotSender) {
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "discovery client: cannot build an HTTP client");
            return;
        }
    };
    let token_file = config
        .token_file
        .clone()
        .map(|path| TokenFile::new(path, config.token.clone()));
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
        let result = session(
            &http,
            &config,
            token.as_deref(),
            tx,
            &mut position,
            &mut progressed,
        )
        .await;
        config.metrics.client_connected.set(0);
        let error = match result {
            Ok(()) => SessionError::Ended,
            Err(e) => e,
        };
        if progressed {
            backoff = config.min_backoff;
        }
        tracing::warn!(%error, url = %config.url, retry_in = ?backoff, "discovery client: disconnected; keeping the last snapshot");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

async fn session(
    http: &reqwest::Client,
    config: &ClientConfig,
    token: Option<&str>,
    tx: &SnapshotSender,
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
    config.metrics.client_connected.set(1);
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
            handle(message, tx, position)?;
            *progressed = true;
        }
        if buffer.len() > MAX_LINE {
            buffer.advance(buffer.len());
            return Err(SessionError::TooLong);
        }
    }
}

/// Apply one message; publish only when the services changed.
fn handle(
    message: Message,
    tx: &SnapshotSender,
    position: &mut Option<Position>,
) -> Result<(), SessionError> {
    let current = tx.borrow().clone();
    let next = match message {
        Message::Heartbeat { .. } => return Ok(()),
        Message::Snapshot {
            epoch,
            version,
            services,
        } => {
            *position = Some(Position { epoch, version });
            Snapshot { version, services }
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
            *position = Some(Position { epoch, version });
            let empty = Snapshot::default();
            protocol::apply(
                current.as_deref().unwrap_or(&empty),
                version,
                changed,
                &removed,
            )
        }
    };
    publish(tx, current, next);
    Ok(())
}

/// Send `next`, reusing `current`'s `Arc` for every equal Service; nothing is sent when
/// no Service changed (except the very first snapshot, which marks the sync).
fn publish(tx: &SnapshotSender, current: Option<Arc<Snapshot>>, mut next: Snapshot) {
    let Some(current) = current else {
        tx.send_replace(Some(Arc::new(next)));
        return;
    };
    let mut changed = next.services.len() != current.services.len();
    for (key, svc) in next.services.iter_mut() {
        match current.services.get(key) {
            Some(old) if Arc::ptr_eq(old, svc) => {}
            Some(old) if **old == **svc => *svc = old.clone(),
            _ => changed = true,
        }
    }
    if changed {
        tx.send_replace(Some(Arc::new(next)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Service, ServiceKey};
    use std::collections::BTreeMap;

    fn snap(version: u64, keys: &[&str]) -> Snapshot {
        Snapshot {
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
