//! Owns the strict HTTP/1 framing rules, as pure functions over the raw request head the
//! client sent: where the head ends ([`scan`]) and whether its framing is unambiguous
//! ([`check`]).
//!
//! They run on the raw bytes, before Pingora parses the head, for two reasons: Pingora
//! drops `Content-Length` when `Transfer-Encoding` is present (so a later phase cannot
//! see the conflict to refuse it), and the cases Pingora refuses itself get a bare 400
//! rather than the gateway's JSON error. Header syntax is httparse's, the parser Pingora
//! uses, with the same settings, so both always agree on where a head ends and what its
//! fields are.

use thiserror::Error;

/// Pingora's limit on header fields in one request head (`MAX_HEADERS`).
pub const MAX_HEADERS: usize = 256;

/// Why a request head is refused. Each maps to one reply with a stable code
/// (`proxy::reply::for_framing`); after any of them the connection is closed, since
/// the gateway cannot know where the next request would start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error("the request line is not METHOD SP TARGET SP HTTP/1.x")]
    BadRequestLine,
    #[error("a header field is malformed (obs-fold, bad name, control character)")]
    BadHeader,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    #[error("more than one Host header field")]
    DuplicateHost,
    #[error("Host is not a valid authority")]
    BadHost,
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("Content-Length is not one decimal number")]
    BadContentLength,
    #[error("Transfer-Encoding is not a single final chunked")]
    BadTransferEncoding,
    #[error("a transfer coding other than chunked")]
    UnsupportedTransferEncoding,
    #[error("CONNECT (tunnels are not offered)")]
    Connect,
    #[error("Host differs from the authority of an absolute-form target")]
    HostMismatch,
    #[error("an expectation other than 100-continue")]
    UnsupportedExpectation,
}

impl FramingError {
    /// The status the client gets: 501 for a transfer coding the gateway does not
    /// implement (RFC 9112 section 6.1) and for CONNECT (a method it supports for no
    /// resource, RFC 9110 section 15.6.2), 417 for an expectation it cannot meet (RFC
    /// 9110 section 10.1.1), 431 for too many fields, 400 otherwise.
    pub fn status(self) -> u16 {
        match self {
            FramingError::UnsupportedTransferEncoding | FramingError::Connect => 501,
            FramingError::UnsupportedExpectation => 417,
            FramingError::TooManyHeaders => 431,
            _ => 400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the request's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// What [`check`] learned from a head that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    pub version: Version,
    pub method: &'a [u8],
    pub body: BodyFraming,
    /// The client's `X-Request-Id`, if any (checked by the caller before use).
    pub request_id: Option<&'a [u8]>,
}

/// Where a request head ends in what was read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed.
    Partial,
    /// The head is `buf[..n]` (leading empty lines included).
    Complete(usize),
    /// Refused already: no further bytes can make this a valid head.
    Malformed(FramingError),
}

/// Find the end of the request head in `buf`. Refuses early what can never become valid
/// (a method that is not a token, a bad header byte), so a client gets its 400 without
/// the gateway waiting for more.
pub fn scan(buf: &[u8]) -> Scan {
    let start = match skip_empty_lines(buf) {
        Some(s) => s,
        None => return Scan::Partial,
    };
    let rest = &buf[start..];
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        // Only the method can be judged before the line ends.
        let method_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if !rest[..method_end].iter().all(|&b| is_tchar(b)) {
            return Scan::Malformed(FramingError::BadRequestLine);
        }
        return Scan::Partial;
    };
    if request_line(&rest[..nl]).is_none() {
        return Scan::Malformed(FramingError::BadRequestLine);
    }
    let fields = &rest[nl + 1..];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(fields, &mut headers) {
        Ok(httparse::Status::Complete((n, _))) => Scan::Complete(start + nl + 1 + n),
        Ok(httparse::Status::Partial) => Scan::Partial,
        Err(httparse::Error::TooManyHeaders) => Scan::Malformed(FramingError::TooManyHeaders),
        Err(_) => Scan::Malformed(FramingError::BadHeader),
    }
}

