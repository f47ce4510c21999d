//! Owns the parsed, immutable request matchers a route is made of: host patterns, path
//! patterns (exact, prefix, template, regex), method sets, and header/query tests.
//! `config::spec` builds them once; `router` evaluates them per request without
//! allocating.

use std::fmt;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

pub use crate::pattern::{MAX_TEMPLATE_PARAMS, compile_full_regex, compile_regex, prefix_matches};

/// Longest host name we match on (RFC 1035 limit); longer hosts match no host pattern.
pub const MAX_HOST_LEN: usize = 253;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Lower-case host without port.
    Exact(Box<str>),
    /// `*.example.com`, stored as the suffix `.example.com`; matches one or more labels.
    Wildcard(Box<str>),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let host = raw.trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > MAX_HOST_LEN || !name.split('.').all(valid_label) {
            return Err(format!(
                "invalid host {raw:?}: expected a DNS name like api.example.com or *.example.com (no port, no scheme)"
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}").into())
        } else {
            HostPattern::Exact(name.into())
        })
    }

    /// Does this pattern match an already lower-cased, port-less host?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => **h == *host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

#[derive(Clone, Debug)]
pub enum TemplateSegment {
    Literal(Box<str>),
    /// One non-empty path segment.
    Param,
    /// The rest of the path after this point (one or more segments, slashes included).
    CatchAll,
}

/// `/users/{id}` or `/files/{*rest}`: literal segments and whole-segment captures.
#[derive(Clone, Debug)]
pub struct PathTemplate {
    pub source: Box<str>,
    pub segments: Vec<TemplateSegment>,
    /// Capture names in order of appearance.
    pub params: Vec<Box<str>>,
}

impl PathTemplate {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(format!("template {raw:?} must start with '/'"));
        };
        let mut segments = Vec::new();
        let mut params: Vec<Box<str>> = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (catch_all, name) = match inner.strip_prefix('*') {
                    Some(n) => (true, n),
                    None => (false, inner),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "template {raw:?}: capture name {name:?} must be letters, digits or '_'"
                    ));
                }
                if params.iter().any(|p| **p == *name) {
                    return Err(format!(
                        "template {raw:?}: capture {{{name}}} appears twice"
                    ));
                }
                if catch_all && i + 1 != parts.len() {
                    return Err(format!(
                        "template {raw:?}: catch-all {{*{name}}} must be the last segment"
                    ));
                }
                params.push(name.into());
                segments.push(if catch_all {
                    TemplateSegment::CatchAll
                } else {
                    TemplateSegment::Param
                });
            } else if part.contains(['{', '}']) {
                return Err(format!(
                    "template {raw:?}: segment {part:?} mixes text and a capture; a capture must be a whole segment"
                ));
            } else if part.is_empty() && i + 1 != parts.len() {
                return Err(format!("template {raw:?}: empty segment"));
            } else {
                segments.push(TemplateSegment::Literal((*part).into()));
            }
        }
        if params.is_empty() {
            return Err(format!(
                "template {raw:?} has no captures; use `exact` for a fixed path"
            ));
        }
        if params.len() > MAX_TEMPLATE_PARAMS {
            return Err(format!(
                "template {raw:?} has {} captures; at most {MAX_TEMPLATE_PARAMS} are allowed",
                params.len()
            ));
        }
        Ok(Self {
            source: raw.into(),
            segments,
            params,
        })
    }
}

#[derive(Clone, Debug)]
pub enum PathPattern {
    Exact(Box<str>),
    /// Segment-boundary prefix, stored without a trailing slash ("/" for everything).
    Prefix(Box<str>),
    Template(PathTemplate),
    /// Must match the whole path.
    Regex {
        source: Box<str>,
        regex: Regex,
    },
}

fn check_path_literal(kind: &str, raw: &str) -> Result<(), String> {
    if !raw.starts_with('/') {
        return Err(format!("{kind} path {raw:?} must start with '/'"));
    }
    if raw.contains(['?', '#'])
        || raw
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "{kind} path {raw:?} must not contain '?', '#', spaces or control characters"
        ));
    }
    Ok(())
}

impl PathPattern {
    pub fn exact(raw: &str) -> Result<Self, String> {
        check_path_literal("exact", raw)?;
        Ok(PathPattern::Exact(raw.into()))
    }

