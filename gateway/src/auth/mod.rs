//! Owns JWT authentication: the typed provider and route specs, their compiled form in
//! the `Runtime` (`JwtRuntime`, `RouteJwt`), and `authenticate`, the request-phase step
//! that turns a request head into an [`AuthOutcome`] for the proxy to act on.
//!
//! Keys live in [`jwks::KeyStore`]s that outlive reloads (keyed by provider name and key
//! source); verified tokens are cached per provider ([`cache::TokenCache`]).

pub mod cache;
pub mod jwks;
pub mod keys;
#[cfg(any(test, feature = "fixtures"))]
pub mod testkeys;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use crate::metrics::Metrics;
use cache::TokenCache;
use jwks::{JwksSpec, KeyStore};
use keys::Key;
use validate::{Failure, Policy};

/// Where a provider's keys come from.
#[derive(Debug)]
pub enum KeySource {
    /// Loaded at config time (secret, PEM file, JWKS file); `fingerprint` identifies the
    /// material without revealing it.
    Fixed {
        keys: Vec<Key>,
        fingerprint: String,
    },
    Jwks(JwksSpec),
}

impl KeySource {
    fn fingerprint(&self) -> String {
        match self {
            KeySource::Fixed { fingerprint, .. } => fingerprint.clone(),
            KeySource::Jwks(spec) => format!("{spec:?}"),
        }
    }
}

/// Where a token is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

/// A validated `jwt_providers` entry.
#[derive(Debug)]
pub struct ProviderSpec {
    pub name: Arc<str>,
    pub keys: KeySource,
    pub policy: Policy,
    pub sources: Vec<TokenSource>,
    pub realm: String,
    pub cache_entries: usize,
    pub cache_ttl: Duration,
}

/// A claim requirement of a route.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimTest {
    /// A space-separated string (`scope`) holding the word, or an array holding it.
    Contains(String),
    /// The claim, or an element of an array claim, is one of these.
    AnyOf(Vec<String>),
    Equals(Value),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRule {
    pub claim: String,
    pub test: ClaimTest,
}

impl ClaimRule {
    pub fn holds(&self, claims: &Map<String, Value>) -> bool {
        let Some(value) = claims.get(&self.claim) else {
            return false;
        };
        match (&self.test, value) {
            (ClaimTest::Contains(word), Value::String(s)) => {
                s.split_whitespace().any(|w| w == word)
            }
            (ClaimTest::Contains(word), Value::Array(a)) => {
                a.iter().any(|v| v.as_str() == Some(word))
            }
            (ClaimTest::AnyOf(set), Value::String(s)) => set.iter().any(|x| x == s),
            (ClaimTest::AnyOf(set), Value::Array(a)) => a
                .iter()
                .any(|v| v.as_str().is_some_and(|s| set.iter().any(|x| x == s))),
            (ClaimTest::Equals(want), v) => want == v,
            _ => false,
        }
    }

    fn describe(&self) -> Value {
        match &self.test {
            ClaimTest::Contains(w) => json!({"claim": self.claim, "contains": w}),
            ClaimTest::AnyOf(s) => json!({"claim": self.claim, "any_of": s}),
            ClaimTest::Equals(v) => json!({"claim": self.claim, "equals": v}),
        }
    }
}

/// A validated `routes[].auth.jwt`.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteJwtSpec {
    pub providers: Vec<String>,
    pub required: bool,
    pub claims: Vec<ClaimRule>,
    pub claims_to_headers: Vec<(String, HeaderName)>,
    pub strip_authorization: bool,
}

/// A compiled provider: its spec, its (reload-surviving) keys, its token cache.
#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    pub policy: Policy,
    pub sources: Vec<TokenSource>,
    pub realm: String,
    pub keys: Arc<KeyStore>,
    pub cache: TokenCache,
    /// Everything that decides a verification outcome: an unchanged provider is reused
    /// whole (cache included) across reloads.
    fingerprint: String,
}

/// Every compiled provider of a runtime, by name.
#[derive(Debug, Default)]
pub struct JwtRuntime {
    pub providers: IndexMap<String, Arc<Provider>>,
}

