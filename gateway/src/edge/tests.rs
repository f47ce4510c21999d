#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::body::{BodyBudget, declared_length, effective};
use super::connections::{ConnectionCounts, Refusal};
use super::framing::{BodyFraming, FramingError, Scan, Version, check, scan};
use super::head::{HeadLimits, HeadRead, read_head};
use super::{ConnectionLimits, EdgeSpec, ListenerEdge};

fn head(lines: &[&str]) -> Vec<u8> {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s.into_bytes()
}

#[test]
fn framing_table() {
    use BodyFraming::*;
    use FramingError::*;
    let ok = |body| Ok::<BodyFraming, FramingError>(body);
    let cases: &[(&[&str], Result<BodyFraming, FramingError>)] = &[
        (&["GET / HTTP/1.1", "Host: a"], ok(None)),
        (&["GET / HTTP/1.0"], ok(None)),
        (&["GET / HTTP/1.0", "Host: a"], ok(None)),
        (&["GET / HTTP/1.1", "Host:"], ok(None)),
        (&["GET / HTTP/1.1", "Host: [::1]:8080"], ok(None)),
        (&["GET http://a/ HTTP/1.1", "Host: a"], ok(None)),
        (&["GET / HTTP/1.1"], Err(MissingHost)),
        (&["GET http://a/ HTTP/1.1"], Err(MissingHost)),
        (
            &["GET / HTTP/1.1", "Host: a", "Host: a"],
            Err(DuplicateHost),
        ),
        (
            &["GET / HTTP/1.0", "Host: a", "host: b"],
            Err(DuplicateHost),
        ),
        (&["GET / HTTP/1.1", "Host: user@a"], Err(BadHost)),
        (&["GET / HTTP/1.1", "Host: a b"], Err(BadHost)),
        (&["GET / HTTP/1.1", "Host: a/b"], Err(BadHost)),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length: 5"],
            ok(Length(5)),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length:  007 "],
            ok(Length(7)),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length: 0"],
            ok(Length(0)),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Content-Length: 5",
                "Content-Length: 5",
            ],
            Err(BadContentLength),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Content-Length: 5",
                "Content-Length: 6",
            ],
            Err(BadContentLength),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length: 5, 5"],
            Err(BadContentLength),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length: +5"],
            Err(BadContentLength),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length: -1"],
            Err(BadContentLength),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length: 0x10"],
            Err(BadContentLength),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length: 1 2"],
            Err(BadContentLength),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Content-Length:"],
            Err(BadContentLength),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Content-Length: 99999999999999999999",
            ],
            Err(BadContentLength),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"],
            ok(Chunked),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Transfer-Encoding: Chunked"],
            ok(Chunked),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding:  chunked\t",
            ],
            ok(Chunked),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked",
                "Content-Length: 3",
            ],
            Err(ContentLengthWithTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Content-Length: 3",
                "Transfer-Encoding: chunked",
            ],
            Err(ContentLengthWithTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked, chunked",
            ],
            Err(BadTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: chunked",
            ],
            Err(BadTransferEncoding),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Transfer-Encoding: ,chunked"],
            Err(BadTransferEncoding),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked,"],
            Err(BadTransferEncoding),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Transfer-Encoding:"],
            Err(BadTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked;x=1",
            ],
            Err(BadTransferEncoding),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip"],
            Err(BadTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked, gzip",
            ],
            Err(BadTransferEncoding),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Transfer-Encoding: xchunked"],
            Err(BadTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: gzip, chunked",
            ],
            Err(UnsupportedTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: gzip",
                "Transfer-Encoding: chunked",
            ],
            Err(UnsupportedTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: identity, chunked",
            ],
            Err(UnsupportedTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: x;q=1, chunked",
            ],
            Err(UnsupportedTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked, chunked, chunked",
            ],
            Err(BadTransferEncoding),
        ),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked, x, chunked",
            ],
            Err(BadTransferEncoding),
        ),
        (
            &["POST / HTTP/1.0", "Transfer-Encoding: chunked"],
            Err(BadTransferEncoding),
        ),
        (&["GET / HTTP/1.1", "Host: a", "X: a", " b"], Err(BadHeader)),
        (
            &["GET / HTTP/1.1", "Host: a", "Bad Name: x"],
            Err(BadHeader),
        ),
        (&["GET / HTTP/1.1", "Host: a", "X : x"], Err(BadHeader)),
        (&["GET / HTTP/1.1", "Host: a", "X: a\0b"], Err(BadHeader)),
        (&["GET / HTTP/1.1", "Host: a", "X: a\rb"], Err(BadHeader)),
        (&["GET / HTTP/2.0", "Host: a"], Err(BadRequestLine)),
        (&["GET / HTTP/1.2", "Host: a"], Err(BadRequestLine)),
        (&["GET  / HTTP/1.1", "Host: a"], Err(BadRequestLine)),
        (&["GET /", "Host: a"], Err(BadRequestLine)),
        (&["G(T / HTTP/1.1", "Host: a"], Err(BadRequestLine)),
        (&["CONNECT a:443 HTTP/1.1", "Host: a:443"], Err(Connect)),
        (
            &["GET http://A.example/x HTTP/1.1", "Host: a.EXAMPLE"],
            ok(None),
        ),
        (&["GET https://a:8443?q HTTP/1.1", "Host: a:8443"], ok(None)),
        (&["GET http://b/x HTTP/1.1", "Host: a"], Err(HostMismatch)),
        (&["GET http://a:81/ HTTP/1.1", "Host: a"], Err(HostMismatch)),
        (&["GET http://a/ HTTP/1.0", "Host: b"], Err(HostMismatch)),
        (&["GET /http://b/ HTTP/1.1", "Host: a"], ok(None)),
        (
            &[
                "POST / HTTP/1.1",
                "Host: a",
                "Expect: 100-Continue",
                "Content-Length: 1",
            ],
            ok(Length(1)),
        ),
        (
            &["POST / HTTP/1.1", "Host: a", "Expect: teapot"],
            Err(UnsupportedExpectation),
        ),
        (&["GET / HTTP/1.0", "Expect: teapot"], ok(None)),
    ];
    for (lines, want) in cases {
        let bytes = head(lines);
        let got = check(&bytes).map(|h| h.body);
        assert_eq!(&got, want, "{lines:?}");
        if let Err(e) = want {
            // Every refusal is a 4xx, except what is not implemented (501).
            let status = e.status();
            assert!((400..500).contains(&status) || status == 501, "{e:?}");
            assert_eq!(
                status == 501,
                matches!(e, UnsupportedTransferEncoding | Connect)
            );
        }
    }
}

