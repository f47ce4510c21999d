//! Owns the admin API's access check, the one gate every admin request passes before
//! any handler runs ([`AdminAuth::check`]): `Authorization: Bearer <token>`, compared
//! in constant time (SHA-256 of both sides, then `aws_lc_rs::constant_time`), for every
//! path except `/healthz`, `/readyz`, the status page itself (`GET /`: static, it holds
//! no data and asks for the token to fetch any) and, with `metrics_public`, `/metrics`.
//! The answer
//! to a missing or wrong token is the same 401 for every path, so it does not tell
//! which paths exist.
//!
//! A token file is looked at again on each checked request (one `stat`): when it
//! changed, it is re-read, so a rotated Kubernetes Secret needs no restart. A file that
//! became unreadable or empty keeps the last good token (and says so in the log once).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use aws_lc_rs::digest::{SHA256, digest};
use http::{Response, StatusCode};
use pingora::http::RequestHeader;

use crate::config::{AdminSpec, AdminToken};

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Paths probes reach without a token.
const PUBLIC: [&str; 2] = ["/healthz", "/readyz"];

type Digest = [u8; 32];

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// What identifies one version of the token file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks: a Kubernetes Secret update swaps the `..data` link.
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Read a token file: surrounding whitespace (a trailing newline) is not part of it.
fn read_token(path: &Path) -> Result<Digest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read admin token file {}: {e}", path.display()))?;
    token_digest(text.trim(), &format!("admin token file {}", path.display()))
}

fn token_digest(token: &str, what: &str) -> Result<Digest, String> {
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!(
            "{what} holds {} bytes; an admin token needs at least {MIN_TOKEN_BYTES}",
            token.len()
        ));
    }
    if token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "{what}: an admin token is printable ASCII without spaces (it travels in a header)"
        ));
    }
    Ok(sha256(token.as_bytes()))
}

#[derive(Debug)]
struct FileToken {
    path: PathBuf,
    /// The last good token's digest and the file version it came from.
    current: Mutex<(Digest, Option<Stamp>, bool)>,
}

impl FileToken {
    /// The token to compare with now, re-reading the file if it changed.
    fn digest(&self) -> Digest {
        // A poisoned lock cannot hold a half-written digest (each update is one
        // assignment), so its value is still the last good token.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = stamp(&self.path).ok();
        if now.is_some() && now != current.1 {
            match read_token(&self.path) {
                Ok(d) => {
                    if d != current.0 {
                        tracing::info!(file = %self.path.display(), "admin token file changed; using the new token");
                    }
                    *current = (d, now, false);
                }
                Err(error) => {
                    if !current.2 {
                        tracing::warn!(%error, "admin token file changed but is unusable; keeping the last good token");
                    }
                    current.1 = now;
                    current.2 = true;
                }
            }
        } else if now.is_none() && !current.2 {
            tracing::warn!(file = %self.path.display(), "admin token file is gone; keeping the last good token");
            current.2 = true;
        }
        current.0
    }
}

#[derive(Debug)]
enum Token {
    /// No token configured: every request passes (loopback, or `insecure_no_auth`).
    Open,
    Fixed(Digest),
    File(FileToken),
}