    pub fn prefix(raw: &str) -> Result<Self, String> {
        check_path_literal("prefix", raw)?;
        let trimmed = raw.trim_end_matches('/');
        Ok(PathPattern::Prefix(
            if trimmed.is_empty() { "/" } else { trimmed }.into(),
        ))
    }

    pub fn regex(raw: &str) -> Result<Self, String> {
        Ok(PathPattern::Regex {
            source: raw.into(),
            regex: compile_full_regex(raw)?,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PathPattern::Exact(_) => "exact",
            PathPattern::Prefix(_) => "prefix",
            PathPattern::Template(_) => "template",
            PathPattern::Regex { .. } => "regex",
        }
    }

    pub fn source(&self) -> &str {
        match self {
            PathPattern::Exact(s) | PathPattern::Prefix(s) => s,
            PathPattern::Template(t) => &t.source,
            PathPattern::Regex { source, .. } => source,
        }
    }

    /// Slow, obviously-correct evaluation used by `explain` and the reference matcher.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => **p == *path,
            PathPattern::Prefix(p) => prefix_matches(p, path),
            PathPattern::Template(t) => template_matches(t, path),
            PathPattern::Regex { regex, .. } => regex.is_match(path),
        }
    }
}

fn template_matches(t: &PathTemplate, path: &str) -> bool {
    let Some(mut rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut at_end = rest.is_empty() && t.segments.is_empty();
    for (i, seg) in t.segments.iter().enumerate() {
        if let TemplateSegment::CatchAll = seg {
            // One or more segments remain (the rest may be "" only after a slash).
            return i == 0 || !at_end;
        }
        if at_end {
            return false;
        }
        let (head, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let ok = match seg {
            TemplateSegment::Literal(l) => **l == *head,
            _ => !head.is_empty(),
        };
        if !ok {
            return false;
        }
        match tail {
            Some(t) => rest = t,
            None => at_end = true,
        }
    }
    at_end
}

const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// A set of HTTP methods: a bit mask for the standard ones, a short list for extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodSet {
    mask: u16,
    extensions: Vec<Method>,
}

impl MethodSet {
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = MethodSet::default();
        for name in names {
            let method = Method::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid method {name:?}"))?;
            if name.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(format!(
                    "method {name:?} must be upper case (methods are case-sensitive)"
                ));
            }
            match METHODS.iter().position(|m| *m == method) {
                Some(bit) => set.mask |= 1 << bit,
                None if !set.extensions.contains(&method) => set.extensions.push(method),
                None => {}
            }
        }
        Ok(set)
    }

    pub fn contains(&self, method: &Method) -> bool {
        match METHODS.iter().position(|m| m == method) {
            Some(bit) => self.mask & (1 << bit) != 0,
            None => self.extensions.contains(method),
        }
    }

    pub fn names(&self) -> Vec<String> {
        METHODS
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.mask & (1 << bit) != 0)
            .map(|(_, m)| m.to_string())
            .chain(self.extensions.iter().map(|m| m.to_string()))
            .collect()
    }
}

#[derive(Clone, Debug)]
pub enum ValueTest {
    Exact(Box<str>),
    Regex { source: Box<str>, regex: Regex },
    Present,
    Absent,
}

impl ValueTest {
    /// Build from the three mutually exclusive YAML fields.
    pub fn from_fields(
        exact: Option<&str>,
        regex: Option<&str>,
        present: Option<bool>,
    ) -> Result<Self, String> {
        match (exact, regex, present) {
            (Some(v), None, None) => Ok(ValueTest::Exact(v.into())),
            (None, Some(r), None) => Ok(ValueTest::Regex {
                source: r.into(),
                regex: compile_full_regex(r)?,
            }),
            (None, None, Some(true)) => Ok(ValueTest::Present),
            (None, None, Some(false)) => Ok(ValueTest::Absent),
            (None, None, None) => Err("set one of `exact`, `regex` or `present`".into()),
            _ => Err("set only one of `exact`, `regex` or `present`".into()),
        }
    }