impl JwtRuntime {
    /// Compile the providers, reusing `previous`' key stores (and whole providers) while
    /// they are unchanged, so a reload neither refetches nor forgets keys.
    pub fn compile(specs: &IndexMap<String, ProviderSpec>, previous: Option<&JwtRuntime>) -> Self {
        let mut providers = IndexMap::new();
        for (name, spec) in specs {
            let source = format!("{name}|{}", spec.keys.fingerprint());
            let fingerprint = format!(
                "{source}|{:?}|{:?}|{}|{}|{:?}",
                spec.policy, spec.sources, spec.realm, spec.cache_entries, spec.cache_ttl
            );
            let old = previous.and_then(|p| p.providers.get(name));
            if let Some(old) = old.filter(|o| o.fingerprint == fingerprint) {
                providers.insert(name.clone(), Arc::clone(old));
                continue;
            }
            let keys = old
                .map(|o| &o.keys)
                .filter(|k| k.fingerprint == source)
                .map_or_else(
                    || {
                        Arc::new(match &spec.keys {
                            KeySource::Fixed { keys, .. } => KeyStore::fixed(
                                Arc::clone(&spec.name),
                                source.clone(),
                                keys.clone(),
                            ),
                            KeySource::Jwks(j) => {
                                KeyStore::remote(Arc::clone(&spec.name), source.clone(), j.clone())
                            }
                        })
                    },
                    Arc::clone,
                );
            providers.insert(
                name.clone(),
                Arc::new(Provider {
                    name: Arc::clone(&spec.name),
                    policy: spec.policy.clone(),
                    sources: spec.sources.clone(),
                    realm: spec.realm.clone(),
                    keys,
                    cache: TokenCache::new(spec.cache_entries, spec.cache_ttl.as_secs()),
                    fingerprint,
                }),
            );
        }
        JwtRuntime { providers }
    }

    /// Every provider's key store, for the background JWKS refresh.
    pub fn key_stores(&self) -> Vec<Arc<KeyStore>> {
        self.providers
            .values()
            .map(|p| Arc::clone(&p.keys))
            .collect()
    }

    /// Set the per-provider key gauges (providers that are gone are dropped; stale keys
    /// count as none).
    pub fn export_metrics(&self, metrics: &Metrics) {
        metrics.jwks_keys.reset();
        metrics.jwks_last_success.reset();
        for p in self.providers.values() {
            metrics
                .jwks_keys
                .with_label_values(&[&p.name])
                .set(p.keys.current().keys.len() as i64);
            if p.keys.is_remote() {
                metrics
                    .jwks_last_success
                    .with_label_values(&[&p.name])
                    .set(p.keys.last_success_unix());
            }
        }
    }

    /// Providers still waiting for their first JWKS (within their start timeout).
    pub fn not_ready(&self) -> Vec<&str> {
        self.providers
            .values()
            .filter(|p| !p.keys.ready())
            .map(|p| &*p.name)
            .collect()
    }

    /// For `/admin/jwt`.
    pub fn describe(&self) -> Value {
        Value::Array(
            self.providers
                .values()
                .map(|p| {
                    let mut v = p.keys.describe();
                    if let Value::Object(m) = &mut v {
                        m.insert("name".into(), json!(&*p.name));
                        m.insert(
                            "algorithms".into(),
                            json!(
                                p.policy
                                    .algorithms
                                    .iter()
                                    .map(|a| format!("{a:?}"))
                                    .collect::<Vec<_>>()
                            ),
                        );
                        m.insert("issuers".into(), json!(p.policy.issuers));
                        m.insert("audiences".into(), json!(p.policy.audiences));
                        m.insert("cached_tokens".into(), json!(p.cache.len()));
                    }
                    v
                })
                .collect(),
        )
    }
}

/// A route's compiled JWT requirement.
#[derive(Debug)]
pub struct RouteJwt {
    pub providers: Vec<Arc<Provider>>,
    pub required: bool,
    pub claims: Vec<ClaimRule>,
    pub claims_to_headers: Vec<(String, HeaderName)>,
    pub strip_authorization: bool,
}

impl RouteJwt {
    pub fn compile(spec: &RouteJwtSpec, jwt: &JwtRuntime) -> RouteJwt {
        RouteJwt {
            // Spec validation guarantees every name exists.
            providers: spec
                .providers
                .iter()
                .filter_map(|n| jwt.providers.get(n).map(Arc::clone))
                .collect(),
            required: spec.required,
            claims: spec.claims.clone(),
            claims_to_headers: spec.claims_to_headers.clone(),
            strip_authorization: spec.strip_authorization,
        }
    }

    pub fn describe(&self) -> Value {
        json!({
            "providers": self.providers.iter().map(|p| &*p.name).collect::<Vec<_>>(),
            "required": self.required,
            "claims": self.claims.iter().map(ClaimRule::describe).collect::<Vec<_>>(),
            "claims_to_headers": self.claims_to_headers.iter().map(|(c, h)| (c.clone(), Value::from(h.as_str()))).collect::<Map<_, _>>(),
            "strip_authorization": self.strip_authorization,
        })
    }

