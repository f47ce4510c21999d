//! Owns how the gateway talks to an upstream's endpoints: the HTTP version
//! ([`Protocol`]: HTTP/1.1, h2c with prior knowledge, or h2 over TLS by ALPN) and TLS
//! ([`TlsSpec`]: server name, trusted CAs, verification, client certificate for mTLS).
//! Certificate files are read and checked when the config is validated (so a bad file
//! is a config error naming it, and a reload with one keeps the running config); each
//! endpoint's Pingora `HttpPeer` is configured from them once, at compile time.

use std::fmt;
use std::sync::Arc;

use pingora::protocols::ALPN;
use pingora::tls::{CertificateDer, PrivateKeyDer};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls_pki_types::pem::PemObject;

use super::hash64;

/// The HTTP version spoken to an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1, pooled keepalive connections (one request per connection at a time).
    #[default]
    Http1,
    /// HTTP/2 without TLS, by prior knowledge (RFC 9113 section 3.3): gRPC services
    /// inside a cluster.
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN (`h2` only).
    H2,
}

impl Protocol {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "http1" => Ok(Self::Http1),
            "h2c" => Ok(Self::H2c),
            "h2" => Ok(Self::H2),
            other => Err(format!(
                "unknown protocol {other:?}; expected http1, h2c or h2 (h2 is HTTP/2 over TLS)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
            Self::H2 => "h2",
        }
    }

    /// The default for a Kubernetes Service port's `appProtocol`: `h2c`, `grpc` and
    /// `kubernetes.io/h2c` speak HTTP/2 in the clear; `kubernetes.io/ws` (and `wss`,
    /// `http`) HTTP/1.1. Anything else says nothing.
    pub fn for_app_protocol(app: &str) -> Option<Self> {
        match app {
            "h2c" | "grpc" | "kubernetes.io/h2c" => Some(Self::H2c),
            "kubernetes.io/ws" | "kubernetes.io/wss" | "http" | "http1" => Some(Self::Http1),
            _ => None,
        }
    }
}

/// Streams one HTTP/2 connection to an endpoint carries at once: new requests open
/// streams on it before another connection is made.
pub const H2_STREAMS_PER_CONNECTION: usize = 100;

/// What was read from one certificate file, with a digest so that a changed file
/// makes a changed upstream (its pool is then rebuilt, with fresh connections).
#[derive(Clone)]
struct Loaded<T> {
    path: String,
    digest: u64,
    value: T,
}

impl<T> fmt::Debug for Loaded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:016x}", self.path, self.digest)
    }
}

/// Validated TLS settings of one upstream.
#[derive(Clone, Debug)]
pub struct TlsSpec {
    /// Server name sent and verified; `None`: each endpoint's host.
    pub sni: Option<String>,
    ca: Option<Loaded<Arc<[WrappedX509]>>>,
    client: Option<Loaded<Arc<CertKey>>>,
    /// No verification of the upstream's certificate at all.
    pub insecure_skip_verify: bool,
}

/// How to reach one upstream's endpoints.
#[derive(Clone, Debug, Default)]
pub struct TransportSpec {
    /// As written; `None` lets a `kubernetes` upstream take its port's `appProtocol`.
    pub protocol: Option<Protocol>,
    pub tls: Option<TlsSpec>,
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Certificates as Pingora will parse them (it panics on one it cannot).
fn checked_certs(path: &str, pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        let der = item.map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
        if let Err(e) = x509_parser::parse_x509_certificate(der.as_ref()) {
            return Err(format!(
                "{path}: certificate {} does not parse: {e}",
                out.len() + 1
            ));
        }
        out.push(der.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err(format!("{path}: no PEM certificate in the file"));
    }
    Ok(out)
}

impl TlsSpec {
    /// Read and check the files: every CA certificate must parse; the client
    /// certificate must parse and match its key.
    pub fn load(
        sni: Option<String>,
        ca_file: Option<&str>,
        client: Option<(&str, &str)>,
        insecure_skip_verify: bool,
    ) -> Result<Self, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let ca = ca_file.and_then(|path| {
            let loaded = read(path).and_then(|pem| {
                let certs = checked_certs(path, &pem)?;
                let list: Vec<WrappedX509> = certs
                    .into_iter()
                    .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
                    .collect();
                Ok(Loaded {
                    path: path.to_owned(),
                    digest: hash64(&pem),
                    value: Arc::from(list),
                })
            });
            loaded.map_err(|e| errors.push(("ca_file", e))).ok()
        });
        let client = client.and_then(|(cert, key)| match load_client(cert, key) {
            Ok(c) => Some(c),
            Err((field, e)) => {
                errors.push((field, e));
                None
            }
        });
        if errors.is_empty() {
            Ok(Self {
                sni,
                ca,
                client,
                insecure_skip_verify,
            })
        } else {
            Err(errors)
        }
    }
}

