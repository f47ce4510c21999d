//! Property tests. Random request heads, built from the HTTP/1.1 grammar plus known-evil
//! fragments, sent through the real gateway to a recording upstream: each must either
//! be forwarded exactly (same method, normalized target, end-to-end fields in order,
//! same body) or be refused with a 4xx (501 for an unknown transfer coding), never a
//! panic or another 5xx; and every well-formed one must be forwarded. Path
//! normalization is checked against its invariants (starts with `/`, no `//`, no dot
//! segments, idempotent), whatever the rules for what it refuses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway::router::normalize_path;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::common::Gateway;
use super::upstream::Recorder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evil {
    ContentLengthAndChunked,
    ChunkedTwice,
    LeadingComma,
    UnknownCoding,
    ContentLengthList,
    ContentLengthTwice,
    SignedContentLength,
    ObsFold,
    Nul,
    BareCr,
    SpaceBeforeColon,
    NoHost,
    TwoHosts,
    HostUserinfo,
    BadChunkSize,
    ChunkedInHttp10,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Length(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

#[derive(Debug, Clone)]
struct Case {
    http10: bool,
    method: &'static str,
    path: String,
    query: Option<&'static str>,
    fields: Vec<(String, Vec<u8>)>,
    hop: bool,
    body: Body,
    evil: Option<Evil>,
}

fn segment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "users", "42", ".", "..", "%2e", "%2E%2e", ".%2e", "", "~u", "%41", "%2F", "a;b",
        "%C3%A9", "x.y", "...", "-",
    ])
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..6), any::<bool>()).prop_map(|(segs, double)| {
        let mut p = if double {
            "//".to_owned()
        } else {
            "/".to_owned()
        };
        p.push_str(&segs.join("/"));
        p
    })
}

fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[!-~]([ -~]{0,10}[!-~])?".prop_map(String::into_bytes),
        Just(b"caf\xe9".to_vec()),
        Just(b"a\tb".to_vec()),
        Just(b"\"quoted, with comma\"".to_vec()),
    ]
}

fn fields() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["x-p-a", "x-p-b", "X-P-Mixed", "accept", "user-agent"]),
            field_value(),
        )
            .prop_map(|(n, v)| (n.to_owned(), v)),
        0..5,
    )
}

fn body() -> impl Strategy<Value = Body> {
    let bytes = prop::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        Just(Body::None),
        bytes.clone().prop_map(Body::Length),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..100), 0..4)
            .prop_map(Body::Chunked),
    ]
}

fn evil() -> impl Strategy<Value = Option<Evil>> {
    use Evil::*;
    prop_oneof![
        3 => Just(None),
        1 => prop::sample::select(vec![
            ContentLengthAndChunked, ChunkedTwice, LeadingComma, UnknownCoding,
            ContentLengthList, ContentLengthTwice, SignedContentLength, ObsFold, Nul, BareCr,
            SpaceBeforeColon, NoHost, TwoHosts, HostUserinfo, BadChunkSize, ChunkedInHttp10,
        ]).prop_map(Some),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        path(),
        prop::option::of(prop::sample::select(vec![
            "a=1",
            "a=1&b=%20x",
            "flag",
            "q=a/b?c",
        ])),
        fields(),
        any::<bool>(),
        body(),
        evil(),
    )
        .prop_map(|(http10, method, path, query, fields, hop, body, evil)| {
            // HTTP/1.0 has no chunked coding: only the evil case sends it.
            let body = match (&body, http10) {
                (Body::Chunked(_), true) => Body::Length(b"ten bytes!".to_vec()),
                _ => body,
            };
            Case {
                http10,
                method,
                path,
                query,
                fields,
                hop,
                body,
                evil,
            }
        })
}

impl Case {
    /// Well formed: the gateway must forward it. Encoded slashes and `;` parameters
    /// are refused on routes that do not opt in (the test route does not).
    fn valid(&self) -> bool {
        self.evil.is_none()
            && gateway::router::path::normalize(&self.path).is_ok_and(|n| n.findings.is_empty())
    }

