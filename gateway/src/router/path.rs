//! Owns how a request path is read before matching (like Envoy's `normalize_path`,
//! `merge_slashes` and `path_with_escaped_slashes_action`, and Spring Security's
//! `StrictHttpFirewall`):
//!
//! 1. percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`, RFC 3986 section
//!    6.2.2.2) are decoded and the remaining escapes upper-cased (6.2.2.1), so `/%61dmin`
//!    is `/admin`;
//! 2. `.` and `..` segments are resolved and repeated slashes merged (6.2.2.3);
//! 3. what backends read differently is refused: an encoded NUL, `%25` (double
//!    encoding), a raw `\`, control and non-ASCII characters, invalid escapes, and bytes
//!    that are not UTF-8 once decoded. Encoded slashes (`%2F`, `%5C`) and `;` path
//!    parameters are [`Findings`]: refused unless the matched route opts in.
//!
//! The normalized path is what is matched, cached and forwarded. Already-normal paths
//! (no `%`, `\`, `;`, control bytes, `//` or dot segments) are borrowed, not copied.

use std::borrow::Cow;

/// What a path holds that only some routes accept (`allow_encoded_slashes`,
/// `allow_path_parameters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Findings(u8);

impl Findings {
    /// `%2F` or `%5C`: a backend that decodes them sees more segments than we matched.
    pub const ENCODED_SLASH: Findings = Findings(1);
    /// `;` in a segment: Tomcat, Spring and Jetty strip `;params` before routing.
    pub const PATH_PARAMETERS: Findings = Findings(2);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Findings) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Findings) -> Findings {
        Findings(self.0 | other.0)
    }

    /// The findings of `self` that `allowed` does not cover.
    pub fn without(self, allowed: Findings) -> Findings {
        Findings(self.0 & !allowed.0)
    }
}

/// Why a request path was refused before routing; each has a stable error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotOriginForm,
    #[error("the path has an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("the path has ';' parameters")]
    PathParameters,
    #[error("the path has an encoded NUL (%00)")]
    EncodedNul,
    #[error("the path is encoded twice (%25)")]
    DoubleEncoding,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a control or non-ASCII character")]
    InvalidCharacter,
    #[error("the path has an invalid percent-encoding")]
    InvalidEscape,
    #[error("the path is not UTF-8 once decoded")]
    InvalidUtf8,
    /// Read the way a lenient backend reads it (`%2F` as `/`, `;params` dropped), the
    /// path would be routed elsewhere: the opt-in cannot cover it.
    #[error("read as a backend may read it, the path reaches another route")]
    Ambiguous,
}

impl PathError {
    /// The stable machine-readable code of the 400 answer.
    pub fn code(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "bad_request_target",
            PathError::EncodedSlash => "encoded_slash",
            PathError::PathParameters => "path_parameters",
            PathError::EncodedNul => "encoded_nul",
            PathError::DoubleEncoding => "double_encoding",
            PathError::Backslash => "backslash_in_path",
            PathError::InvalidCharacter => "invalid_path_character",
            PathError::InvalidEscape => "invalid_percent_encoding",
            PathError::InvalidUtf8 => "invalid_utf8_path",
            PathError::Ambiguous => "ambiguous_path",
        }
    }

    /// The message of the 400 answer (static, JSON-safe).
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "request target must be an absolute path",
            PathError::EncodedSlash => {
                "the path has an encoded slash or backslash (%2F, %5C), which this route does not accept"
            }
            PathError::PathParameters => {
                "the path has ';' parameters, which this route does not accept"
            }
            PathError::EncodedNul => "the path has an encoded NUL (%00)",
            PathError::DoubleEncoding => "the path is percent-encoded twice (%25)",
            PathError::Backslash => "the path has a backslash",
            PathError::InvalidCharacter => "the path has a control or non-ASCII character",
            PathError::InvalidEscape => "the path has an invalid percent-encoding",
            PathError::InvalidUtf8 => "the path is not UTF-8 once percent-decoded",
            PathError::Ambiguous => {
                "read with encoded slashes decoded or ';' parameters removed, the path reaches another route"
            }
        }
    }

    /// The refusal for findings no route (or not the matched one) accepts.
    pub fn for_findings(f: Findings) -> PathError {
        if f.contains(Findings::ENCODED_SLASH) {
            PathError::EncodedSlash
        } else {
            PathError::PathParameters
        }
    }
}

