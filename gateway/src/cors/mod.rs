//! Owns CORS (the Fetch standard's CORS protocol) as a route policy: the typed spec
//! (`CorsSpec`, from a named `cors_policies` entry or an inline `cors:` block), its
//! compiled form with the header values built once (`CorsPolicy`), the preflight
//! decision (`preflight`, answered by the gateway itself) and the headers for an actual
//! request (`actual`), which [`module::CorsModule`] puts on the response after the
//! cache, so a stored response never carries one origin's answer to another.
//!
//! The gateway owns CORS on a route with a policy: `Access-Control-*` headers from the
//! upstream (or the cache) are replaced by the policy's answer.

pub mod module;
pub mod origin;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use serde_json::{Value, json};

pub use module::CorsModule;
pub use origin::{OriginRule, valid_origin};

/// Which methods or headers a policy allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed<T> {
    /// `*`: whatever the preflight asks for (answered by echoing the request, which also
    /// works with credentials, where a literal `*` does not).
    Any,
    List(Vec<T>),
}

/// A validated CORS policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorsSpec {
    /// The `cors_policies` name, or `None` for an inline block.
    pub name: Option<String>,
    pub origins: Vec<OriginRule>,
    pub methods: Allowed<Method>,
    pub headers: Allowed<HeaderName>,
    /// Response headers scripts may read (`*` only without credentials).
    pub expose: Allowed<HeaderName>,
    pub credentials: bool,
    /// `Access-Control-Max-Age` in seconds.
    pub max_age: Option<u64>,
}

/// What a route does about CORS: take its listener's default, nothing, or a policy.
#[derive(Clone, Debug, Default)]
pub enum RouteCors {
    #[default]
    Inherit,
    Off,
    On(Arc<CorsPolicy>),
}

impl RouteCors {
    /// The route's policy, else the listener default (unless the route turned CORS off).
    pub fn resolve<'a>(&'a self, default: Option<&'a Arc<CorsPolicy>>) -> Option<&'a CorsPolicy> {
        match self {
            RouteCors::Inherit => default.map(|p| &**p),
            RouteCors::Off => None,
            RouteCors::On(p) => Some(p),
        }
    }
}

/// A compiled policy: the spec and every header value that does not depend on the
/// request.
#[derive(Debug)]
pub struct CorsPolicy {
    pub spec: CorsSpec,
    any_origin: bool,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

fn join<T: AsRef<str>>(items: &[T]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    let text = items
        .iter()
        .map(|i| i.as_ref())
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&text).ok()
}

const TRUE: HeaderValue = HeaderValue::from_static("true");
const ANY: HeaderValue = HeaderValue::from_static("*");

/// Why a preflight was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Method,
    Headers,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Origin => "origin_not_allowed",
            Refusal::Method => "method_not_allowed",
            Refusal::Headers => "headers_not_allowed",
        }
    }
}

/// Headers to put on a response, and whether the answer depends on `Origin`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorsAnswer {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Add `Vary: Origin` (the policy answers origins differently).
    pub vary_origin: bool,
    /// Preflights that echo the request also vary on what they echo.
    pub vary_request: bool,
}

/// An `OPTIONS` request with `Origin` and `Access-Control-Request-Method`: a CORS
/// preflight, which the gateway answers itself.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a preflight asks about, if it is a valid method token.
pub fn requested_method(headers: &HeaderMap) -> Option<Method> {
    let v = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let m = Method::from_bytes(v.as_bytes()).ok()?;
    // Fetch upper-cases the standard methods before asking.
    Some(m)
}

/// The header names a preflight asks about (`Access-Control-Request-Headers`, over
/// every line of it); `None` when one of them is not a header name.
fn requested_headers(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut out = Vec::new();
    for v in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let text = v.to_str().ok()?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            out.push(HeaderName::from_bytes(name.as_bytes()).ok()?);
        }
    }
    Some(out)
}

impl CorsPolicy {
    pub fn compile(spec: &CorsSpec) -> CorsPolicy {
        let names = |a: &Allowed<HeaderName>| match a {
            Allowed::Any => None,
            Allowed::List(l) => join(l),
        };
        CorsPolicy {
            any_origin: spec.origins.contains(&OriginRule::Any),
            allow_methods: match &spec.methods {
                Allowed::Any => None,
                Allowed::List(l) => join(l),
            },
            allow_headers: names(&spec.headers),
            expose: match &spec.expose {
                Allowed::Any => Some(ANY),
                Allowed::List(l) => join(l),
            },
            max_age: spec.max_age.map(HeaderValue::from),
            spec: spec.clone(),
        }
    }