    fn describe(&self) -> String {
        match self {
            ValueTest::Exact(v) => format!("= {v:?}"),
            ValueTest::Regex { source, .. } => format!("~ /{source}/"),
            ValueTest::Present => "present".into(),
            ValueTest::Absent => "absent".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct HeaderMatcher {
    pub name: HeaderName,
    pub test: ValueTest,
}

impl HeaderMatcher {
    /// A header with several values matches when any one of them does.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.test {
            ValueTest::Present => headers.contains_key(&self.name),
            ValueTest::Absent => !headers.contains_key(&self.name),
            ValueTest::Exact(v) => values.any(|h| h.as_bytes() == v.as_bytes()),
            ValueTest::Regex { regex, .. } => {
                values.any(|h| h.to_str().is_ok_and(|s| regex.is_match(s)))
            }
        }
    }

    pub fn describe(&self) -> String {
        format!("header {} {}", self.name, self.test.describe())
    }
}

/// Matches a decoded query parameter (`+` and `%XX` decoded, names and values).
#[derive(Clone, Debug)]
pub struct QueryMatcher {
    pub name: Box<str>,
    pub test: ValueTest,
}

/// The decoded bytes of an `application/x-www-form-urlencoded` component (`+` is a space,
/// `%XX` a byte; a malformed escape stays as it is), produced lazily without allocating.
struct FormBytes<'a> {
    raw: &'a [u8],
    i: usize,
}

impl Iterator for FormBytes<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.raw.get(self.i)?;
        self.i += 1;
        Some(match b {
            b'+' => b' ',
            b'%' => match (
                self.raw.get(self.i).copied().and_then(hex),
                self.raw.get(self.i + 1).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    self.i += 2;
                    h << 4 | l
                }
                _ => b'%',
            },
            other => other,
        })
    }
}

fn form_bytes(raw: &str) -> FormBytes<'_> {
    FormBytes {
        raw: raw.as_bytes(),
        i: 0,
    }
}

/// Compare a raw form-encoded component with a decoded string.
fn form_eq(raw: &str, decoded: &str) -> bool {
    form_bytes(raw).eq(decoded.bytes())
}

/// Query values up to this many bytes are decoded on the stack for regex tests.
const QUERY_DECODE_BUF: usize = 512;

