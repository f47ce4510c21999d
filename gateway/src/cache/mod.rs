//! Owns HTTP response caching (RFC 9111) on Pingora's cache: the process-wide storage,
//! eviction manager (byte cap), cache lock (request coalescing) and cacheability
//! predictor, and the small functions the proxy's cache phases delegate to.
//!
//! Storage, eviction and lock are statics, outside `Runtime`, so a config reload keeps
//! every stored response (DESIGN.md, "State that must outlive a reload"). Routes opt in
//! with `cache:`; the compiled per-route policy (`RouteCache`) lives on the route.

pub mod key;
pub mod policy;
pub mod stats;
pub mod status;
pub mod storage;

use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, SystemTime};

use http::{Method, header};
use pingora::cache::eviction::EvictionManager;
use pingora::cache::eviction::lru::Manager;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{CacheKey, CacheMeta, CacheOptionOverrides, ForcedFreshness};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};
use serde_json::{Map, Value};

pub use key::{KeySpec, QueryKey};
pub use policy::{SetCookie, StoreRules};
pub use status::Outcome;
pub use storage::{EntryUrl, Purge, TrackedStorage};

/// The cache's name in `Cache-Status`.
pub const CACHE_NAME: &str = "gateway";
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;
pub const DEFAULT_MAX_OBJECT_SIZE: usize = 8 * 1024 * 1024;
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// LRU shards: spreads lock contention on admission and hits.
const SHARDS: usize = 16;

static EVICTION: LazyLock<Manager<SHARDS>> =
    LazyLock::new(|| Manager::with_capacity(DEFAULT_MAX_BYTES, 1024));
static STORAGE: LazyLock<TrackedStorage> = LazyLock::new(|| TrackedStorage::new(&*EVICTION));
static PREDICTOR: LazyLock<Predictor<SHARDS>> =
    LazyLock::new(|| Predictor::new(1024, Some(policy::predictor_skips)));
static LOCK: OnceLock<&'static CacheLock> = OnceLock::new();

/// Process-wide cache settings (`server.cache`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// Byte cap of everything stored (headers and bodies); LRU eviction keeps under it.
    pub max_bytes: usize,
    /// Longest a request waits for another request filling the same entry, and the age
    /// after which a fill's lock no longer holds others back.
    pub lock_timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

/// A route's compiled `cache:` block (present only when enabled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCache {
    pub default_ttl: Option<Duration>,
    pub max_object_size: usize,
    pub key: KeySpec,
    pub set_cookie: SetCookie,
}

impl RouteCache {
    pub fn rules(&self) -> StoreRules {
        StoreRules {
            default_ttl: self.default_ttl,
            set_cookie: self.set_cookie,
        }
    }
}

/// Apply the process-wide settings; called once at start (they are `server` settings,
/// which take a restart to change).
pub fn configure(settings: &CacheSettings) {
    EVICTION.set_weight_limit(settings.max_bytes);
    lock(settings.lock_timeout);
}

fn lock(age_timeout: Duration) -> &'static CacheLock {
    LOCK.get_or_init(|| Box::leak(CacheLock::new_boxed(age_timeout)))
}

pub fn storage() -> &'static TrackedStorage {
    &STORAGE
}

/// Bytes held, as the eviction manager counts them.
pub fn stored_bytes() -> usize {
    EVICTION.total_size()
}

/// Per-request cache facts the phases collect for `Cache-Status` and metrics.
#[derive(Debug, Default)]
pub struct CacheCtx {
    /// The lookup found nothing usable (or a stale entry) and went on to the origin.
    pub looked_up: bool,
    /// A stored response for the URL existed, but for another `Vary` variant.
    pub vary_seen: bool,
    pub upstream_status: Option<u16>,
    pub outcome: Option<(Outcome, bool)>,
    /// The origin's 304 for a stale entry, merged whole into the stored headers.
    pub not_modified: Option<Box<ResponseHeader>>,
}

fn cacheable_method(m: &Method) -> bool {
    m == Method::GET || m == Method::HEAD
}

/// `request_cache_filter`: turn the cache on for GET and HEAD on a caching route.
pub fn enable(session: &mut Session, route: &RouteCache, settings: &CacheSettings) {
    if !cacheable_method(&session.req_header().method) {
        return;
    }
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(settings.lock_timeout);
    let lock: &'static CacheKeyLockImpl = lock(settings.lock_timeout);
    session.cache.enable(
        &*STORAGE,
        Some(&*EVICTION),
        Some(&*PREDICTOR),
        Some(lock),
        Some(overrides),
    );
    session.cache.set_max_file_size_bytes(route.max_object_size);
}

/// The request's host as the key and the purge index see it.
fn host(req: &RequestHeader) -> String {
    crate::http_head::raw_host(req).to_ascii_lowercase()
}

