//! The gateway data plane: a Pingora reverse proxy driven by one YAML file.
//!
//! Pipeline (see shared DESIGN.md): `config` (file -> wire -> `Spec`) -> `runtime`
//! (`Spec` -> immutable `Runtime`) -> `reload` (one `ArcSwap`, one writer) -> `proxy`
//! (request phases, each pinning one runtime).

pub mod actions;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod explain;
pub mod kubernetes;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod ratelimit_cluster;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
pub mod upstream;