/// The admin API's access rule, built once at start.
#[derive(Debug)]
pub struct AdminAuth {
    token: Token,
    metrics_public: bool,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` (or more than one `Authorization`).
    Missing,
    /// A bearer token that is not the admin token.
    Wrong,
}

impl AdminAuth {
    /// Read the token (file or environment variable) for `gateway run`; a missing,
    /// unreadable, empty or too short token fails start-up.
    pub fn from_spec(spec: &AdminSpec) -> Result<AdminAuth, String> {
        let token = match &spec.token {
            AdminToken::None => Token::Open,
            AdminToken::Env(var) => {
                let value = std::env::var(var).map_err(|_| {
                    format!("admin.token_env: environment variable {var} is not set")
                })?;
                Token::Fixed(token_digest(
                    value.trim(),
                    &format!("environment variable {var}"),
                )?)
            }
            AdminToken::File(path) => {
                let digest = read_token(path)?;
                Token::File(FileToken {
                    path: path.clone(),
                    current: Mutex::new((digest, stamp(path).ok(), false)),
                })
            }
        };
        Ok(AdminAuth {
            token,
            metrics_public: spec.metrics_public,
        })
    }

    /// An admin API without a token (tests, and a loopback default).
    pub fn open() -> AdminAuth {
        AdminAuth {
            token: Token::Open,
            metrics_public: true,
        }
    }

    /// May this request reach a handler? Every admin request goes through here first.
    pub fn check(&self, req: &RequestHeader) -> Result<(), Denied> {
        let path = req.uri.path();
        if PUBLIC.contains(&path)
            || (self.metrics_public && path == "/metrics")
            || (path == "/" && matches!(req.method, http::Method::GET | http::Method::HEAD))
        {
            return Ok(());
        }
        let expected = match &self.token {
            Token::Open => return Ok(()),
            Token::Fixed(d) => *d,
            Token::File(f) => f.digest(),
        };
        let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Denied::Missing);
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let Some(presented) = presented else {
            return Err(Denied::Missing);
        };
        // Both sides hashed first: equal lengths, so the comparison time says nothing
        // about the token, not even its length.
        aws_lc_rs::constant_time::verify_slices_are_equal(&sha256(presented.as_bytes()), &expected)
            .map_err(|_| Denied::Wrong)
    }
}

/// The 401 for a refused request: the same for every path.
pub fn unauthorized(denied: Denied) -> Response<Vec<u8>> {
    let (www, message) = match denied {
        Denied::Missing => (
            r#"Bearer realm="gateway-admin""#,
            "the admin API needs Authorization: Bearer <admin token>",
        ),
        Denied::Wrong => (
            r#"Bearer realm="gateway-admin", error="invalid_token""#,
            "the admin token is not valid",
        ),
    };
    let body =
        format!(r#"{{"error":{{"status":401,"code":"unauthorized","message":"{message}"}}}}"#)
            .into_bytes();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(www),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = resp.body().len().to_string().parse() {
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, auth: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for a in auth {
            r.append_header("authorization", *a).unwrap();
        }
        r
    }

    fn with_token(token: &str, metrics_public: bool) -> AdminAuth {
        AdminAuth {
            token: Token::Fixed(sha256(token.as_bytes())),
            metrics_public,
        }
    }

    #[test]
    fn every_path_but_probes_needs_the_token() {
        let auth = with_token("0123456789abcdef", false);
        let good = "Bearer 0123456789abcdef";
        for path in ["/healthz", "/readyz", "/"] {
            assert_eq!(auth.check(&req(path, &[])), Ok(()), "{path}");
        }
        for path in [
            "/metrics",
            "/admin/routes",
            "/admin/status",
            "/index.html",
            "/nope",
            "/healthz/x",
            "//healthz",
        ] {
            assert_eq!(auth.check(&req(path, &[])), Err(Denied::Missing), "{path}");
            assert_eq!(auth.check(&req(path, &[good])), Ok(()), "{path}");
            assert_eq!(
                auth.check(&req(path, &["bearer  0123456789abcdef "])),
                Ok(()),
                "{path}: scheme is case-insensitive"
            );
            assert_eq!(
                auth.check(&req(path, &["Bearer 0123456789abcdeF"])),
                Err(Denied::Wrong)
            );
            assert_eq!(
                auth.check(&req(path, &["Basic 0123456789abcdef"])),
                Err(Denied::Missing)
            );
            assert_eq!(
                auth.check(&req(path, &[good, good])),
                Err(Denied::Missing),
                "two Authorization lines are refused"
            );
        }
        let public = with_token("0123456789abcdef", true);
        assert_eq!(public.check(&req("/metrics", &[])), Ok(()));
        assert_eq!(
            public.check(&req("/admin/config", &[])),
            Err(Denied::Missing)
        );
    }

    #[test]
    fn token_file_rotates_and_keeps_the_last_good_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token-0123456789\n").unwrap();
        let spec = AdminSpec {
            address: "0.0.0.0:9901".parse().unwrap(),
            token: AdminToken::File(path.clone()),
            metrics_public: false,
            insecure_no_auth: false,
        };
        let auth = AdminAuth::from_spec(&spec).unwrap();
        let ok = |t: &str| {
            auth.check(&req("/admin/config", &[&format!("Bearer {t}")]))
                .is_ok()
        };
        assert!(ok("first-token-0123456789"));
        let tmp = dir.path().join("token.new");
        std::fs::write(&tmp, "second-token-0123456789").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(ok("second-token-0123456789"));
        assert!(!ok("first-token-0123456789"));
        std::fs::write(&tmp, "short").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(
            ok("second-token-0123456789"),
            "a bad file keeps the last good token"
        );
        assert!(!ok("short"));
        std::fs::remove_file(&path).unwrap();
        assert!(ok("second-token-0123456789"));
        std::fs::write(&path, "   ").unwrap();
        assert!(
            AdminAuth::from_spec(&spec).is_err(),
            "an empty file fails start-up"
        );
    }
}
