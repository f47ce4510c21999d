//! `fake-apiserver`: serves the test fake of the Kubernetes API on a port, for
//! trying `kubectl` or the discovery binary by hand without a cluster.
//!
//! ```text
//! cargo run -p discovery --features fake --bin fake-apiserver -- \
//!     --port 6443 --kubeconfig /tmp/fake.kubeconfig manifests/examples.yaml
//! KUBECONFIG=/tmp/fake.kubeconfig kubectl get endpointslices -A
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use discovery::fake::FakeApiServer;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(about = "A fake Kubernetes API server for local testing (no cluster needed)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// Write a kubeconfig pointing at the server to this file.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// YAML or JSON files of objects (multi-document) to load at start.
    files: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = FakeApiServer::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    for file in &args.files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(document)
                .with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            server
                .try_apply(value)
                .with_context(|| format!("loading {}", file.display()))?;
        }
    }
    if let Some(path) = &args.kubeconfig {
        std::fs::write(path, server.kubeconfig_yaml())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("kubeconfig written to {}", path.display());
    }
    eprintln!("fake Kubernetes API server on {}", server.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
