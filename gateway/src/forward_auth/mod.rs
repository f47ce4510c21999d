//! Owns forward auth (`auth.forward`, like Traefik's ForwardAuth or nginx
//! `auth_request`): the typed spec, the compiled check with its decision cache, and the
//! request-phase step ([`ForwardAuth::check`]) that asks an external service whether a
//! request may pass. A 2xx lets it through (named response headers are copied onto the
//! upstream request); any other answer is returned to the client as the service gave it
//! (a 302 to a login page works); a timeout or an unusable answer is an error, which
//! `on_error` turns into a 503 (`deny`, the default) or a pass (`allow`).
//!
//! One pooled HTTP client serves every check of the process (it outlives reloads, so
//! keepalive connections to the auth service stay warm); redirects are never followed.

pub mod cache;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

pub use cache::{CacheSpec, DecisionCache, KeyPart};

/// Longest auth-service body read (a login page, an error document).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What to do when the auth service cannot be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// 503 `forward_auth_unavailable`.
    Deny,
    /// Let the request through unauthenticated.
    Allow,
}

/// Request headers sent to the auth service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendHeaders {
    /// Every request header except hop-by-hop and framing ones.
    All,
    List(Vec<HeaderName>),
}

/// A validated `auth.forward`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardAuthSpec {
    /// `http(s)://host[:port]/path` of the check endpoint.
    pub url: String,
    pub timeout: Duration,
    pub send_headers: SendHeaders,
    /// Also send the request body (buffered, at most `max_body` bytes).
    pub send_body: bool,
    pub max_body: usize,
    /// Headers of a 2xx answer copied onto the upstream request.
    pub copy_response_headers: Vec<HeaderName>,
    pub cache: Option<CacheSpec>,
    pub on_error: OnError,
}

/// The request facts a check sends.
#[derive(Debug)]
pub struct CheckRequest<'a> {
    pub method: &'a Method,
    /// The original path and query, as received.
    pub uri: &'a str,
    pub host: &'a str,
    pub proto: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub request_id: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Option<Bytes>,
    /// `traceparent` and `tracestate` (may be empty) of the check's span when the
    /// gateway traces: they replace whatever the client sent. `None`: the client's
    /// trace headers pass as the other headers do.
    pub trace: Option<(&'a str, &'a str)>,
}

/// A refusal as the auth service gave it: status, end-to-end headers, body.
#[derive(Debug)]
pub struct Denial {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What a check decided.
#[derive(Clone, Debug)]
pub enum Decision {
    Allow(Arc<Vec<(HeaderName, HeaderValue)>>),
    Deny(Arc<Denial>),
    /// The service could not be asked or gave no usable answer (`why` is static text).
    Error(&'static str),
}

/// A compiled `auth.forward` with its decision cache.
#[derive(Debug)]
pub struct ForwardAuth {
    pub spec: ForwardAuthSpec,
    pub cache: Option<DecisionCache>,
    /// An unchanged spec keeps its cache across reloads.
    pub fingerprint: String,
}

/// Hop-by-hop and framing headers, never sent to or copied from the auth service.
const SKIPPED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "expect",
];

fn skipped(name: &HeaderName) -> bool {
    SKIPPED.contains(&name.as_str())
}

static CLIENT: LazyLock<Option<reqwest::Client>> = LazyLock::new(|| {
    reqwest::Client::builder()
        // The answer, redirects included, goes back to the client as it is.
        .redirect(reqwest::redirect::Policy::none())
        // Environment proxies must not reroute authorization decisions.
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| tracing::error!(error = %e, "cannot build the forward-auth HTTP client"))
        .ok()
});

impl ForwardAuth {
    /// Compile, taking over `previous`' cache when the spec is unchanged.
    pub fn compile(
        spec: &ForwardAuthSpec,
        previous: Option<&Arc<ForwardAuth>>,
    ) -> Arc<ForwardAuth> {
        let fingerprint = format!("{spec:?}");
        if let Some(p) = previous.filter(|p| p.fingerprint == fingerprint) {
            return Arc::clone(p);
        }
        Arc::new(ForwardAuth {
            cache: spec.cache.as_ref().map(DecisionCache::new),
            spec: spec.clone(),
            fingerprint,
        })
    }

