//! Owns compressing one response as it streams: a Pingora downstream module, so it
//! sees every response the client gets (proxied, from the cache, made by the gateway),
//! after the cache stored the identity response. The proxy turns it on for a request
//! (`enable`) once the route is known; the module then decides on the response head.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method, Version, header};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::protocols::http::compression::Encode;

use super::{Algo, CompressionSpec, negotiate};

/// Per request: the policy, what the client accepts, and the encoder once the head said
/// the body is to be compressed.
#[derive(Default)]
pub struct CompressionModule {
    policy: Option<Arc<CompressionSpec>>,
    chosen: Option<(Algo, u32)>,
    /// HEAD, a `Range` request or an HTTP/1.0 client: headers may change, the body is
    /// never encoded (no body, byte ranges of the identity, no chunked framing).
    no_body: bool,
    no_encoding: bool,
    encoder: Option<Box<dyn Encode + Send + Sync>>,
    finished: bool,
    /// `(algorithm, bytes in, bytes out)` once the response is done.
    stats: Option<(Algo, usize, usize)>,
}

impl std::fmt::Debug for CompressionModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressionModule")
            .field("chosen", &self.chosen)
            .field("encoding", &self.encoder.is_some())
            .finish()
    }
}

/// Whether `Cache-Control` forbids transforming the body (RFC 9111 section 5.2.2.6).
fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

fn content_length(resp: &ResponseHeader) -> Option<u64> {
    resp.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl CompressionModule {
    /// Compress this request's response per `policy`, for what the client accepts.
    pub fn enable(&mut self, policy: Arc<CompressionSpec>, req: &RequestHeader) {
        self.chosen = negotiate(&req.headers, &policy.algorithms);
        self.no_body = req.method == Method::HEAD;
        self.no_encoding = req.headers.contains_key(header::RANGE)
            || matches!(req.version, Version::HTTP_09 | Version::HTTP_10);
        self.policy = Some(policy);
    }

    /// `(algorithm, bytes in, bytes out)` of a compressed response, once it ended.
    pub fn stats(&self) -> Option<(Algo, usize, usize)> {
        self.stats
    }

    /// Decide on the response head; returns whether the body will be encoded.
    fn head(&mut self, resp: &mut ResponseHeader, end: bool) -> bool {
        let Some(policy) = &self.policy else {
            return false;
        };
        let status = resp.status.as_u16();
        if matches!(status, 100..=199 | 204 | 206 | 304)
            || resp.headers.contains_key(header::CONTENT_RANGE)
            || resp
                .headers
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
            || no_transform(resp)
            || !policy.compressible_type(resp.headers.get(header::CONTENT_TYPE))
            || content_length(resp).is_some_and(|n| n < policy.min_bytes)
            || (end && !self.no_body)
        {
            return false;
        }
        // From here the representation depends on Accept-Encoding, compressed or not.
        add_vary_accept_encoding(resp);
        let Some((algo, level)) = self.chosen else {
            return false;
        };
        if self.no_encoding {
            return false;
        }
        let _ = resp.insert_header(header::CONTENT_ENCODING, algo.token());
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.remove_header(&header::ACCEPT_RANGES);
        weaken_etag(resp);
        if self.no_body {
            return false;
        }
        // Streamed: the length is not known ahead (HTTP/2 drops this header itself).
        let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
        self.encoder = algo.encoder(level);
        self.stats = Some((algo, 0, 0));
        self.encoder.is_some()
    }

    fn encode(&mut self, data: &[u8], end: bool) -> Option<Bytes> {
        let encoder = self.encoder.as_mut()?;
        match encoder.encode(data, end) {
            Ok(out) => {
                if let Some((_, i, o)) = self.stats.as_mut() {
                    *i += data.len();
                    *o += out.len();
                }
                self.finished |= end;
                Some(out)
            }
            Err(e) => {
                // Cannot happen for in-memory encoders; stop encoding rather than send
                // a body that no longer matches its Content-Encoding.
                tracing::warn!(error = %e, "response compression failed");
                self.encoder = None;
                Some(Bytes::new())
            }
        }
    }
}

/// `Vary: Accept-Encoding`, once.
fn add_vary_accept_encoding(resp: &mut ResponseHeader) {
    let present = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !present {
        let _ = resp.append_header(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// A changed body is another representation: a strong validator becomes weak (RFC 9110
/// section 8.8.1), one that is not a quoted string is dropped (as nginx does).
fn weaken_etag(resp: &mut ResponseHeader) {
    let Some(etag) = resp
        .headers
        .get(header::ETAG)
        .map(|v| v.as_bytes().to_vec())
    else {
        return;
    };
    if etag.starts_with(b"W/") {
        return;
    }
    if etag.starts_with(b"\"") {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(&etag);
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            let _ = resp.insert_header(header::ETAG, v);
            return;
        }
    }
    resp.remove_header(&header::ETAG);
}

#[async_trait]
impl HttpModule for CompressionModule {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        // Informational heads come before the real one; decide on that.
        if !resp.status.is_informational() {
            self.head(resp, end_of_stream);
        }
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        if self.encoder.is_none() || self.finished {
            return Ok(());
        }
        let input = body.take().unwrap_or_default();
        *body = self.encode(&input, end_of_stream);
        Ok(())
    }

    fn response_done_filter(&mut self) -> pingora::Result<Option<Bytes>> {
        // The body ended without an end-of-stream chunk: flush the encoder's tail.
        if self.encoder.is_none() || self.finished {
            return Ok(None);
        }
        Ok(self.encode(&[], true))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Registers [`CompressionModule`] on the proxy's downstream modules; it runs after the
/// other modules (it sees the final headers).
#[derive(Debug)]
pub struct CompressionModuleBuilder;

impl HttpModuleBuilder for CompressionModuleBuilder {
    fn order(&self) -> i16 {
        i16::MIN / 2 - 1
    }

    fn init(&self) -> Module {
        Box::new(CompressionModule::default())
    }
}
