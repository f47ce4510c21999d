//! Owns TLS for the control-plane stream, both ends, with rustls (aws-lc-rs provider):
//!
//! - the server's certificate, loaded from a PEM certificate chain and key, and
//!   loaded again whenever either file changes (a rotated Kubernetes Secret is a
//!   symlink swap, so the files are compared by content, not by inode or mtime); a
//!   pair that does not load keeps the one in use, logged and counted;
//! - the accept loop that runs each handshake in its own task (bounded in time), so
//!   one slow or hostile client never holds up the others, and hands finished
//!   connections to `axum::serve`;
//! - the client configuration that trusts exactly the CA certificates in one file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::metrics::DiscoveryMetrics;

/// How often the certificate files are compared with what is loaded.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("{path}: no usable PEM private key in it: {reason}")]
    Key { path: String, reason: String },
    #[error("{cert} and {key} do not form a usable pair: {reason}")]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The certificate and key files of a server, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn load(&self) -> Result<Loaded, TlsError> {
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let key = certified_key(self, &cert_pem, &key_pem)?;
        Ok(Loaded {
            cert_pem,
            key_pem,
            key,
        })
    }
}

fn certified_key(
    files: &CertFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: files.cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.display().to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        path: files.key.display().to_string(),
        reason: e.to_string(),
    })?;
    let pair = |reason: String| TlsError::Pair {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        reason,
    };
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| pair(e.to_string()))?;
    // `from_der` checks that the key matches the leaf certificate.
    Ok(Arc::new(certified))
}

/// The server certificate in use, swapped whole when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: CertFiles,
    current: ArcSwap<Loaded>,
    metrics: DiscoveryMetrics,
}

#[derive(Debug)]
struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
}

impl ReloadingCert {
    /// Load the pair now (start-up fails on a bad pair) and follow the files from then
    /// on, on the current tokio runtime, for as long as the returned value lives.
    pub fn start(files: CertFiles, metrics: DiscoveryMetrics) -> Result<Arc<Self>, TlsError> {
        let loaded = files.load()?;
        let this = Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(loaded),
            metrics,
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.reload_if_changed();
            }
        });
        Ok(this)
    }

    /// Compare the files with what is loaded; load them when they differ. Returns
    /// whether a new pair is now in use.
    pub fn reload_if_changed(&self) -> bool {
        let (Ok(cert_pem), Ok(key_pem)) = (
            std::fs::read(&self.files.cert),
            std::fs::read(&self.files.key),
        ) else {
            // Mid-rotation (or removed): keep serving what is loaded and try again later.
            return false;
        };
        let loaded = self.current.load();
        if loaded.cert_pem == cert_pem && loaded.key_pem == key_pem {
            return false;
        }
        match certified_key(&self.files, &cert_pem, &key_pem) {
            Ok(key) => {
                self.current.store(Arc::new(Loaded {
                    cert_pem,
                    key_pem,
                    key,
                }));
                self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(cert = %self.files.cert.display(), "discovery: TLS certificate reloaded");
                true
            }
            Err(error) => {
                // Remember the bad content so it is reported once, not every tick.
                self.current.store(Arc::new(Loaded {
                    cert_pem,
                    key_pem,
                    key: loaded.key.clone(),
                }));
                self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                tracing::error!(%error, "discovery: new TLS certificate refused; keeping the one in use");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// The rustls server configuration around `cert` (HTTP/1.1 only: that is what the
/// stream server speaks).
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that trusts the CA certificates in `ca_file` and nothing
/// else (not the system's roots: the control plane's CA is private to the cluster).
pub fn client_config(ca_file: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let pem = read(ca_file)?;
    let bad = |reason: String| TlsError::Ca {
        path: ca_file.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("no PEM certificate in it".into()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// TLS connections ready for `axum::serve`: handshakes run in their own tasks.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        metrics: DiscoveryMetrics,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(%error, "discovery: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Updates are small writes that must leave at once (no Nagle delay).
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(%error, %peer, "discovery: TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, "discovery: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            accept,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task never ends on its own; if it is gone, so is the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn leaf(cert: &ReloadingCert) -> Vec<u8> {
        cert.current.load().key.cert[0].to_vec()
    }

    #[tokio::test]
    async fn a_changed_pair_is_loaded_and_a_bad_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let (cert1, key1) = pair();
        std::fs::write(&files.cert, &cert1).unwrap();
        std::fs::write(&files.key, &key1).unwrap();
        let metrics = DiscoveryMetrics::unregistered().unwrap();
        let cert = ReloadingCert::start(files.clone(), metrics.clone()).unwrap();
        let first = leaf(&cert);
        assert!(!cert.reload_if_changed(), "nothing changed");

        // A key that does not match the certificate: refused, the first pair stays.
        let (cert2, key2) = pair();
        std::fs::write(&files.cert, &cert2).unwrap();
        assert!(!cert.reload_if_changed());
        assert_eq!(leaf(&cert), first);
        assert_eq!(metrics.tls_reloads.with_label_values(&["error"]).get(), 1);
        // Reported once, not at every look.
        assert!(!cert.reload_if_changed());
        assert_eq!(metrics.tls_reloads.with_label_values(&["error"]).get(), 1);

        // The matching key arrives: the new pair is in use.
        std::fs::write(&files.key, &key2).unwrap();
        assert!(cert.reload_if_changed());
        assert_ne!(leaf(&cert), first);
        assert_eq!(metrics.tls_reloads.with_label_values(&["ok"]).get(), 1);

        // Start-up refuses what a reload would.
        std::fs::write(&files.key, "not a key").unwrap();
        assert!(ReloadingCert::start(files, metrics).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "nothing here").unwrap();
        assert!(client_config(&path).is_err());
        std::fs::write(&path, pair().0).unwrap();
        assert!(client_config(&path).is_ok());
    }
}
