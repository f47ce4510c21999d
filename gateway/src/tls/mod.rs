//! Owns TLS termination on the listeners: a listener's certificates (read and checked
//! in `certs`, chosen by SNI in `resolver`), its minimum version, ALPN list and client
//! CA (mTLS), compiled into the rustls `ServerConfig` and the Pingora acceptor the
//! listener runs its handshakes with (`ListenerTls`). What a handshake learned (the
//! SNI, which certificate it got, a verified client certificate) rides on the
//! connection's digest as a [`TlsConnection`], for the request phases (routing sees the
//! SNI; 421 for a request meant for another certificate's host).
//!
//! Reloadable: the certificate files are inputs of the config, so rewriting them (or
//! a Kubernetes Secret's symlink swap) or SIGHUP compiles a new acceptor into the next
//! runtime; a connection keeps the acceptor it was accepted with.

pub mod certs;
pub mod resolver;

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::tls::TlsRef;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

pub use certs::{CertError, LoadedCert};
pub use resolver::{CertTable, SniResolver};

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl MinVersion {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "1.2" => Ok(Self::Tls12),
            "1.3" => Ok(Self::Tls13),
            other => Err(format!("min_version {other:?} must be \"1.2\" or \"1.3\"")),
        }
    }
}

/// An application protocol a TLS listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "h2" => Ok(Self::H2),
            "http/1.1" => Ok(Self::Http11),
            other => Err(format!("alpn {other:?} must be h2 or http/1.1")),
        }
    }

    fn wire(self) -> &'static [u8] {
        match self {
            Self::H2 => b"h2",
            Self::Http11 => b"http/1.1",
        }
    }
}

/// One listener's validated TLS settings, certificates loaded.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    pub listener: String,
    pub certificates: Vec<Arc<LoadedCert>>,
    pub min_version: MinVersion,
    pub alpn: Vec<Alpn>,
    /// `client_ca_file` and its certificates: client certificates are required.
    pub client_ca: Option<(PathBuf, Arc<RootCertStore>)>,
    /// `None`: the listener's `timeouts.request_header`.
    pub handshake_timeout: Option<Duration>,
}

impl TlsSpec {
    /// The files this spec read, to watch for changes.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.certificates
            .iter()
            .flat_map(|c| [&c.cert_file, &c.key_file])
            .chain(self.client_ca.as_ref().map(|(p, _)| p))
    }
}

/// The crypto of every listener (and of the pairs' key checks): ring, the provider
/// Pingora's rustls build installs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a finished handshake learned, on the connection's digest
/// (`SslDigest::extension`).
#[derive(Debug)]
pub struct TlsConnection {
    /// The SNI the client sent, lowercased.
    pub sni: Option<String>,
    /// The listener's certificates at handshake time, and the one this connection got.
    pub table: Arc<CertTable>,
    pub selected: usize,
}

impl TlsConnection {
    /// Would a request for `host` on this connection have needed another certificate?
    /// (The gateway serves a certificate for `host`, and not the one this connection
    /// got: RFC 9110 section 15.5.20, 421 Misdirected Request.)
    pub fn misdirected(&self, host: &str) -> bool {
        if self
            .sni
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(host))
        {
            return false;
        }
        self.table.find(host).is_some_and(|i| i != self.selected)
    }
}

struct Handshaken(Arc<CertTable>);

#[async_trait]
impl TlsAccept for Handshaken {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let sni = tls.server_name().map(|s| s.to_ascii_lowercase());
        let selected = self.0.select(sni.as_deref());
        Some(Arc::new(TlsConnection {
            sni,
            table: Arc::clone(&self.0),
            selected,
        }))
    }
}

/// A listener's compiled TLS: the acceptor of its handshakes.
pub struct ListenerTls {
    pub acceptor: Acceptor,
    pub table: Arc<CertTable>,
    pub handshake_timeout: Option<Duration>,
    pub mtls: bool,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("table", &self.table)
            .field("mtls", &self.mtls)
            .finish_non_exhaustive()
    }
}

/// Build the acceptor of `spec`. Fails only where rustls refuses the combination.
pub fn compile(spec: &TlsSpec) -> Result<ListenerTls, String> {
    let provider = provider();
    let table = Arc::new(CertTable {
        certs: spec.certificates.clone(),
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match spec.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &spec.client_ca {
        Some((file, roots)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::clone(roots),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| format!("client_ca_file {}: {e}", file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let resolver = Arc::new(SniResolver(Arc::clone(&table)));
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = spec.alpn.iter().map(|a| a.wire().to_vec()).collect();
    // TLS 1.3 resumption by ticket as well as by the session cache.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    let mut settings = TlsSettings::with_callbacks(Box::new(Handshaken(Arc::clone(&table))))
        .map_err(|e| e.to_string())?;
    settings.set_cert_resolver(resolver);
    let mut acceptor = settings.build();
    acceptor.acceptor = Arc::new(config).into();
    Ok(ListenerTls {
        acceptor,
        table,
        handshake_timeout: spec.handshake_timeout,
        mtls: spec.client_ca.is_some(),
    })
}
