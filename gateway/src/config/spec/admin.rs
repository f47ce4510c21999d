//! Builds the `admin` section: the listener address and how admin requests are
//! authenticated (a bearer token from a file or the environment). A non-loopback
//! address without a token is refused unless `insecure_no_auth: true` says so.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{DEFAULT_ADMIN_ADDRESS, Errors, wire};
use crate::units::socket_addr;

/// Where the admin bearer token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminToken {
    /// No token: only allowed on a loopback address or with `insecure_no_auth`.
    None,
    /// Read at start (unreadable or empty: start-up fails) and again whenever the file
    /// changes; a bad new version keeps the last good token.
    File(PathBuf),
    /// Read once at start.
    Env(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSpec {
    pub address: SocketAddr,
    pub token: AdminToken,
    /// `/metrics` answers without the token.
    pub metrics_public: bool,
    /// The operator accepted an unauthenticated admin API on a reachable address.
    pub insecure_no_auth: bool,
}

impl AdminSpec {
    /// Open to anyone who reaches it on a non-loopback address (warned at every start).
    pub fn insecure(&self) -> bool {
        self.token == AdminToken::None && !self.address.ip().is_loopback()
    }
}

pub(super) fn admin_spec(e: &mut Errors, a: &wire::Admin) -> AdminSpec {
    let address = e
        .take(
            "admin.address",
            socket_addr(a.address.as_deref().unwrap_or(DEFAULT_ADMIN_ADDRESS)),
        )
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901)));
    let token = match (&a.token_file, &a.token_env) {
        (Some(_), Some(_)) => {
            e.push("admin.token_file", "set token_file or token_env, not both");
            AdminToken::None
        }
        (Some(f), None) if f.trim().is_empty() => {
            e.push("admin.token_file", "token_file must be a file path");
            AdminToken::None
        }
        (Some(f), None) => AdminToken::File(PathBuf::from(f)),
        (None, Some(v)) => {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                e.push(
                    "admin.token_env",
                    format!("invalid environment variable name {v:?}"),
                );
            }
            AdminToken::Env(v.clone())
        }
        (None, None) => AdminToken::None,
    };
    if a.insecure_no_auth && token != AdminToken::None {
        e.push(
            "admin.insecure_no_auth",
            "insecure_no_auth cannot be combined with a token: drop one of them",
        );
    }
    if token == AdminToken::None && !address.ip().is_loopback() && !a.insecure_no_auth {
        e.push(
            "admin.address",
            format!(
                "admin address {address} is reachable from other hosts but has no token: \
                 set admin.token_file or admin.token_env (or insecure_no_auth: true to accept an open admin API)"
            ),
        );
    }
    AdminSpec {
        address,
        token,
        metrics_public: a.metrics_public,
        insecure_no_auth: a.insecure_no_auth,
    }
}