/// `cache_key_callback`: the route's key, with the URL attached for purges.
pub fn cache_key(
    req: &RequestHeader,
    route_id: &str,
    route: &RouteCache,
    claims: Option<&Map<String, Value>>,
) -> CacheKey {
    let host = host(req);
    let primary = route.key.build(&key::KeyInput {
        route_id,
        host: &host,
        path: req.uri.path(),
        query: req.uri.query(),
        headers: &req.headers,
        claims,
    });
    let mut key = CacheKey::new(primary, "");
    key.extensions.insert(EntryUrl {
        host,
        path: req.uri.path().to_owned(),
        query: req.uri.query().map(str::to_owned),
    });
    key
}

/// `cache_hit_filter`: a request that carried credentials (`authorized`: the client's
/// `Authorization`, even if JWT auth stripped it before forwarding, or a token verified
/// from any source) is answered from the cache only when the stored response allows it;
/// otherwise it goes to the origin.
pub fn hit_filter(authorized: bool, meta: &CacheMeta) -> Option<ForcedFreshness> {
    (authorized && !policy::may_serve_authorized(meta)).then_some(ForcedFreshness::ForceMiss)
}

/// `response_cache_filter`. After a 304, `resp` is Pingora's merge of the stored
/// headers; the 304 kept in `ctx` completes it. `authorized` as for [`hit_filter`].
pub fn response_cacheable(
    authorized: bool,
    resp: &ResponseHeader,
    route: &RouteCache,
    ctx: &mut CacheCtx,
) -> pingora::cache::RespCacheable {
    let merged = ctx
        .not_modified
        .take()
        .map(|nm| policy::merge_not_modified(resp, &nm));
    policy::response_cacheable(
        merged.as_ref().unwrap_or(resp),
        authorized,
        &route.rules(),
        SystemTime::now(),
    )
}

/// `upstream_response_filter`: remember the origin's answer; keep a 304 that
/// validates a stale entry for [`response_cacheable`].
pub fn upstream_response(session: &Session, resp: &ResponseHeader, ctx: &mut CacheCtx) {
    ctx.upstream_status = Some(resp.status.as_u16());
    if resp.status == http::StatusCode::NOT_MODIFIED
        && session.cache.phase() == pingora::cache::CachePhase::Stale
    {
        ctx.not_modified = Some(Box::new(resp.clone()));
    }
}

/// `should_serve_stale`: during revalidation (`error: None`) whenever the entry's
/// `stale-while-revalidate` window allows (Pingora checks the window first); on an
/// origin failure, a 5xx or a timeout, within `stale-if-error`.
pub fn should_serve_stale(error: Option<&Error>, ctx: &mut CacheCtx) -> bool {
    if let Some(ErrorType::HTTPStatus(code)) = error.map(|e| e.etype()) {
        // The 5xx never reached `upstream_response_filter`; keep it for `fwd-status`.
        ctx.upstream_status = Some(*code);
    }
    match error {
        None => true,
        Some(e) => {
            e.esource() == &ErrorSource::Upstream
                || matches!(e.etype(), ErrorType::HTTPStatus(c) if *c >= 500)
                || matches!(
                    e.etype(),
                    ErrorType::ConnectTimedout
                        | ErrorType::ConnectRefused
                        | ErrorType::ConnectError
                        | ErrorType::ReadTimedout
                        | ErrorType::WriteTimedout
                )
        }
    }
}

/// How fresh the served entry is, in whole seconds (negative when stale).
fn ttl(meta: &CacheMeta) -> i64 {
    let now = SystemTime::now();
    match meta.fresh_until().duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs().max(1)).unwrap_or(i64::MAX),
    }
}

/// `response_filter`: classify the request and build its `Cache-Status`.
pub fn outcome(session: &Session, ctx: &CacheCtx) -> (Outcome, String) {
    let cache = &session.cache;
    let outcome = Outcome::from_phase(
        cache.phase(),
        ctx.looked_up,
        ctx.vary_seen,
        cacheable_method(&session.req_header().method),
    );
    let ttl = match outcome {
        Outcome::Hit
        | Outcome::StaleWhileRevalidate
        | Outcome::StaleIfError
        | Outcome::Revalidated => cache.maybe_cache_meta().map(ttl),
        _ => None,
    };
    let collapsed = cache.lock_duration().is_some();
    let fwd_status = match outcome {
        Outcome::Hit | Outcome::StaleWhileRevalidate => None,
        _ => ctx.upstream_status,
    };
    let text = outcome.header(CACHE_NAME, ttl, fwd_status, collapsed);
    (outcome, text)
}

