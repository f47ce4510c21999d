//! Sample Axum services that sit behind the gateway. `echo` is the smallest of them: it
//! answers every request with what it received, which makes the gateway's rewrites,
//! header operations and load balancing visible from the outside.

pub mod echo;
