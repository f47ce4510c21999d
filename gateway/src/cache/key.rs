//! Owns the cache key: which parts of a request select a stored response. The key is
//! the route id, the host, the path, the query (all, none or named parameters), the
//! values of listed request headers and of listed verified JWT claims. The method is
//! not part of it, so a HEAD is answered from a stored GET.

use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

/// Which query parameters are part of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryKey {
    /// The whole query string, as sent.
    All,
    /// No query: `/a?x=1` and `/a?x=2` share one entry.
    None,
    /// Only these parameters, in this order (missing ones count as absent).
    Names(Vec<String>),
}

/// The per-route recipe for a cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub query: QueryKey,
    pub headers: Vec<HeaderName>,
    /// Names of verified JWT claims (set by JWT auth on the request context).
    pub claims: Vec<String>,
}

impl Default for KeySpec {
    fn default() -> Self {
        Self {
            query: QueryKey::All,
            headers: Vec::new(),
            claims: Vec::new(),
        }
    }
}

/// The request parts a key is built from.
#[derive(Clone, Copy, Debug)]
pub struct KeyInput<'a> {
    pub route_id: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub claims: Option<&'a Map<String, Value>>,
}

impl KeySpec {
    /// The primary key text. Parts are separated by `\n`, which cannot occur in a host,
    /// path, query or header value, so two different requests cannot build one key.
    pub fn build(&self, input: &KeyInput<'_>) -> String {
        let mut key =
            String::with_capacity(input.route_id.len() + input.host.len() + input.path.len() + 64);
        key.push_str(input.route_id);
        key.push('\n');
        // Hosts are case-insensitive (RFC 9110 section 4.2.3).
        for c in input.host.chars() {
            key.push(c.to_ascii_lowercase());
        }
        key.push('\n');
        key.push_str(input.path);
        match &self.query {
            QueryKey::All => {
                if let Some(q) = input.query {
                    key.push('?');
                    key.push_str(q);
                }
            }
            QueryKey::None => {}
            QueryKey::Names(names) => {
                let pairs: Vec<(String, String)> = input
                    .query
                    .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                    .unwrap_or_default();
                for name in names {
                    key.push_str("\nq:");
                    key.push_str(name);
                    // Every value of a repeated parameter, in request order.
                    for (_, v) in pairs.iter().filter(|(k, _)| k == name) {
                        key.push('=');
                        push_escaped(&mut key, v);
                    }
                }
            }
        }
        for name in &self.headers {
            key.push_str("\nh:");
            key.push_str(name.as_str());
            for v in input.headers.get_all(name) {
                key.push('=');
                key.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        for name in &self.claims {
            key.push_str("\nc:");
            key.push_str(name);
            // Absent claims (or no verified token) key as `-`; present ones as their JSON,
            // so the string "1" and the number 1 differ.
            match input.claims.and_then(|c| c.get(name)) {
                Some(v) => {
                    key.push('=');
                    key.push_str(&v.to_string());
                }
                None => key.push('-'),
            }
        }
        key
    }
}

/// Decoded query values may hold `\n` or `=`: escape them so they cannot forge a part.
fn push_escaped(key: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\n' => key.push_str("%0A"),
            '=' => key.push_str("%3D"),
            '%' => key.push_str("%25"),
            c => key.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn input<'a>(
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        claims: Option<&'a Map<String, Value>>,
    ) -> KeyInput<'a> {
        KeyInput {
            route_id: "r",
            host: "Example.COM",
            path: "/p",
            query,
            headers,
            claims,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn query_modes() {
        let h = HeaderMap::new();
        let all = KeySpec::default();
        let none = KeySpec {
            query: QueryKey::None,
            ..KeySpec::default()
        };
        let named = KeySpec {
            query: QueryKey::Names(vec!["page".into(), "lang".into()]),
            ..KeySpec::default()
        };
        // (spec, query a, query b, same key?)
        let cases: &[(&KeySpec, Option<&str>, Option<&str>, bool)] = &[
            (&all, Some("a=1"), Some("a=1"), true),
            (&all, Some("a=1"), Some("a=2"), false),
            (&all, None, Some("a=1"), false),
            (&none, Some("a=1"), Some("a=2"), true),
            (&none, None, Some("a=2"), true),
            (&named, Some("page=1&utm=x"), Some("utm=y&page=1"), true),
            (&named, Some("page=1"), Some("page=2"), false),
            (&named, Some("page=1&lang=de"), Some("lang=de&page=1"), true),
            (&named, Some("page=1"), Some("page=1&lang=de"), false),
            (&named, Some("page=1&page=2"), Some("page=1"), false),
            // An escaped `=` or newline cannot fake another parameter.
            (&named, Some("page=1%3Dlang"), Some("page=1&lang="), false),
        ];
        for (i, (spec, a, b, same)) in cases.iter().enumerate() {
            let ka = spec.build(&input(*a, &h, None));
            let kb = spec.build(&input(*b, &h, None));
            assert_eq!(ka == kb, *same, "case {i}: {ka:?} vs {kb:?}");
        }
    }

    #[test]
    fn host_is_case_insensitive_and_route_separates() {
        let h = HeaderMap::new();
        let spec = KeySpec::default();
        let mut a = input(None, &h, None);
        let k1 = spec.build(&a);
        a.host = "example.com";
        assert_eq!(k1, spec.build(&a));
        a.route_id = "other";
        assert_ne!(k1, spec.build(&a));
    }

    #[test]
    fn listed_headers_split_the_key() {
        let spec = KeySpec {
            headers: vec![HeaderName::from_static("x-tenant")],
            ..KeySpec::default()
        };
        let mut a = HeaderMap::new();
        a.insert("x-tenant", HeaderValue::from_static("a"));
        a.insert("x-other", HeaderValue::from_static("1"));
        let mut b = HeaderMap::new();
        b.insert("x-tenant", HeaderValue::from_static("b"));
        let mut a2 = HeaderMap::new();
        a2.insert("x-tenant", HeaderValue::from_static("a"));
        a2.insert("x-other", HeaderValue::from_static("2"));
        let none = HeaderMap::new();
        let k = |h: &HeaderMap| spec.build(&input(None, h, None));
        assert_ne!(k(&a), k(&b));
        assert_eq!(k(&a), k(&a2), "unlisted headers are not part of the key");
        assert_ne!(k(&a), k(&none));
    }

    #[test]
    fn listed_claims_split_the_key() {
        let spec = KeySpec {
            claims: vec!["sub".into(), "tenant".into()],
            ..KeySpec::default()
        };
        let h = HeaderMap::new();
        let alice = claims(serde_json::json!({"sub": "alice", "tenant": "t1", "iat": 1}));
        let alice_later = claims(serde_json::json!({"sub": "alice", "tenant": "t1", "iat": 2}));
        let bob = claims(serde_json::json!({"sub": "bob", "tenant": "t1"}));
        let no_tenant = claims(serde_json::json!({"sub": "alice"}));
        let numeric = claims(serde_json::json!({"sub": 1, "tenant": "t1"}));
        let text = claims(serde_json::json!({"sub": "1", "tenant": "t1"}));
        let k = |c: Option<&Map<String, Value>>| spec.build(&input(None, &h, c));
        assert_eq!(
            k(Some(&alice)),
            k(Some(&alice_later)),
            "unlisted claims ignored"
        );
        assert_ne!(k(Some(&alice)), k(Some(&bob)));
        assert_ne!(k(Some(&alice)), k(Some(&no_tenant)));
        assert_ne!(k(Some(&numeric)), k(Some(&text)), "JSON types differ");
        assert_ne!(
            k(Some(&alice)),
            k(None),
            "anonymous never shares a user's entry"
        );
        assert_eq!(k(None), k(Some(&Map::new())));
    }
}
