//! Edge hardening through the real gateway binary, with raw TCP clients: client-side
//! timeouts, connection limits, body size limits, strict HTTP/1 framing, and the label
//! of requests whose client went away. `props` drives random request heads and paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod props;
mod upstream;

use std::time::{Duration, Instant};

use common::{Gateway, free_port, render, write_atomic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use upstream::Recorder;

const CONFIG: &str = r#"
server:
  timeouts: {request_header: 2s, keepalive_idle: 1s, request_body_idle: 1s, downstream_write: 1s}
listeners:
  - {name: main, address: "127.0.0.1:{PORT}"}
  - {name: limited, address: "127.0.0.1:{LIMITED}", max_connections: {MAX}}
  - {name: per-ip, address: "127.0.0.1:{PERIP}", max_connections_per_client_ip: 1}
  - {name: h2c, address: "127.0.0.1:{H2C}", h2c: true}
admin: {address: "127.0.0.1:{ADMIN}"}
upstreams:
  rec: {endpoints: [{address: "{REC}"}]}
routes:
  - {id: proxied, match: {path: {prefix: /p}}, upstream: rec}
  - {id: cached, match: {path: {prefix: /c}}, upstream: rec, cache: {default_ttl: 60s}}
  - {id: direct, match: {path: {prefix: /d}}, direct_response: {status: 200, body: hi}}
  - {id: redirect, match: {path: {prefix: /r}}, redirect: {status: 301, host: other.example}}
  - {id: small, match: {path: {prefix: /small}}, upstream: rec, max_request_body_bytes: 1KiB}
  - {id: unlimited, match: {path: {prefix: /unlimited}}, upstream: rec, max_request_body_bytes: 0}
  - {id: early, match: {path: {prefix: /early}}, upstream: rec, max_request_body_bytes: 1KiB}
  - {id: slow, match: {path: {prefix: /slow}}, upstream: rec}
  - {id: big, match: {path: {prefix: /big}}, upstream: rec}
"#;

struct Edge {
    gw: Gateway,
    rec: Recorder,
    limited: u16,
    per_ip: u16,
    /// A listener that also takes HTTP/2 with prior knowledge.
    h2c: u16,
}

fn config(rec: &Recorder, limited: u16, per_ip: u16, max: u32) -> String {
    CONFIG
        .replace("{H2C}", &free_port().to_string())
        .replace("{REC}", &rec.addr.to_string())
        .replace("{LIMITED}", &limited.to_string())
        .replace("{PERIP}", &per_ip.to_string())
        .replace("{MAX}", &max.to_string())
}

async fn start() -> Edge {
    let rec = Recorder::start().await;
    let (limited, per_ip) = (free_port(), free_port());
    let cfg = config(&rec, limited, per_ip, 2);
    let h2c = cfg
        .lines()
        .find(|l| l.contains("name: h2c"))
        .and_then(|l| l.split("127.0.0.1:").nth(1))
        .and_then(|p| p.split('"').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let gw = Gateway::start(&cfg).await;
    Edge {
        gw,
        rec,
        limited,
        per_ip,
        h2c,
    }
}

/// A response as far as it came, and how long after the last write the connection
/// closed (`None`: still open after 15 s).
struct Answer {
    text: String,
    closed_after: Option<Duration>,
}

impl Answer {
    fn status(&self) -> u16 {
        self.text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn code(&self) -> Option<String> {
        let body = self.text.split_once("\r\n\r\n")?.1;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["error"]["code"].as_str().map(str::to_owned)
    }
}

/// Read until the gateway closes (or 15 s pass).
async fn read_all(s: &mut TcpStream, since: Instant) -> Answer {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let closed_after = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Some(since.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break None,
        }
    };
    Answer {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed_after,
    }
}

async fn send(port: u16, bytes: &[u8]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(&mut s, Instant::now()).await
}

/// One response on a keepalive connection (head + `content-length` body).
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn slow_header_clients_are_cut_off_at_request_header() {
    let e = start().await;
    // One byte every 200 ms: never a read gap long enough for a per-read timeout.
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    let started = Instant::now();
    let head =
        b"GET /p/slowloris HTTP/1.1\r\nHost: a.example\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa";
    let mut answer = String::new();
    let mut buf = [0u8; 4096];
    for b in head.iter().cycle() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never cut off");
    }
    let rest = read_all(&mut s, started).await;
    answer.push_str(&rest.text);
    let closed = rest.closed_after.expect("closed");
    // request_header is 2s: closed within it plus one second.
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    let a = Answer {
        text: answer,
        closed_after: Some(closed),
    };
    assert_eq!(a.status(), 408, "{}", a.text);
    assert_eq!(a.code().as_deref(), Some("request_header_timeout"));
    assert!(a.text.to_ascii_lowercase().contains("connection: close"));

    // A connection that sends nothing gets no answer, just the close.
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    let silent = read_all(&mut s, Instant::now()).await;
    assert_eq!(silent.text, "");
    let closed = silent.closed_after.expect("closed");
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");

    e.gw.wait_metrics(&[
        r#"gateway_downstream_timeouts_total{kind="request_header",listener="main"} 2"#,
        r#"gateway_requests_total{method="GET",route="-",status_class="4xx"} 1"#,
    ])
    .await;
    assert!(e.rec.seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let e = start().await;
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    // Within keepalive_idle (1s) the connection serves the next request...
    for _ in 0..2 {
        s.write_all(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ...and then it is closed.
    let idle = read_all(&mut s, Instant::now()).await;
    assert_eq!(idle.text, "");
    let closed = idle.closed_after.expect("idle connection closed");
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    e.gw.wait_metrics(&[
        r#"gateway_downstream_timeouts_total{kind="keepalive_idle",listener="main"} 1"#,
    ])
    .await;
}

#[tokio::test]
async fn connection_limits_refuse_the_next_connection() {
    let e = start().await;
    // Two connections fill the limited listener (max_connections: 2)...
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", e.limited)).await.unwrap();
        s.write_all(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    e.gw.wait_metrics(&[r#"gateway_connections_active{listener="limited"} 2"#])
        .await;
    // ...so the third is accepted and closed at once, without an answer.
    let refused = send(e.limited, b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(refused.text, "");
    assert!(refused.closed_after.is_some());
    e.gw.wait_metrics(&[
        r#"gateway_connections_rejected_total{listener="limited",reason="max_connections"} 1"#,
    ])
    .await;
    // Other listeners have their own counts.
    assert_eq!(
        send(e.gw.port, b"GET /d HTTP/1.0\r\n\r\n").await.status(),
        200
    );

    // A closed connection frees its place.
    drop(open.pop());
    e.gw.wait_metrics(&[r#"gateway_connections_active{listener="limited"} 1"#])
        .await;
    assert_eq!(
        send(e.limited, b"GET /d HTTP/1.0\r\n\r\n").await.status(),
        200
    );

    // Per client address: the second connection from 127.0.0.1 is refused.
    let mut first = TcpStream::connect(("127.0.0.1", e.per_ip)).await.unwrap();
    first
        .write_all(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));
    let refused = send(e.per_ip, b"GET /d HTTP/1.0\r\n\r\n").await;
    assert_eq!(refused.text, "");
    e.gw.wait_metrics(&[
        r#"gateway_connections_rejected_total{listener="per-ip",reason="max_connections_per_client_ip"} 1"#,
    ])
    .await;

    // The limits are reloadable: with max_connections 3 a second connection fits again.
    write_atomic(
        &e.gw.config,
        &render(
            &config(&e.rec, e.limited, e.per_ip, 3),
            e.gw.port,
            e.gw.admin_port,
        ),
    );
    e.gw.wait_config("version 2", |v| v["version"] == 2).await;
    let mut second = TcpStream::connect(("127.0.0.1", e.limited)).await.unwrap();
    second
        .write_all(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut second).await.starts_with("HTTP/1.1 200"));
    let mut third = TcpStream::connect(("127.0.0.1", e.limited)).await.unwrap();
    third
        .write_all(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut third).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn declared_bodies_over_the_limit_get_413_before_any_upstream() {
    let e = start().await;
    // The server-wide limit (10 MiB) on every route kind, and with no route at all.
    for path in ["/p/upload", "/c/upload", "/d", "/r", "/nothing/here"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            20 << 20
        );
        let a = send(e.gw.port, head.as_bytes()).await;
        assert_eq!(a.status(), 413, "{path}: {}", a.text);
        assert_eq!(
            a.code().as_deref(),
            Some("request_body_too_large"),
            "{path}"
        );
        assert!(a.closed_after.is_some(), "{path}: connection closed");
    }
    // A client that sends the body anyway still gets the 413.
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    let head = format!(
        "POST /p/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        20 << 20
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(&vec![b'q'; 1 << 20]).await;
    let a = read_all(&mut s, Instant::now()).await;
    assert_eq!(a.status(), 413, "{}", a.text);
    // A route's own limit (1 KiB).
    let a = send(
        e.gw.port,
        b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 413, "{}", a.text);
    assert!(e.rec.seen().is_empty(), "{:?}", e.rec.seen());

    // Within the limit, and on a route without one, bodies are forwarded.
    let a = send(
        e.gw.port,
        b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(a.status(), 200, "{}", a.text);
    let big = 11 << 20;
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    let head = format!(
        "PUT /unlimited HTTP/1.1\r\nHost: a\r\nContent-Length: {big}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'z'; big]).await.unwrap();
    let a = read_all(&mut s, Instant::now()).await;
    assert_eq!(a.status(), 200, "{}", a.text);
    let seen = e.rec.seen();
    let unlimited = seen.iter().find(|s| s.target == "/unlimited").unwrap();
    assert!(unlimited.complete);
    assert_eq!(unlimited.body.len(), big);
}

#[tokio::test]
async fn chunked_bodies_crossing_the_limit_are_cut_off() {
    let e = start().await;
    // Nothing answered yet: 413, and the upstream never gets the whole request.
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    s.write_all(b"POST /small/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
    s.write_all(chunk.as_bytes()).await.unwrap();
    s.write_all(chunk.as_bytes()).await.unwrap();
    let a = read_all(&mut s, Instant::now()).await;
    assert_eq!(a.status(), 413, "{}", a.text);
    assert_eq!(a.code().as_deref(), Some("request_body_too_large"));
    assert!(a.closed_after.is_some());
    for seen in e.rec.seen() {
        assert!(!seen.complete, "the upstream got a whole request: {seen:?}");
    }

    // The upstream answered already: the response cannot change, the connection closes.
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    s.write_all(b"POST /early HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    for _ in 0..3 {
        let _ = s.write_all(chunk.as_bytes()).await;
    }
    let a = read_all(&mut s, started).await;
    // Closed well before the upstream would end its response (10 s), unfinished.
    let closed = a.closed_after.expect("closed");
    assert!(closed < Duration::from_secs(8), "{closed:?}");
    assert!(!a.text.ends_with("0\r\n\r\n"), "{}", a.text);
}

#[tokio::test]
async fn stalled_request_bodies_get_408() {
    let e = start().await;
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    s.write_all(b"POST /p/stall HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf.")
        .await
        .unwrap();
    let a = read_all(&mut s, Instant::now()).await;
    assert_eq!(a.status(), 408, "{}", a.text);
    assert_eq!(a.code().as_deref(), Some("request_body_timeout"));
    let closed = a.closed_after.expect("closed");
    assert!(closed < Duration::from_secs(4), "{closed:?}");
    e.gw.wait_metrics(&[
        r#"gateway_downstream_timeouts_total{kind="request_body_idle",listener="main"} 1"#,
    ])
    .await;
}

#[tokio::test]
async fn clients_that_stop_reading_are_cut_off() {
    let e = start().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let mut s = socket
        .connect(format!("127.0.0.1:{}", e.gw.port).parse().unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Do not read for a while: the gateway's writes block, then time out (1s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let a = read_all(&mut s, Instant::now()).await;
    assert!(a.text.starts_with("HTTP/1.1 200"));
    assert!(a.closed_after.is_some(), "closed");
    assert!(a.text.len() < 64 << 20, "the whole body was sent");
    e.gw.wait_metrics(&[
        r#"gateway_downstream_timeouts_total{kind="downstream_write",listener="main"} 1"#,
    ])
    .await;
}

#[tokio::test]
async fn strict_framing_refuses_ambiguous_heads_and_closes() {
    let e = start().await;
    let cases: &[(&str, u16, &str)] = &[
        ("GET /p HTTP/1.1\r\n\r\n", 400, "missing_host"),
        (
            "GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
            "duplicate_host",
        ),
        ("GET /p HTTP/1.1\r\nHost: a@b\r\n\r\n", 400, "bad_host"),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "content_length_with_transfer_encoding",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_transfer_encoding",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_transfer_encoding",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_transfer_encoding",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
            "bad_transfer_encoding",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
            "unsupported_transfer_encoding",
        ),
        (
            "POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_transfer_encoding",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
            400,
            "bad_content_length",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\nab",
            400,
            "bad_content_length",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            400,
            "bad_content_length",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
            400,
            "bad_content_length",
        ),
        // What worked before keeps working: obs-fold, NUL and bare CR are refused.
        (
            "GET /p HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            400,
            "bad_header",
        ),
        (
            "GET /p HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            400,
            "bad_header",
        ),
        (
            "GET /p HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            400,
            "bad_header",
        ),
        (
            "GET /p HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
            400,
            "bad_header",
        ),
        (
            "\x16\x03\x01\x00\x25\x01\x00\x00\x21\x03\x03",
            400,
            "bad_request_line",
        ),
        (
            "GET /p HTTP/2.0\r\nHost: a\r\n\r\n",
            400,
            "bad_request_line",
        ),
        // Shorter than the HTTP/2 preface: answered at once on the h2c listener too.
        ("GET /p\r\n\r\n", 400, "bad_request_line"),
        (
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            501,
            "connect_not_supported",
        ),
        (
            "GET http://b.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n",
            400,
            "host_mismatch",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\nab",
            417,
            "expectation_failed",
        ),
    ];
    for port in [e.gw.port, e.h2c] {
        for (raw, status, code) in cases {
            let a = send(port, raw.as_bytes()).await;
            assert_eq!(a.status(), *status, "{port} {raw:?}: {}", a.text);
            assert_eq!(a.code().as_deref(), Some(*code), "{raw:?}: {}", a.text);
            assert!(a.closed_after.is_some(), "{raw:?}: the connection closes");
            assert!(
                a.text.to_ascii_lowercase().contains("connection: close"),
                "{raw:?}"
            );
        }
    }
    // A request line longer than the head limit: 414, not 431.
    let long = format!("GET /p/{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(70_000));
    let a = send(e.gw.port, long.as_bytes()).await;
    assert_eq!(a.status(), 414, "{}", a.text);
    assert_eq!(a.code().as_deref(), Some("uri_too_long"));
    let big = format!(
        "GET /p HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(70_000)
    );
    let a = send(e.gw.port, big.as_bytes()).await;
    assert_eq!(a.status(), 431, "{}", a.text);
    assert!(e.rec.seen().is_empty(), "{:?}", e.rec.seen());

    // A bad chunk size is refused while the body streams.
    let a = send(
        e.gw.port,
        b"POST /p/chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 400, "{}", a.text);

    // HTTP/1.0 without Host is fine; Connection-listed headers are not forwarded.
    let a = send(
        e.gw.port,
        b"GET /p/ok HTTP/1.0\r\nConnection: x-hop\r\nX-Hop: secret\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 200, "{}", a.text);
    let seen = e.rec.seen();
    let ok = seen.iter().find(|s| s.target == "/p/ok").unwrap();
    assert_eq!(ok.header("x-kept"), Some(&b"yes"[..]));
    assert_eq!(ok.header("x-hop"), None);
}

#[tokio::test]
async fn requests_whose_client_went_away_are_labelled_client_closed() {
    let e = start().await;
    let mut s = TcpStream::connect(("127.0.0.1", e.gw.port)).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Wait until the request is at the upstream, then hang up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.rec.seen().is_empty() {
        assert!(
            Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    let text =
        e.gw.wait_metrics(&[
            r#"gateway_requests_total{method="GET",route="slow",status_class="client_closed"} 1"#,
        ])
        .await;
    assert!(!text.contains(r#"status_class="none""#), "{text}");
    e.gw.wait_log(r#""status":499"#).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_each_head_is_checked() {
    let e = start().await;
    // Three requests in one write: each answered, in order, on the one connection.
    let a = send(
        e.gw.port,
        b"GET /p/one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /p/two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /p/three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.text.matches("HTTP/1.1 200 OK").count(), 3, "{}", a.text);
    let targets: Vec<String> = e.rec.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets, ["/p/one", "/p/two", "/p/three"]);
    assert_eq!(e.rec.seen()[1].body, b"hello");

    // A pipelined head gets the same strict checks as a first one: the smuggling
    // attempt behind a good request is refused and nothing of it reaches the upstream.
    let a = send(
        e.gw.port,
        b"GET /p/four HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /p/five HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /p/six HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(a.text.matches("HTTP/1.1 200 OK").count(), 1, "{}", a.text);
    assert!(
        a.text.contains("content_length_with_transfer_encoding"),
        "{}",
        a.text
    );
    assert!(a.closed_after.is_some());
    let targets: Vec<String> = e.rec.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets, ["/p/one", "/p/two", "/p/three", "/p/four"]);
}
