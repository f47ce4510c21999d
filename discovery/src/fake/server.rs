//! The fake API server's HTTP side: one hyper HTTP/1.1 connection per client,
//! fault injection before routing, REST routing by path, and watch streams fed
//! from the store's history.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::resources::{self, RESOURCES, Resource};
use super::store::{Event, EventType, Key, WriteError};
use super::table::{self, Include};
use super::{Fault, Shared};
use crate::selector::{FieldSelector, LabelSelector};

type Body = BoxBody<Bytes, std::io::Error>;

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

// ---------------------------------------------------------------- responses

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn ok(value: &Value) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// A `Status` object as the API server returns for every failure.
fn status_object(code: u16, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason_for(code),
        "code": code,
    });
    if let (Some(details), Some(map)) = (details, status.as_object_mut()) {
        map.insert("details".into(), details);
    }
    status
}

fn status(code: u16, message: &str, details: Option<Value>) -> Response<Body> {
    let http_code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(http_code, &status_object(code, message, details))
}

fn not_found_path() -> Response<Body> {
    status(
        404,
        "the server could not find the requested resource",
        None,
    )
}

fn not_found(resource: &Resource, name: &str) -> Response<Body> {
    status(
        404,
        &format!("{} \"{name}\" not found", resource.qualified()),
        Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
    )
}

fn bad_request(message: &str) -> Response<Body> {
    status(400, message, None)
}

/// A request refused before any work: the HTTP code and the Status message.
struct Reject(u16, String);

impl Reject {
    fn bad(message: impl Into<String>) -> Self {
        Self(400, message.into())
    }

    fn respond(self) -> Response<Body> {
        status(self.0, &self.1, None)
    }
}

fn injected_status(code: u16, req: &Request<Incoming>) -> Response<Body> {
    let message = match code {
        403 => format!(
            "forbidden: User \"system:serviceaccount:fake:fake\" cannot {} {}",
            req.method(),
            req.uri().path()
        ),
        429 => "Too many requests, please try again later.".to_owned(),
        _ => format!("injected failure {code} for {}", req.uri().path()),
    };
    let details = (code == 429).then(|| json!({"retryAfterSeconds": 1}));
    let mut response = status(code, &message, details);
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

fn expired_status(message: &str) -> Value {
    status_object(410, message, None)
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

/// What a resource path names.
struct Target {
    resource_index: usize,
    /// `None`: all namespaces (or a cluster-scoped resource).
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[String]) -> Option<Target> {
    let find = |plural: &str| {
        let r = resources::by_path(group, version, plural)?;
        RESOURCES.iter().position(|x| std::ptr::eq(x, r))
    };
    let strs: Vec<&str> = rest.iter().map(String::as_str).collect();
    let (index, namespace, name) = match strs.as_slice() {
        [plural] => (find(plural)?, None, None),
        ["namespaces", ns, plural] => (find(plural)?, Some(ns.to_string()), None),
        ["namespaces", ns, plural, name] => {
            (find(plural)?, Some(ns.to_string()), Some(name.to_string()))
        }
        [plural, name] => (find(plural)?, None, Some(name.to_string())),
        _ => return None,
    };
    let namespaced = RESOURCES[index].namespaced;
    // A namespaced object needs its namespace; a cluster-scoped one has none.
    if (namespaced && name.is_some() && namespace.is_none()) || (!namespaced && namespace.is_some())
    {
        return None;
    }
    Some(Target {
        resource_index: index,
        namespace,
        name,
    })
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
        (&Method::PATCH, Some(name)) => {
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let strategic = content_type.starts_with("application/strategic-merge-patch+json");
            if !content_type.starts_with("application/merge-patch+json") && !strategic {
                return unsupported_patch(&content_type);
            }
            let patch = match read_json(req).await {
                Ok(patch) => patch,
                Err(r) => return r.respond(),
            };
            // A strategic merge patch equals a merge patch when the kind's lists are all
            // atomic (EndpointSlice's are) and it carries no `$` directives; anything
            // else would be applied wrongly, so it is refused.
            if strategic && (resource.kind != "EndpointSlice" || has_directive(&patch)) {
                return unsupported_patch(&content_type);
            }
            merge_patch(&shared, &target, name, &patch, &query)
        }
        (&Method::DELETE, Some(name)) => delete(&shared, &target, name, &query),
        _ => status(
            405,
            &format!("{method} is not supported on {}", resource.qualified()),
            None,
        ),
    }
}

fn unsupported_patch(content_type: &str) -> Response<Body> {
    status(
        415,
        &format!(
            "the fake API server applies application/merge-patch+json (and strategic merge patches of EndpointSlices), not {content_type:?}"
        ),
        None,
    )
}

fn has_directive(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.starts_with('$') || has_directive(v)),
        Value::Array(items) => items.iter().any(has_directive),
        _ => false,
    }
}