    /// Remove every query parameter a provider of this route reads a token from
    /// (`query:NAME`): tokens in URLs end up in upstream access logs, so one is never
    /// forwarded. `None` when `query` has none of them.
    pub fn strip_query_tokens(&self, query: &str) -> Option<String> {
        let names: Vec<&str> = self
            .providers
            .iter()
            .flat_map(|p| p.sources.iter())
            .filter_map(|s| match s {
                TokenSource::Query(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return None;
        }
        let is_token = |pair: &str| {
            let name = pair.split_once('=').map_or(pair, |(k, _)| k);
            names.contains(&name)
        };
        if !query.split('&').any(is_token) {
            return None;
        }
        Some(
            query
                .split('&')
                .filter(|p| !p.is_empty() && !is_token(p))
                .collect::<Vec<_>>()
                .join("&"),
        )
    }

    /// The header value a claim becomes: strings as they are, numbers and booleans as
    /// text, arrays of those joined with `,`; objects, nulls and values that are not
    /// valid header text give no header.
    pub fn header_value(value: &Value) -> Option<HeaderValue> {
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        let text = match value {
            Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()?
                .join(","),
            v => scalar(v)?,
        };
        HeaderValue::from_str(&text).ok()
    }

    /// The headers to set from verified claims (the caller first removes every
    /// `claims_to_headers` target, token or not, so clients cannot spoof them).
    pub fn identity_headers(&self, claims: &Map<String, Value>) -> Vec<(HeaderName, HeaderValue)> {
        self.claims_to_headers
            .iter()
            .filter_map(|(claim, name)| {
                claims
                    .get(claim)
                    .and_then(Self::header_value)
                    .map(|v| (name.clone(), v))
            })
            .collect()
    }
}

/// Why a request was refused, with what the response must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 401 without `error`: a required token is absent.
    Missing { realm: String },
    /// 401 `invalid_token`.
    Invalid { realm: String, failure: Failure },
    /// 403 `insufficient_scope`: the token is good, a claim requirement failed.
    Forbidden { realm: String },
    /// 503: no keys to verify with.
    Unavailable { retry_after: u64 },
    /// 400 `invalid_request` (RFC 6750 section 3.1): more than one `Authorization`,
    /// or different tokens in several places, so the upstream could act on one the
    /// gateway did not verify.
    Ambiguous { realm: String },
}

impl Rejection {
    /// `WWW-Authenticate` (RFC 6750 section 3), if the answer carries one.
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            Rejection::Missing { realm } => Some(format!("Bearer realm=\"{realm}\"")),
            Rejection::Invalid { realm, failure } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                failure.description()
            )),
            Rejection::Forbidden { realm } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"the token does not grant access to this route\""
            )),
            Rejection::Ambiguous { realm } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"the request carries more than one token\""
            )),
            Rejection::Unavailable { .. } => None,
        }
    }
}

/// What the auth step decided.
#[derive(Debug)]
pub enum AuthOutcome {
    /// No token on a route where it is optional.
    Anonymous,
    Verified {
        provider: Arc<str>,
        claims: Arc<Map<String, Value>>,
    },
    Rejected(Rejection),
}

/// Find the token per the provider's sources; the first source present wins.
pub fn extract<'a>(
    sources: &[TokenSource],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Option<&'a str> {
    for source in sources {
        let found = match source {
            TokenSource::Bearer => headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, rest) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                }),
            TokenSource::Header(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim),
            TokenSource::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then_some(v)
                }),
            TokenSource::Query(name) => query.and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    // JWTs are base64url and dots: nothing to percent-decode.
                    (k == name).then_some(v)
                })
            }),
        };
        if let Some(t) = found.filter(|t| !t.is_empty()) {
            return Some(t);
        }
    }
    None
}

/// Every token a request carries at one source, empty ones left out.
fn tokens_at<'a>(
    source: &'a TokenSource,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    let found: Box<dyn Iterator<Item = &'a str> + 'a> = match source {
        TokenSource::Bearer => Box::new(
            headers
                .get_all(http::header::AUTHORIZATION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| {
                    let (scheme, rest) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                }),
        ),
        TokenSource::Header(name) => Box::new(
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim),
        ),
        TokenSource::Cookie(name) => Box::new(
            headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(move |pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then_some(v)
                }),
        ),
        TokenSource::Query(name) => Box::new(
            query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .filter_map(move |pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k == name).then_some(v)
                }),
        ),
    };
    Box::new(found.filter(|t| !t.is_empty()))
}