/// A normalized path and what it holds that needs a route's opt-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalPath<'a> {
    pub path: Cow<'a, str>,
    pub findings: Findings,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Does `path` need no work at all? One pass, no allocation.
fn already_normal(path: &[u8]) -> bool {
    // Bytes since the last '/', and whether they are all dots.
    let mut seg_len = 0usize;
    let mut dots = true;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'/' => {
                // An empty segment ("//") or a dot segment, except the leading slash.
                if i > 0 && (seg_len == 0 || (dots && seg_len <= 2)) {
                    return false;
                }
                seg_len = 0;
                dots = true;
            }
            b'%' | b'\\' | b';' => return false,
            b if b.is_ascii_control() || !b.is_ascii() => return false,
            b => {
                seg_len += 1;
                dots &= b == b'.';
            }
        }
    }
    !(dots && (1..=2).contains(&seg_len))
}

/// Normalize a request path (see the module doc). Paths that need no work are
/// borrowed.
pub fn normalize(path: &str) -> Result<NormalPath<'_>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if already_normal(path.as_bytes()) {
        return Ok(NormalPath {
            path: Cow::Borrowed(path),
            findings: Findings::default(),
        });
    }
    let (decoded, findings) = decode(path.as_bytes())?;
    let resolved = resolve_dots(&decoded);
    Ok(NormalPath {
        path: if resolved == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(resolved)
        },
        findings,
    })
}

/// Step 1 and 3: decode unreserved escapes, upper-case the others, refuse what must be
/// refused and note the findings.
fn decode(raw: &[u8]) -> Result<(String, Findings), PathError> {
    let mut out = String::with_capacity(raw.len());
    // Every escape decoded, to check that the path is UTF-8 as the backend will see it.
    let mut bytes = Vec::with_capacity(raw.len());
    let mut findings = Findings::default();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::InvalidEscape);
                };
                let v = h << 4 | l;
                match v {
                    0 => return Err(PathError::EncodedNul),
                    b'%' => return Err(PathError::DoubleEncoding),
                    v if v.is_ascii_control() => return Err(PathError::InvalidCharacter),
                    v if unreserved(v) => out.push(char::from(v)),
                    b'/' | b'\\' => {
                        findings = findings.union(Findings::ENCODED_SLASH);
                        out.push_str(if v == b'/' { "%2F" } else { "%5C" });
                    }
                    v => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
                    }
                }
                bytes.push(v);
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => {
                findings = findings.union(Findings::PATH_PARAMETERS);
                out.push(';');
            }
            b if b.is_ascii_control() || !b.is_ascii() => {
                return Err(PathError::InvalidCharacter);
            }
            b => out.push(char::from(b)),
        }
        bytes.push(b);
        i += 1;
    }
    if std::str::from_utf8(&bytes).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok((out, findings))
}

/// Step 2: resolve `.` and `..` segments and merge repeated slashes (`path` starts with
/// '/'). A path ending in a dot segment or a slash keeps its trailing slash.
fn resolve_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | "" => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing_slash {
        s.push('/');
    }
    s
}