#[test]
fn framing_reads_version_method_and_request_id() {
    let bytes = b"\r\n\nPUT /x HTTP/1.0\nX-Request-Id: abc\nx-request-id: second\n\n";
    let h = check(bytes).unwrap();
    assert_eq!(h.version, Version::Http10);
    assert_eq!(h.method, b"PUT");
    assert_eq!(h.request_id, Some(&b"abc"[..]));
}

#[test]
fn too_many_headers() {
    let mut lines = vec!["GET / HTTP/1.1".to_owned(), "Host: a".to_owned()];
    lines.extend((0..300).map(|i| format!("X-{i}: v")));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let bytes = head(&refs);
    assert_eq!(check(&bytes), Err(FramingError::TooManyHeaders));
    assert_eq!(scan(&bytes), Scan::Malformed(FramingError::TooManyHeaders));
    assert_eq!(FramingError::TooManyHeaders.status(), 431);
}

#[test]
fn scan_finds_the_end_of_the_head() {
    let full = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
    assert_eq!(scan(full), Scan::Complete(full.len() - 4));
    for cut in 0..full.len() - 4 {
        assert_eq!(scan(&full[..cut]), Scan::Partial, "{cut}");
    }
    assert_eq!(
        scan(b"\r\n\r\nGET / HTTP/1.1\nHost: a\n\n"),
        Scan::Complete(28)
    );
    // Not HTTP at all: refused before any line end.
    assert_eq!(
        scan(b"\x16\x03\x01\x02\x00"),
        Scan::Malformed(FramingError::BadRequestLine)
    );
    assert_eq!(
        scan(b"GET / HTTP/1.1\r\nX: \0"),
        Scan::Malformed(FramingError::BadHeader)
    );
    assert_eq!(
        scan(b"GET / FOO\r\n"),
        Scan::Malformed(FramingError::BadRequestLine)
    );
}

