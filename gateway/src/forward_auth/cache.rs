//! Owns the forward-auth decision cache: decisions kept for `ttl` under a key built from
//! the request parts the operator names (`cache.key`). The key is a SHA-256 of those
//! parts, so credentials are never held in memory as the cache key. Errors are never
//! cached; refusals are, unless their body is large. Memory is bounded by `max_entries`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, Method};
use sha2::{Digest as _, Sha256};

use super::Decision;

/// Largest refusal body kept in the cache (a refusal with a big login page is asked
/// again rather than held 10,000 times).
const MAX_CACHED_BODY: usize = 4096;
const SHARDS: usize = 16;

/// One part of a decision's cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// Every value of a request header.
    Header(HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
    Method,
    /// The path without the query.
    Path,
}

impl KeyPart {
    pub fn describe(&self) -> String {
        match self {
            KeyPart::Header(h) => format!("header:{h}"),
            KeyPart::Cookie(c) => format!("cookie:{c}"),
            KeyPart::Query(q) => format!("query:{q}"),
            KeyPart::ClientIp => "client_ip".into(),
            KeyPart::Method => "method".into(),
            KeyPart::Path => "path".into(),
        }
    }
}

/// A validated `auth.forward.cache`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSpec {
    pub ttl: Duration,
    pub key: Vec<KeyPart>,
    pub max_entries: usize,
}

type Key = [u8; 32];

#[derive(Debug)]
pub struct DecisionCache {
    spec: CacheSpec,
    shards: Vec<Mutex<HashMap<Key, (Instant, Decision)>>>,
}

impl DecisionCache {
    pub fn new(spec: &CacheSpec) -> DecisionCache {
        DecisionCache {
            spec: spec.clone(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The key of a request: a digest of each named part, length-prefixed (so no two
    /// different sets of values can collide by concatenation), absent parts marked.
    pub fn key(
        &self,
        method: &Method,
        uri: &str,
        client_ip: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Key {
        let mut h = Sha256::new();
        let mut put = |v: Option<&[u8]>| match v {
            Some(b) => {
                h.update([1]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            None => h.update([0]),
        };
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        for part in &self.spec.key {
            match part {
                KeyPart::Header(name) => {
                    let mut any = false;
                    for v in headers.get_all(name) {
                        any = true;
                        put(Some(v.as_bytes()));
                    }
                    if !any {
                        put(None);
                    }
                }
                KeyPart::Cookie(name) => {
                    let v = headers
                        .get_all(http::header::COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(';'))
                        .find_map(|pair| {
                            let (k, v) = pair.trim().split_once('=')?;
                            (k == name).then_some(v)
                        });
                    put(v.map(str::as_bytes));
                }
                KeyPart::Query(name) => {
                    let v = form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned());
                    put(v.as_deref().map(str::as_bytes));
                }
                KeyPart::ClientIp => put(client_ip
                    .map(|ip| ip.to_string())
                    .as_deref()
                    .map(str::as_bytes)),
                KeyPart::Method => put(Some(method.as_str().as_bytes())),
                KeyPart::Path => put(Some(path.as_bytes())),
            }
        }
        h.finalize().into()
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, (Instant, Decision)>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// A decision stored less than `ttl` before `now`.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Decision> {
        let shard = self.shard(key).lock().ok()?;
        let (at, d) = shard.get(key)?;
        (now.saturating_duration_since(*at) < self.spec.ttl).then(|| d.clone())
    }

    pub fn insert(&self, key: Key, decision: &Decision, now: Instant) {
        match decision {
            Decision::Error(_) => return,
            Decision::Deny(d) if d.body.len() > MAX_CACHED_BODY => return,
            _ => {}
        }
        let per_shard = self.spec.max_entries.div_ceil(SHARDS).max(1);
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        if shard.len() >= per_shard && !shard.contains_key(&key) {
            let ttl = self.spec.ttl;
            shard.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if shard.len() >= per_shard {
                // Still full of live entries: drop about a tenth, so the sweep is not
                // paid again on every insert under churn.
                let drop: Vec<Key> = shard.keys().take(per_shard / 10 + 1).copied().collect();
                for k in drop {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(key, (now, decision.clone()));
    }

    /// Decisions held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
