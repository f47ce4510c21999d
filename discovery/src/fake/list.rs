//! Collection reads: `list` with label and field selectors, `limit`/`continue`
//! pages served at the first page's resourceVersion (410 Expired once that version
//! is compacted), `resourceVersionMatch`, and server-side printing as a `Table`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::Shared;
use super::request::{Target, in_scope, selectors};
use super::resources::RESOURCES;
use super::responses::{Body, bad_request, expired_status, json_response, ok, status};
use super::store::Key;
use super::table::{self, Include};

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

pub(crate) fn list(
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
