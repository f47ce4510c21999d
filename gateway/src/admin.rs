//! Owns the admin listener: the status page (`GET /`, `GET /admin/status`: `status`,
//! with its history in `history`), health, readiness, Prometheus metrics, read-only views
//! of the running config, compiled routes and API consumers (never their keys), cache
//! purges (`POST /admin/cache/purge`), and confirming a change held by the embedded
//! discovery watcher's mass-deletion guard. Bound to 127.0.0.1 by default. Every request
//! passes one gate first ([`auth::AdminAuth::check`]: a bearer token on everything but
//! the probes); views never show secrets (header values routes set, URL credentials:
//! see `crate::redact`).

mod auth;
mod history;
mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{Value, json};

use crate::actions::PathRewrite;
use crate::metrics::Metrics;
use crate::reload::RuntimeStore;
use crate::router::RouteMatch;
use crate::runtime::{Route, RouteAction};
use crate::upstream::{HashOn, LoadBalancing, UpstreamPool};
pub use auth::{AdminAuth, MIN_TOKEN_BYTES};

#[derive(Debug)]
pub struct AdminApp {
    store: Arc<RuntimeStore>,
    metrics: Arc<Metrics>,
    /// Set when shutdown starts, so `/readyz` fails and load balancers stop sending.
    draining: Arc<AtomicBool>,
    /// The running discovery source, when the config has one.
    discovery: Option<crate::kubernetes::DiscoveryControl>,
    /// Checked before any handler runs.
    auth: AdminAuth,
    /// Recent per-route rates and latencies for the status page.
    history: history::History,
}

impl AdminApp {
    pub fn new(
        store: Arc<RuntimeStore>,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
        auth: AdminAuth,
    ) -> Self {
        let history = history::History::start(Arc::clone(&metrics));
        Self {
            store,
            metrics,
            draining,
            discovery: None,
            auth,
            history,
        }
    }

    /// Show the discovery source's health and allow confirming a held mass deletion.
    pub fn with_discovery(mut self, control: crate::kubernetes::DiscoveryControl) -> Self {
        self.discovery = Some(control);
        self
    }

    /// `POST /admin/discovery/confirm-mass-deletion`: the one admin action, for the
    /// embedded watcher's mass-deletion guard (the control plane has its own).
    fn confirm_mass_deletion(&self) -> Response<Vec<u8>> {
        let Some(control) = &self.discovery else {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"code": "no_discovery", "message": "this gateway has no discovery section"}}),
            );
        };
        match control.confirm_mass_deletion() {
            Ok(held) => json_response(StatusCode::OK, &json!({"confirmed": held})),
            Err(e) => json_response(
                StatusCode::CONFLICT,
                &json!({"error": {"code": "confirm_on_control_plane", "message": e.to_string()}}),
            ),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = resp.body().len().to_string().parse() {
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    resp
}

/// `GET /`: the embedded status page. Its script and style are inline (no network, no
/// other file), so the policy allows exactly those and calls to this origin.
fn status_page() -> Response<Vec<u8>> {
    let mut resp = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        status::PAGE.as_bytes().to_vec(),
    );
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    respond(status, "application/json", body)
}

/// One pool and the live load state of its endpoints, for `/admin/upstreams`.
pub fn describe_pool(pool: &UpstreamPool) -> Value {
    let hash_on = match &pool.load_balancing {
        LoadBalancing::ConsistentHash { on, bounded_load } => Some(json!({
            "on": match on {
                HashOn::Header(h) => format!("header:{h}"),
                HashOn::Cookie(c) => format!("cookie:{c}"),
                HashOn::ClientIp => "client_ip".to_owned(),
                HashOn::Path => "path".to_owned(),
            },
            "bounded_load": bounded_load,
        })),
        _ => None,
    };
    let now = crate::upstream::state::now_ns();
    json!({
        "name": &*pool.name,
        "source": crate::upstream::kubernetes::describe_source(pool),
        "load_balancing": pool.load_balancing.as_str(),
        "consistent_hash": hash_on,
        "in_flight": pool.state.in_flight(),
        "limits": {"max_in_flight": pool.limits.max_in_flight, "max_pending": pool.limits.max_pending},
        "active_health_check": pool.health_check.as_ref().map(|h| format!("{:?} every {:?}", h.probe, h.interval)),
        "outlier_detection": pool.outlier_detection.is_some(),
        "panic_threshold_percent": pool.panic_threshold,
        "endpoints": pool.endpoints.iter().map(|e| json!({
            "address": &*e.address,
            "resolved": e.socket.to_string(),
            "weight": e.weight,
            "healthy": e.state.healthy(),
            "ejected": e.state.is_ejected(now),
            "ejections": e.state.ejections(),
            "draining": e.draining,
            "in_flight": e.state.outstanding(),
            "selected_total": e.state.selected(),
            "latency_ewma_ms": e.state.ewma_ns() / 1e6,
        })).collect::<Vec<_>>(),
    })
}

