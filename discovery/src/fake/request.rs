//! What a resource request names and asks for, parsed once for every handler: the
//! [`Target`] a REST path names (kind, namespace, name), the store key of a named
//! object, the namespace scope, the label and field selectors of the query, and the
//! JSON body.

use std::collections::HashMap;

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::resources::{self, RESOURCES};
use super::responses::Reject;
use super::store::Key;
use crate::selector::{FieldSelector, LabelSelector};

/// What a resource path names.
pub(crate) struct Target {
    pub(crate) resource_index: usize,
    /// `None`: all namespaces (or a cluster-scoped resource).
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
}

pub(crate) fn parse_target(group: &str, version: &str, rest: &[String]) -> Option<Target> {
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

pub(crate) fn key(target: &Target, name: &str) -> Key {
    Key {
        resource: target.resource_index,
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.to_owned(),
    }
}

pub(crate) async fn read_json(req: Request<Incoming>) -> Result<Value, Reject> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| Reject::bad(format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Reject::bad(format!("the body is not JSON: {e}")))
}

pub(crate) fn selectors(
    query: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), Reject> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| Reject::bad(e.to_string()))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| Reject::bad(e.to_string()))?;
    Ok((labels, fields))
}

pub(crate) fn in_scope(key: &Key, namespace: &Option<String>) -> bool {
    namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
}
