//! The fake API server's HTTP side: one hyper HTTP/1.1 connection per client,
//! fault injection before routing, the discovery documents, and REST routing by
//! path and method to the handlers in `list`, `write` and `watch`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::list::list;
use super::request::{Target, key, parse_target, read_json};
use super::resources::{self, RESOURCES};
use super::responses::{Body, injected_status, not_found, not_found_path, ok, status};
use super::table::{self, Include};
use super::watch::start_watch;
use super::write::{create, delete, patch, replace};
use super::{Fault, Shared};

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by the injected fault")]
pub(crate) struct Dropped;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "fake API server: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            // Errors here are clients going away or injected drops: nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    shared.lock().requests.push((req.method().clone(), target));
    shared.notify();
    loop {
        // Subscribe before reading the fault so a change in between is not missed.
        let mut changes = shared.changes.subscribe();
        let fault = shared.lock().fault.clone();
        match fault {
            Fault::None => break,
            Fault::DropConnections => return Err(Dropped),
            Fault::Status(code) => return Ok(injected_status(code, &req)),
            Fault::Delay(delay) => {
                tokio::time::sleep(delay).await;
                break;
            }
            Fault::Hang => {
                if shared.lock().closed || changes.changed().await.is_err() {
                    return Err(Dropped);
                }
            }
        }
    }
    Ok(route(shared, req).await)
}

// ---------------------------------------------------------------- routing

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = req.method() == Method::GET;
    match segments.as_slice() {
        ["version"] if get => ok(&resources::version()),
        ["healthz" | "livez" | "readyz"] if get => {
            let mut r = Response::new(
                Full::new(Bytes::from_static(b"ok"))
                    .map_err(|never: Infallible| match never {})
                    .boxed(),
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain"),
            );
            r
        }
        ["api"] if get => ok(&resources::api_versions(&shared.addr.to_string())),
        ["api", "v1"] if get => resources::api_resource_list("", "v1")
            .map(|d| ok(&d))
            .unwrap_or_else(not_found_path),
        ["apis"] if get => ok(&resources::api_group_list()),
        ["apis", group] if get => resources::api_group(group)
            .map(|d| ok(&d))
            .unwrap_or_else(not_found_path),
        ["apis", group, version] if get => resources::api_resource_list(group, version)
            .map(|d| ok(&d))
            .unwrap_or_else(not_found_path),
        ["api", "v1", rest @ ..] if !rest.is_empty() => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            resource_request(shared, "", "v1", &rest, req, query).await
        }
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            let (group, version) = (group.to_string(), version.to_string());
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            resource_request(shared, &group, &version, &rest, req, query).await
        }
        _ => not_found_path(),
    }
}

async fn resource_request(
    shared: Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[String],
    req: Request<Incoming>,
    mut query: HashMap<String, String>,
) -> Response<Body> {
    // Legacy watch paths: /api/v1/watch/namespaces/NS/pods...
    let rest = match rest.split_first() {
        Some((first, tail)) if first == "watch" => {
            query.insert("watch".into(), "true".into());
            tail
        }
        _ => rest,
    };
    let Some(target) = parse_target(group, version, rest) else {
        return not_found_path();
    };
    let resource = &RESOURCES[target.resource_index];
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    let method = req.method().clone();
    // `kubectl get` asks for server-side printing; kube-rs never does.
    let as_table = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::wanted)
        .then(|| Include::parse(query.get("includeObject").map(String::as_str)));
    match (&method, &target.name) {
        (&Method::GET, None) if watch => start_watch(shared, &target, &query, as_table),
        (&Method::GET, Some(name)) if watch => {
            // Watching one object is a watch on its collection narrowed to its name.
            let mut query = query;
            let fields = match query.get("fieldSelector") {
                Some(f) if !f.is_empty() => format!("{f},metadata.name={name}"),
                _ => format!("metadata.name={name}"),
            };
            query.insert("fieldSelector".into(), fields);
            let target = Target {
                name: None,
                ..target
            };
            start_watch(shared, &target, &query, as_table)
        }
        (&Method::GET, None) => list(&shared, &target, &query, as_table),
        (&Method::GET, Some(name)) => {
            let key = key(&target, name);
            match shared.lock().store.get(&key) {
                Some(object) => ok(object),
                None => not_found(resource, name),
            }
        }
        (&Method::POST, None) => match read_json(req).await {
            Ok(body) => create(&shared, &target, body, &query),
            Err(r) => r.respond(),
        },
        (&Method::PUT, Some(name)) => match read_json(req).await {
            Ok(body) => replace(&shared, &target, name, body, &query),
            Err(r) => r.respond(),
        },
        (&Method::PATCH, Some(name)) => patch(&shared, &target, name, req, &query).await,
        (&Method::DELETE, Some(name)) => delete(&shared, &target, name, &query),
        _ => status(
            405,
            &format!("{method} is not supported on {}", resource.qualified()),
            None,
        ),
    }
}