fn key(target: &Target, name: &str) -> Key {
    Key {
        resource: target.resource_index,
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.to_owned(),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Reject> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| Reject::bad(format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Reject::bad(format!("the body is not JSON: {e}")))
}

// ---------------------------------------------------------------- reads

fn selectors(query: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), Reject> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| Reject::bad(e.to_string()))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| Reject::bad(e.to_string()))?;
    Ok((labels, fields))
}

fn in_scope(key: &Key, namespace: &Option<String>) -> bool {
    namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
}

/// List items carry no apiVersion/kind: the list names them once, as the API does.
fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    item
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn encode_continue(rv: u64, last: &Key) -> String {
    BASE64.encode(json!({"rv": rv, "ns": last.namespace, "name": last.name}).to_string())
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    let bytes = BASE64.decode(token).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        value.get("rv")?.as_u64()?,
        value.get("ns")?.as_str()?.to_owned(),
        value.get("name")?.as_str()?.to_owned(),
    ))
}

fn list(
    shared: &Shared,
    target: &Target,
    query: &HashMap<String, String>,
    as_table: Option<Include>,
) -> Response<Body> {
    let resource = &RESOURCES[target.resource_index];
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r.respond(),
    };
    let limit = match query.get("limit").map(|l| l.parse::<i64>()) {
        None => None,
        Some(Ok(n)) if n > 0 => usize::try_from(n).ok(),
        Some(Ok(_)) => None,
        Some(Err(_)) => return bad_request("limit must be an integer"),
    };
    let continuation = match query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => match decode_continue(token) {
            Some(c) => Some(c),
            None => {
                return bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                );
            }
        },
    };
    let rv_match = query
        .get("resourceVersionMatch")
        .map(String::as_str)
        .filter(|m| !m.is_empty());
    let rv_given = query.get("resourceVersion").is_some_and(|v| !v.is_empty());
    match rv_match {
        Some(_) if !rv_given => {
            return status(
                422,
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                None,
            );
        }
        Some("Exact" | "NotOlderThan") | None => {}
        Some(other) => {
            return status(
                422,
                &format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                ),
                None,
            );
        }
    }
    let exact = match (rv_match, query.get("resourceVersion")) {
        (Some("Exact"), Some(rv)) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return bad_request(&format!("invalid resource version {rv:?}")),
        },
        _ => None,
    };
    let state = shared.lock();
    // Pages after the first are served at the first page's version, so a paginated
    // list is one consistent snapshot (or 410 once that version is compacted).
    let rv = continuation
        .as_ref()
        .map(|c| c.0)
        .or(exact)
        .unwrap_or_else(|| state.store.rv());
    let Some(objects) = state.store.objects_at(target.resource_index, rv) else {
        drop(state);
        let message = if continuation.is_some() {
            CONTINUE_EXPIRED.to_owned()
        } else {
            format!("too old resource version: {rv}")
        };
        return json_response(StatusCode::GONE, &expired_status(&message));
    };
    drop(state);
    let mut matching = objects
        .into_iter()
        .filter(|(k, v)| in_scope(k, &target.namespace) && labels.matches(v) && fields.matches(v));
    let mut matching: Vec<(Key, Arc<Value>)> = match &continuation {
        Some((_, ns, name)) => matching
            .by_ref()
            .filter(|(k, _)| (&k.namespace, &k.name) > (ns, name))
            .collect(),
        None => matching.collect(),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit
        && matching.len() > limit
    {
        let remaining = matching.len() - limit;
        matching.truncate(limit);
        if let (Some((last, _)), Some(meta)) = (matching.last(), metadata.as_object_mut()) {
            meta.insert("continue".into(), json!(encode_continue(rv, last)));
            meta.insert("remainingItemCount".into(), json!(remaining));
        }
    }
    if let Some(include) = as_table {
        let objects = matching.iter().map(|(_, v)| v.as_ref());
        return ok(&table::table(resource, objects, metadata, include));
    }
    let items: Vec<Value> = matching.iter().map(|(_, v)| list_item(v)).collect();
    ok(&json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

// ---------------------------------------------------------------- writes

fn dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|v| v == "All")
}