/// RFC 9111 section 4.4: a successful unsafe request invalidates the stored responses
/// for its URL, and for `Location` / `Content-Location` on the same host. Returns how
/// many were removed.
pub async fn invalidate_after_unsafe(req: &RequestHeader, resp: &ResponseHeader) -> usize {
    let m = &req.method;
    let unsafe_method =
        m == Method::POST || m == Method::PUT || m == Method::PATCH || m == Method::DELETE;
    let status = resp.status.as_u16();
    if !unsafe_method || !(200..400).contains(&status) {
        return 0;
    }
    let host = host(req);
    let mut targets = vec![Purge::Url {
        host: Some(host.clone()),
        path: req.uri.path().to_owned(),
        query: req.uri.query().map(str::to_owned),
    }];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(v) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(uri) = v.parse::<http::Uri>() else {
            continue;
        };
        let same_host = uri
            .authority()
            .is_none_or(|a| a.as_str().eq_ignore_ascii_case(&host));
        if same_host && uri.path().starts_with('/') {
            targets.push(Purge::Url {
                host: Some(host.clone()),
                path: uri.path().to_owned(),
                query: uri.query().map(str::to_owned),
            });
        }
    }
    let mut removed = 0;
    for t in &targets {
        removed += STORAGE.purge_matching(t);
    }
    removed
}

/// Drop hop-by-hop headers (and those named in `Connection`) from a message crossing
/// the gateway. Protocol upgrades keep theirs: they need them.
pub fn strip_hop_by_hop_request(req: &mut RequestHeader) {
    for name in policy::hop_by_hop_names(&req.headers) {
        req.remove_header(&name);
    }
}

/// Like [`strip_hop_by_hop_request`], for a response.
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader) {
    for name in policy::hop_by_hop_names(&resp.headers) {
        resp.remove_header(&name);
    }
}

/// Tags are for purging; like CDNs do, they are not shown to clients.
pub fn strip_tags(resp: &mut ResponseHeader) {
    resp.remove_header("cache-tag");
    resp.remove_header("surrogate-key");
}

/// Parse the admin purge body: `{"url": ".."}`, `{"prefix": ".."}`, `{"tag": ".."}` or
/// `{"all": true}` (exactly one).
pub fn parse_purge(body: &[u8]) -> Result<Purge, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("body must be JSON like {{\"url\": \"/path\"}}: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("body must be a JSON object".into());
    };
    if obj.len() != 1 {
        return Err("give exactly one of url, prefix, tag or all".into());
    }
    let text = |v: &Value, what: &str| -> Result<String, String> {
        match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(format!("{what} must be a non-empty string")),
        }
    };
    let (name, value) = obj
        .iter()
        .next()
        .ok_or_else(|| "give exactly one of url, prefix, tag or all".to_owned())?;
    match name.as_str() {
        "url" => {
            let raw = text(value, "url")?;
            let uri = raw
                .parse::<http::Uri>()
                .map_err(|_| format!("url {raw:?} is not a URL or absolute path"))?;
            if !uri.path().starts_with('/') {
                return Err(format!(
                    "url {raw:?} must be absolute (http://host/path or /path)"
                ));
            }
            Ok(Purge::Url {
                host: uri.authority().map(|a| a.as_str().to_ascii_lowercase()),
                path: uri.path().to_owned(),
                query: uri.query().map(str::to_owned),
            })
        }
        "prefix" => {
            let p = text(value, "prefix")?;
            if !p.starts_with('/') {
                return Err("prefix must start with /".into());
            }
            Ok(Purge::Prefix(p))
        }
        "tag" => Ok(Purge::Tag(text(value, "tag")?)),
        "all" => match value {
            Value::Bool(true) => Ok(Purge::All),
            _ => Err("all must be true".into()),
        },
        other => Err(format!(
            "unknown purge selector {other:?}: use url, prefix, tag or all"
        )),
    }
}

/// Run a purge; returns the number of stored responses removed.
pub fn purge(what: &Purge) -> usize {
    STORAGE.purge_matching(what)
}

/// A JSON summary for `GET /admin/cache`.
pub fn describe() -> Value {
    serde_json::json!({
        "stored_bytes": stored_bytes(),
        "max_bytes": EVICTION.weight_limit(),
        "stored_objects": STORAGE.objects(),
        "evictions": STORAGE.evictions(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_bodies() {
        let ok: &[(&str, Purge)] = &[
            (
                r#"{"url": "/a?b=1"}"#,
                Purge::Url {
                    host: None,
                    path: "/a".into(),
                    query: Some("b=1".into()),
                },
            ),
            (
                r#"{"url": "http://Example.com:8080/a"}"#,
                Purge::Url {
                    host: Some("example.com:8080".into()),
                    path: "/a".into(),
                    query: None,
                },
            ),
            (r#"{"prefix": "/api/"}"#, Purge::Prefix("/api/".into())),
            (r#"{"tag": "product-1"}"#, Purge::Tag("product-1".into())),
            (r#"{"all": true}"#, Purge::All),
        ];
        for (body, want) in ok {
            assert_eq!(parse_purge(body.as_bytes()).as_ref(), Ok(want), "{body}");
        }
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"url": "/a", "tag": "x"}"#,
            r#"{"url": ""}"#,
            r#"{"url": "relative"}"#,
            r#"{"prefix": "api"}"#,
            r#"{"all": false}"#,
            r#"{"everything": true}"#,
            r#"{"tag": 3}"#,
        ] {
            assert!(parse_purge(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
