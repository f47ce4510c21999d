//! The gateway data plane: a Pingora reverse proxy driven by one YAML file.
//!
//! Layers, top to bottom (dependencies point down only; `gateway/README.md` has the
//! picture and which folder owns each feature):
//! - `server`, `listener`, `admin`, `explain` (and `main.rs`): process, listeners (and
//!   the edge deadlines in front of Pingora), admin API, CLI;
//! - `proxy`: the Pingora phases, calling the features in order;
//! - `reload`, `kubernetes`: the one writer of the `ArcSwap<Runtime>` and its inputs;
//! - `runtime`: `Spec` + discovery snapshot -> immutable `Runtime` (`Route` bundles a
//!   route's policies);
//! - `config`: file -> wire -> `Spec`, calling each section's builder;
//! - features `access_log`, `router`, `actions`, `auth`, `ratelimit`, `cache`, `upstream`, `edge`,
//!   the edge policies `ip_rules`, `cors`, `apikey`, `forward_auth`, `compression`, and
//!   `telemetry` (tracing): each owns
//!   its spec types, compile step and request-phase function, and imports no other
//!   feature;
//! - bottom: `alloc` (the global allocator), `diag`, `units`, `metrics`, `pattern`, `http_head`, `client_ip`, `redact`.

// Bottom: shared pieces that import nothing above them.
pub mod alloc;
pub mod client_ip;
pub mod diag;
pub mod http_head;
pub mod metrics;
pub mod pattern;
pub mod redact;
pub mod units;

// Features.
pub mod access_log;
pub mod actions;
pub mod apikey;
pub mod auth;
pub mod cache;
pub mod compression;
pub mod cors;
pub mod edge;
pub mod forward_auth;
pub mod grpc;
pub mod ip_rules;
pub mod ratelimit;
pub mod router;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod websocket;

// Config, runtime, the writer and its inputs.
pub mod config;
pub mod kubernetes;
pub mod reload;
pub mod runtime;

// Request phases, then the process.
pub mod admin;
pub mod explain;
pub mod listener;
pub mod proxy;
pub mod server;
