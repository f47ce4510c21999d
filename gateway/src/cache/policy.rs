//! Owns the RFC 9111 storage and reuse rules on top of Pingora's parsers: which
//! responses may be stored and for how long, how `Vary` splits variants, when a stored
//! response may answer a request with `Authorization`, and which hop-by-hop headers
//! never reach the cache or the other side.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, StatusCode, header};
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora::http::ResponseHeader;

/// What to do with a response that sets a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCookie {
    /// Do not store it (default): a cookie is usually one user's.
    Bypass,
    /// Store it without its `Set-Cookie` headers (nobody, the first client included,
    /// receives the cookie from a cacheable response).
    Strip,
}

/// The inputs of a storage decision that come from the route.
#[derive(Clone, Copy, Debug)]
pub struct StoreRules {
    /// Freshness for responses that declare none; `None`: such responses are not stored.
    pub default_ttl: Option<Duration>,
    pub set_cookie: SetCookie,
}

/// Reasons we give Pingora (and `Cache-Status` `detail=`) for not storing.
pub const REASON_AUTHORIZATION: &str = "authorization";
pub const REASON_SET_COOKIE: &str = "set-cookie";
pub const REASON_VARY_STAR: &str = "vary-star";
pub const REASON_STATUS: &str = "status";

/// Custom reasons that say nothing about the next request for the same key, so the
/// cacheability predictor must not remember them (an anonymous request after an
/// authorized one may well be cacheable).
pub fn predictor_skips(reason: &'static str) -> bool {
    reason == REASON_AUTHORIZATION
}

/// Explicit freshness makes these storable (RFC 9110 section 15: final statuses a
/// cache understands; 206 and 304 are never stored as such).
fn storable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 307 | 308 | 404 | 405 | 410 | 414 | 451 | 501
    )
}

/// Only these may get the route's default TTL (RFC 9110 section 15.1, "heuristically
/// cacheable"); a 302 or a 451 without freshness of its own is never stored.
fn heuristic_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// No freshness from defaults: anything a response did not declare comes from the route.
const NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// Hop-by-hop headers (RFC 9110 section 7.6.1). `Transfer-Encoding` is not listed: Pingora
/// frames each side itself and needs it to read the body.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

/// Names of headers to drop before a message crosses the gateway: the fixed hop-by-hop
/// set and every field named in `Connection` (except the framing headers Pingora owns).
pub fn hop_by_hop_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = HOP_BY_HOP
        .iter()
        .map(|n| HeaderName::from_static(n))
        .collect();
    for v in headers.get_all(header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',') {
            let token = token.trim();
            if token.is_empty() {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes())
                && name != header::TRANSFER_ENCODING
                && name != header::CONTENT_LENGTH
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    names
}

/// Decide whether `resp` (the answer to a GET, with or without `Authorization`) may be
/// stored, and build its metadata. The response keeps exactly the freshness it declared
/// (`s-maxage` > `max-age` > `Expires`; `no-cache` = stored but always revalidated),
/// minus the `Age` it already has; `default_ttl` applies only when it declared none.
pub fn response_cacheable(
    resp: &ResponseHeader,
    authorization: bool,
    rules: &StoreRules,
    now: SystemTime,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    if !storable_status(resp.status) {
        return Uncacheable(NoCacheReason::Custom(REASON_STATUS));
    }
    let cc = CacheControl::from_resp_headers(resp);
    if authorization
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return Uncacheable(NoCacheReason::Custom(REASON_AUTHORIZATION));
    }
    if cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == Cacheable::No)
    {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    if vary_names(&resp.headers).is_none() {
        return Uncacheable(NoCacheReason::Custom(REASON_VARY_STAR));
    }
    let mut header = resp.clone();
    if header.headers.contains_key(header::SET_COOKIE) {
        match rules.set_cookie {
            SetCookie::Bypass => return Uncacheable(NoCacheReason::Custom(REASON_SET_COOKIE)),
            SetCookie::Strip => {
                header.remove_header(&header::SET_COOKIE);
            }
        }
    }
    // RFC 9111 section 4.2.3: the response was already this old when it arrived.
    let age = resp
        .headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    let explicit = cc.as_ref().and_then(|c| c.fresh_duration());
    let fresh_until = match explicit {
        Some(ttl) if ttl.is_zero() => now.checked_sub(Duration::from_secs(1)),
        Some(ttl) => (now + ttl).checked_sub(age),
        None => filters::calculate_expires_header_time(resp).or_else(|| {
            rules
                .default_ttl
                .filter(|_| heuristic_status(resp.status))
                .and_then(|ttl| (now + ttl).checked_sub(age))
        }),
    };
    let Some(fresh_until) = fresh_until else {
        return Uncacheable(NoCacheReason::OriginNotCache);
    };
    let (swr, sie) = filters::calculate_serve_stale_durations(cc.as_ref(), &NO_DEFAULTS);
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    for name in hop_by_hop_names(&resp.headers) {
        header.remove_header(&name);
    }
    let created = now.checked_sub(age).unwrap_or(now);
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, created, swr, sie, header))
}

