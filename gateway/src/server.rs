//! Owns process start-up: load and compile the config, start the discovery source
//! when the config has one, build the Pingora server (proxy listeners, admin listener,
//! reload service, access-log writer), map SIGTERM and SIGINT to a graceful shutdown
//! that lets in-flight requests finish within the grace period (and flushes the access
//! log), and SIGUSR1 to reopening the access log.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::access_log::{AccessLog, AccessLogSpec};
use crate::admin::{AdminApp, AdminAuth};
use crate::auth::jwks::{JwksService, KeyStoreSource};
use crate::config;
use crate::kubernetes;
use crate::listener::ListenerApp;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::reload::{ReloadService, Reloader, RuntimeStore};
use crate::runtime;
use crate::upstream::health::{HealthService, PoolSource};

/// SIGTERM and SIGINT both drain gracefully (Pingora's default treats SIGINT as a fast
/// exit); either flips `draining` so `/readyz` fails first.
struct Signals {
    draining: Arc<AtomicBool>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: draining"),
                    _ = int.recv() => tracing::info!("SIGINT: draining"),
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers; shutting down");
            }
        }
        self.draining.store(true, Ordering::Relaxed);
        ShutdownSignal::GracefulTerminate
    }
}

/// Run the gateway until SIGTERM/SIGINT. Returns after in-flight requests finished
/// (or the grace period ran out).
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let (spec, text) = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = runtime::compile(&spec, 1, None).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}: {}", config_path.display(), e.path, e.message))
            .collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    crate::cache::configure(&spec.server.cache);
    // The source runs on its own runtime for the life of the process; `run` returns
    // only when the gateway stops. The first snapshot reaches the runtime through the
    // reload service, the one writer.
    let discovery = spec
        .discovery
        .as_ref()
        .map(|d| kubernetes::start(d, metrics.registry()))
        .transpose()?;
    let store = Arc::new(RuntimeStore::new(
        runtime,
        config_path,
        Arc::clone(&metrics),
    ));
    let draining = Arc::new(AtomicBool::new(false));

    let access_log = start_access_log(&spec.access_log, &metrics)?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let grace = spec.server.shutdown_grace_period;
    let conf = ServerConf {
        threads: spec.server.threads,
        // Pingora's default (on); off measured no better (benches/README.md).
        work_stealing: spec.server.work_stealing,
        // On a signal, listeners stop accepting at once and Pingora waits the whole
        // grace period before stopping its runtimes (which drops unfinished requests).
        // `drain_monitor` ends the process as soon as nothing is in flight instead.
        grace_period_seconds: Some(grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut gateway = Gateway::new(
        Arc::clone(&store),
        Arc::clone(&metrics),
        Arc::clone(&in_flight),
        access_log.clone(),
    );
    if let Some(t) = &spec.tracing {
        let tracer = crate::telemetry::start(t, metrics.telemetry.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
        tracing::info!(exporter = ?t.exporter, sample_ratio = t.sample_ratio, "tracing on");
        gateway = gateway.with_tracer(Arc::new(tracer));
    }
    let http = pingora::proxy::http_proxy(&server.configuration, gateway);
    // Connection limits and the edge deadlines run in front of Pingora's HTTP loop.
    let mut proxy = Service::new(
        "gateway".to_owned(),
        ListenerApp::new(
            http,
            Arc::clone(&store),
            Arc::clone(&metrics),
            &spec.listeners,
            access_log.clone(),
        ),
    );
    for l in &spec.listeners {
        proxy.add_tcp(&l.address.to_string());
        tracing::info!(listener = %l.name, address = %l.address, "listening");
    }

    let jwks_metrics = Arc::clone(&metrics);
    let admin_auth = AdminAuth::from_spec(&spec.admin).map_err(|e| anyhow::anyhow!("{e}"))?;
    if spec.admin.insecure() {
        tracing::warn!(address = %spec.admin.address, "the admin API has no token and is reachable from other hosts (admin.insecure_no_auth: true): anyone who reaches it can purge the cache and confirm mass deletions");
    }
    let mut admin_app = AdminApp::new(
        Arc::clone(&store),
        metrics,
        Arc::clone(&draining),
        admin_auth,
    );
    if let Some(d) = &discovery {
        admin_app = admin_app.with_discovery(d.control());
    }
    let mut admin = Service::new("admin".to_owned(), admin_app);
    admin.add_tcp(&spec.admin.address.to_string());
    tracing::info!(address = %spec.admin.address, "admin listening");

    let mut reloader = Reloader::new(
        Arc::clone(&store),
        config_path.to_path_buf(),
        spec.server.reload_debounce,
        text,
    )
    .with_inputs(&spec.watched_files());
    if let Some(d) = &discovery {
        reloader = reloader.with_discovery(Arc::new(spec), d.snapshots.clone());
    }
    let reloader = Arc::new(reloader);
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service(
        "health-checks",
        HealthService::new(pool_source(Arc::clone(&store))),
    ));
    server.add_service(background_service("config-reload", ReloadService(reloader)));
    server.add_service(background_service(
        "jwks-refresh",
        JwksService::new(
            key_store_source(Arc::clone(&store)),
            Arc::clone(&jwks_metrics),
        ),
    ));

    drain_monitor(Arc::clone(&draining), in_flight, access_log.clone());
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { draining }),
    });
    drop(discovery);
    if let Some(log) = &access_log {
        log.shutdown();
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Start the access-log writer (`None` with `access_log: off`) and reopen its file on
/// SIGUSR1. The handler is installed even without a file: SIGUSR1's default action
/// ends the process, and a logrotate `postrotate` sends it whatever the config says.
fn start_access_log(
    spec: &AccessLogSpec,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<AccessLog>>> {
    let log = match spec {
        AccessLogSpec::Off => None,
        AccessLogSpec::On(settings) => Some(Arc::new(
            AccessLog::start(settings, metrics.access_log.clone())
                .context("starting the access log")?,
        )),
    };
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
        .context("installing the SIGUSR1 handler")?;
    let reopen = log.clone();
    std::thread::Builder::new()
        .name("sigusr1".into())
        .spawn(move || {
            for _ in signals.forever() {
                match &reopen {
                    Some(log) => log.reopen(),
                    None => tracing::info!("SIGUSR1: the access log is off; nothing to reopen"),
                }
            }
        })
        .context("starting the SIGUSR1 thread")?;
    Ok(log)
}

/// After a shutdown signal, exit as soon as no request is in flight: the listeners are
/// already closed, so nothing new can arrive, and waiting out the rest of the grace
/// period would only slow rollouts down. Pingora's own grace period stays the upper
/// bound.
/// What the health checks follow: the running runtime's pools, with its version.
fn pool_source(store: Arc<RuntimeStore>) -> PoolSource {
    Box::new(move || {
        let rt = store.load();
        (rt.version, rt.upstreams.values().cloned().collect())
    })
}

/// What the JWKS refresh follows: the running runtime's key stores.
fn key_store_source(store: Arc<RuntimeStore>) -> KeyStoreSource {
    Box::new(move || store.load().jwt.key_stores())
}

fn drain_monitor(
    draining: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    access_log: Option<Arc<AccessLog>>,
) {
    let spawned = std::thread::Builder::new()
        .name("drain-monitor".into())
        .spawn(move || {
            const TICK: Duration = Duration::from_millis(50);
            while !draining.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
            }
            // Let Pingora close its listeners and idle keepalive connections first.
            std::thread::sleep(Duration::from_millis(200));
            while in_flight.load(Ordering::Acquire) > 0 {
                std::thread::sleep(TICK);
            }
            tracing::info!("drained: no requests in flight, exiting");
            // Every request has logged: write the last lines before the process ends.
            if let Some(log) = &access_log {
                log.shutdown();
            }
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no drain monitor; shutdown waits the whole grace period");
    }
}
