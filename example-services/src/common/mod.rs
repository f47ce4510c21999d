//! What every sample service shares: JSON errors with stable codes, request-id
//! propagation, Prometheus metrics, health and readiness, the SQLite database, the
//! caller identity the gateway forwards, trace continuation (`trace`), serving with graceful shutdown, and online
//! backups and restores of the database (`backup`, with its flags and admin port in `ops`).

pub mod backup;
pub mod db;
pub mod error;
pub mod http;
pub mod identity;
pub mod ops;
pub mod request_id;
pub mod serve;
pub mod trace;
pub mod validate;
