//! Response compression end to end through the real gateway binary: negotiation by
//! `Accept-Encoding` q-values (zstd, br, gzip, bad values), what is never compressed
//! (small, images, already encoded, `no-transform`, ranges, 206/304/204, HTTP/1.0),
//! `Vary`, weakened ETags, HEAD, a streamed body, a listener default and a route opting
//! out, and a caching route that stores the identity response and compresses each hit
//! for its client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use axum::response::IntoResponse;
use common::Gateway;

fn text(n: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "line {i}: the quick brown fox jumps over the lazy dog\n"
        ));
        i += 1;
    }
    s.truncate(n);
    s
}

async fn upstream() -> SocketAddr {
    use axum::body::Body;
    use axum::routing::get;
    let big = text(20_000);
    let app = axum::Router::new()
        .route(
            "/text",
            get({
                let big = big.clone();
                move || async move {
                    (
                        [
                            ("content-type", "text/plain; charset=utf-8"),
                            ("etag", "\"v1\""),
                            ("accept-ranges", "bytes"),
                        ],
                        big,
                    )
                }
            }),
        )
        .route(
            "/json",
            get(|| async {
                (
                    [("content-type", "application/json")],
                    format!("[{}0]", "1,".repeat(3000)),
                )
            }),
        )
        .route(
            "/small",
            get(|| async { ([("content-type", "text/plain")], "tiny") }),
        )
        .route(
            "/png",
            get(|| async { ([("content-type", "image/png")], vec![7u8; 20_000]) }),
        )
        .route(
            "/gzipped",
            get(|| async {
                (
                    [("content-type", "text/plain"), ("content-encoding", "gzip")],
                    vec![
                        0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                )
            }),
        )
        .route(
            "/notransform",
            get({
                let big = big.clone();
                move || async move {
                    (
                        [
                            ("content-type", "text/plain"),
                            ("cache-control", "no-transform"),
                        ],
                        big,
                    )
                }
            }),
        )
        .route(
            "/empty",
            get(|| async {
                (
                    axum::http::StatusCode::NO_CONTENT,
                    [("content-type", "text/plain")],
                )
                    .into_response()
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let chunks = (0..20).map(|i| {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(format!(
                        "chunk {i}: {}\n",
                        "abc".repeat(200)
                    )))
                });
                let stream = futures_util::stream::iter(chunks).then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    c
                });
                ([("content-type", "text/plain")], Body::from_stream(stream))
            }),
        )
        .route(
            "/cached",
            get({
                let big = big.clone();
                move || async move {
                    (
                        [
                            ("content-type", "text/html"),
                            ("cache-control", "public, max-age=300"),
                            ("etag", "\"c1\""),
                        ],
                        big,
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

use futures_util::StreamExt as _;

fn config(up: SocketAddr) -> String {
    format!(
        "
listeners:
  - {{name: main, address: '127.0.0.1:{{PORT}}', compression: {{algorithms: [gzip], min_bytes: 1024}}}}
admin: {{address: '127.0.0.1:{{ADMIN}}'}}
upstreams:
  up: {{endpoints: [{{address: '{up}'}}]}}
routes:
  - id: comp
    match: {{path: {{prefix: /c}}}}
    rewrite: {{strip_prefix: /c}}
    compression: {{algorithms: [zstd, br, gzip], min_bytes: 1024, level: {{zstd: 3, br: 4, gzip: 6}}}}
    upstream: up
  - id: cached
    match: {{path: {{prefix: /k}}}}
    rewrite: {{strip_prefix: /k}}
    cache: {{}}
    upstream: up
  - id: off
    match: {{path: {{prefix: /off}}}}
    rewrite: {{strip_prefix: /off}}
    compression: {{enabled: false}}
    upstream: up
"
    )
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn encoding(&self) -> Option<&str> {
        self.header("content-encoding")
    }

    /// The body with the content coding undone.
    fn decoded(&self) -> String {
        let mut out = Vec::new();
        match self.encoding() {
            None => out = self.body.clone(),
            Some("gzip") => {
                flate2::read::GzDecoder::new(&self.body[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Some("zstd") => out = zstd::decode_all(&self.body[..]).unwrap(),
            Some("br") => {
                brotli::Decompressor::new(&self.body[..], 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Some(other) => panic!("unexpected encoding {other}"),
        }
        String::from_utf8(out).unwrap()
    }

    fn varies_on_accept_encoding(&self) -> bool {
        self.headers.get_all("vary").iter().any(|v| {
            v.to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("accept-encoding")
        })
    }
}

async fn fetch(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let c = reqwest::Client::new();
    let mut req = c.request(method.parse().unwrap(), gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test]
async fn negotiation_by_q_value() {
    let gw = Gateway::start(&config(upstream().await)).await;
    let plain = text(20_000);
    let cases: [(&str, Option<&str>); 9] = [
        ("gzip", Some("gzip")),
        ("gzip, deflate, br, zstd", Some("zstd")),
        ("br;q=1.0, gzip;q=0.5", Some("br")),
        ("zstd;q=0.1, gzip;q=0.9", Some("gzip")),
        ("*", Some("zstd")),
        ("identity", None),
        ("gzip;q=0", None),
        ("gzip;q=2, br;q=abc, zstd;q=0.12345", None),
        ("deflate", None),
    ];
    for (ae, want) in cases {
        let r = fetch(&gw, "GET", "/c/text", &[("accept-encoding", ae)]).await;
        assert_eq!(r.status, 200, "{ae}");
        assert_eq!(r.encoding(), want, "{ae}");
        assert_eq!(r.decoded(), plain, "{ae}");
        assert!(r.varies_on_accept_encoding(), "{ae}");
        if want.is_some() {
            assert!(r.header("content-length").is_none(), "{ae}: streamed");
            assert!(
                r.body.len() < plain.len() / 4,
                "{ae}: {} bytes",
                r.body.len()
            );
            assert_eq!(
                r.header("etag"),
                Some("W/\"v1\""),
                "a changed body gets a weak validator"
            );
            assert!(r.header("accept-ranges").is_none());
        } else {
            assert_eq!(r.header("etag"), Some("\"v1\""));
        }
    }
    let r = fetch(&gw, "GET", "/c/text", &[]).await;
    assert_eq!(
        (r.encoding(), r.body.len()),
        (None, plain.len()),
        "no Accept-Encoding: identity"
    );
    let r = fetch(&gw, "GET", "/c/json", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.encoding(), Some("gzip"));
    assert!(r.decoded().starts_with("[1,1,"));
    gw.wait_metrics(&["gateway_compressed_responses_total{algorithm=\"zstd\"} 2"])
        .await;
}

#[tokio::test]
async fn what_is_never_compressed() {
    let gw = Gateway::start(&config(upstream().await)).await;
    let ae = ("accept-encoding", "gzip, br, zstd");
    for path in ["/c/small", "/c/png", "/c/notransform", "/off/text"] {
        let r = fetch(&gw, "GET", path, &[ae]).await;
        assert_eq!((r.status, r.encoding()), (200, None), "{path}");
    }
    // Already encoded: passed through as the origin encoded it.
    let r = fetch(&gw, "GET", "/c/gzipped", &[("accept-encoding", "br")]).await;
    assert_eq!(r.encoding(), Some("gzip"));
    assert_eq!(r.body.len(), 20);
    let r = fetch(&gw, "GET", "/c/empty", &[ae]).await;
    assert_eq!((r.status, r.encoding()), (204, None));
    // A range request is answered in identity (the upstream ignored the range here).
    let r = fetch(&gw, "GET", "/c/text", &[ae, ("range", "bytes=0-99")]).await;
    assert_eq!(r.encoding(), None);
    // HEAD: the headers a GET would get, no body.
    let r = fetch(&gw, "HEAD", "/c/text", &[ae]).await;
    assert_eq!(
        (r.status, r.encoding(), r.body.len()),
        (200, Some("zstd"), 0)
    );
    // HTTP/1.0 cannot carry a streamed body without closing: identity.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s.write_all(b"GET /c/text HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&raw[..raw.len().min(1024)]).to_ascii_lowercase();
    assert!(head.starts_with("http/1."), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
}

#[tokio::test]
async fn streamed_bodies_and_listener_defaults() {
    let gw = Gateway::start(&config(upstream().await)).await;
    let r = fetch(&gw, "GET", "/c/stream", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.encoding(), Some("gzip"));
    let body = r.decoded();
    assert!(
        body.starts_with("chunk 0: ") && body.contains("chunk 19: "),
        "{}",
        body.len()
    );
    // The caching route has no compression block: the listener's default (gzip) applies.
    let r = fetch(&gw, "GET", "/k/text", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(r.encoding(), Some("gzip"));
}

#[tokio::test]
async fn the_cache_stores_identity_and_compresses_each_hit() {
    let gw = Gateway::start(&config(upstream().await)).await;
    let plain = text(20_000);
    let first = fetch(&gw, "GET", "/k/cached", &[("accept-encoding", "gzip")]).await;
    assert_eq!(first.encoding(), Some("gzip"));
    assert!(
        first.header("cache-status").unwrap().contains("stored"),
        "{:?}",
        first.headers
    );
    assert_eq!(first.decoded(), plain);
    // A hit for a client without Accept-Encoding: the identity body, from the same entry.
    let hit = fetch(&gw, "GET", "/k/cached", &[]).await;
    assert!(
        hit.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        hit.headers
    );
    assert_eq!(hit.encoding(), None);
    assert_eq!(hit.body, plain.as_bytes());
    assert!(hit.varies_on_accept_encoding());
    let hit = fetch(
        &gw,
        "GET",
        "/k/cached",
        &[("accept-encoding", "gzip;q=0.5, identity")],
    )
    .await;
    assert!(hit.header("cache-status").unwrap().contains("hit"));
    assert_eq!(hit.encoding(), Some("gzip"));
    assert_eq!(hit.decoded(), plain);
    // Conditional and range requests served by the cache stay identity: 304 and 206.
    let nm = fetch(
        &gw,
        "GET",
        "/k/cached",
        &[("accept-encoding", "gzip"), ("if-none-match", "\"c1\"")],
    )
    .await;
    assert_eq!((nm.status, nm.encoding()), (304, None));
    let part = fetch(
        &gw,
        "GET",
        "/k/cached",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!((part.status, part.encoding()), (206, None));
    assert_eq!(part.body, &plain.as_bytes()[..10]);
}