    /// The forward-auth step. Returns the decision and whether it came from the cache.
    pub async fn check(&self, req: &CheckRequest<'_>) -> (Decision, bool) {
        let key = self
            .cache
            .as_ref()
            .map(|c| (c, c.key(req.method, req.uri, req.client_ip, req.headers)));
        if let Some((cache, key)) = &key
            && let Some(hit) = cache.get(key, Instant::now())
        {
            return (hit, true);
        }
        let decision = self.ask(req).await;
        if let Some((cache, key)) = key {
            cache.insert(key, &decision, Instant::now());
        }
        (decision, false)
    }

    async fn ask(&self, req: &CheckRequest<'_>) -> Decision {
        let Some(client) = CLIENT.as_ref() else {
            return Decision::Error("no HTTP client");
        };
        let method = if self.spec.send_body {
            req.method.clone()
        } else {
            Method::GET
        };
        let mut headers = HeaderMap::new();
        match &self.spec.send_headers {
            SendHeaders::All => {
                for (k, v) in req.headers {
                    if !skipped(k) {
                        headers.append(k.clone(), v.clone());
                    }
                }
            }
            SendHeaders::List(names) => {
                for name in names {
                    for v in req.headers.get_all(name) {
                        headers.append(name.clone(), v.clone());
                    }
                }
            }
        }
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("x-forwarded-method", req.method.as_str());
        set("x-forwarded-uri", req.uri);
        set("x-forwarded-host", req.host);
        set("x-forwarded-proto", req.proto);
        set("x-request-id", req.request_id);
        if let Some(ip) = req.client_ip {
            set("x-forwarded-for", &ip.to_string());
        }
        if let Some((parent, state)) = req.trace {
            set("traceparent", parent);
            if state.is_empty() {
                headers.remove("tracestate");
            } else {
                set("tracestate", state);
            }
        }
        let mut builder = client
            .request(method, &self.spec.url)
            .headers(headers)
            .timeout(self.spec.timeout);
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let mut resp = match builder.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Decision::Error("timed out"),
            Err(e) if e.is_connect() => return Decision::Error("connection failed"),
            Err(_) => return Decision::Error("no usable answer"),
        };
        let status = resp.status();
        if status.is_success() {
            let copied: Vec<(HeaderName, HeaderValue)> = self
                .spec
                .copy_response_headers
                .iter()
                .flat_map(|name| {
                    resp.headers()
                        .get_all(name)
                        .iter()
                        .map(|v| (name.clone(), v.clone()))
                })
                .collect();
            // The body of a 2xx is not used; reading it (bounded) keeps the connection
            // reusable.
            let _ = read_bounded(&mut resp).await;
            return Decision::Allow(Arc::new(copied));
        }
        let headers: Vec<(HeaderName, HeaderValue)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| !skipped(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match read_bounded(&mut resp).await {
            Ok(body) => Decision::Deny(Arc::new(Denial {
                status,
                headers,
                body,
            })),
            Err(why) => Decision::Error(why),
        }
    }

    pub fn describe(&self) -> Value {
        json!({
            "url": self.spec.url,
            "timeout_ms": self.spec.timeout.as_millis() as u64,
            "send_headers": match &self.spec.send_headers {
                SendHeaders::All => json!("*"),
                SendHeaders::List(l) => json!(l.iter().map(|h| h.as_str()).collect::<Vec<_>>()),
            },
            "send_body": self.spec.send_body,
            "copy_response_headers": self.spec.copy_response_headers.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "cache": self.spec.cache.as_ref().map(|c| json!({
                "ttl_ms": c.ttl.as_millis() as u64,
                "key": c.key.iter().map(KeyPart::describe).collect::<Vec<_>>(),
                "max_entries": c.max_entries,
                "cached_decisions": self.cache.as_ref().map_or(0, DecisionCache::len),
            })),
            "on_error": match self.spec.on_error { OnError::Deny => "deny", OnError::Allow => "allow" },
        })
    }
}

/// The answer's body, at most [`MAX_ANSWER_BYTES`].
async fn read_bounded(resp: &mut reqwest::Response) -> Result<Bytes, &'static str> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_ANSWER_BYTES {
                    return Err("answer body too large");
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(e) if e.is_timeout() => return Err("timed out"),
            Err(_) => return Err("no usable answer"),
        }
    }
}

#[cfg(test)]
mod tests;