fn load_client(cert: &str, key: &str) -> Result<Loaded<Arc<CertKey>>, (&'static str, String)> {
    let cert_pem = read(cert).map_err(|e| ("client_cert_file", e))?;
    let chain = checked_certs(cert, &cert_pem).map_err(|e| ("client_cert_file", e))?;
    let key_pem = read(key).map_err(|e| ("client_key_file", e))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            "client_key_file",
            format!("{key}: not a PEM private key: {e}"),
        )
    })?;
    let raw_key = key_der.secret_der().to_vec();
    // Pingora reads the key back from its DER bytes (and panics if it cannot).
    if PrivateKeyDer::try_from(raw_key.clone()).is_err() {
        return Err((
            "client_key_file",
            format!("{key}: the key's format is not recognized (PKCS#8, SEC1 or PKCS#1)"),
        ));
    }
    pingora::tls::install_default_crypto_provider();
    if let Some(provider) = pingora::tls::CryptoProvider::get_default() {
        let certs = chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        pingora::tls::sign::CertifiedKey::from_der(certs, key_der.clone_key(), provider).map_err(
            |e| {
                (
                    "client_key_file",
                    format!("{key} does not fit the certificate in {cert}: {e}"),
                )
            },
        )?;
    }
    let mut digest_input = cert_pem;
    digest_input.extend_from_slice(&key_pem);
    Ok(Loaded {
        path: format!("{cert}+{key}"),
        digest: hash64(&digest_input),
        value: Arc::new(CertKey::new(chain, raw_key)),
    })
}

/// The host part of `host:port` (`[v6]:port` loses its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl TransportSpec {
    /// The protocol in force: as written, else the Service port's `appProtocol`
    /// default, else HTTP/1.1 (TLS alone keeps HTTP/1.1; h2 is asked for by name).
    pub fn effective(&self, app_protocol: Option<&str>) -> Protocol {
        self.protocol
            .or_else(|| app_protocol.and_then(Protocol::for_app_protocol))
            .unwrap_or_default()
    }

    /// Whether endpoints are reached over TLS.
    pub fn uses_tls(&self, protocol: Protocol) -> bool {
        self.tls.is_some() || protocol == Protocol::H2
    }

    /// The peer for the endpoint at `address` (`host:port` as written; the host is the
    /// default server name).
    pub fn peer(
        &self,
        socket: std::net::SocketAddr,
        address: &str,
        protocol: Protocol,
    ) -> HttpPeer {
        let tls = self.uses_tls(protocol);
        let sni = if tls {
            self.tls
                .as_ref()
                .and_then(|t| t.sni.clone())
                .unwrap_or_else(|| host_of(address).to_owned())
        } else {
            String::new()
        };
        let mut peer = match self.tls.as_ref().and_then(|t| t.client.as_ref()) {
            Some(client) => HttpPeer::new_mtls(socket, sni, Arc::clone(&client.value)),
            None => HttpPeer::new(socket, tls, sni),
        };
        if let Some(t) = &self.tls {
            if let Some(ca) = &t.ca {
                peer.options.ca = Some(Arc::clone(&ca.value));
            }
            if t.insecure_skip_verify {
                peer.options.verify_cert = false;
                peer.options.verify_hostname = false;
            }
        }
        match protocol {
            Protocol::Http1 => peer.options.alpn = ALPN::H1,
            Protocol::H2c | Protocol::H2 => {
                peer.options.alpn = ALPN::H2;
                peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        assert_eq!(Protocol::parse("h2c"), Ok(Protocol::H2c));
        assert!(Protocol::parse("http2").is_err());
        let t = TransportSpec::default();
        assert_eq!(t.effective(Some("grpc")), Protocol::H2c);
        assert_eq!(t.effective(Some("kubernetes.io/h2c")), Protocol::H2c);
        assert_eq!(t.effective(Some("kubernetes.io/ws")), Protocol::Http1);
        assert_eq!(t.effective(Some("something")), Protocol::Http1);
        assert_eq!(t.effective(None), Protocol::Http1);
        let written = TransportSpec {
            protocol: Some(Protocol::Http1),
            tls: None,
        };
        assert_eq!(written.effective(Some("grpc")), Protocol::Http1);
    }

    #[test]
    fn peers() {
        let socket: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let t = TransportSpec::default();
        let p = t.peer(socket, "127.0.0.1:8443", Protocol::H2c);
        assert!(!p.is_tls());
        assert_eq!(p.options.alpn, ALPN::H2);
        assert_eq!(p.options.max_h2_streams, H2_STREAMS_PER_CONNECTION);
        let p = t.peer(socket, "api.internal:8443", Protocol::H2);
        assert!(p.is_tls());
        assert_eq!(p.sni, "api.internal");
        assert!(p.options.verify_cert);
        let p = t.peer(socket, "[::1]:8443", Protocol::H2);
        assert_eq!(p.sni, "::1");
        let p = t.peer(socket, "127.0.0.1:8443", Protocol::Http1);
        assert!(!p.is_tls());
        assert_eq!(p.options.alpn, ALPN::H1);
    }

    #[test]
    fn bad_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = junk.to_str().unwrap();
        let err = TlsSpec::load(None, Some(junk), None, false).unwrap_err();
        assert_eq!(err[0].0, "ca_file");
        assert!(err[0].1.contains("junk.pem"), "{err:?}");
        let err = TlsSpec::load(None, Some("/nonexistent/ca.pem"), None, false).unwrap_err();
        assert!(err[0].1.contains("/nonexistent/ca.pem"), "{err:?}");
        let err = TlsSpec::load(None, None, Some((junk, junk)), false).unwrap_err();
        assert_eq!(err[0].0, "client_cert_file");
    }
}
