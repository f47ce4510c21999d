//! Builds the protocol blocks of a route: `match.grpc` (a service and method become the
//! path `/package.Service/Method` plus a gRPC content type) and `websocket` (the idle
//! timeout of upgraded connections).

use std::time::Duration;

use super::{Errors, duration, wire};
use crate::router::matchers::{HeaderMatcher, PathPattern, ValueTest};
use crate::websocket::WebSocketSpec;

/// A gRPC call's content type, as a whole-value header regex.
const GRPC_CONTENT_TYPE: &str = "(?i)application/grpc([+;].*)?";

/// `match.grpc`: the path (exact for a method, the service's prefix otherwise) and
/// the content-type matcher that keeps other requests off the route.
pub(super) fn grpc_match(
    e: &mut Errors,
    path: &str,
    g: &wire::GrpcMatch,
) -> Option<(PathPattern, HeaderMatcher)> {
    let before = e.0.len();
    if !crate::grpc::service_name_ok(&g.service) {
        e.push(
            format!("{path}.service"),
            format!(
                "service {:?} must be a fully qualified protobuf name (package.Service: letters, digits, '_', dot-separated)",
                g.service
            ),
        );
    }
    if let Some(m) = &g.method
        && !crate::grpc::method_name_ok(m)
    {
        e.push(
            format!("{path}.method"),
            format!("method {m:?} must be a protobuf identifier (letters, digits, '_')"),
        );
    }
    if e.0.len() != before {
        return None;
    }
    let pattern = match &g.method {
        Some(m) => PathPattern::exact(&format!("/{}/{m}", g.service)),
        None => PathPattern::prefix(&format!("/{}", g.service)),
    };
    let pattern = e.take(path.to_owned(), pattern)?;
    let test = e.take(
        path.to_owned(),
        ValueTest::from_fields(None, Some(GRPC_CONTENT_TYPE), None),
    )?;
    Some((
        pattern,
        HeaderMatcher {
            name: http::header::CONTENT_TYPE,
            test,
        },
    ))
}

/// `websocket`: defaults when absent.
pub(super) fn websocket(e: &mut Errors, path: &str, w: Option<&wire::WebSocket>) -> WebSocketSpec {
    let mut spec = WebSocketSpec::default();
    if let Some(raw) = w.and_then(|w| w.idle_timeout.as_deref()) {
        let p = format!("{path}.idle_timeout");
        match e.take(p.clone(), duration(raw)) {
            Some(d) if d < Duration::from_secs(1) => {
                e.push(p, "idle_timeout must be at least 1s");
            }
            Some(d) => spec.idle_timeout = d,
            None => {}
        }
    }
    spec
}
