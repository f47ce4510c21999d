//! Reading a certificate/key pair (PEM) into a rustls `CertifiedKey`: the chain must
//! parse, the key must parse and match the leaf, and the leaf must be valid now. The
//! names the pair serves come from the leaf's subjectAltName (DNS names, lowercased).
//! Every error names the file it is about. What an operator sees of a loaded pair (the
//! status page's TLS table) is `LoadedCert::describe`: names, expiry, file, never key
//! material.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};

/// Why a pair or a CA file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("cannot read {file}: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: no PEM certificate in it")]
    NoCertificate { file: String },
    #[error("{file}: not a valid PEM certificate: {reason}")]
    BadCertificate { file: String, reason: String },
    #[error("{file}: no usable PEM private key in it: {reason}")]
    BadKey { file: String, reason: String },
    #[error("{key_file} does not match the certificate in {cert_file}: {reason}")]
    KeyMismatch {
        cert_file: String,
        key_file: String,
        reason: String,
    },
    #[error("{file}: the certificate expired at {not_after} (Unix time)")]
    Expired { file: String, not_after: i64 },
    #[error("{file}: the certificate is not valid before {not_before} (Unix time)")]
    NotYetValid { file: String, not_before: i64 },
}

/// A certificate/key pair ready to serve.
pub struct LoadedCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf's SAN, lowercased; `*.` wildcards kept as written.
    pub names: Vec<String>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The metric label of the pair: its first SAN name, else the cert file's name.
    pub label: String,
    /// When the files were read: at start, or by the reload that compiled this pair
    /// (a discovery-only recompile keeps the pair, and this time, as it is).
    pub loaded_at: SystemTime,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("cert_file", &self.cert_file)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The last second RFC 3339 text (and X.509's GeneralizedTime) can say: 9999-12-31.
const LAST_SECOND: u64 = 253_402_300_799;

/// `t` as Unix seconds (negative before 1970).
fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Unix seconds as RFC 3339, clamped to what the format can say (the formatter
/// fails past year 9999).
fn rfc3339(unix: i64) -> String {
    let secs = u64::try_from(unix).unwrap_or(0).min(LAST_SECOND);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

impl LoadedCert {
    /// What the admin API shows of this pair at `now`: the names it serves, its
    /// notAfter, the seconds left until then (negative once expired: a pair is only
    /// checked when loaded, so a long-running gateway can outlive it) and where it
    /// came from. Never the key.
    pub fn describe(&self, now: SystemTime) -> Value {
        json!({
            "name": self.label,
            "names": self.names,
            "not_after": rfc3339(self.not_after),
            "seconds_left": self.not_after.saturating_sub(unix(now)),
            "cert_file": self.cert_file.display().to_string(),
            "key_file": self.key_file.display().to_string(),
            "loaded_at": rfc3339(unix(self.loaded_at)),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Read {
        file: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Read and check one pair (see the module doc); `now` decides expiry.
pub fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<LoadedCert, CertError> {
    let cert_name = cert_file.display().to_string();
    let key_name = key_file.display().to_string();
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate {
            file: cert_name.clone(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate { file: cert_name });
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| CertError::BadCertificate {
            file: cert_name.clone(),
            reason: e.to_string(),
        })?;
    let validity = parsed.validity();
    let not_after = validity.not_after.timestamp();
    let not_before = validity.not_before.timestamp();
    let loaded_at = now;
    let now = unix(now);
    if now > not_after {
        return Err(CertError::Expired {
            file: cert_name,
            not_after,
        });
    }
    if now < not_before {
        return Err(CertError::NotYetValid {
            file: cert_name,
            not_before,
        });
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadKey {
        file: key_name.clone(),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
            cert_file: cert_name.clone(),
            key_file: key_name.clone(),
            reason: e.to_string(),
        },
        other => CertError::BadKey {
            file: key_name.clone(),
            reason: other.to_string(),
        },
    })?;
    let label = names.first().cloned().unwrap_or_else(|| {
        cert_file
            .file_name()
            .map_or_else(|| cert_name.clone(), |n| n.to_string_lossy().into_owned())
    });
    Ok(LoadedCert {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        key: Arc::new(certified),
        names,
        not_after,
        label,
        loaded_at,
    })
}

/// The CA certificates of a `client_ca_file`.
pub fn load_ca(file: &Path) -> Result<RootCertStore, CertError> {
    let name = file.display().to_string();
    let pem = read(file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate {
            file: name.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate { file: name });
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| CertError::BadCertificate {
            file: name.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A self-signed pair for `names` valid until `not_after`, written to `dir`.
    fn pair(dir: &Path, names: &[&str], not_after: SystemTime) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = not_after.into();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn describe_counts_down_to_expiry_and_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        let (c, k) = pair(dir.path(), &["API.test", "*.api.test"], now + 10 * day);
        let loaded = load_pair(&c, &k, &provider(), now).unwrap();
        assert_eq!(loaded.loaded_at, now);
        let d = loaded.describe(now);
        assert_eq!(d["name"], "api.test");
        assert_eq!(d["names"], json!(["api.test", "*.api.test"]));
        assert_eq!(d["not_after"], "2027-01-25T08:00:00Z");
        assert_eq!(d["seconds_left"], 864_000);
        assert_eq!(d["loaded_at"], "2027-01-15T08:00:00Z");
        assert_eq!(d["cert_file"], c.display().to_string());
        assert!(!d.to_string().contains("PRIVATE"), "{d}");
        // Past notAfter (a gateway that ran on): negative.
        assert_eq!(loaded.describe(now + 11 * day)["seconds_left"], -86_400);
    }

    #[test]
    fn rfc3339_clamps_what_it_cannot_say() {
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(unix(UNIX_EPOCH - Duration::from_secs(3)), -3);
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }
}
