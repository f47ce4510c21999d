//! What every sample service shares: JSON errors with stable codes, request-id
//! propagation, Prometheus metrics, health and readiness, the SQLite database, the
//! caller identity the gateway forwards, and serving with graceful shutdown.

pub mod db;
pub mod error;
pub mod http;
pub mod identity;
pub mod request_id;
pub mod serve;
pub mod validate;
