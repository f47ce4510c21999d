//! HTTP/2 from clients on a plaintext listener: h2c with prior knowledge through the
//! real gateway binary (routing, JWT, rate limits, metrics, access log), HTTP/1 on the
//! same port, the HTTP/2 limits advertised, and bad input (rapid reset, a malformed
//! frame, an h2 preface on a listener without h2c) closed and counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "protocols/client.rs"]
mod client;
mod common;

use std::time::Duration;

use client::{PREFACE, frame, get_headers, goaway_code, h2, h2_request, read_frames};
use common::{Gateway, echo_upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn config(upstream: std::net::SocketAddr, plain_port: u16) -> String {
    format!(
        r#"
server: {{reload_debounce: 20ms}}
listeners:
  - name: mesh
    address: "127.0.0.1:{{PORT}}"
    h2c: true
    http2: {{max_concurrent_streams: 50, max_header_list_size: 16KiB, max_pending_resets: 10}}
  - {{name: plain, address: "127.0.0.1:{plain_port}"}}
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
jwt_providers:
  hmac: {{algorithms: [HS256], secret: "{SECRET}", issuer: test}}
rate_limit_policies:
  tight: {{rate: "2/m", burst: 2, key: ["header:x-user"]}}
upstreams:
  app: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - {{id: api, match: {{path: {{prefix: /api}}}}, upstream: app}}
  - {{id: secure, match: {{path: {{prefix: /secure}}}}, auth: {{jwt: {{providers: [hmac], claims_to_headers: {{sub: X-User-Id}}}}}}, upstream: app}}
  - {{id: limited, match: {{path: {{prefix: /limited}}}}, rate_limits: [tight], upstream: app}}
  - {{id: root, match: {{path: {{prefix: /}}}}, upstream: app}}
"#
    )
}

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"iss": "test", "sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_serves_every_feature_and_bad_input_is_counted() {
    let up = echo_upstream("app").await;
    let plain_port = common::free_port();
    let gw = Gateway::start_with_env(
        &config(up, plain_port),
        &[("RUST_LOG", "info,gateway=debug")],
    )
    .await;
    let authority = format!("http://127.0.0.1:{}", gw.port);

    // Prior knowledge: routing to the upstream, forwarding headers.
    let c = h2(TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap()).await;
    let r = h2_request(&c, "GET", &format!("{authority}/api/items?x=1"), &[]).await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["service"], "app");
    assert_eq!(body["path"], "/api/items");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert!(r.headers.contains_key("x-request-id"));
    // The gateway's own answers are the same JSON over h2.
    let r = h2_request(&c, "GET", &format!("{authority}/secure/x"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthenticated");
    let bearer = format!("Bearer {}", token("u-7"));
    let r = h2_request(
        &c,
        "GET",
        &format!("{authority}/secure/x"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-user-id"], "u-7");
    // Rate limits count h2 requests like any other (several streams, one connection).
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = h2_request(
            &c,
            "GET",
            &format!("{authority}/limited"),
            &[("x-user", "a")],
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // CONNECT: a JSON 501 on that stream (no tunnels), and the connection goes on.
    let r = h2_request(&c, "CONNECT", &format!("127.0.0.1:{}", gw.port), &[]).await;
    assert_eq!(r.status, 501);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["error"]["code"], "connect_not_supported");
    // Concurrent streams on one connection.
    let many = (0..10).map(|i| {
        let c = c.clone();
        let url = format!("{authority}/api/{i}");
        async move { h2_request(&c, "GET", &url, &[]).await.status }
    });
    assert!(
        futures_util::future::join_all(many)
            .await
            .iter()
            .all(|s| *s == 200)
    );

    // HTTP/1.1 still works on the h2c listener.
    let r = reqwest::get(gw.url("/api/h1")).await.unwrap();
    assert_eq!(r.status(), 200);

    // The limits are advertised in the server's SETTINGS.
    let mut raw = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    raw.write_all(PREFACE).await.unwrap();
    raw.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    let frames = read_frames(&mut raw, Duration::from_millis(500), false).await;
    let settings = frames
        .iter()
        .find(|f| f.0 == 4 && f.1 & 1 == 0)
        .expect("server SETTINGS");
    let params: Vec<(u16, u32)> = settings
        .3
        .chunks(6)
        .map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
            )
        })
        .collect();
    assert!(params.contains(&(3, 50)), "{params:?}");
    assert!(params.contains(&(6, 16384)), "{params:?}");
    drop(raw);

    // Rapid reset: streams opened and reset at once, far past the bound, get GOAWAY
    // ENHANCE_YOUR_CALM.
    let mut raw = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(4, 0, 0, &[]));
    for i in 0..200u32 {
        let id = 1 + 2 * i;
        burst.extend(get_headers(id));
        burst.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    raw.write_all(&burst).await.unwrap();
    let frames = read_frames(&mut raw, Duration::from_secs(10), true).await;
    assert_eq!(
        goaway_code(&frames),
        Some(0xb),
        "{:?}",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );

    // A malformed frame (DATA on stream 0): GOAWAY PROTOCOL_ERROR.
    let mut raw = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let mut bad = PREFACE.to_vec();
    bad.extend(frame(4, 0, 0, &[]));
    bad.extend(frame(0, 0, 0, b"junk"));
    raw.write_all(&bad).await.unwrap();
    let frames = read_frames(&mut raw, Duration::from_secs(10), true).await;
    assert_eq!(goaway_code(&frames), Some(0x1));

    // An h2 preface on the listener without h2c: closed without an HTTP/1 answer.
    let mut raw = TcpStream::connect(("127.0.0.1", plain_port)).await.unwrap();
    raw.write_all(PREFACE).await.unwrap();
    raw.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    let frames = read_frames(&mut raw, Duration::from_secs(10), false).await;
    assert!(frames.is_empty());

    gw.wait_metrics(&[
        "gateway_requests_by_protocol_total{protocol=\"h2\",tls=\"false\"}",
        "gateway_requests_by_protocol_total{protocol=\"http/1.1\",tls=\"false\"} 1",
        "gateway_http2_connection_errors_total{listener=\"mesh\",reason=\"enhance_your_calm\"} 1",
        "gateway_http2_connection_errors_total{listener=\"mesh\",reason=\"protocol_error\"} 1",
        "gateway_downstream_protocol_errors_total{kind=\"h2_preface_on_http1\",listener=\"plain\"} 1",
        "gateway_requests_total{method=\"GET\",route=\"limited\",status_class=\"4xx\"} 1",
    ])
    .await;
    let log = gw.log();
    assert!(
        log.contains("HTTP/2 connection closed for an error"),
        "{log}"
    );
    assert!(log.contains("h2"), "{log}");
}
