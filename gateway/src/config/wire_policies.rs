//! Owns the serde mirror of the edge-policy sections (`consumers`, `cors_policies`, and
//! the `ip`, `cors`, `compression`, `auth.api_key`, `auth.any_of` and `auth.forward`
//! blocks of routes and listeners), field for field. A sibling of `wire`, which
//! re-exports it; like `wire`, nothing here leaves the config module.

use std::fmt;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::wire::RouteJwt;

/// One API consumer: its name, groups and key digests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// SHA-256 hex digests of the consumer's keys (`gateway hash-key`); never raw keys.
    #[serde(default)]
    pub keys: Vec<String>,
    /// A file of digests, one per line; reloaded when it changes.
    pub keys_file: Option<String>,
    /// Keys of a disabled consumer get 403.
    #[serde(default)]
    pub disabled: bool,
}

/// A CORS policy (named in `cors_policies`, or inline on a route or listener).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Exact origins, `https://*.example.com`, or `*`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Default `[GET, HEAD, POST]`; `[*]` allows whatever a preflight asks for.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for; `[*]` allows any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    pub max_age: Option<String>,
}

/// A route's or listener's `cors:`: a `cors_policies` name, an inline policy, or
/// `false` (no CORS, overriding a listener default).
#[derive(Debug)]
pub enum CorsRef {
    Off,
    Name(String),
    Inline(Cors),
}

impl<'de> Deserialize<'de> for CorsRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CorsRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a cors_policies name, a CORS policy mapping, or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<CorsRef, E> {
                if v {
                    Err(E::custom(
                        "cors: true names no policy; give a cors_policies name or a mapping",
                    ))
                } else {
                    Ok(CorsRef::Off)
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CorsRef, E> {
                Ok(CorsRef::Name(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CorsRef, A::Error> {
                Cors::deserialize(de::value::MapAccessDeserializer::new(map)).map(CorsRef::Inline)
            }
        }
        d.deserialize_any(V)
    }
}

/// `ip: {allow, deny}`: CIDRs or single addresses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Response compression.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// Default true; false turns off a listener's default for this route.
    pub enabled: Option<bool>,
    /// In order of preference; default `[zstd, br, gzip]`.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Responses with a smaller Content-Length are not compressed; default 1024.
    pub min_bytes: Option<u64>,
    /// Default: text/*, JSON, XML, JavaScript, SVG.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// One level for every algorithm, or one per algorithm (`{gzip: 6, zstd: 3}`).
    pub level: Option<CompressionLevel>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CompressionLevel {
    All(u32),
    Each(IndexMap<String, u32>),
}

/// `auth.api_key`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteApiKey {
    /// `header:NAME`, `query:NAME`, `cookie:NAME`; default `[header:x-api-key]`.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Upstream header carrying the consumer name; default `X-Consumer`.
    pub consumer_header: Option<String>,
    #[serde(default)]
    pub allow_groups: Vec<String>,
    #[serde(default)]
    pub deny_groups: Vec<String>,
    /// Remove the key before forwarding; default true.
    pub strip: Option<bool>,
}

/// One alternative of `auth.any_of`: exactly one of `jwt` or `api_key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthAlternative {
    pub jwt: Option<RouteJwt>,
    pub api_key: Option<RouteApiKey>,
}

/// `auth.forward`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuth {
    /// The check endpoint, `http(s)://host[:port]/path`.
    pub url: String,
    /// Per check; default 2s.
    pub timeout: Option<String>,
    /// Request headers sent along (`[*]`: all); default `[authorization, cookie]`.
    pub send_headers: Option<Vec<String>>,
    #[serde(default)]
    pub send_body: bool,
    /// Largest body sent with `send_body` (at most 64 KiB, the default); larger: 413.
    pub max_body: Option<u64>,
    /// Headers of a 2xx answer set on the upstream request.
    #[serde(default)]
    pub copy_response_headers: Vec<String>,
    pub cache: Option<ForwardAuthCache>,
    /// `deny` (default: 503) or `allow` when the service cannot be asked.
    pub on_error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthCache {
    pub ttl: String,
    /// What the decision depends on: `header:NAME`, `cookie:NAME`, `query:NAME`,
    /// `client_ip`, `method`, `path`.
    pub key: Vec<String>,
    /// Default 10000.
    pub max_entries: Option<usize>,
}

/// `access_log:` — `off` (or `false`), or the writer's settings.
#[derive(Debug)]
pub enum AccessLog {
    Off,
    On(AccessLogSettings),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSettings {
    /// `stdout` (default) or a file path (relative: next to the config file).
    pub path: Option<String>,
    /// `json` (the default and only format).
    pub format: Option<String>,
    /// Write once this many bytes are queued; default 65536.
    pub buffer_bytes: Option<super::wire::Size>,
    /// ...or after this long; default 1s.
    pub flush_interval: Option<String>,
    /// Bound of the queue; lines beyond it are dropped and counted; default 16 batches.
    pub max_queued_bytes: Option<super::wire::Size>,
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AccessLog;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`off` or an access log mapping (path, format, buffer_bytes, flush_interval)",
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AccessLog, E> {
                if v {
                    Err(E::custom(
                        "access_log: true is not a setting; write `off` or a mapping (e.g. {path: stdout})",
                    ))
                } else {
                    Ok(AccessLog::Off)
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AccessLog, E> {
                if v == "off" {
                    Ok(AccessLog::Off)
                } else {
                    Err(E::custom(format!(
                        "access_log: {v:?} is not a setting; write `off` or a mapping (e.g. {{path: {v}}})"
                    )))
                }
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<AccessLog, M::Error> {
                AccessLogSettings::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(AccessLog::On)
            }
        }
        d.deserialize_any(V)
    }
}
