//! The `discovery` control plane: watches the Kubernetes API once (in-cluster config or
//! `KUBECONFIG`) and streams snapshots to any number of gateways. Settings come from an
//! optional YAML file (see `discovery::config`); flags override it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use discovery::config::FileWire;
use discovery::metrics::{DiscoveryMetrics, TraceMetrics};
use discovery::server::ControlPlane;

#[derive(Debug, Parser)]
#[command(
    name = "discovery",
    about = "Kubernetes endpoint discovery control plane"
)]
struct Args {
    /// YAML settings file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to serve on (default 127.0.0.1:8081; other hosts only when written,
    /// and then over TLS unless --insecure-plaintext).
    #[arg(long)]
    listen: Option<String>,
    /// Namespace to watch (repeatable); default all namespaces.
    #[arg(long = "namespace", short = 'n')]
    namespaces: Vec<String>,
    /// Label selector for Services and their endpoints.
    #[arg(long)]
    label_selector: Option<String>,
    /// `endpointslices` (default) or `endpoints` (legacy v1 Endpoints).
    #[arg(long)]
    source: Option<String>,
    /// File holding the bearer token gateways must send (else env DISCOVERY_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve /v1 (the snapshot stream, status, confirmations) without a token.
    #[arg(long)]
    insecure_no_token: bool,
    /// PEM certificate chain to serve TLS with (reloaded when the file changes).
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Full relist of every watched resource this often (default 5m, jittered).
    #[arg(long)]
    relist_interval: Option<String>,
    /// Full relist when a watch comes back after failing for longer (default 30s).
    #[arg(long)]
    relist_after_gap: Option<String>,
    /// Check the settings and exit.
    #[arg(long)]
    check: bool,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .try_init();
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let mut wire = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            FileWire::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?
        }
        None => FileWire::default(),
    };
    if args.listen.is_some() {
        wire.listen = args.listen.clone();
    }
    if !args.namespaces.is_empty() {
        wire.watch.namespaces = args.namespaces.clone();
    }
    if args.label_selector.is_some() {
        wire.watch.label_selector = args.label_selector.clone();
    }
    if args.source.is_some() {
        wire.watch.source = args.source.clone();
    }
    if args.token_file.is_some() {
        wire.token_file = args.token_file.clone();
    }
    wire.insecure_no_token |= args.insecure_no_token;
    wire.insecure_plaintext |= args.insecure_plaintext;
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        wire.tls = Some(discovery::config::TlsWire {
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
        });
    }
    if args.relist_interval.is_some() {
        wire.watch.relist.interval = args.relist_interval.clone();
    }
    if args.relist_after_gap.is_some() {
        wire.watch.relist.after_gap = args.relist_after_gap.clone();
    }
    let registry = prometheus::Registry::new();
    let metrics = DiscoveryMetrics::new(&registry)?;
    let mut config = wire
        .parse(metrics.clone())
        .map_err(|e| anyhow::anyhow!("invalid settings:\n{e}"))?;
    if args.check {
        println!("settings OK");
        return Ok(());
    }
    config.server.token = match &config.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading token file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("DISCOVERY_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    // Read again on every request from now on: a rotated Secret needs no restart.
    config.server.token_file = config.token_file.clone();
    if config.server.token.as_deref() == Some("") {
        anyhow::bail!("the token file is empty");
    }
    match (&config.server.token, config.insecure_no_token) {
        (None, false) => anyhow::bail!(
            "no token: set token_file (--token-file) or DISCOVERY_TOKEN, or serve the stream to anyone who can reach it with insecure_no_token: true (--insecure-no-token)"
        ),
        (None, true) => tracing::warn!(
            "insecure_no_token: the snapshot stream is open to anyone who can reach it, who can also confirm held mass deletions"
        ),
        (Some(_), true) => {
            tracing::warn!(
                "insecure_no_token is set but a token is configured: the token is required"
            )
        }
        (Some(_), false) => {}
    }
    let tls = match &config.tls {
        Some(files) => {
            let cert = discovery::tls::ReloadingCert::start(files.clone(), metrics.clone())
                .context("loading the TLS certificate")?;
            Some(discovery::tls::server_config(cert)?)
        }
        None => {
            if !config.listen.ip().is_loopback() {
                tracing::warn!(address = %config.listen, "insecure_plaintext: the snapshot stream and its token travel unencrypted");
            }
            None
        }
    };
    // Kept for the life of the process: it owns the span pipeline.
    let _tracer = match config
        .tracing
        .take()
        .or_else(discovery::trace::TraceConfig::from_env)
    {
        Some(trace) => {
            let tracer = discovery::trace::start(&trace, TraceMetrics::new(&registry)?)
                .map_err(|e| anyhow::anyhow!("tracing: {e}"))?;
            tracing::info!(service = %trace.service_name, endpoint = ?trace.endpoint, "discovery: tracing snapshot builds");
            config.watch.tracer = Some(tracer.snapshot_tracer());
            Some(tracer)
        }
        None => None,
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let (snapshots, handle) = discovery::watcher::spawn(client, config.watch);
    let cp: Arc<ControlPlane> =
        ControlPlane::start(config.server, snapshots, Some(handle), registry, metrics);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(address = %listener.local_addr()?, tls = tls.is_some(), "discovery: listening");
    // Subscriber streams never end, so there is nothing to drain: stop at once and let
    // gateways reconnect (they keep their last snapshot meanwhile).
    let serve = async {
        match tls {
            Some(tls) => cp.serve_tls(listener, tls).await,
            None => cp.serve(listener).await,
        }
    };
    tokio::select! {
        served = serve => served?,
        () = shutdown_signal() => {}
    }
    Ok(())
}