/// Check the framing of a complete request head (`buf[..n]` for `Scan::Complete(n)`):
/// RFC 9112 sections 3.2 (Host), 6.1 (Transfer-Encoding), 6.3 (message body length),
/// and RFC 9110 section 8.6 (Content-Length), applied strictly:
///
/// - HTTP/1.1 needs exactly one Host; no version may send two; Host must be a valid
///   authority without userinfo (an empty Host is allowed, as RFC 9112 allows it);
/// - `Content-Length` is one field holding one decimal number (no lists, no duplicates,
///   even identical ones);
/// - `Transfer-Encoding` never comes with `Content-Length` nor in HTTP/1.0, has no empty
///   list elements, and ends in exactly one `chunked` without parameters; any coding
///   before it is one the gateway does not implement (501).
pub fn check(head: &[u8]) -> Result<Head<'_>, FramingError> {
    let start = skip_empty_lines(head).ok_or(FramingError::BadRequestLine)?;
    let rest = &head[start..];
    let nl = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(FramingError::BadRequestLine)?;
    let (method, version) = request_line(&rest[..nl]).ok_or(FramingError::BadRequestLine)?;
    let target = request_target(&rest[..nl]);
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let headers = match httparse::parse_headers(&rest[nl + 1..], &mut storage) {
        Ok(httparse::Status::Complete((_, h))) => h,
        Ok(httparse::Status::Partial) => return Err(FramingError::BadHeader),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
        Err(_) => return Err(FramingError::BadHeader),
    };

    let mut host: Option<&[u8]> = None;
    let mut hosts = 0usize;
    let mut content_length: Option<&[u8]> = None;
    let mut content_lengths = 0usize;
    let mut te = false;
    let mut request_id = None;
    let mut expect_other = false;
    for h in headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"expect") {
            expect_other |= !trim_ows(h.value).eq_ignore_ascii_case(b"100-continue");
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_lengths += 1;
            content_length = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
        } else if name.eq_ignore_ascii_case(b"x-request-id") && request_id.is_none() {
            request_id = Some(h.value);
        }
    }

    if hosts > 1 {
        return Err(FramingError::DuplicateHost);
    }
    match host {
        None if version == Version::Http11 => return Err(FramingError::MissingHost),
        Some(v) if !valid_host(trim_ows(v)) => return Err(FramingError::BadHost),
        _ => {}
    }
    if method == b"CONNECT" {
        return Err(FramingError::Connect);
    }
    // RFC 9112 section 3.2.2: with an absolute-form target the authority is the
    // target's; a Host saying otherwise is refused here (Pingora would answer a bare
    // 400), so routing never sees two authorities.
    if let (Some(authority), Some(h)) = (absolute_authority(target), host)
        && !authority.eq_ignore_ascii_case(trim_ows(h))
    {
        return Err(FramingError::HostMismatch);
    }
    // RFC 9110 section 10.1.1 (an HTTP/1.0 request's expectations are ignored).
    if expect_other && version == Version::Http11 {
        return Err(FramingError::UnsupportedExpectation);
    }

    let body = if te {
        if version == Version::Http10 {
            // RFC 9112 section 6.1: faulty framing, must be treated as an error.
            return Err(FramingError::BadTransferEncoding);
        }
        if content_lengths > 0 {
            return Err(FramingError::ContentLengthWithTransferEncoding);
        }
        transfer_codings(headers)?;
        BodyFraming::Chunked
    } else if content_lengths > 1 {
        return Err(FramingError::BadContentLength);
    } else if let Some(v) = content_length {
        BodyFraming::Length(decimal(trim_ows(v)).ok_or(FramingError::BadContentLength)?)
    } else {
        BodyFraming::None
    };
    Ok(Head {
        version,
        method,
        body,
        request_id,
    })
}

/// The list of every `Transfer-Encoding` field, in order: exactly one `chunked`, last.
fn transfer_codings(headers: &[httparse::Header<'_>]) -> Result<(), FramingError> {
    let values = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|h| h.value);
    let mut codings: Vec<&[u8]> = Vec::new();
    for v in values {
        for element in v.split(|&b| b == b',') {
            let element = trim_ows(element);
            // RFC 9110 section 5.6.1 lets recipients skip empty elements; refusing them
            // is stricter, and what nginx and other proxies do, so that no two parsers
            // in a chain can disagree about `, chunked`.
            if element.is_empty() {
                return Err(FramingError::BadTransferEncoding);
            }
            codings.push(element);
        }
    }
    let Some((last, before)) = codings.split_last() else {
        return Err(FramingError::BadTransferEncoding);
    };
    // `chunked` takes no parameters (RFC 9112 section 7.1).
    if !last.eq_ignore_ascii_case(b"chunked") {
        return Err(FramingError::BadTransferEncoding);
    }
    for coding in before {
        let name = coding
            .split(|&b| b == b';')
            .next()
            .map(trim_ows)
            .unwrap_or_default();
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(FramingError::BadTransferEncoding);
        }
        if name.eq_ignore_ascii_case(b"chunked") {
            // RFC 9112 section 6.1: chunked must not be applied more than once.
            return Err(FramingError::BadTransferEncoding);
        }
    }
    if before.is_empty() {
        Ok(())
    } else {
        Err(FramingError::UnsupportedTransferEncoding)
    }
}

/// `METHOD SP request-target SP HTTP/1.x` (a final CR allowed, as httparse allows bare
/// LF line ends). The target is left to Pingora, which escapes some bytes in it.
fn request_line(line: &[u8]) -> Option<(&[u8], Version)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let sp = line.iter().position(|&b| b == b' ')?;
    let method = &line[..sp];
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let last = line.iter().rposition(|&b| b == b' ')?;
    if last <= sp + 1 {
        return None;
    }
    let version = match &line[last + 1..] {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => return None,
    };
    // httparse allows exactly one SP on each side of the target.
    let target = &line[sp + 1..last];
    if target.first() == Some(&b' ') || target.last() == Some(&b' ') {
        return None;
    }
    Some((method, version))
}

/// The target of a request line that [`request_line`] accepted.
fn request_target(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match (
        line.iter().position(|&b| b == b' '),
        line.iter().rposition(|&b| b == b' '),
    ) {
        (Some(sp), Some(last)) if last > sp => &line[sp + 1..last],
        _ => b"",
    }
}

/// The authority of an absolute-form `http`/`https` target (`http://a.example:8080/x`
/// -> `a.example:8080`); `None` for origin-form and anything else.
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let scheme_end = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Index after any empty lines before the request line (RFC 9112 section 2.2), or
/// `None` when the buffer holds nothing else yet. A CR must be followed by LF.
fn skip_empty_lines(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        match buf.get(i) {
            Some(b'\n') => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                Some(b'\n') => i += 2,
                None => return None,
                // A stray CR is not an empty line; the request-line check refuses it.
                Some(_) => return Some(i),
            },
            Some(_) => return Some(i),
            None => return None,
        }
    }
}

/// `uri-host [":" port]` as `http` parses an authority, without userinfo.
fn valid_host(v: &[u8]) -> bool {
    if v.is_empty() {
        return true;
    }
    if v.contains(&b'@') {
        return false;
    }
    http::uri::Authority::try_from(v).is_ok()
}

/// `1*DIGIT` that fits a u64.
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// RFC 9110 section 5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