/// The framing checks agree with httparse (Pingora's parser) on where a head ends and
/// on its fields: a head that `check` accepts parses, with the same body framing.
mod properties {
    use proptest::prelude::*;

    use super::super::framing::{BodyFraming, Scan, check, scan};

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Host".to_owned()),
            Just("host".to_owned()),
            Just("Content-Length".to_owned()),
            Just("content-length".to_owned()),
            Just("Transfer-Encoding".to_owned()),
            Just("TRANSFER-ENCODING".to_owned()),
            Just("X-Request-Id".to_owned()),
            Just("Connection".to_owned()),
            "[A-Za-z][A-Za-z0-9-]{0,8}",
            // Evil: spaces, separators, controls in names.
            Just("Transfer-Encoding ".to_owned()),
            Just(" Host".to_owned()),
            Just("Content_Length".to_owned()),
            Just("X\u{0}Y".to_owned()),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("chunked".to_owned()),
            Just("Chunked".to_owned()),
            Just("chunked, chunked".to_owned()),
            Just(",chunked".to_owned()),
            Just("gzip, chunked".to_owned()),
            Just("chunked;x=1".to_owned()),
            Just("identity".to_owned()),
            Just("\u{b}chunked".to_owned()),
            Just("0".to_owned()),
            Just("5".to_owned()),
            Just("5, 5".to_owned()),
            Just("+5".to_owned()),
            Just("-1".to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("example.com".to_owned()),
            Just("a@b".to_owned()),
            Just("[::1]:80".to_owned()),
            Just("".to_owned()),
            Just(" padded ".to_owned()),
            Just("a\rb".to_owned()),
            Just("a\u{0}b".to_owned()),
            "[ -~]{0,12}",
        ]
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            Just("GET / HTTP/1.1"),
            Just("POST /a HTTP/1.1"),
            Just("PUT /x?y HTTP/1.0"),
            Just("GET http://a/ HTTP/1.1"),
            Just("GET / HTTP/2.0"),
            Just("GET  / HTTP/1.1"),
        ];
        let eol = prop_oneof![Just("\r\n"), Just("\n")];
        (
            line,
            proptest::collection::vec((name(), value(), any::<bool>()), 0..6),
            eol,
            any::<bool>(),
        )
            .prop_map(|(line, fields, eol, fold)| {
                let mut s = format!("{line}{eol}");
                for (n, v, fold_this) in fields {
                    s.push_str(&format!("{n}: {v}{eol}"));
                    if fold && fold_this {
                        s.push_str(&format!(" folded{eol}"));
                    }
                }
                s.push_str(eol);
                s.into_bytes()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn accepted_heads_are_unambiguous(bytes in request()) {
            // Never panics; a complete head is seen as complete, or refused.
            let scanned = scan(&bytes);
            prop_assert!(matches!(scanned, Scan::Complete(n) if n == bytes.len()) || matches!(scanned, Scan::Malformed(_)));
            let Ok(head) = check(&bytes) else {
                return Ok(());
            };
            // What the gateway accepts, Pingora's parser reads the same way.
            let mut storage = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut storage);
            let parsed = req.parse(&bytes);
            prop_assert!(matches!(parsed, Ok(httparse::Status::Complete(n)) if n == bytes.len()), "{parsed:?}");
            let all = |name: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect::<Vec<_>>();
            let cl = all("content-length");
            let te = all("transfer-encoding");
            prop_assert!(cl.is_empty() || te.is_empty());
            prop_assert!(cl.len() <= 1 && te.len() <= 1);
            prop_assert!(all("host").len() <= 1);
            match head.body {
                BodyFraming::None => prop_assert!(cl.is_empty() && te.is_empty()),
                BodyFraming::Length(n) => {
                    let text = std::str::from_utf8(cl[0]).unwrap().trim();
                    prop_assert_eq!(text.parse::<u64>().ok(), Some(n));
                    prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
                }
                BodyFraming::Chunked => {
                    prop_assert!(std::str::from_utf8(te[0]).unwrap().trim().eq_ignore_ascii_case("chunked"));
                }
            }
        }
    }
}