/// A normalized path as a lenient backend reads it: `%2F` and `%5C` as `/`, `;params`
/// removed from each segment, then normalized again. A route's opt-in holds only when
/// this reading reaches the same route.
pub fn lenient_reading(normal: &str) -> String {
    let mut out = String::with_capacity(normal.len());
    let mut rest = normal;
    let mut in_params = false;
    while let Some(c) = rest.chars().next() {
        let upper = rest.get(..3).map(str::to_ascii_uppercase);
        if matches!(upper.as_deref(), Some("%2F" | "%5C")) {
            out.push('/');
            in_params = false;
            rest = &rest[3..];
            continue;
        }
        match c {
            '/' => {
                out.push('/');
                in_params = false;
            }
            ';' => in_params = true,
            c if !in_params => out.push(c),
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    resolve_dots(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a/b",
            "/a/b/",
            "/a/.../b",
            "/a/.b/c",
            "/x.y/..z",
            "/v1/users/42",
        ] {
            let n = normalize(p).unwrap();
            assert!(matches!(n.path, Cow::Borrowed(_)), "{p}");
            assert_eq!(n.path, p);
            assert!(n.findings.is_empty());
        }
    }

    #[test]
    fn decodes_unreserved_resolves_dots_and_merges_slashes() {
        let cases = [
            ("/%61dmin", "/admin"),
            ("/%41%42%7e%2D", "/AB~-"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc", "/etc"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E./admin/", "/admin/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/q%3fx%3Dy%c3%a9", "/q%3Fx%3Dy%C3%A9"),
            ("/sp%20ace", "/sp%20ace"),
        ];
        for (raw, want) in cases {
            let n = normalize(raw).unwrap();
            assert_eq!(n.path, want, "{raw}");
            assert!(n.findings.is_empty(), "{raw}");
            assert_eq!(normalize(&n.path).unwrap().path, want, "{raw}: idempotent");
        }
    }

    #[test]
    fn refuses_what_backends_read_differently() {
        let cases = [
            ("/a%00", PathError::EncodedNul),
            ("/a%2500", PathError::DoubleEncoding),
            ("/a%252F", PathError::DoubleEncoding),
            ("/a\\b", PathError::Backslash),
            ("/a%0a", PathError::InvalidCharacter),
            ("/a%7F", PathError::InvalidCharacter),
            ("/a\u{e9}", PathError::InvalidCharacter),
            ("/a%zz", PathError::InvalidEscape),
            ("/a%4", PathError::InvalidEscape),
            ("/a%", PathError::InvalidEscape),
            ("/a%ff", PathError::InvalidUtf8),
            ("/a%c3", PathError::InvalidUtf8),
            ("a/b", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_and_parameters_are_findings() {
        let n = normalize("/files/a%2fb").unwrap();
        assert_eq!(n.path, "/files/a%2Fb");
        assert_eq!(n.findings, Findings::ENCODED_SLASH);
        let n = normalize("/public/..%2Fadmin").unwrap();
        assert_eq!(n.path, "/public/..%2Fadmin");
        assert!(n.findings.contains(Findings::ENCODED_SLASH));
        let n = normalize("/admin;x/y").unwrap();
        assert_eq!(n.findings, Findings::PATH_PARAMETERS);
        let n = normalize("/a%5C;b").unwrap();
        assert!(n.findings.contains(Findings::ENCODED_SLASH));
        assert!(n.findings.contains(Findings::PATH_PARAMETERS));
        assert_eq!(
            n.findings.without(Findings::ENCODED_SLASH),
            Findings::PATH_PARAMETERS
        );
    }

    #[test]
    fn lenient_reading_is_what_tomcat_or_go_would_route() {
        let cases = [
            ("/public/..%2Fadmin", "/admin"),
            ("/%2Fadmin", "/admin"),
            ("/admin%2F", "/admin/"),
            ("/admin;x", "/admin"),
            ("/admin;jsessionid=1/users", "/admin/users"),
            ("/a/..;/admin", "/admin"),
            ("/files/a%5Cb", "/files/a/b"),
            ("/plain", "/plain"),
        ];
        for (raw, want) in cases {
            let n = normalize(raw).unwrap();
            assert_eq!(lenient_reading(&n.path), want, "{raw}");
        }
    }
}
