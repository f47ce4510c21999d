//! Owns origins as CORS compares them: checking that a request's `Origin` is a
//! serialized origin (RFC 6454 section 6.2: `scheme "://" host [ ":" port ]`, or `null`),
//! and the `allow_origins` rules (`*`, an exact origin, `https://*.example.com`).

use std::fmt;

/// Longest `Origin` considered; longer ones are not origins a browser sends.
const MAX_ORIGIN: usize = 2048;

/// One `allow_origins` entry, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginRule {
    Any,
    /// A whole origin, or `null` (opaque origins; allowing it is rarely wise).
    Exact(String),
    /// `scheme://*.suffix[:port]`: one or more labels before `suffix` (which starts with
    /// a dot), never the bare suffix itself.
    Wildcard {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

impl fmt::Display for OriginRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginRule::Any => f.write_str("*"),
            OriginRule::Exact(o) => f.write_str(o),
            OriginRule::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                write!(f, "{scheme}://*{suffix}")?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Split a serialized origin into scheme, host and port text (port may be empty).
fn split(origin: &str) -> Option<(&str, &str, Option<&str>)> {
    let (scheme, rest) = origin.split_once("://")?;
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (inside, after) = v6.split_once(']')?;
        let host = &rest[..inside.len() + 2];
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    Some((scheme, host, port))
}

fn scheme_ok(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

fn host_ok(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        })
}

fn port_ok(p: Option<&str>) -> bool {
    match p {
        None => true,
        Some(p) => !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0),
    }
}

/// Whether `origin` is a serialized origin as browsers send it (or `null`). Anything
/// else (a path, userinfo, spaces, a trailing slash, non-ASCII) is not an origin, and is
/// treated as one no policy allows.
pub fn valid_origin(origin: &str) -> bool {
    if origin == "null" {
        return true;
    }
    if origin.len() > MAX_ORIGIN {
        return false;
    }
    match split(origin) {
        Some((scheme, host, port)) => scheme_ok(scheme) && host_ok(host) && port_ok(port),
        None => false,
    }
}

impl OriginRule {
    /// Parse an `allow_origins` entry.
    pub fn parse(raw: &str) -> Result<OriginRule, String> {
        if raw == "*" {
            return Ok(OriginRule::Any);
        }
        let lower = raw.trim().to_ascii_lowercase();
        let bad = |why: &str| {
            Err(format!(
                "invalid origin {raw:?}: {why} (write *, https://app.example.com, https://app.example.com:8443 or https://*.example.com)"
            ))
        };
        if let Some((scheme, rest)) = lower.split_once("://*.") {
            let (suffix, port) = match rest.rsplit_once(':') {
                Some((s, p)) => (s, Some(p)),
                None => (rest, None),
            };
            if !scheme_ok(scheme) || !host_ok(suffix) || !port_ok(port) {
                return bad("not scheme://*.domain[:port]");
            }
            if !suffix.contains('.') {
                return bad("a wildcard needs at least two labels after *., like *.example.com");
            }
            return Ok(OriginRule::Wildcard {
                scheme: scheme.to_owned(),
                suffix: format!(".{suffix}"),
                port: port.and_then(|p| p.parse().ok()),
            });
        }
        if lower.contains('*') {
            return bad("a wildcard may only replace the leftmost labels of the host");
        }
        if lower.ends_with('/') {
            return bad("an origin has no path, not even a trailing /");
        }
        if !valid_origin(&lower) {
            return bad("not scheme://host[:port]");
        }
        Ok(OriginRule::Exact(lower))
    }

    /// Whether the (lower-cased, valid) request origin matches this rule.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => o == origin,
            OriginRule::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                let Some((s, host, p)) = split(origin) else {
                    return false;
                };
                s == scheme
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && p.and_then(|p| p.parse::<u16>().ok()) == *port
            }
        }
    }
}
