//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with the columns the real
//! API server prints for EndpointSlices, Services and Endpoints, and Name/Age for the
//! other kinds. Ages are shortened as kubectl's `HumanDuration` does.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::resources::Resource;

/// Whether the client asked for a Table (it always also accepts plain JSON).
pub(crate) fn wanted(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && params.contains(&"v=v1")
    })
}

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

fn column(name: &str, kind: &str, format: &str, priority: u32, description: &str) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

fn columns(resource: &Resource) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace.",
    );
    let age = column(
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match resource.kind {
        "EndpointSlice" => vec![
            name,
            column(
                "AddressType",
                "string",
                "",
                0,
                "Type of address carried by this EndpointSlice.",
            ),
            column(
                "Ports",
                "string",
                "",
                0,
                "Port numbers offered by this EndpointSlice.",
            ),
            column(
                "Endpoints",
                "string",
                "",
                0,
                "Addresses of the endpoints in this EndpointSlice.",
            ),
            age,
        ],
        "Service" => vec![
            name,
            column("Type", "string", "", 0, "How the Service is exposed."),
            column(
                "Cluster-IP",
                "string",
                "",
                0,
                "The IP address of the Service.",
            ),
            column(
                "External-IP",
                "string",
                "",
                0,
                "External addresses of the Service.",
            ),
            column("Port(s)", "string", "", 0, "Ports exposed by the Service."),
            age,
            column(
                "Selector",
                "string",
                "",
                1,
                "Route traffic to pods with these labels.",
            ),
        ],
        "Endpoints" => vec![
            name,
            column("Endpoints", "string", "", 0, "Endpoints of the Service."),
            age,
        ],
        _ => vec![name, age],
    }
}

/// `HumanDuration` as kubectl prints ages.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h) = (s / 60, s / 3600);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        },
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => match h % 24 {
            0 => format!("{}d", h / 24),
            r => format!("{}d{r}h", h / 24),
        },
        _ if h < 24 * 365 * 2 => format!("{}d", h / 24),
        _ => format!("{}y", h / 24 / 365),
    }
}

fn age(object: &Value) -> String {
    object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .map(|t| human(SystemTime::now().duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<unknown>".to_owned())
}

fn items(object: &Value, pointer: &str) -> Vec<Value> {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The first three entries and how many more, as the API server abbreviates lists.
fn abbreviate(list: Vec<String>) -> String {
    if list.is_empty() {
        return "<none>".to_owned();
    }
    let more = list.len().saturating_sub(3);
    let mut text = list.into_iter().take(3).collect::<Vec<_>>().join(",");
    if more > 0 {
        text.push_str(&format!(" + {more} more..."));
    }
    text
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn cells(resource: &Resource, object: &Value) -> Vec<Value> {
    let name = json!(
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    match resource.kind {
        "EndpointSlice" => {
            let ports: Vec<String> = items(object, "/ports")
                .iter()
                .map(|p| text(p.get("port")).unwrap_or_else(|| "<unset>".into()))
                .collect();
            let addresses: Vec<String> = items(object, "/endpoints")
                .iter()
                .flat_map(|e| items(e, "/addresses"))
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let ports = if ports.is_empty() {
                "<unset>".to_owned()
            } else {
                ports.join(",")
            };
            vec![
                name,
                json!(
                    object
                        .get("addressType")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                ),
                json!(ports),
                json!(abbreviate(addresses)),
                json!(age(object)),
            ]
        }
        "Service" => {
            let spec = object.get("spec").cloned().unwrap_or_default();
            let ports: Vec<String> = items(&spec, "/ports")
                .iter()
                .map(|p| {
                    let port = text(p.get("port")).unwrap_or_default();
                    let protocol = text(p.get("protocol")).unwrap_or_else(|| "TCP".into());
                    match text(p.get("nodePort")) {
                        Some(node) => format!("{port}:{node}/{protocol}"),
                        None => format!("{port}/{protocol}"),
                    }
                })
                .collect();
            let selector = spec
                .get("selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".to_owned());
            vec![
                name,
                json!(text(spec.get("type")).unwrap_or_else(|| "ClusterIP".into())),
                json!(text(spec.get("clusterIP")).unwrap_or_else(|| "<none>".into())),
                json!("<none>"),
                json!(if ports.is_empty() {
                    "<none>".to_owned()
                } else {
                    ports.join(",")
                }),
                json!(age(object)),
                json!(selector),
            ]
        }
        "Endpoints" => {
            let mut list = Vec::new();
            for subset in items(object, "/subsets") {
                let ports: Vec<String> = items(&subset, "/ports")
                    .iter()
                    .filter_map(|p| text(p.get("port")))
                    .collect();
                for address in items(&subset, "/addresses") {
                    let Some(ip) = address.get("ip").and_then(Value::as_str) else {
                        continue;
                    };
                    if ports.is_empty() {
                        list.push(ip.to_owned());
                    }
                    for port in &ports {
                        list.push(format!("{ip}:{port}"));
                    }
                }
            }
            vec![name, json!(abbreviate(list)), json!(age(object))]
        }
        _ => vec![name, json!(age(object))],
    }
}

fn row(resource: &Resource, object: &Value, include: Include) -> Value {
    let mut row = json!({"cells": cells(resource, object)});
    let embedded = match include {
        Include::None => return row,
        Include::Object => object.clone(),
        Include::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object.get("metadata").cloned().unwrap_or_default(),
        }),
    };
    row["object"] = embedded;
    row
}

/// A Table of `objects` with the list's metadata (resourceVersion, continue...).
pub(crate) fn table<'a>(
    resource: &Resource,
    objects: impl IntoIterator<Item = &'a Value>,
    metadata: Value,
    include: Include,
) -> Value {
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|o| row(resource, o, include))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(resource),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::resources::RESOURCES;

    #[test]
    fn accept_headers_and_ages() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
        assert!(!wanted("application/json;as=Table;v=v1beta1;g=meta.k8s.io"));
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 120, "3h2m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human(Duration::from_secs(secs)), want);
        }
    }

    #[test]
    fn endpointslice_and_service_rows_match_kubectl_columns() {
        let slices = RESOURCES
            .iter()
            .find(|r| r.kind == "EndpointSlice")
            .unwrap();
        let slice = json!({"metadata": {"name": "a"}, "addressType": "IPv4",
            "ports": [{"port": 8080}, {"name": "x"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]});
        let t = table(slices, [&slice], json!({}), Include::Metadata);
        assert_eq!(t["rows"][0]["cells"][1], "IPv4");
        assert_eq!(t["rows"][0]["cells"][2], "8080,<unset>");
        assert_eq!(
            t["rows"][0]["cells"][3],
            "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more..."
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 5);

        let services = RESOURCES.iter().find(|r| r.kind == "Service").unwrap();
        let svc = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.10",
            "ports": [{"port": 80}, {"port": 443, "nodePort": 30443, "protocol": "TCP"}],
            "selector": {"app": "s"}}});
        let t = table(services, [&svc], json!({}), Include::None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "ClusterIP");
        assert_eq!(cells[2], "10.96.0.10");
        assert_eq!(cells[4], "80/TCP,443:30443/TCP");
        assert_eq!(cells[6], "app=s");
        assert!(t["rows"][0].get("object").is_none());
    }
}
