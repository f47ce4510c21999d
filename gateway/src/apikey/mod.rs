//! Owns API-key authentication: consumers (`consumers:` with name, groups and keys kept
//! only as SHA-256 digests), the table that finds a consumer by the digest of a presented
//! key (`ConsumerTable`), a route's `auth.api_key` (`RouteApiKey`: where keys are read,
//! the consumer header, group rules), and the request-phase step (`authenticate`).
//!
//! A presented key is never compared: its digest is looked up, so an unknown key and a
//! wrong key take the same path and get the same answer. Raw keys are never stored,
//! logged or shown; `gateway hash-key` turns a key into the digest a config lists.

pub mod digest;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

pub use digest::{Digest, digest, parse_digest, parse_keys_file};

/// Longest key considered; anything longer is refused without hashing it.
pub const MAX_KEY_BYTES: usize = 512;

/// A validated `consumers[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub name: Arc<str>,
    pub groups: Vec<String>,
    /// Inline `keys` and those of `keys_file`, together.
    pub keys: Vec<Digest>,
    pub disabled: bool,
}

/// A consumer as requests see it.
#[derive(Debug)]
pub struct Consumer {
    pub name: Arc<str>,
    pub groups: Vec<String>,
    pub disabled: bool,
    pub key_count: usize,
}

/// Every consumer, and each key digest's consumer.
#[derive(Debug, Default)]
pub struct ConsumerTable {
    by_digest: HashMap<Digest, Arc<Consumer>>,
    pub consumers: Vec<Arc<Consumer>>,
}

impl ConsumerTable {
    /// Validation guarantees names and digests are unique.
    pub fn compile(specs: &[ConsumerSpec]) -> ConsumerTable {
        let mut table = ConsumerTable::default();
        for s in specs {
            let c = Arc::new(Consumer {
                name: Arc::clone(&s.name),
                groups: s.groups.clone(),
                disabled: s.disabled,
                key_count: s.keys.len(),
            });
            for d in &s.keys {
                table.by_digest.insert(*d, Arc::clone(&c));
            }
            table.consumers.push(c);
        }
        table
    }

    /// The consumer owning `key`, by the key's digest.
    pub fn find(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        self.by_digest.get(&digest(key))
    }

    /// Consumers with their groups and key counts (never the digests), for the admin API.
    pub fn describe(&self) -> Value {
        Value::Array(
            self.consumers
                .iter()
                .map(|c| {
                    json!({"name": &*c.name, "groups": c.groups, "disabled": c.disabled, "keys": c.key_count})
                })
                .collect(),
        )
    }
}

/// Where a route reads the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    Query(String),
    Cookie(String),
}

impl KeySource {
    pub fn describe(&self) -> String {
        match self {
            KeySource::Header(h) => format!("header:{h}"),
            KeySource::Query(q) => format!("query:{q}"),
            KeySource::Cookie(c) => format!("cookie:{c}"),
        }
    }
}

/// A validated `routes[].auth.api_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteApiKeySpec {
    pub sources: Vec<KeySource>,
    /// Upstream request header carrying the consumer name (client copies removed).
    pub consumer_header: HeaderName,
    /// Non-empty: the consumer must be in one of these groups.
    pub allow_groups: Vec<String>,
    /// The consumer must be in none of these.
    pub deny_groups: Vec<String>,
    /// Remove the key from the request before it goes upstream.
    pub strip: bool,
}

/// A route's compiled API-key requirement, with the runtime's consumer table.
#[derive(Debug)]
pub struct RouteApiKey {
    pub spec: RouteApiKeySpec,
    pub table: Arc<ConsumerTable>,
}

/// What the API-key step decided.
#[derive(Debug)]
pub enum KeyOutcome {
    /// No key at any source.
    Missing,
    /// A key no consumer owns (or one too long to be anyone's).
    Invalid,
    /// Different keys at two sources (or twice at one).
    Ambiguous,
    Disabled(Arc<Consumer>),
    /// The consumer's groups do not allow the route.
    Forbidden(Arc<Consumer>),
    Verified {
        consumer: Arc<Consumer>,
        /// The source it came from, so it can be stripped.
        source: usize,
    },
}

impl KeyOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            KeyOutcome::Missing => "missing",
            KeyOutcome::Invalid => "invalid",
            KeyOutcome::Ambiguous => "ambiguous",
            KeyOutcome::Disabled(_) => "disabled",
            KeyOutcome::Forbidden(_) => "forbidden",
            KeyOutcome::Verified { .. } => "valid",
        }
    }
}

/// Every value a source carries (a repeated header or query parameter gives several).
fn values<'a>(source: &KeySource, headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<Vec<u8>> {
    match source {
        KeySource::Header(name) => headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().trim_ascii().to_vec())
            .filter(|v| !v.is_empty())
            .collect(),
        KeySource::Query(name) => query.map_or_else(Vec::new, |q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.into_owned().into_bytes())
                .collect()
        }),
        KeySource::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name && !v.is_empty()).then(|| v.as_bytes().to_vec())
            })
            .collect(),
    }
}

impl RouteApiKey {
    /// The API-key step of `request_filter`.
    pub fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> KeyOutcome {
        let mut found: Option<(Vec<u8>, usize)> = None;
        for (i, source) in self.spec.sources.iter().enumerate() {
            for v in values(source, headers, query) {
                match &found {
                    Some((k, _)) if *k != v => return KeyOutcome::Ambiguous,
                    Some(_) => {}
                    None => found = Some((v, i)),
                }
            }
        }
        let Some((key, source)) = found else {
            return KeyOutcome::Missing;
        };
        if key.len() > MAX_KEY_BYTES {
            return KeyOutcome::Invalid;
        }
        let Some(consumer) = self.table.find(&key) else {
            return KeyOutcome::Invalid;
        };
        let consumer = Arc::clone(consumer);
        if consumer.disabled {
            return KeyOutcome::Disabled(consumer);
        }
        let in_any = |groups: &[String]| consumer.groups.iter().any(|g| groups.contains(g));
        if in_any(&self.spec.deny_groups)
            || (!self.spec.allow_groups.is_empty() && !in_any(&self.spec.allow_groups))
        {
            return KeyOutcome::Forbidden(consumer);
        }
        KeyOutcome::Verified { consumer, source }
    }

    /// The consumer header's value.
    pub fn consumer_value(consumer: &Consumer) -> Option<HeaderValue> {
        HeaderValue::from_str(&consumer.name).ok()
    }

    pub fn describe(&self) -> Value {
        json!({
            "sources": self.spec.sources.iter().map(KeySource::describe).collect::<Vec<_>>(),
            "consumer_header": self.spec.consumer_header.as_str(),
            "allow_groups": self.spec.allow_groups,
            "deny_groups": self.spec.deny_groups,
            "strip": self.spec.strip,
        })
    }
}

/// `path?query` without every `name` parameter (the key, when it came in the query).
pub fn strip_query(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let decoded: String = form_urlencoded::parse(k.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect();
            decoded != name
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests;
