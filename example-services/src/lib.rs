//! Sample Axum services that sit behind the gateway, each with its own SQLite database:
//! `auth` (accounts, JWTs, OAuth2), `catalog` (products, the caching showcase), `users`
//! (profiles), `orders` (which publishes `order.created` events through an outbox) and
//! `notifications` (which consumes them). `events` is the messaging between them; `echo`
//! answers every request with what it received, which makes the gateway's rewrites,
//! header operations and load balancing visible. `authz` is a forward-auth check
//! endpoint (sessions, login redirects, path rules). `inventory` is a gRPC service
//! (tonic, h2c) with its client. `common` holds what they share.

pub mod auth;
pub mod authz;
pub mod catalog;
pub mod common;
pub mod echo;
pub mod events;
pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod stack;
pub mod users;