fn write_error(resource: &Resource, name: &str, error: WriteError) -> Response<Body> {
    let details = Some(json!({"name": name, "group": resource.group, "kind": resource.plural}));
    match error {
        WriteError::AlreadyExists => already_exists(resource, name),
        WriteError::NotFound => not_found(resource, name),
        WriteError::Conflict => status(
            409,
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource.qualified()
            ),
            details,
        ),
    }
}

/// Checks and completes an object sent for `target`: kind and apiVersion filled in
/// or checked, the namespace taken from the path.
fn prepare(target: &Target, mut object: Value) -> Result<Value, Reject> {
    let resource = &RESOURCES[target.resource_index];
    let Some(map) = object.as_object_mut() else {
        return Err(Reject::bad("the body must be a JSON object"));
    };
    for (field, want) in [
        ("apiVersion", resource.api_version()),
        ("kind", resource.kind.to_owned()),
    ] {
        match map.get(field).and_then(Value::as_str) {
            None => {
                map.insert(field.into(), json!(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(Reject::bad(format!(
                    "the {field} {got:?} does not match the path ({want})"
                )));
            }
        }
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| Reject::bad("metadata must be an object"))?;
    if let Some(ns) = &target.namespace {
        match meta.get("namespace").and_then(Value::as_str) {
            Some(got) if got != ns => {
                return Err(Reject::bad(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        }
    }
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
            let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_owned();
            let name = format!("{prefix}{suffix}");
            meta.insert("name".into(), json!(name));
        } else {
            return Err(Reject(
                422,
                format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    resource.kind
                ),
            ));
        }
    }
    Ok(object)
}

fn name_of(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn create(
    shared: &Shared,
    target: &Target,
    body: Value,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let resource = &RESOURCES[target.resource_index];
    let object = match prepare(target, body) {
        Ok(o) => o,
        Err(r) => return r.respond(),
    };
    let name = name_of(&object);
    let key = key(target, &name);
    if dry_run(query) {
        return if shared.lock().store.get(&key).is_some() {
            already_exists(resource, &name)
        } else {
            json_response(StatusCode::CREATED, &object)
        };
    }
    let result = shared.lock().store.write(key, object, true, false);
    shared.notify();
    match result {
        Ok((_, stored)) => json_response(StatusCode::CREATED, &stored),
        Err(WriteError::AlreadyExists) => already_exists(resource, &name),
        Err(e) => write_error(resource, &name, e),
    }
}

fn already_exists(resource: &Resource, name: &str) -> Response<Body> {
    let mut body = status_object(
        409,
        &format!("{} \"{name}\" already exists", resource.qualified()),
        Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
    );
    body["reason"] = json!("AlreadyExists");
    json_response(StatusCode::CONFLICT, &body)
}

fn replace(
    shared: &Shared,
    target: &Target,
    name: &str,
    body: Value,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let resource = &RESOURCES[target.resource_index];
    let object = match prepare(target, body) {
        Ok(o) => o,
        Err(r) => return r.respond(),
    };
    if name_of(&object) != name {
        return bad_request("the name of the object does not match the name on the URL");
    }
    let key = key(target, name);
    if dry_run(query) {
        return match shared.lock().store.get(&key) {
            Some(_) => ok(&object),
            None => not_found(resource, name),
        };
    }
    let result = shared.lock().store.write(key, object, false, true);
    shared.notify();
    match result {
        Ok((_, stored)) => ok(&stored),
        Err(e) => write_error(resource, name, e),
    }
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                apply_merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn merge_patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    patch: &Value,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let resource = &RESOURCES[target.resource_index];
    let key = key(target, name);
    let Some(current) = shared.lock().store.get(&key).cloned() else {
        return not_found(resource, name);
    };
    let mut object = (*current).clone();
    apply_merge_patch(&mut object, patch);
    if name_of(&object) != name {
        return bad_request("a patch cannot change metadata.name");
    }
    if dry_run(query) {
        return ok(&object);
    }
    let result = shared.lock().store.write(key, object, false, true);
    shared.notify();
    match result {
        Ok((_, stored)) => ok(&stored),
        Err(e) => write_error(resource, name, e),
    }
}

fn delete(
    shared: &Shared,
    target: &Target,
    name: &str,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let resource = &RESOURCES[target.resource_index];
    let key = key(target, name);
    if dry_run(query) {
        return match shared.lock().store.get(&key) {
            Some(object) => ok(object),
            None => not_found(resource, name),
        };
    }
    let deleted = shared.lock().store.delete(&key);
    shared.notify();
    match deleted {
        Some(object) => ok(&object),
        None => not_found(resource, name),
    }
}

// ---------------------------------------------------------------- watch

/// Where a watch starts.
enum Start {
    /// The current state as synthetic ADDED events, then changes; with
    /// `sendInitialEvents` a bookmark marks the end of the state.
    Current { end_bookmark: bool },
    /// Changes after this version.
    After(u64),
}

struct WatchSpec {
    resource_index: usize,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    timeout: Option<Duration>,
    start: Start,
    /// Events carry one-row Tables instead of objects (`kubectl get -w`).
    as_table: Option<Include>,
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

fn start_watch(
    shared: Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
    as_table: Option<Include>,
) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r.respond(),
    };
    let flag = |name: &str| matches!(query.get(name).map(String::as_str), Some("1" | "true"));
    let bookmarks = flag("allowWatchBookmarks");
    let timeout = match query.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None => None,
        // 0 means the server's default, as unset does.
        Some(Ok(0)) => None,
        Some(Ok(secs)) => Some(Duration::from_secs(secs)),
        Some(Err(_)) => return bad_request("timeoutSeconds must be a non-negative integer"),
    };
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let rv_match = query.get("resourceVersionMatch").map(String::as_str);
    let start = if flag("sendInitialEvents") {
        if rv_match != Some("NotOlderThan") {
            return status(
                422,
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                None,
            );
        }
        if !bookmarks {
            return status(
                422,
                "allowWatchBookmarks: Required value: allowWatchBookmarks is required when sendInitialEvents is set",
                None,
            );
        }
        Start::Current { end_bookmark: true }
    } else if rv_match.is_some_and(|m| !m.is_empty()) {
        return status(
            422,
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            None,
        );
    } else if rv.is_empty() || rv == "0" {
        Start::Current {
            end_bookmark: false,
        }
    } else {
        match rv.parse::<u64>() {
            Ok(rv) => Start::After(rv),
            Err(_) => return bad_request(&format!("invalid resource version {rv:?}")),
        }
    };
    let spec = WatchSpec {
        resource_index: target.resource_index,
        namespace: target.namespace.clone(),
        labels,
        fields,
        bookmarks,
        timeout,
        start,
        as_table,
    };
    let (tx, rx) = mpsc::channel::<Chunk>(256);
    tokio::spawn(run_watch(shared, spec, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(resource: &Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": metadata}),
    )
}

impl WatchSpec {
    /// One watch event line for `object`, as this watch renders objects.
    fn event(&self, kind: &str, object: &Value) -> Bytes {
        match self.as_table {
            None => line(kind, object),
            Some(include) => {
                let resource = &RESOURCES[self.resource_index];
                let metadata = json!({"resourceVersion": object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or_default()});
                line(kind, &table::table(resource, [object], metadata, include))
            }
        }
    }

    fn selects(&self, key: &Key, object: &Value) -> bool {
        key.resource == self.resource_index
            && in_scope(key, &self.namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event as this watch sees it: an object entering the selector is ADDED,
    /// one leaving it is DELETED (what the API server's watch cache sends).
    fn translate(&self, event: &Event) -> Option<Bytes> {
        if event.key.resource != self.resource_index || !in_scope(&event.key, &self.namespace) {
            return None;
        }
        let now = self.selects(&event.key, &event.object);
        let before = event
            .prev
            .as_ref()
            .is_some_and(|p| self.selects(&event.key, p));
        let kind = match (event.kind, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Deleted, true, _) => EventType::Deleted,
            _ => return None,
        };
        Some(self.event(kind.as_str(), &event.object))
    }
}

/// Counts an open watch for as long as it lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> Self {
        shared.lock().open_watches += 1;
        shared.notify();
        Self(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open_watches = state.open_watches.saturating_sub(1);
        drop(state);
        self.0.notify();
    }
}

/// What one pass over the shared state tells the watch to do.
enum Step {
    Send(Vec<Bytes>),
    /// Send these, then end the stream cleanly.
    Finish(Vec<Bytes>),
    /// Cut the connection mid-stream.
    Cut,
    /// Hung: send nothing, not even bookmarks, until the fault changes.
    Silent,
}

async fn send_all(tx: &mpsc::Sender<Chunk>, chunks: Vec<Bytes>) -> bool {
    for chunk in chunks {
        if tx.send(Ok(Frame::data(chunk))).await.is_err() {
            return false;
        }
    }
    true
}

async fn run_watch(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Chunk>) {
    let _open = OpenWatch::new(shared.clone());
    let resource = &RESOURCES[spec.resource_index];
    let mut changes = shared.changes.subscribe();
    let mut expired = false;
    let (mut cursor, first, disconnects, expiries, interval) = {
        let state = shared.lock();
        let mut first = Vec::new();
        let cursor = match spec.start {
            Start::Current { end_bookmark } => {
                let rv = state.store.rv();
                for (key, object) in state
                    .store
                    .objects_at(spec.resource_index, rv)
                    .unwrap_or_default()
                {
                    if spec.selects(&key, &object) {
                        first.push(spec.event("ADDED", &object));
                    }
                }
                if end_bookmark {
                    first.push(bookmark(resource, rv, true));
                }
                rv
            }
            Start::After(rv) => {
                if rv < state.store.compacted() {
                    expired = true;
                    first.push(line(
                        "ERROR",
                        &expired_status(&format!(
                            "too old resource version: {rv} ({})",
                            state.store.compacted()
                        )),
                    ));
                }
                rv
            }
        };
        (
            cursor,
            first,
            state.disconnects,
            state.expiries,
            state.bookmark_interval,
        )
    };
    // An expired start version gets the ERROR event and the stream ends.
    if !send_all(&tx, first).await || expired {
        return;
    }
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut next_bookmark = Instant::now() + interval;
    loop {
        let step = {
            let state = shared.lock();
            if state.closed || state.disconnects != disconnects {
                Step::Finish(Vec::new())
            } else if state.fault == Fault::DropConnections {
                Step::Cut
            } else if state.fault == Fault::Hang {
                Step::Silent
            } else if state.expiries != expiries {
                Step::Finish(vec![line(
                    "ERROR",
                    &expired_status(&format!(
                        "too old resource version: {cursor} ({})",
                        state.store.compacted()
                    )),
                )])
            } else {
                match state.store.events_after(cursor) {
                    None => Step::Finish(vec![line(
                        "ERROR",
                        &expired_status(&format!(
                            "too old resource version: {cursor} ({})",
                            state.store.compacted()
                        )),
                    )]),
                    Some(events) => {
                        let mut out: Vec<Bytes> =
                            events.iter().filter_map(|e| spec.translate(e)).collect();
                        cursor = cursor.max(state.store.rv());
                        if spec.bookmarks && Instant::now() >= next_bookmark {
                            out.push(bookmark(resource, cursor, false));
                            next_bookmark = Instant::now() + state.bookmark_interval;
                        }
                        Step::Send(out)
                    }
                }
            }
        };
        let hung = match step {
            Step::Send(chunks) => {
                if !send_all(&tx, chunks).await {
                    return;
                }
                false
            }
            Step::Finish(chunks) => {
                let _ = send_all(&tx, chunks).await;
                return;
            }
            Step::Cut => {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection dropped by the injected fault",
                    )))
                    .await;
                return;
            }
            Step::Silent => true,
        };
        if !hung && deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        // Wake on a change, the next bookmark, the timeout, or the client leaving.
        let mut wake = if spec.bookmarks && !hung {
            next_bookmark
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        if let (Some(d), false) = (deadline, hung) {
            wake = wake.min(d);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(wake) => {}
            () = tx.closed() => return,
        }
    }
}