/// Would the request leave doubt about which token counts? More than one
/// `Authorization` line, or two different tokens anywhere the route's providers look
/// (two cookies of the name, a bearer token and another cookie...). The same token in
/// two places is not ambiguous.
pub fn ambiguous(route: &RouteJwt, headers: &HeaderMap, query: Option<&str>) -> bool {
    if headers.get_all(http::header::AUTHORIZATION).iter().count() > 1 {
        return true;
    }
    let mut first: Option<&str> = None;
    for source in route.providers.iter().flat_map(|p| p.sources.iter()) {
        for token in tokens_at(source, headers, query) {
            match first {
                None => first = Some(token),
                Some(f) if f != token => return true,
                Some(_) => {}
            }
        }
    }
    false
}

/// Seconds since the Unix epoch, the clock token claims use.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Verify `token` with one provider: cache, then keys (refreshing once for an unknown
/// `kid`), then store the verified claims in the cache.
pub async fn verify(
    provider: &Provider,
    token: &str,
    now: i64,
    metrics: &Metrics,
) -> Result<(Arc<Map<String, Value>>, bool), Failure> {
    let store = &provider.keys;
    let seen = store.fetch_count();
    let mut keys = store.current();
    // No keys (never fetched, or stale past `max_stale`): nothing may pass, cached or not.
    if token.len() <= provider.policy.max_token_bytes
        && !keys.keys.is_empty()
        && let Some(claims) = provider.cache.get(token, keys.generation, now)
    {
        return Ok((claims, true));
    }
    let mut result = validate::validate(token, &provider.policy, &keys, now);
    if result.as_ref().err() == Some(&Failure::UnknownKid)
        && let Ok(parsed) = validate::parse(token, &provider.policy)
        && let Some(kid) = parsed.kid.as_deref()
    {
        if store.refresh_for_unknown_kid(kid, seen, metrics).await {
            keys = store.current();
            result = validate::validate(token, &provider.policy, &keys, now);
        }
        if result.as_ref().err() == Some(&Failure::UnknownKid) {
            store.remember_unknown(kid);
        }
    }
    let verified = result?;
    let claims = Arc::new(verified.claims);
    provider.cache.insert(
        token,
        Arc::clone(&claims),
        verified.exp,
        keys.generation,
        now,
    );
    Ok((claims, false))
}

/// The auth step of `request_filter`. Each provider of the route is tried in order with
/// the token found at its sources; the first that verifies wins. Metrics count one
/// result per provider tried.
pub async fn authenticate(
    route: &RouteJwt,
    headers: &HeaderMap,
    query: Option<&str>,
    metrics: &Metrics,
) -> AuthOutcome {
    if ambiguous(route, headers, query) {
        if let Some(p) = route.providers.first() {
            metrics
                .jwt_validations
                .with_label_values(&[&p.name, "ambiguous"])
                .inc();
        }
        let realm = route
            .providers
            .first()
            .map_or_else(|| "gateway".to_owned(), |p| p.realm.clone());
        return AuthOutcome::Rejected(Rejection::Ambiguous { realm });
    }
    let now = unix_now();
    let mut first_failure: Option<(String, Failure)> = None;
    let mut unavailable: Option<u64> = None;
    for provider in &route.providers {
        let Some(token) = extract(&provider.sources, headers, query) else {
            continue;
        };
        match verify(provider, token, now, metrics).await {
            Ok((claims, cached)) => {
                let ok = route.claims.iter().all(|r| r.holds(&claims));
                let result = match (ok, cached) {
                    (false, _) => "forbidden",
                    (true, true) => "cached",
                    (true, false) => "valid",
                };
                metrics
                    .jwt_validations
                    .with_label_values(&[&provider.name, result])
                    .inc();
                if !ok {
                    return AuthOutcome::Rejected(Rejection::Forbidden {
                        realm: provider.realm.clone(),
                    });
                }
                return AuthOutcome::Verified {
                    provider: Arc::clone(&provider.name),
                    claims,
                };
            }
            Err(failure) => {
                metrics
                    .jwt_validations
                    .with_label_values(&[&provider.name, failure.label()])
                    .inc();
                if failure == Failure::NoKeys {
                    unavailable = Some(provider.keys.retry_after());
                } else if first_failure.is_none() {
                    first_failure = Some((provider.realm.clone(), failure));
                }
            }
        }
    }
    if let Some(retry_after) = unavailable {
        return AuthOutcome::Rejected(Rejection::Unavailable { retry_after });
    }
    if let Some((realm, failure)) = first_failure {
        return AuthOutcome::Rejected(Rejection::Invalid { realm, failure });
    }
    if route.required {
        let first = route.providers.first();
        if let Some(p) = first {
            metrics
                .jwt_validations
                .with_label_values(&[&p.name, "missing"])
                .inc();
        }
        let realm = first.map_or_else(|| "gateway".to_owned(), |p| p.realm.clone());
        return AuthOutcome::Rejected(Rejection::Missing { realm });
    }
    AuthOutcome::Anonymous
}

#[cfg(test)]
mod tests;
