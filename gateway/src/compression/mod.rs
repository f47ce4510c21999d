//! Owns response compression as a route policy (`compression:`, off by default): the
//! typed spec, `Accept-Encoding` negotiation by q-value (RFC 9110 section 12.5.3), the
//! rules for what is never compressed, and [`module::CompressionModule`], which encodes
//! the body chunk by chunk as it streams to the client, with Pingora's encoders for zstd
//! and gzip and the same `brotli` crate for br (`brotli.rs` says why).
//!
//! The module runs on the way out, after the cache: a caching route stores the identity
//! response once and compresses it for each client that accepts an encoding, so one
//! stored entry serves every encoding and `Vary: Accept-Encoding` never multiplies the
//! stored variants. The price is compressing again on every hit.

mod brotli;
pub mod module;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

pub use module::{CompressionModule, CompressionModuleBuilder};

/// A content coding the gateway can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    Zstd,
    Brotli,
    Gzip,
}

impl Algo {
    pub fn parse(raw: &str) -> Option<Algo> {
        match raw.to_ascii_lowercase().as_str() {
            "zstd" => Some(Algo::Zstd),
            "br" => Some(Algo::Brotli),
            "gzip" => Some(Algo::Gzip),
            _ => None,
        }
    }

    /// The coding's name in `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Algo::Zstd => "zstd",
            Algo::Brotli => "br",
            Algo::Gzip => "gzip",
        }
    }

    /// Levels the encoder accepts, and the default (chosen for dynamic responses:
    /// good ratio at a small fraction of the top levels' cost).
    pub fn levels(self) -> (u32, u32, u32) {
        match self {
            Algo::Zstd => (1, 19, 3),
            Algo::Brotli => (1, 11, 4),
            Algo::Gzip => (1, 9, 6),
        }
    }

    /// A streaming encoder at `level`: Pingora's for zstd and gzip, ours for brotli.
    pub fn encoder(
        self,
        level: u32,
    ) -> Option<Box<dyn pingora::protocols::http::compression::Encode + Send + Sync>> {
        use pingora::protocols::http::compression::Algorithm;
        match self {
            Algo::Zstd => Algorithm::Zstd.compressor(level),
            Algo::Brotli => Some(Box::new(brotli::BrotliEncoder::new(level))),
            Algo::Gzip => Algorithm::Gzip.compressor(level),
        }
    }
}

/// A media-type pattern of `content_types`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypePattern {
    /// `application/json`.
    Exact(String),
    /// `text/*`.
    Major(String),
    /// `application/*+json`: any subtype with this structured suffix.
    Suffix { major: String, suffix: String },
}

impl TypePattern {
    pub fn parse(raw: &str) -> Result<TypePattern, String> {
        let lower = raw.trim().to_ascii_lowercase();
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        let bad = || {
            Err(format!(
                "invalid content type {raw:?}: write type/subtype, type/* or type/*+suffix"
            ))
        };
        let Some((major, minor)) = lower.split_once('/') else {
            return bad();
        };
        if !token(major) {
            return bad();
        }
        if minor == "*" {
            return Ok(TypePattern::Major(major.to_owned()));
        }
        if let Some(suffix) = minor.strip_prefix("*+") {
            return if token(suffix) {
                Ok(TypePattern::Suffix {
                    major: major.to_owned(),
                    suffix: format!("+{suffix}"),
                })
            } else {
                bad()
            };
        }
        if !token(minor) {
            return bad();
        }
        Ok(TypePattern::Exact(lower))
    }

    /// `media` is the lower-cased `type/subtype` without parameters.
    fn matches(&self, media: &str) -> bool {
        match self {
            TypePattern::Exact(t) => t == media,
            TypePattern::Major(m) => media.split_once('/').is_some_and(|(a, _)| a == m),
            TypePattern::Suffix { major, suffix } => media
                .split_once('/')
                .is_some_and(|(a, b)| a == major && b.ends_with(suffix.as_str())),
        }
    }