/// Decode a form-encoded component into `buf`; `None` if it does not fit or is not UTF-8.
fn form_decode<'b>(raw: &str, buf: &'b mut [u8; QUERY_DECODE_BUF]) -> Option<&'b str> {
    let mut n = 0;
    for b in form_bytes(raw) {
        *buf.get_mut(n)? = b;
        n += 1;
    }
    std::str::from_utf8(&buf[..n]).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl QueryMatcher {
    pub fn matches(&self, query: Option<&str>) -> bool {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .filter(|(k, _)| form_eq(k, &self.name));
        let mut pairs = pairs.peekable();
        match &self.test {
            ValueTest::Present => pairs.peek().is_some(),
            ValueTest::Absent => pairs.peek().is_none(),
            ValueTest::Exact(want) => pairs.any(|(_, v)| form_eq(v, want)),
            ValueTest::Regex { regex, .. } => pairs.any(|(_, v)| {
                let mut buf = [0u8; QUERY_DECODE_BUF];
                match form_decode(v, &mut buf) {
                    Some(decoded) => regex.is_match(decoded),
                    // Longer than the buffer or not UTF-8 once decoded: the rare slow path.
                    None => {
                        let plus = v.replace('+', " ");
                        regex.is_match(
                            &percent_encoding::percent_decode_str(&plus).decode_utf8_lossy(),
                        )
                    }
                }
            }),
        }
    }

    pub fn describe(&self) -> String {
        format!("query {} {}", self.name, self.test.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let cases = [
            ("api.example.com", "api.example.com", true),
            ("API.Example.com.", "api.example.com", true),
            ("api.example.com", "www.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
        ];
        for (pattern, host, want) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(host), want, "{pattern} vs {host}");
        }
        for bad in ["", "http://x", "a b", "x:80", "*.", "a..b"] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn prefix_is_segment_bounded() {
        let cases = [
            ("/", "/", true),
            ("/", "/anything/at/all", true),
            ("/api", "/api", true),
            ("/api", "/api/", true),
            ("/api", "/api/v1", true),
            ("/api", "/apix", false),
            ("/api", "/ap", false),
            ("/api/v1", "/api/v1/users", true),
            ("/api/v1", "/api/v10", false),
        ];
        for (prefix, path, want) in cases {
            let PathPattern::Prefix(p) = PathPattern::prefix(prefix).unwrap() else {
                panic!("not a prefix")
            };
            assert_eq!(prefix_matches(&p, path), want, "{prefix} vs {path}");
        }
        // A trailing slash on the prefix is ignored.
        assert_eq!(PathPattern::prefix("/api/").unwrap().source(), "/api");
    }

    #[test]
    fn templates() {
        let cases = [
            ("/users/{id}", "/users/42", true),
            ("/users/{id}", "/users/", false),
            ("/users/{id}", "/users", false),
            ("/users/{id}", "/users/42/orders", false),
            ("/users/{id}/orders", "/users/42/orders", true),
            ("/files/{*rest}", "/files/a/b/c", true),
            ("/files/{*rest}", "/files/", true),
            ("/files/{*rest}", "/files", false),
            ("/{*all}", "/", true),
            ("/{a}/{b}", "/x/y", true),
            ("/{a}/{b}", "/x//", false),
        ];
        for (template, path, want) in cases {
            let t = PathTemplate::parse(template).unwrap();
            assert_eq!(template_matches(&t, path), want, "{template} vs {path}");
        }
        for bad in [
            "users/{id}",
            "/a/{*rest}/b",
            "/a/x{id}",
            "/a/{id}/{id}",
            "/plain",
            "/{a-b}",
        ] {
            assert!(
                PathTemplate::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn methods() {
        let set = MethodSet::parse(["GET", "POST", "PURGE"]).unwrap();
        assert!(set.contains(&Method::GET));
        assert!(set.contains(&Method::POST));
        assert!(!set.contains(&Method::PUT));
        assert!(set.contains(&Method::from_bytes(b"PURGE").unwrap()));
        assert!(MethodSet::parse(["get"]).is_err());
        assert!(MethodSet::parse(["GE T"]).is_err());
    }

    #[test]
    fn header_and_query_tests() {
        let mut headers = HeaderMap::new();
        headers.append("x-tenant", "acme".parse().unwrap());
        headers.append("x-tenant", "other".parse().unwrap());
        let m = |test| HeaderMatcher {
            name: HeaderName::from_static("x-tenant"),
            test,
        };
        assert!(m(ValueTest::Exact("other".into())).matches(&headers));
        assert!(!m(ValueTest::Exact("nobody".into())).matches(&headers));
        assert!(m(ValueTest::Present).matches(&headers));
        assert!(!m(ValueTest::Absent).matches(&headers));
        assert!(m(ValueTest::from_fields(None, Some("ac.*"), None).unwrap()).matches(&headers));
        assert!(!m(ValueTest::from_fields(None, Some("cme"), None).unwrap()).matches(&headers));

        let q = |name: &str, test| QueryMatcher {
            name: name.into(),
            test,
        };
        let query = Some("debug&q=hello+world&x=%41b&empty=");
        assert!(q("debug", ValueTest::Present).matches(query));
        assert!(q("q", ValueTest::Exact("hello world".into())).matches(query));
        assert!(q("x", ValueTest::Exact("Ab".into())).matches(query));
        assert!(q("empty", ValueTest::Exact("".into())).matches(query));
        assert!(!q("q", ValueTest::Exact("hello".into())).matches(query));
        assert!(q("missing", ValueTest::Absent).matches(query));
        assert!(q("missing", ValueTest::Absent).matches(None));
        assert!(
            q(
                "q",
                ValueTest::from_fields(None, Some("hello w.*"), None).unwrap()
            )
            .matches(query)
        );
        // Encoded values longer than the stack buffer take the slow path, same answer.
        let long = format!("q={}%21", "a+".repeat(600));
        let want = format!("{}!", "a ".repeat(600));
        assert!(q("q", ValueTest::Exact(want.as_str().into())).matches(Some(&long)));
        assert!(
            q(
                "q",
                ValueTest::from_fields(None, Some("(a )+!"), None).unwrap()
            )
            .matches(Some(&long))
        );
        assert!(q("q", ValueTest::Exact("%zz".into())).matches(Some("q=%zz")));
        assert!(ValueTest::from_fields(Some("a"), Some("b"), None).is_err());
        assert!(ValueTest::from_fields(None, None, None).is_err());
    }
}
