//! Owns what a matched route does to a request: path rewrites, header operations,
//! redirects and direct responses. The values are built once by `config::spec`; the
//! functions here are pure so they are tested without a proxy.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use regex::Regex;

use crate::pattern::{Captures, prefix_matches};

#[derive(Clone, Debug)]
pub enum PathRewrite {
    /// Remove a leading path prefix (on a segment boundary); "/api/x" -> "/x".
    StripPrefix(Box<str>),
    /// Replace the first match of `regex`; `$1` / `${name}` refer to its captures.
    Regex { regex: Regex, replacement: Box<str> },
    /// Rebuild the path from the route's template captures: "/v2/users/{id}".
    Template {
        source: Box<str>,
        parts: Vec<RewritePart>,
    },
}

#[derive(Clone, Debug)]
pub enum RewritePart {
    Literal(Box<str>),
    /// Index into the route template's captures.
    Capture(usize),
}

impl PathRewrite {
    /// The new path (without query) for `path`; always starts with '/'.
    pub fn apply(&self, path: &str, captures: &Captures) -> String {
        let mut out = match self {
            PathRewrite::StripPrefix(prefix) => {
                if prefix_matches(prefix, path) && &**prefix != "/" {
                    path[prefix.len()..].to_owned()
                } else {
                    path.to_owned()
                }
            }
            PathRewrite::Regex { regex, replacement } => {
                regex.replacen(path, 1, &**replacement).into_owned()
            }
            PathRewrite::Template { parts, .. } => {
                let mut s = String::with_capacity(path.len());
                for part in parts {
                    match part {
                        RewritePart::Literal(l) => s.push_str(l),
                        RewritePart::Capture(i) => s.push_str(captures.get(path, *i).unwrap_or("")),
                    }
                }
                s
            }
        };
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        out
    }

    /// One line for `explain` and `/admin/routes`.
    pub fn describe(&self) -> String {
        match self {
            PathRewrite::StripPrefix(p) => format!("strip prefix {p}"),
            PathRewrite::Regex { regex, replacement } => {
                format!("regex {} -> {replacement}", regex.as_str())
            }
            PathRewrite::Template { source, .. } => format!("path {source}"),
        }
    }
}

/// Header operations applied in order: remove, then set (replace), then add (append).
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

/// The two Pingora header types share no trait; this is the part we need of them.
pub trait HeaderTarget {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: &HeaderName, value: &HeaderValue);
    fn append(&mut self, name: &HeaderName, value: &HeaderValue);
}

macro_rules! header_target {
    ($t:ty) => {
        impl HeaderTarget for $t {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            // Names and values were validated when the config was compiled, so these
            // conversions cannot fail; a failure would leave the header unchanged.
            fn insert(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.insert_header(name.clone(), value.clone());
            }
            fn append(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.append_header(name.clone(), value.clone());
            }
        }
    };
}
header_target!(RequestHeader);
header_target!(ResponseHeader);

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, target: &mut impl HeaderTarget) {
        for name in &self.remove {
            target.remove(name);
        }
        for (name, value) in &self.set {
            target.insert(name, value);
        }
        for (name, value) in &self.add {
            target.append(name, value);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Redirect {
    pub status: StatusCode,
    pub scheme: Option<Scheme>,
    pub host: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: Option<Box<str>>,
    pub strip_query: bool,
}

/// What the client asked for, as the redirect needs it.
#[derive(Debug)]
pub struct RequestTarget<'a> {
    pub scheme: Scheme,
    /// Host without port, as sent.
    pub host: &'a str,
    pub port: Option<u16>,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl Redirect {
    /// The `Location` value: every part the route does not override comes from the request.
    pub fn location(&self, req: &RequestTarget<'_>) -> String {
        let scheme = self.scheme.unwrap_or(req.scheme);
        let host = self.host.as_deref().unwrap_or(req.host);
        // A scheme change without an explicit port drops the request's port: the
        // old port belongs to the old scheme (8080 for http is not https's port).
        let port = match (self.port, self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(s)) if s != req.scheme => None,
            (None, _) => req.port,
        }
        .filter(|p| *p != scheme.default_port());
        let path = self.path.as_deref().unwrap_or(req.path);
        let mut out = format!("{}://{}", scheme.as_str(), host);
        if let Some(p) = port {
            out.push(':');
            out.push_str(&p.to_string());
        }
        out.push_str(path);
        if let (false, Some(q)) = (self.strip_query, req.query) {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

#[derive(Clone, Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::compile_regex;

    #[test]
    fn strip_prefix() {
        let r = PathRewrite::StripPrefix("/api".into());
        let none = Captures::default();
        assert_eq!(r.apply("/api/users", &none), "/users");
        assert_eq!(r.apply("/api", &none), "/");
        assert_eq!(r.apply("/apix", &none), "/apix");
        assert_eq!(r.apply("/other", &none), "/other");
    }

    #[test]
    fn regex_rewrite_with_captures() {
        let r = PathRewrite::Regex {
            regex: compile_regex("^/old/(?P<rest>.*)$").unwrap(),
            replacement: "/new/${rest}".into(),
        };
        assert_eq!(r.apply("/old/a/b", &Captures::default()), "/new/a/b");
        assert_eq!(r.apply("/keep", &Captures::default()), "/keep");
        let r = PathRewrite::Regex {
            regex: compile_regex("^/u/(\\d+)$").unwrap(),
            replacement: "v1/users/$1".into(),
        };
        assert_eq!(r.apply("/u/42", &Captures::default()), "/v1/users/42");
    }

    #[test]
    fn template_rewrite() {
        let r = PathRewrite::Template {
            source: "/v2/people/{id}".into(),
            parts: vec![
                RewritePart::Literal("/v2/people/".into()),
                RewritePart::Capture(0),
            ],
        };
        let mut caps = Captures::default();
        caps.push(7, 9);
        assert_eq!(r.apply("/users/42", &caps), "/v2/people/42");
    }

    #[test]
    fn redirect_locations() {
        let req = RequestTarget {
            scheme: Scheme::Http,
            host: "example.com",
            port: Some(8080),
            path: "/a",
            query: Some("x=1"),
        };
        let base = Redirect {
            status: StatusCode::MOVED_PERMANENTLY,
            scheme: None,
            host: None,
            port: None,
            path: None,
            strip_query: false,
        };
        assert_eq!(base.location(&req), "http://example.com:8080/a?x=1");
        let upgrade = Redirect {
            scheme: Some(Scheme::Https),
            ..base.clone()
        };
        assert_eq!(upgrade.location(&req), "https://example.com/a?x=1");
        let moved = Redirect {
            scheme: Some(Scheme::Https),
            host: Some("new.example.com".into()),
            port: Some(8443),
            path: Some("/b".into()),
            strip_query: true,
            ..base
        };
        assert_eq!(moved.location(&req), "https://new.example.com:8443/b");
    }
}