/// Fields a 304 never replaces in the stored response (RFC 9111 section 3.2): the
/// stored body's framing and encoding, the variant selection, and cookies.
const NOT_FROM_304: [&str; 6] = [
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "vary",
    "set-cookie",
];

/// RFC 9111 section 4.3.4: freshen a stored response with every field of the 304 that
/// validated it (Pingora's own merge copies only the freshness fields and `ETag`).
pub fn merge_not_modified(
    stored: &ResponseHeader,
    not_modified: &ResponseHeader,
) -> ResponseHeader {
    let mut merged = stored.clone();
    let skip = hop_by_hop_names(&not_modified.headers);
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in &not_modified.headers {
        if NOT_FROM_304.contains(&name.as_str()) || skip.contains(name) {
            continue;
        }
        // First value of a field replaces the stored ones; later values are appended.
        let result = if replaced.contains(&name) {
            merged
                .append_header(name.clone(), value.clone())
                .map(|_| ())
        } else {
            replaced.push(name);
            merged.insert_header(name.clone(), value.clone())
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not merge a 304 header");
        }
    }
    merged
}

/// The lower-cased header names in `Vary`; `None` for `Vary: *` (never served from cache).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in headers.get_all(header::VARY) {
        let text = String::from_utf8_lossy(v.as_bytes());
        for token in text.split(',') {
            let token = token.trim().to_ascii_lowercase();
            if token == "*" {
                return None;
            }
            if !token.is_empty() && !names.contains(&token) {
                names.push(token);
            }
        }
    }
    Some(names)
}