    /// Whether the policy answers every origin alike: `*` without credentials.
    fn origin_independent(&self) -> bool {
        self.any_origin && !self.spec.credentials
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, or `None` when
    /// the origin is not allowed (or not a well-formed origin at all).
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        if self.origin_independent() {
            return Some(ANY);
        }
        let origin = origin?;
        let text = origin.to_str().ok()?;
        if !valid_origin(text) {
            return None;
        }
        let lower = text.to_ascii_lowercase();
        self.spec
            .origins
            .iter()
            .any(|rule| rule.matches(&lower))
            .then(|| origin.clone())
    }

    /// The answer to a preflight: the headers of the 204, or why it is refused.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<CorsAnswer, Refusal> {
        let allow_origin = self
            .allow_origin(headers.get(header::ORIGIN))
            .ok_or(Refusal::Origin)?;
        let method = requested_method(headers).ok_or(Refusal::Method)?;
        let mut answer = CorsAnswer {
            vary_origin: !self.origin_independent(),
            ..CorsAnswer::default()
        };
        answer
            .headers
            .push((header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin));
        if self.spec.credentials {
            answer
                .headers
                .push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        match &self.spec.methods {
            Allowed::Any => {
                answer.vary_request = true;
                if let Ok(v) = HeaderValue::from_str(method.as_str()) {
                    answer
                        .headers
                        .push((header::ACCESS_CONTROL_ALLOW_METHODS, v));
                }
            }
            Allowed::List(list) => {
                if !list.contains(&method) {
                    return Err(Refusal::Method);
                }
                if let Some(v) = &self.allow_methods {
                    answer
                        .headers
                        .push((header::ACCESS_CONTROL_ALLOW_METHODS, v.clone()));
                }
            }
        }
        let asked = requested_headers(headers).ok_or(Refusal::Headers)?;
        match &self.spec.headers {
            Allowed::Any => {
                answer.vary_request = true;
                if let Some(v) = join(&asked) {
                    answer
                        .headers
                        .push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
                }
            }
            Allowed::List(list) => {
                if asked.iter().any(|h| !list.contains(h)) {
                    return Err(Refusal::Headers);
                }
                if let Some(v) = &self.allow_headers {
                    answer
                        .headers
                        .push((header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone()));
                }
            }
        }
        if let Some(v) = &self.max_age {
            answer
                .headers
                .push((header::ACCESS_CONTROL_MAX_AGE, v.clone()));
        }
        Ok(answer)
    }

    /// The CORS headers of the response to an actual (non-preflight) request: none for an
    /// origin that is not allowed, which then gets the normal response.
    pub fn actual(&self, headers: &HeaderMap) -> CorsAnswer {
        let mut answer = CorsAnswer {
            vary_origin: !self.origin_independent(),
            ..CorsAnswer::default()
        };
        let Some(allow_origin) = self.allow_origin(headers.get(header::ORIGIN)) else {
            return answer;
        };
        answer
            .headers
            .push((header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin));
        if self.spec.credentials {
            answer
                .headers
                .push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        if let Some(v) = &self.expose {
            answer
                .headers
                .push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone()));
        }
        answer
    }

    /// For `/admin/routes` and `explain`.
    pub fn describe(&self) -> Value {
        let list = |a: &Allowed<HeaderName>| match a {
            Allowed::Any => json!("*"),
            Allowed::List(l) => json!(l.iter().map(|h| h.as_str()).collect::<Vec<_>>()),
        };
        json!({
            "policy": self.spec.name,
            "allow_origins": self.spec.origins.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "allow_methods": match &self.spec.methods {
                Allowed::Any => json!("*"),
                Allowed::List(l) => json!(l.iter().map(Method::as_str).collect::<Vec<_>>()),
            },
            "allow_headers": list(&self.spec.headers),
            "expose_headers": list(&self.spec.expose),
            "allow_credentials": self.spec.credentials,
            "max_age_s": self.spec.max_age,
        })
    }
}

/// `Access-Control-*` response headers the gateway owns on a CORS route.
pub const OWNED_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

/// Whether `Vary` lacks `name` (and is not `*`).
pub fn needs_vary(headers: &HeaderMap, name: &HeaderName) -> bool {
    !headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(name.as_str().as_bytes()))
    })
}

#[cfg(test)]
mod tests;