    fn render(&self, id: u64) -> Vec<u8> {
        use Evil::*;
        let mut out = Vec::new();
        let version = if self.http10 || self.evil == Some(ChunkedInHttp10) {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        let target = match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        out.extend_from_slice(format!("{} {target} {version}\r\n", self.method).as_bytes());
        let mut line = |name: &str, value: &[u8]| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        match self.evil {
            Some(NoHost) if !self.http10 => {}
            Some(TwoHosts) => {
                line("Host", b"a.example");
                line("Host", b"b.example");
            }
            Some(HostUserinfo) => line("Host", b"user@a.example"),
            _ => line("Host", b"a.example"),
        }
        line("X-Case", id.to_string().as_bytes());
        for (n, v) in &self.fields {
            line(n, v);
        }
        if self.hop {
            line("Connection", b"close, x-hop");
            line("X-Hop", b"must not pass");
        } else {
            line("Connection", b"close");
        }
        match self.evil {
            Some(ObsFold) => out.extend_from_slice(b"X-Fold: a\r\n b\r\n"),
            Some(Nul) => out.extend_from_slice(b"X-Nul: a\0b\r\n"),
            Some(BareCr) => out.extend_from_slice(b"X-Cr: a\rb\r\n"),
            Some(SpaceBeforeColon) => out.extend_from_slice(b"X-Space : a\r\n"),
            _ => {}
        }
        let chunked_evil = matches!(
            self.evil,
            Some(ContentLengthAndChunked | ChunkedTwice | LeadingComma | UnknownCoding)
                | Some(BadChunkSize | ChunkedInHttp10)
        );
        let chunks: Vec<Vec<u8>> = match &self.body {
            Body::Chunked(c) => c.clone(),
            Body::Length(b) if chunked_evil => vec![b.clone()],
            _ if chunked_evil => vec![b"x".to_vec()],
            _ => Vec::new(),
        };
        if matches!(self.body, Body::Chunked(_)) || chunked_evil {
            let mut te = |v: &[u8]| {
                out.extend_from_slice(b"Transfer-Encoding: ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            };
            match self.evil {
                Some(ChunkedTwice) => te(b"chunked, chunked"),
                Some(LeadingComma) => te(b",chunked"),
                Some(UnknownCoding) => te(b"gzip, chunked"),
                _ => te(b"chunked"),
            }
            if self.evil == Some(ContentLengthAndChunked) {
                out.extend_from_slice(b"Content-Length: 1\r\n");
            }
            out.extend_from_slice(b"\r\n");
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                if self.evil == Some(BadChunkSize) {
                    out.extend_from_slice(b"zz\r\n");
                } else {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                }
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            return out;
        }
        let body = match &self.body {
            Body::Length(b) => Some(b.clone()),
            _ => None,
        };
        let len = body.as_ref().map_or(0, Vec::len);
        match self.evil {
            Some(ContentLengthList) => {
                out.extend_from_slice(format!("Content-Length: {len}, {len}\r\n").as_bytes())
            }
            Some(ContentLengthTwice) => {
                out.extend_from_slice(
                    format!("Content-Length: {len}\r\nContent-Length: {len}\r\n").as_bytes(),
                );
            }
            Some(SignedContentLength) => {
                out.extend_from_slice(format!("Content-Length: +{len}\r\n").as_bytes())
            }
            _ if body.is_some() => {
                out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes())
            }
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            out.extend_from_slice(&b);
        }
        out
    }

    fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            Body::None => Vec::new(),
            Body::Length(b) => b.clone(),
            Body::Chunked(c) => c.concat(),
        }
    }
}

/// Headers the gateway itself manages on the way upstream.
const MANAGED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

fn exchange(port: u16, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The gateway may refuse (and close) before reading everything.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_heads_are_forwarded_exactly_or_refused() {
    let rec = Recorder::start().await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  rec: {{endpoints: [{{address: "{}"}}]}}
routes:
  - {{id: all, match: {{path: {{prefix: /}}}}, upstream: rec}}
"#,
        rec.addr
    ))
    .await;
    let port = gw.port;
    let next = AtomicU64::new(1);
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let result = tokio::task::block_in_place(|| {
        // The failing case is reported in the message; keep the error small.
        runner
            .run(&case(), |case| {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let status = exchange(port, &case.render(id));
                prop_assert!(
                    (200..300).contains(&status) || (400..500).contains(&status) || status == 501,
                    "status {status} for {case:?}"
                );
                if case.valid() {
                    prop_assert_eq!(status, 200, "well-formed request refused: {:?}", case);
                }
                if status != 200 {
                    return Ok(());
                }
                let seen = rec.case(id);
                prop_assert!(seen.is_some(), "answered 200 without reaching the upstream");
                let seen = seen.unwrap();
                prop_assert!(seen.complete);
                prop_assert_eq!(&seen.method, case.method);
                let normalized = normalize_path(&case.path).unwrap();
                let want_target = match case.query {
                    Some(q) => format!("{normalized}?{q}"),
                    None => normalized.into_owned(),
                };
                prop_assert_eq!(&seen.target, &want_target);
                prop_assert_eq!(seen.header("host"), Some(&b"a.example"[..]));
                prop_assert_eq!(seen.body, case.body_bytes());
                // End-to-end fields arrive unchanged, in order per name; nothing else does.
                let e2e = |h: &[(String, Vec<u8>)]| {
                    let mut v: Vec<(String, Vec<u8>)> = h
                        .iter()
                        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                        .filter(|(n, _)| !MANAGED.contains(&n.as_str()))
                        .collect();
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    v
                };
                let mut sent = case.fields.clone();
                sent.push(("x-case".into(), id.to_string().into_bytes()));
                prop_assert_eq!(e2e(&seen.headers), e2e(&sent));
                Ok(())
            })
            .map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        panic!("{e}\n{}", gw.log());
    }
}

/// Percent-decode `%2e`/`%2E` only: what a server could read as a dot.
fn dots(segment: &str) -> String {
    segment.replace("%2e", ".").replace("%2E", ".")
}

fn check_normal(input: &str) -> Result<(), TestCaseError> {
    let Ok(out) = normalize_path(input) else {
        return Ok(());
    };
    prop_assert!(out.starts_with('/'), "{input:?} -> {out:?}");
    prop_assert!(!out.contains("//"), "{input:?} -> {out:?}");
    for seg in out.split('/') {
        let d = dots(seg);
        prop_assert!(d != "." && d != "..", "{input:?} -> {out:?}");
    }
    let again = normalize_path(&out);
    prop_assert!(
        matches!(&again, Ok(p) if *p == out),
        "not idempotent: {input:?} -> {out:?} -> {again:?}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn path_normalization_invariants(p in path(), noise in "\\PC{0,12}") {
        check_normal(&p)?;
        check_normal(&format!("{p}{noise}"))?;
        check_normal(&noise)?;
    }
}