/// The variant of a stored response a request selects: the values of the request
/// headers its `Vary` names (absent and empty differ). `None` when it has no `Vary`.
pub fn variance(meta_headers: &HeaderMap, req_headers: &HeaderMap) -> Option<HashBinary> {
    let names = vary_names(meta_headers)?;
    if names.is_empty() {
        return None;
    }
    let mut builder = VarianceBuilder::new();
    for name in names {
        let mut value: Vec<u8> = Vec::new();
        let mut present = false;
        for v in req_headers.get_all(name.as_str()) {
            if present {
                value.push(b',');
            }
            present = true;
            value.extend_from_slice(v.as_bytes());
        }
        if !present {
            value = b"\0absent".to_vec();
        }
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// RFC 9111 section 3.5: a stored response may answer a request with `Authorization`
/// only if it says so (`public`, `s-maxage` or `must-revalidate`).
pub fn may_serve_authorized(meta: &CacheMeta) -> bool {
    CacheControl::from_resp_headers(meta.response_header())
        .is_some_and(|c| c.allow_caching_authorized_req())
}

/// Tags of a response, for purging: `Cache-Tag` (comma separated) and `Surrogate-Key`
/// (space separated).
pub fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for (name, sep) in [("cache-tag", ','), ("surrogate-key", ' ')] {
        for v in headers.get_all(name) {
            for t in String::from_utf8_lossy(v.as_bytes()).split(sep) {
                let t = t.trim();
                if !t.is_empty() && !out.iter().any(|o| o == t) {
                    out.push(t.to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const NO_TTL: StoreRules = StoreRules {
        default_ttl: None,
        set_cookie: SetCookie::Bypass,
    };
    const TTL_60: StoreRules = StoreRules {
        default_ttl: Some(Duration::from_secs(60)),
        set_cookie: SetCookie::Bypass,
    };
    const STRIP: StoreRules = StoreRules {
        default_ttl: None,
        set_cookie: SetCookie::Strip,
    };

    /// Outcome: None = not stored; Some(n) = stored, fresh for n seconds (negative: stale).
    fn outcome(r: &ResponseHeader, auth: bool, rules: &StoreRules) -> Option<i64> {
        let now = SystemTime::now();
        match response_cacheable(r, auth, rules, now) {
            RespCacheable::Cacheable(meta) => Some(match meta.fresh_until().duration_since(now) {
                Ok(d) => d.as_secs_f64().round() as i64,
                Err(e) => -(e.duration().as_secs_f64().round() as i64),
            }),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn storage_matrix() {
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        type Case<'a> = (
            u16,
            &'a [(&'a str, &'a str)],
            bool,
            &'a StoreRules,
            Option<i64>,
        );
        let cases: &[Case] = &[
            (
                200,
                &[("cache-control", "max-age=10")],
                false,
                &NO_TTL,
                Some(10),
            ),
            (
                200,
                &[("cache-control", "s-maxage=20, max-age=10")],
                false,
                &NO_TTL,
                Some(20),
            ),
            (200, &[], false, &NO_TTL, None),
            (200, &[], false, &TTL_60, Some(60)),
            (
                200,
                &[("cache-control", "max-age=5")],
                false,
                &TTL_60,
                Some(5),
            ),
            (
                200,
                &[("cache-control", "no-store, max-age=10")],
                false,
                &TTL_60,
                None,
            ),
            (
                200,
                &[("cache-control", "private, max-age=10")],
                false,
                &TTL_60,
                None,
            ),
            (
                200,
                &[("cache-control", "no-cache")],
                false,
                &NO_TTL,
                Some(-1),
            ),
            (200, &[("cache-control", "public")], false, &NO_TTL, None),
            (
                200,
                &[("cache-control", "public")],
                false,
                &TTL_60,
                Some(60),
            ),
            (200, &[("expires", &future)], false, &NO_TTL, Some(30)),
            (
                200,
                &[("cache-control", "max-age=10"), ("age", "4")],
                false,
                &NO_TTL,
                Some(6),
            ),
            (
                200,
                &[("cache-control", "max-age=10"), ("age", "40")],
                false,
                &NO_TTL,
                Some(-30),
            ),
            (200, &[("cache-control", "max-age=10")], true, &NO_TTL, None),
            (
                200,
                &[("cache-control", "public, max-age=10")],
                true,
                &NO_TTL,
                Some(10),
            ),
            (
                200,
                &[("cache-control", "s-maxage=10")],
                true,
                &NO_TTL,
                Some(10),
            ),
            (
                200,
                &[("cache-control", "must-revalidate, max-age=10")],
                true,
                &NO_TTL,
                Some(10),
            ),
            (
                200,
                &[("cache-control", "max-age=10"), ("set-cookie", "a=b")],
                false,
                &NO_TTL,
                None,
            ),
            (
                200,
                &[("cache-control", "max-age=10"), ("set-cookie", "a=b")],
                false,
                &STRIP,
                Some(10),
            ),
            (
                200,
                &[("cache-control", "max-age=10"), ("vary", "*")],
                false,
                &NO_TTL,
                None,
            ),
            (
                206,
                &[("cache-control", "max-age=10")],
                false,
                &NO_TTL,
                None,
            ),
            (
                500,
                &[("cache-control", "max-age=10")],
                false,
                &NO_TTL,
                None,
            ),
            (503, &[], false, &TTL_60, None),
            (
                302,
                &[("cache-control", "max-age=10")],
                false,
                &NO_TTL,
                Some(10),
            ),
            (302, &[], false, &TTL_60, None),
            (404, &[], false, &TTL_60, Some(60)),
        ];
        for (i, (status, headers, auth, rules, want)) in cases.iter().enumerate() {
            let got = outcome(&resp(*status, headers), *auth, rules);
            let ok = match (got, want) {
                (Some(g), Some(w)) => (g - w).abs() <= 1,
                (g, w) => g == *w,
            };
            assert!(
                ok,
                "case {i} ({status} {headers:?} auth={auth}): got {got:?}, want {want:?}"
            );
        }
        // An invalid `Expires` means "already expired" (RFC 9111 section 5.3): stored stale.
        assert!(outcome(&resp(200, &[("expires", "0")]), false, &NO_TTL).is_some_and(|s| s < 0));
    }

    #[test]
    fn stored_copy_drops_cookies_private_fields_and_hop_by_hop() {
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=10, private=\"x-user\""),
                ("x-user", "alice"),
                ("set-cookie", "a=b"),
                ("connection", "x-hop, keep-alive"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("x-keep", "yes"),
            ],
        );
        // A qualified `private="x-user"` (RFC 9111 section 5.2.2.7) allows a shared
        // cache to store the response without the named field.
        let RespCacheable::Cacheable(meta) =
            response_cacheable(&r, false, &STRIP, SystemTime::now())
        else {
            panic!("qualified private is storable without its fields");
        };
        assert!(!meta.response_header().headers.contains_key("x-user"));
        // An unqualified private is never stored.
        let r2 = resp(200, &[("cache-control", "max-age=10, private")]);
        assert!(!response_cacheable(&r2, false, &STRIP, SystemTime::now()).is_cacheable());
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=10, no-cache=\"x-user\""),
                ("x-user", "alice"),
                ("set-cookie", "a=b"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("x-keep", "yes"),
            ],
        );
        let RespCacheable::Cacheable(meta) =
            response_cacheable(&r, false, &STRIP, SystemTime::now())
        else {
            panic!("should be stored");
        };
        let h = &meta.response_header().headers;
        for gone in ["x-user", "set-cookie", "connection", "x-hop", "keep-alive"] {
            assert!(!h.contains_key(gone), "{gone} must not be stored");
        }
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn vary_selects_variants() {
        let mut meta = HeaderMap::new();
        meta.append("vary", "Accept-Language, accept-encoding".parse().unwrap());
        let req = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let de = variance(&meta, &req(&[("accept-language", "de"), ("x", "1")])).unwrap();
        let de2 = variance(&meta, &req(&[("accept-language", "de"), ("x", "2")])).unwrap();
        let en = variance(&meta, &req(&[("accept-language", "en")])).unwrap();
        let empty = variance(&meta, &req(&[("accept-language", "")])).unwrap();
        let absent = variance(&meta, &req(&[])).unwrap();
        assert_eq!(de, de2);
        assert_ne!(de, en);
        assert_ne!(empty, absent);
        assert_eq!(variance(&HeaderMap::new(), &req(&[])), None);
        let mut star = HeaderMap::new();
        star.append("vary", "accept, *".parse().unwrap());
        assert_eq!(vary_names(&star), None);
    }

    #[test]
    fn not_modified_refreshes_stored_fields() {
        let stored = resp(
            200,
            &[
                ("content-length", "10"),
                ("x-version", "1"),
                ("x-old", "o"),
                ("vary", "accept"),
            ],
        );
        let nm = resp(
            304,
            &[
                ("x-version", "2"),
                ("x-multi", "a"),
                ("x-multi", "b"),
                ("content-length", "0"),
                ("vary", "*"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ],
        );
        let m = merge_not_modified(&stored, &nm);
        assert_eq!(m.status, 200);
        assert_eq!(m.headers["x-version"], "2");
        assert_eq!(m.headers["x-old"], "o");
        assert_eq!(m.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(m.headers["content-length"], "10");
        assert_eq!(m.headers["vary"], "accept");
        assert!(!m.headers.contains_key("x-hop"));
    }

    #[test]
    fn tags_from_both_headers() {
        let mut h = HeaderMap::new();
        h.append("cache-tag", "a, b".parse().unwrap());
        h.append("surrogate-key", "b c  d".parse().unwrap());
        assert_eq!(tags(&h), vec!["a", "b", "c", "d"]);
    }
}
