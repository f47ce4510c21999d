//! Object writes: create (POST, with `generateName`), replace (PUT), JSON merge
//! patch (and the strategic merge patches that equal one), and delete, each with
//! `dryRun=All`; `prepare` checks and completes a sent object against its path,
//! and store refusals become the API server's `Status` answers.

use std::collections::HashMap;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::Shared;
use super::request::{Target, key, read_json};
use super::resources::{RESOURCES, Resource};
use super::responses::{
    Body, Reject, already_exists, bad_request, json_response, not_found, ok, status,
};
use super::store::WriteError;

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

pub(crate) fn create(
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

pub(crate) fn replace(
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

/// PATCH: JSON merge patches, and strategic merge patches only where they mean the
/// same thing; any other patch type is refused with 415.
pub(crate) async fn patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    req: Request<Incoming>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let resource = &RESOURCES[target.resource_index];
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
    merge_patch(shared, target, name, &patch, query)
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

pub(crate) fn delete(
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
