//! Picking a listener's certificate by SNI: an exact SAN name wins over a `*.`
//! wildcard (which covers exactly one label, RFC 6125 section 6.4.3); a name no
//! certificate covers, or no SNI at all, gets the first certificate.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::LoadedCert;

/// A listener's certificates, in config order.
#[derive(Debug)]
pub struct CertTable {
    pub certs: Vec<Arc<LoadedCert>>,
}

impl CertTable {
    /// The certificate that covers `host` by name, if any (no default).
    pub fn find(&self, host: &str) -> Option<usize> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let exact = self.certs.iter().position(|c| {
            c.names
                .iter()
                .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(host))
        });
        exact.or_else(|| {
            let (_, parent) = host.split_once('.')?;
            if parent.is_empty() {
                return None;
            }
            self.certs.iter().position(|c| {
                c.names.iter().any(|n| {
                    n.strip_prefix("*.")
                        .is_some_and(|p| p.eq_ignore_ascii_case(parent))
                })
            })
        })
    }

    /// The certificate a handshake with this SNI gets.
    pub fn select(&self, sni: Option<&str>) -> usize {
        sni.and_then(|s| self.find(s)).unwrap_or(0)
    }
}

/// The rustls resolver of a listener.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertTable>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = self.0.select(hello.server_name());
        self.0.certs.get(i).map(|c| Arc::clone(&c.key))
    }
}