/// A JSON description of one compiled route, for `/admin/routes` and `explain`.
pub fn describe_route(route: &Route, m: &RouteMatch) -> Value {
    let action = match &route.action {
        RouteAction::Proxy(b) => json!({
            "type": "proxy",
            "upstreams": b.targets.iter().map(|(p, w)| json!({
                "name": &*p.name,
                "weight": w,
                "load_balancing": p.load_balancing.as_str(),
                "endpoints": p.endpoints.iter().map(|e| json!({"address": &*e.address, "resolved": e.socket.to_string(), "weight": e.weight})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        RouteAction::Redirect(r) => json!({
            "type": "redirect",
            "status": r.status.as_u16(),
            "scheme": r.scheme.map(|s| s.as_str()),
            "host": r.host.as_deref(),
            "port": r.port,
            "path": r.path.as_deref(),
            "strip_query": r.strip_query,
        }),
        RouteAction::Direct(d) => json!({
            "type": "direct_response",
            "status": d.status.as_u16(),
            "body_bytes": d.body.len(),
        }),
    };
    let rewrite = route.rewrite.as_ref().map(PathRewrite::describe);
    // Values routes set may be credentials (an upstream API key): names only.
    let ops = |o: &crate::actions::HeaderOps| {
        json!({
            "set": o.set.iter().map(|(k, _)| (k.to_string(), Value::from(crate::redact::REDACTED))).collect::<serde_json::Map<_, _>>(),
            "add": o.add.iter().map(|(k, _)| (k.to_string(), Value::from(crate::redact::REDACTED))).collect::<serde_json::Map<_, _>>(),
            "remove": o.remove.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        })
    };
    json!({
        "id": &*route.id,
        "index": route.index,
        "match": {
            "hosts": m.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "path": {"kind": m.path.kind(), "value": m.path.source()},
            "methods": m.methods.as_ref().map(|s| s.names()),
            "headers": m.headers.iter().map(|h| h.describe()).collect::<Vec<_>>(),
            "query": m.query.iter().map(|q| q.describe()).collect::<Vec<_>>(),
        },
        "rewrite": rewrite,
        "request_headers": ops(&route.request_headers),
        "response_headers": ops(&route.response_headers),
        "timeout_ms": route.timeout.map(|t| t.as_millis() as u64),
        "deadline_ms": route.deadline.map(|t| t.as_millis() as u64),
        "retry": {
            "attempts": route.retry.attempts,
            "non_idempotent": route.retry.non_idempotent,
        },
        "rate_limits": route.rate_limits.iter().map(|l| l.spec.name.as_str()).collect::<Vec<_>>(),
        "jwt": route.jwt.as_ref().map(crate::auth::RouteJwt::describe),
        "cache": route.cache.as_ref().map(|c| json!({
            "default_ttl_s": c.default_ttl.map(|t| t.as_secs()),
            "max_object_size": c.max_object_size,
            "key": {
                "query": match &c.key.query {
                    crate::cache::QueryKey::All => json!("all"),
                    crate::cache::QueryKey::None => json!("none"),
                    crate::cache::QueryKey::Names(n) => json!(n),
                },
                "headers": c.key.headers.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
                "claims": &c.key.claims,
            },
            "set_cookie": format!("{:?}", c.set_cookie).to_lowercase(),
        })),
        "action": action,
        "policies": describe_policies(route),
    })
}

/// A route's edge policies (never key material: consumers are counted, not listed).
fn describe_policies(route: &Route) -> Value {
    let p = &route.policies;
    json!({
        "ip": p.ip.as_ref().map(|r| r.describe()),
        "cors": match &p.cors {
            crate::cors::RouteCors::Inherit => json!("listener default"),
            crate::cors::RouteCors::Off => json!(false),
            crate::cors::RouteCors::On(c) => c.describe(),
        },
        "compression": match &p.compression {
            crate::compression::RouteCompression::Inherit => json!("listener default"),
            crate::compression::RouteCompression::Off => json!(false),
            crate::compression::RouteCompression::On(c) => c.describe(),
        },
        "api_key": p.api_key.as_ref().map(|k| k.describe()),
        "any_of": route.jwt.is_some() && p.api_key.is_some(),
        "forward_auth": p.forward_auth.as_ref().map(|f| f.describe()),
    })
}

/// The `/readyz` answer while a JWT provider waits for its first JWKS (within its
/// start timeout): requests on its routes would only get 503s.
fn jwks_waiting(rt: &crate::runtime::Runtime) -> Option<Value> {
    let waiting = rt.jwt.not_ready();
    (!waiting.is_empty()).then(|| {
        json!({
            "status": "starting",
            "reason": "waiting for the first JWKS fetch of JWT providers",
            "jwt_providers": waiting,
        })
    })
}

impl AdminApp {
    fn handle(&self, method: &http::Method, path: &str) -> Response<Vec<u8>> {
        if method == http::Method::POST && path == "/admin/discovery/confirm-mass-deletion" {
            return self.confirm_mass_deletion();
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": {"code": "method_not_allowed", "message": "use GET (POST only for /admin/cache/purge)"}}),
            );
        }
        match path {
            "/" => status_page(),
            "/admin/status" => json_response(
                StatusCode::OK,
                &status::describe(&self.store, &self.history, self.discovery.as_ref()),
            ),
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => {
                if self.draining.load(Ordering::Relaxed) {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "draining"}),
                    )
                } else if let Some(waiting) = jwks_waiting(&self.store.load()) {
                    json_response(StatusCode::SERVICE_UNAVAILABLE, &waiting)
                } else {
                    let rt = self.store.load();
                    if rt.discovery.waiting {
                        return json_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &json!({
                                "status": "not_ready",
                                "reason": "waiting_for_discovery",
                                "message": "a route uses a kubernetes upstream and the first discovery snapshot has not arrived",
                                "config_version": rt.version,
                            }),
                        );
                    }
                    json_response(
                        StatusCode::OK,
                        &json!({"status": "ready", "config_version": rt.version}),
                    )
                }
            }
            "/metrics" => {
                let rt = self.store.load();
                crate::upstream::export_metrics(&self.metrics, rt.upstreams.values());
                rt.jwt.export_metrics(&self.metrics);
                rt.discovery.export_metrics(&self.metrics);
                crate::cache::stats::refresh(&self.metrics.cache);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            "/admin/config" => {
                let rt = self.store.load();
                let status = self.store.status();
                json_response(
                    StatusCode::OK,
                    &json!({
                        "version": rt.version,
                        "source": status.source,
                        "compiled_at": humantime::format_rfc3339_millis(rt.compiled_at).to_string(),
                        "routes": rt.routes.len(),
                        "upstreams": rt.upstreams.keys().collect::<Vec<_>>(),
                        "last_reload": {
                            "attempted_at": status.last_attempt,
                            "succeeded_at": status.last_success,
                            "ok": status.last_errors.is_empty(),
                            "errors": status.last_errors,
                            "error_text": status.last_errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        },
                        "restart_required": status.restart_required,
                        "tls": rt.tls.iter().map(|(listener, t)| (listener.clone(), t.spec.certificates.iter().map(|c| json!({
                            "cert_file": c.cert_file,
                            "key_file": c.key_file,
                            "names": c.names,
                            "not_after": c.not_after,
                        })).collect::<Vec<_>>())).collect::<std::collections::BTreeMap<_, _>>(),
                    }),
                )
            }
            "/admin/upstreams" => {
                let rt = self.store.load();
                json_response(
                    StatusCode::OK,
                    &json!({
                        "version": rt.version,
                        "discovery": crate::kubernetes::describe(&rt.discovery, self.discovery.as_ref()),
                        "upstreams": rt.upstreams.values().map(|p| {
                            let mut v = describe_pool(p);
                            if p.kubernetes.is_some() {
                                v["source"]["snapshot_version"] = json!(rt.discovery.snapshot_version);
                            }
                            v
                        }).collect::<Vec<_>>(),
                    }),
                )
            }
            "/admin/jwt" => {
                let rt = self.store.load();
                json_response(
                    StatusCode::OK,
                    &json!({"version": rt.version, "providers": rt.jwt.describe()}),
                )
            }
            "/admin/consumers" => {
                let rt = self.store.load();
                json_response(
                    StatusCode::OK,
                    &json!({"version": rt.version, "consumers": rt.policies.consumers.describe()}),
                )
            }
            "/admin/routes" => {
                let rt = self.store.load();
                json_response(
                    StatusCode::OK,
                    &json!({
                        "version": rt.version,
                        "routes": rt.routes.iter().zip(rt.table.matchers()).map(|(r, m)| describe_route(r, m)).collect::<Vec<_>>(),
                    }),
                )
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"code": "not_found", "message": "try / (the status page), /healthz, /readyz, /metrics, /admin/status, /admin/config, /admin/routes, /admin/upstreams, /admin/jwt, /admin/consumers, /admin/cache or POST /admin/cache/purge"}}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        // The one gate: no handler (present or future) runs before it.
        if let Err(denied) = self.auth.check(req) {
            return auth::unauthorized(denied);
        }
        let (method, path) = (req.method.clone(), req.uri.path().to_owned());
        match path.as_str() {
            "/admin/cache/purge" => self.purge(session, &method).await,
            "/admin/cache" if method == http::Method::GET => {
                crate::cache::stats::refresh(&self.metrics.cache);
                json_response(StatusCode::OK, &crate::cache::describe())
            }
            _ => self.handle(&method, &path),
        }
    }
}

/// Largest purge request body read.
const MAX_PURGE_BODY: usize = 64 * 1024;

impl AdminApp {
    /// `POST /admin/cache/purge` with `{"url"|"prefix"|"tag": "..."}` or `{"all": true}`;
    /// answers `{"purged": N}`.
    async fn purge(&self, session: &mut ServerSession, method: &http::Method) -> Response<Vec<u8>> {
        let error = |status: StatusCode, code: &str, message: String| {
            json_response(
                status,
                &json!({"error": {"code": code, "message": message}}),
            )
        };
        if method != http::Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "purge with POST and a JSON body".into(),
            );
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_PURGE_BODY {
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            format!("purge bodies are at most {MAX_PURGE_BODY} bytes"),
                        );
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        format!("could not read the body: {e}"),
                    );
                }
            }
        }
        match crate::cache::parse_purge(&body).and_then(normalize_purge) {
            Ok(what) => {
                let purged = crate::cache::purge(&what);
                self.metrics.cache.purged.inc_by(purged as u64);
                tracing::info!(?what, purged, "cache purge");
                json_response(StatusCode::OK, &json!({"purged": purged}))
            }
            Err(message) => error(StatusCode::BAD_REQUEST, "bad_purge", message),
        }
    }
}

/// Purge by the same normalized path the cache keys on (`//x` and `/./x` are `/x`).
fn normalize_purge(what: crate::cache::Purge) -> Result<crate::cache::Purge, String> {
    use crate::cache::Purge;
    let normal = |p: &str| {
        crate::router::path::normalize(p)
            .map(|n| n.path.into_owned())
            .map_err(|e| format!("path {p:?}: {e}"))
    };
    Ok(match what {
        Purge::Url { host, path, query } => Purge::Url {
            host,
            path: normal(&path)?,
            query,
        },
        // A prefix keeps its trailing slash: "/api/" must not purge "/apix".
        Purge::Prefix(p) => Purge::Prefix(normal(&p)?),
        other => other,
    })
}
