//! Owns active health checking: one probe task per (upstream, endpoint, check settings)
//! in the running runtime. Tasks start when an endpoint appears and stop when it goes,
//! so a removed endpoint is never probed again; an endpoint that stays keeps its task,
//! its streak counters and its verdict (in `EndpointState`) across reloads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::policy::{HealthCheck, Probe};
use super::{EndpointState, UpstreamPool, random_unit};

/// How often the set of checked endpoints is compared with the running runtime.
const SYNC_EVERY: Duration = Duration::from_millis(250);

/// Run one probe; `Ok(())` when the endpoint is healthy.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let Probe::Http {
            path,
            host,
            expected,
        } = &check.probe
        else {
            return Ok(());
        };
        let host = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map_or_else(|| addr.to_string(), str::to_owned);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gateway-health-check\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        // The status line is all we need: "HTTP/1.1 200 OK".
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let read = stream
                .read(&mut head[n..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if read == 0 {
                break;
            }
            n += read;
        }
        let line = std::str::from_utf8(&head[..n]).unwrap_or("");
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
        if expected.iter().any(|s| s.as_u16() == status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {:?}", check.timeout))?
}

/// Probe forever, flipping the endpoint's verdict after `healthy_threshold` successes or
/// `unhealthy_threshold` failures in a row.
async fn check_loop(
    upstream: Arc<str>,
    addr: SocketAddr,
    state: Arc<EndpointState>,
    check: HealthCheck,
) {
    let (mut ok_streak, mut fail_streak) = (0u32, 0u32);
    loop {
        let jitter = check.jitter.mul_f64(random_unit());
        tokio::time::sleep(check.interval + jitter).await;
        match probe(addr, &check).await {
            Ok(()) => {
                fail_streak = 0;
                ok_streak = ok_streak.saturating_add(1);
                if ok_streak >= check.healthy_threshold && state.set_healthy(true) {
                    tracing::info!(%upstream, endpoint = %addr, "endpoint healthy again");
                }
            }
            Err(reason) => {
                ok_streak = 0;
                fail_streak = fail_streak.saturating_add(1);
                if fail_streak >= check.unhealthy_threshold && state.set_healthy(false) {
                    tracing::warn!(%upstream, endpoint = %addr, %reason, "endpoint failed its health check");
                }
            }
        }
    }
}

type CheckKey = (Arc<str>, Box<str>, String);

/// The running runtime's pools and its version, as the health service sees them: the
/// server hands it a reader of the runtime store, so this module needs nothing above it.
pub type PoolSource = Box<dyn Fn() -> (u64, Vec<Arc<UpstreamPool>>) + Send + Sync>;

/// The background service that keeps probe tasks in step with the running runtime.
pub struct HealthService {
    pools: PoolSource,
}

impl std::fmt::Debug for HealthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthService").finish_non_exhaustive()
    }
}

impl HealthService {
    pub fn new(pools: PoolSource) -> Self {
        Self { pools }
    }
}

fn sync(
    pools: &[Arc<UpstreamPool>],
    tasks: &mut HashMap<CheckKey, (Arc<EndpointState>, JoinHandle<()>)>,
) {
    let mut wanted = HashMap::new();
    for pool in pools {
        let Some(check) = &pool.health_check else {
            continue;
        };
        for e in &pool.endpoints {
            let key = (
                Arc::clone(&pool.name),
                e.address.clone(),
                format!("{check:?}"),
            );
            wanted.insert(key, (e.socket, Arc::clone(&e.state), check.clone()));
        }
    }
    tasks.retain(|key, (state, handle)| {
        let keep = wanted.contains_key(key);
        if !keep {
            handle.abort();
            // No checker any more: the verdict no longer applies.
            if !wanted.values().any(|(_, s, _)| Arc::ptr_eq(s, state)) {
                state.set_healthy(true);
            }
        }
        keep
    });
    for (key, (addr, state, check)) in wanted {
        if tasks.contains_key(&key) {
            continue;
        }
        let handle = tokio::spawn(check_loop(
            Arc::clone(&key.0),
            addr,
            Arc::clone(&state),
            check,
        ));
        tasks.insert(key, (state, handle));
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = HashMap::new();
        let mut version = 0;
        loop {
            let (current, pools) = (self.pools)();
            if current != version {
                version = current;
                sync(&pools, &mut tasks);
            }
            drop(pools);
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(SYNC_EVERY) => {}
            }
        }
        for (_, (_, handle)) in tasks {
            handle.abort();
        }
    }
}
