//! Owns the caller's identity as the gateway forwards it (`X-User-Id`, `X-User-Roles`).
//!
//! Trust boundary: these headers are believed because the services are reachable only
//! through the gateway (in Kubernetes, by a NetworkPolicy admitting only gateway pods),
//! and the gateway removes client-sent copies of them before adding its own.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;

pub const USER_ID: &str = "x-user-id";
pub const USER_ROLES: &str = "x-user-roles";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this operation needs the admin role"))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let user_id = parts
            .headers
            .get(USER_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .ok_or_else(ApiError::unauthenticated)?
            .to_owned();
        let roles = parts
            .headers
            .get(USER_ROLES)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split([',', ' '])
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { user_id, roles })
    }
}
