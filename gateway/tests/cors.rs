//! CORS end to end through the real gateway binary: preflights answered by the gateway
//! (204, no auth, rate limits applied, routed as the announced method), refused
//! preflights (origin, method, headers, malformed origins), actual requests with and
//! without an allowed origin, `Vary: Origin`, the gateway's own errors carrying CORS
//! headers, a listener default and a route opting out, and a caching route that never
//! serves one origin's answer to another.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::Gateway;

/// An upstream whose responses are cacheable and carry their own (wrong) CORS headers.
async fn cacheable_upstream() -> SocketAddr {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(|| async {
        (
            [
                ("cache-control", "public, max-age=300"),
                ("access-control-allow-origin", "https://upstream-says.test"),
                ("content-type", "text/plain"),
            ],
            "cached body",
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn config(echo: SocketAddr, cacheable: SocketAddr) -> String {
    format!(
        "
listeners:
  - {{name: main, address: '127.0.0.1:{{PORT}}', cors: {{allow_origins: ['*']}}}}
admin: {{address: '127.0.0.1:{{ADMIN}}'}}
upstreams:
  echo: {{endpoints: [{{address: '{echo}'}}]}}
  cacheable: {{endpoints: [{{address: '{cacheable}'}}]}}
cors_policies:
  web:
    allow_origins: ['https://app.example.com', 'https://*.example.org']
    allow_methods: [GET, POST, DELETE]
    allow_headers: [content-type, x-api-key]
    expose_headers: [x-request-id]
    allow_credentials: true
    max_age: 10m
consumers:
  - {{name: acme, keys: ['{}']}}
rate_limit_policies:
  tiny: {{rate: 2/m}}
routes:
  - id: api
    match: {{path: {{prefix: /api}}, methods: [GET, POST, DELETE]}}
    cors: web
    auth: {{api_key: {{}}}}
    upstream: echo
  - id: limited
    match: {{path: {{prefix: /limited}}}}
    cors: web
    rate_limits: [tiny]
    upstream: echo
  - id: cached
    match: {{path: {{prefix: /cached}}}}
    cors: web
    cache: {{}}
    upstream: cacheable
  - id: public
    match: {{path: {{prefix: /public}}}}
    upstream: echo
  - id: private
    match: {{path: {{prefix: /private}}}}
    cors: false
    upstream: echo
",
        hex::encode(gateway::apikey::digest(b"acme-key-0001"))
    )
}

async fn start() -> Gateway {
    Gateway::start(&config(
        common::echo_upstream("echo").await,
        cacheable_upstream().await,
    ))
    .await
}

async fn send(
    c: &reqwest::Client,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = c.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let s = resp.status().as_u16();
    let h = resp.headers().clone();
    (s, h, resp.text().await.unwrap())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn vary(h: &reqwest::header::HeaderMap) -> String {
    h.get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

const APP: &str = "https://app.example.com";

#[tokio::test]
async fn preflights() {
    let gw = start().await;
    let c = reqwest::Client::new();
    // Answered by the gateway: no API key needed, routed as the DELETE it announces
    // (the route's methods leave OPTIONS out).
    let (s, h, body) = send(
        &c,
        "OPTIONS",
        gw.url("/api/orders/7"),
        &[
            ("origin", APP),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "Content-Type, X-Api-Key"),
        ],
    )
    .await;
    assert_eq!(s, 204, "{body}");
    assert!(body.is_empty());
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&h, "access-control-allow-methods"),
        Some("GET, POST, DELETE")
    );
    assert_eq!(
        header(&h, "access-control-allow-headers"),
        Some("content-type, x-api-key")
    );
    assert_eq!(header(&h, "access-control-max-age"), Some("600"));
    assert!(vary(&h).contains("origin"));
    assert!(
        h.get("content-length").is_none(),
        "a 204 has no Content-Length"
    );
    // A wildcard origin.
    let (s, h, _) = send(
        &c,
        "OPTIONS",
        gw.url("/api/x"),
        &[
            ("origin", "https://a.b.example.org"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        Some("https://a.b.example.org")
    );

    // Refusals: 403 with the JSON body, never a 5xx.
    let refused = [
        (
            vec![
                ("origin", "https://evil.test"),
                ("access-control-request-method", "GET"),
            ],
            "cors_origin_not_allowed",
        ),
        (
            vec![
                ("origin", "https://example.org"),
                ("access-control-request-method", "GET"),
            ],
            "cors_origin_not_allowed",
        ),
        (
            vec![
                ("origin", "https://app.example.com/"),
                ("access-control-request-method", "GET"),
            ],
            "cors_origin_not_allowed",
        ),
        (
            vec![
                ("origin", "javascript:alert(1)"),
                ("access-control-request-method", "GET"),
            ],
            "cors_origin_not_allowed",
        ),
        (
            vec![
                ("origin", "https://app.example.com:99999"),
                ("access-control-request-method", "GET"),
            ],
            "cors_origin_not_allowed",
        ),
        (
            vec![("origin", APP), ("access-control-request-method", "PATCH")],
            "cors_method_not_allowed",
        ),
        (
            vec![("origin", APP), ("access-control-request-method", "GE T")],
            "cors_method_not_allowed",
        ),
        (
            vec![
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-secret"),
            ],
            "cors_headers_not_allowed",
        ),
    ];
    for (headers, code) in refused {
        let (s, h, body) = send(&c, "OPTIONS", gw.url("/api/x"), &headers).await;
        assert_eq!(s, 403, "{headers:?}: {body}");
        assert!(body.contains(code), "{headers:?}: {body}");
        assert!(h.get("access-control-allow-origin").is_none());
    }
    // OPTIONS without the preflight headers is an ordinary request (here: needs a key).
    let (s, _, _) = send(&c, "OPTIONS", gw.url("/limited"), &[("origin", APP)]).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn preflights_count_against_rate_limits() {
    let gw = start().await;
    let c = reqwest::Client::new();
    let pre = [("origin", APP), ("access-control-request-method", "GET")];
    for _ in 0..2 {
        let (s, h, _) = send(&c, "OPTIONS", gw.url("/limited"), &pre).await;
        assert_eq!(s, 204);
        assert!(h.contains_key("ratelimit"));
    }
    let (s, h, _) = send(&c, "OPTIONS", gw.url("/limited"), &pre).await;
    assert_eq!(s, 429);
    // The 429 itself carries CORS headers, so the browser can read it.
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
}

#[tokio::test]
async fn actual_requests() {
    let gw = start().await;
    let c = reqwest::Client::new();
    let key = ("x-api-key", "acme-key-0001");
    let (s, h, _) = send(&c, "GET", gw.url("/api/x"), &[("origin", APP), key]).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&h, "access-control-expose-headers"),
        Some("x-request-id")
    );
    assert!(vary(&h).contains("origin"));
    // An unlisted or malformed origin: the normal response, no CORS headers, still Vary.
    for origin in [
        "https://evil.test",
        "null",
        "not an origin",
        "https://app.example.com.evil.test",
    ] {
        let (s, h, _) = send(&c, "GET", gw.url("/api/x"), &[("origin", origin), key]).await;
        assert_eq!(s, 200, "{origin}");
        assert!(h.get("access-control-allow-origin").is_none(), "{origin}");
        assert!(vary(&h).contains("origin"), "{origin}");
    }
    // The gateway's own 401 carries CORS headers too.
    let (s, h, _) = send(&c, "GET", gw.url("/api/x"), &[("origin", APP)]).await;
    assert_eq!(s, 401);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    // The listener default (`*`, no credentials): no Vary needed; a route can opt out.
    let (s, h, _) = send(
        &c,
        "GET",
        gw.url("/public"),
        &[("origin", "https://anyone.test")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    assert!(!vary(&h).contains("origin"));
    let (s, h, _) = send(
        &c,
        "GET",
        gw.url("/private"),
        &[("origin", "https://anyone.test")],
    )
    .await;
    assert_eq!(s, 200);
    assert!(h.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_cache_never_mixes_origins() {
    let gw = start().await;
    let c = reqwest::Client::new();
    let get = |origin: Option<&'static str>| {
        let c = c.clone();
        let url = gw.url("/cached/item");
        async move {
            let mut req = c.get(url);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers().clone(),
                r.text().await.unwrap(),
            )
        }
    };
    let (s, h, _) = get(Some(APP)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    // Now a hit: other origins get their own answer, not the stored one, and the
    // upstream's own CORS header never passes.
    let (s, h, body) = get(Some("https://shop.example.org")).await;
    assert_eq!((s, body.as_str()), (200, "cached body"));
    assert!(header(&h, "cache-status").unwrap().contains("hit"), "{h:?}");
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        Some("https://shop.example.org")
    );
    let (_, h, _) = get(Some("https://evil.test")).await;
    assert!(header(&h, "cache-status").unwrap().contains("hit"));
    assert!(h.get("access-control-allow-origin").is_none());
    assert!(vary(&h).contains("origin"));
    let (_, h, _) = get(None).await;
    assert!(h.get("access-control-allow-origin").is_none());
    assert!(h.get("access-control-allow-credentials").is_none());
}
