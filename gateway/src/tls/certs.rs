//! Reading a certificate/key pair (PEM) into a rustls `CertifiedKey`: the chain must
//! parse, the key must parse and match the leaf, and the leaf must be valid now. The
//! names the pair serves come from the leaf's subjectAltName (DNS names, lowercased).
//! Every error names the file it is about.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

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
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
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
