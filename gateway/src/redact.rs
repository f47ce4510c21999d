//! Owns how secrets are kept out of admin views and logs: header values that routes set
//! upstream show as [`REDACTED`], and URLs (JWKS, Redis, the control plane) lose their
//! userinfo and query string, which is where credentials hide in a URL.
//!
//! Bottom layer: imports nothing from the rest of the crate.

use std::borrow::Cow;

/// What a secret value shows as.
pub const REDACTED: &str = "<redacted>";

/// `url` without a password, user name or query string:
/// `redis://:s3cret@cache:6379/0?x=1` -> `redis://<redacted>@cache:6379/0?<redacted>`.
/// Text that is not a URL is returned as it is when it has neither `@` nor `?`, and
/// redacted whole otherwise (it may be a mistyped URL with a password in it).
pub fn url(raw: &str) -> Cow<'_, str> {
    let (without_fragment, _) = raw.split_once('#').unwrap_or((raw, ""));
    let Some((scheme, rest)) = without_fragment.split_once("://") else {
        return if raw.contains(['@', '?']) {
            Cow::Borrowed(REDACTED)
        } else {
            Cow::Borrowed(raw)
        };
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (path, query) = match tail.split_once('?') {
        Some((p, _)) => (p, true),
        None => (tail, false),
    };
    let host = authority.rsplit_once('@').map(|(_, h)| h);
    if host.is_none() && !query {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    out.push_str(scheme);
    out.push_str("://");
    if let Some(h) = host {
        out.push_str(REDACTED);
        out.push('@');
        out.push_str(h);
    } else {
        out.push_str(authority);
    }
    out.push_str(path);
    if query {
        out.push('?');
        out.push_str(REDACTED);
    }
    Cow::Owned(out)
}

/// Redact every URL inside free text (an error message that quotes one).
pub fn urls_in(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme runs back to the last character that cannot be in one.
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:s3cret@cache:6379/0",
                "redis://<redacted>@cache:6379/0",
            ),
            (
                "rediss://user:pw@cache:6380",
                "rediss://<redacted>@cache:6380",
            ),
            (
                "https://id.example.com/jwks.json?key=abc",
                "https://id.example.com/jwks.json?<redacted>",
            ),
            (
                "https://u:p@id.example.com?key=abc#frag",
                "https://<redacted>@id.example.com?<redacted>",
            ),
            ("https://id.example.com/a@b", "https://id.example.com/a@b"),
            ("not a url", "not a url"),
            ("user:pw@host", "<redacted>"),
        ];
        for (raw, want) in cases {
            assert_eq!(url(raw), want, "{raw}");
        }
    }

    #[test]
    fn urls_inside_text() {
        assert_eq!(
            urls_in(r#"invalid Redis URL "redis://:pw@x:1/0?a=b": bad"#),
            r#"invalid Redis URL "redis://<redacted>@x:1/0?<redacted>": bad"#
        );
        assert_eq!(
            urls_in("fetch failed for url (https://a.example/j?t=1)"),
            "fetch failed for url (https://a.example/j?<redacted>)"
        );
        assert_eq!(urls_in("no url here"), "no url here");
    }
}