fn limits(request_header: u64, keepalive_idle: u64) -> HeadLimits {
    HeadLimits {
        request_header: Duration::from_millis(request_header),
        keepalive_idle: Duration::from_millis(keepalive_idle),
        max_bytes: 1024,
    }
}

#[tokio::test(start_paused = true)]
async fn head_reader_deadlines() {
    let (_tx, mut shutdown) = watch::channel(false);
    // A fresh connection that sends nothing: closed at request_header, no answer due.
    let (mut server, _client) = tokio::io::duplex(4096);
    let start = tokio::time::Instant::now();
    let read = read_head(&mut server, true, start, limits(1000, 5000), &mut shutdown).await;
    assert!(
        matches!(read, HeadRead::TimedOut { ref partial } if partial.is_empty()),
        "{read:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(1000));

    // A slow client: one byte every 100ms is cut off at the deadline, not per read.
    let (mut server, mut client) = tokio::io::duplex(4096);
    let start = tokio::time::Instant::now();
    tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: slow.example\r\n" {
            client.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let read = read_head(&mut server, true, start, limits(1000, 5000), &mut shutdown).await;
    assert!(
        matches!(read, HeadRead::TimedOut { ref partial } if !partial.is_empty()),
        "{read:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(1000));

    // A reused connection: idle up to keepalive_idle, then request_header from the
    // first byte.
    let (mut server, _client) = tokio::io::duplex(4096);
    let start = tokio::time::Instant::now();
    let read = read_head(&mut server, false, start, limits(1000, 3000), &mut shutdown).await;
    assert!(matches!(read, HeadRead::Idle), "{read:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(3000));

    let (mut server, mut client) = tokio::io::duplex(4096);
    let start = tokio::time::Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        client.write_all(b"GET / HT").await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let read = read_head(&mut server, false, start, limits(1000, 3000), &mut shutdown).await;
    assert!(
        matches!(read, HeadRead::TimedOut { ref partial } if partial.len() == 8),
        "{read:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(3500));
}

#[tokio::test]
async fn head_reader_outcomes() {
    let (_tx, mut shutdown) = watch::channel(false);
    let now = tokio::time::Instant::now;
    let (mut server, mut client) = tokio::io::duplex(8192);
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
        .await
        .unwrap();
    match read_head(&mut server, true, now(), limits(5000, 5000), &mut shutdown).await {
        HeadRead::Complete { buf, head_len } => {
            assert_eq!(&buf[head_len..], b"body");
        }
        other => panic!("{other:?}"),
    }

    let (mut server, mut client) = tokio::io::duplex(8192);
    client.write_all(&[b'a'; 2000]).await.unwrap();
    let read = read_head(&mut server, true, now(), limits(5000, 5000), &mut shutdown).await;
    assert!(matches!(read, HeadRead::TooLarge { .. }), "{read:?}");

    let (mut server, mut client) = tokio::io::duplex(8192);
    client
        .write_all(b"GET / HTTP/1.1\r\nHo st: a\r\n")
        .await
        .unwrap();
    let read = read_head(&mut server, true, now(), limits(5000, 5000), &mut shutdown).await;
    assert!(
        matches!(
            read,
            HeadRead::Malformed {
                error: FramingError::BadHeader,
                ..
            }
        ),
        "{read:?}"
    );

    let (mut server, client) = tokio::io::duplex(8192);
    drop(client);
    let read = read_head(&mut server, true, now(), limits(5000, 5000), &mut shutdown).await;
    assert!(matches!(read, HeadRead::Closed), "{read:?}");

    let (mut server, mut client) = tokio::io::duplex(8192);
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    drop(client);
    let read = read_head(&mut server, true, now(), limits(5000, 5000), &mut shutdown).await;
    assert!(matches!(read, HeadRead::Truncated), "{read:?}");

    // Shutdown ends an idle wait, not a request that has started.
    let (tx, mut shutdown) = watch::channel(false);
    let (mut server, _client) = tokio::io::duplex(8192);
    let stop = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
        tx
    });
    let read = read_head(
        &mut server,
        false,
        now(),
        limits(5000, 60_000),
        &mut shutdown,
    )
    .await;
    assert!(matches!(read, HeadRead::Shutdown), "{read:?}");
    drop(stop.await.unwrap());
}

#[test]
fn connection_limits() {
    let gauge = prometheus::IntGauge::new("g", "g").unwrap();
    let counts = ConnectionCounts::new(gauge.clone());
    let ip_a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let a = Some(ip_a);
    let b = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
    let g1 = counts.admit(a, 3, 2).unwrap();
    let g2 = counts.admit(a, 3, 2).unwrap();
    assert_eq!(
        counts.admit(a, 3, 2).unwrap_err(),
        Refusal::MaxConnectionsPerClientIp
    );
    let g3 = counts.admit(b, 3, 2).unwrap();
    assert_eq!(counts.admit(b, 3, 2).unwrap_err(), Refusal::MaxConnections);
    assert_eq!(counts.active(), 3);
    assert_eq!(gauge.get(), 3);
    drop(g1);
    assert_eq!(counts.from_ip(ip_a), 1);
    let g4 = counts.admit(a, 3, 2).unwrap();
    // IPv4-mapped IPv6 is the same client.
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(counts.from_ip(mapped), 2);
    drop((g2, g3, g4));
    assert_eq!(counts.active(), 0);
    assert_eq!(gauge.get(), 0);
    assert_eq!(counts.from_ip(ip_a), 0);
    // 0: no limit.
    let many: Vec<_> = (0..100).map(|_| counts.admit(a, 0, 0).unwrap()).collect();
    assert_eq!(counts.active(), 100);
    drop(many);
}

#[test]
fn body_limits() {
    assert_eq!(effective(None, Some(10)), Some(10));
    assert_eq!(effective(Some(0), Some(10)), None);
    assert_eq!(effective(Some(5), None), Some(5));
    let mut budget = BodyBudget::new(Some(10));
    assert!(!budget.refuses(10));
    assert!(budget.refuses(11));
    assert!(budget.take(6));
    assert!(budget.take(4));
    assert!(!budget.take(1));
    let mut unlimited = BodyBudget::new(None);
    assert!(unlimited.take(usize::MAX));
    assert!(!unlimited.refuses(u64::MAX));
    let mut h = http::HeaderMap::new();
    assert_eq!(declared_length(&h), None);
    h.insert("content-length", "42".parse().unwrap());
    assert_eq!(declared_length(&h), Some(42));
    h.append("content-length", "42".parse().unwrap());
    assert_eq!(declared_length(&h), None);
}

#[test]
fn listener_lookup() {
    let l = |name: &str, addr: &str, max| ListenerEdge {
        name: name.into(),
        address: addr.parse().unwrap(),
        limits: ConnectionLimits {
            max_connections: max,
            ..ConnectionLimits::default()
        },
    };
    let spec = EdgeSpec {
        listeners: vec![l("lo", "127.0.0.1:80", 1), l("any", "0.0.0.0:81", 2)],
        ..EdgeSpec::default()
    };
    let at = |a: &str| {
        spec.listener_at(a.parse::<SocketAddr>().unwrap())
            .map(|l| l.name.as_str())
    };
    assert_eq!(at("127.0.0.1:80"), Some("lo"));
    assert_eq!(at("10.1.1.1:81"), Some("any"));
    assert_eq!(at("[::ffff:127.0.0.1]:80"), Some("lo"));
    assert_eq!(at("10.1.1.1:80"), None);
    assert_eq!(spec.limits("any").max_connections, 2);
    assert_eq!(spec.limits("gone"), &spec.defaults);
}