    fn describe(&self) -> String {
        match self {
            TypePattern::Exact(t) => t.clone(),
            TypePattern::Major(m) => format!("{m}/*"),
            TypePattern::Suffix { major, suffix } => format!("{major}/*{suffix}"),
        }
    }
}

/// The content types compressed when `content_types` is not given.
pub const DEFAULT_TYPES: [&str; 8] = [
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "application/x-ndjson",
    "image/svg+xml",
];

/// A validated `compression:` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressionSpec {
    /// In the server's order of preference, each with its level.
    pub algorithms: Vec<(Algo, u32)>,
    /// Responses with a smaller `Content-Length` are sent as they are.
    pub min_bytes: u64,
    pub content_types: Vec<TypePattern>,
}

/// What a route does about compression: take its listener's default, nothing, or this.
#[derive(Clone, Debug, Default)]
pub enum RouteCompression {
    #[default]
    Inherit,
    Off,
    On(Arc<CompressionSpec>),
}

impl RouteCompression {
    pub fn resolve<'a>(
        &'a self,
        default: Option<&'a Arc<CompressionSpec>>,
    ) -> Option<&'a Arc<CompressionSpec>> {
        match self {
            RouteCompression::Inherit => default,
            RouteCompression::Off => None,
            RouteCompression::On(p) => Some(p),
        }
    }
}

impl CompressionSpec {
    pub fn describe(&self) -> Value {
        json!({
            "algorithms": self.algorithms.iter().map(|(a, l)| json!({"algorithm": a.token(), "level": l})).collect::<Vec<_>>(),
            "min_bytes": self.min_bytes,
            "content_types": self.content_types.iter().map(TypePattern::describe).collect::<Vec<_>>(),
        })
    }

    /// Whether a response of this media type is compressed (never `text/event-stream`:
    /// the encoders hold bytes back until a block fills, which would stall a stream of
    /// events; never gRPC, whose messages are length-prefixed frames a client must read
    /// as they are, compressed by gRPC itself when at all).
    pub fn compressible_type(&self, content_type: Option<&HeaderValue>) -> bool {
        let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        media != "text/event-stream"
            && !media.starts_with("application/grpc")
            && self.content_types.iter().any(|p| p.matches(&media))
    }
}

/// An RFC 9110 qvalue in thousandths: `0`, `0.5`, `1`, `1.000`; `None` if malformed.
fn qvalue(raw: &str) -> Option<u16> {
    let raw = raw.trim();
    let (int, frac) = raw.split_once('.').unwrap_or((raw, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// The coding to use for a request's `Accept-Encoding` among `offered` (in the server's
/// order of preference): the highest q-value wins, ties go to the server's order; `*`
/// stands for every coding not named; `q=0` refuses. An element with a malformed
/// q-value is ignored (treated as not offered by the client). No header, or nothing
/// acceptable: `None` (identity).
pub fn negotiate(headers: &HeaderMap, offered: &[(Algo, u32)]) -> Option<(Algo, u32)> {
    let mut named: Vec<(Algo, u16)> = Vec::new();
    let mut star: Option<u16> = None;
    let mut any = false;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = v.to_str() else { continue };
        for element in text.split(',') {
            let mut parts = element.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for p in parts {
                if let Some((k, v)) = p.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = qvalue(v);
                }
            }
            let Some(q) = q else { continue };
            any = true;
            if coding == "*" {
                star = Some(q);
            } else if let Some(a) = Algo::parse(coding) {
                named.push((a, q));
            }
        }
    }
    if !any {
        return None;
    }
    let mut best: Option<((Algo, u32), u16)> = None;
    for &(algo, level) in offered {
        let q = named
            .iter()
            .filter(|(a, _)| *a == algo)
            .map(|(_, q)| *q)
            .max()
            .or(star)
            .unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some(((algo, level), q));
        }
    }
    best.map(|(a, _)| a)
}

#[cfg(test)]
mod tests;
