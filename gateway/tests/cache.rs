//! Response caching end to end: the real gateway in front of an Axum origin that counts
//! its hits per path and whose answers each test scripts. Every row of the behaviour
//! matrix uses its own path, so rows cannot see each other's entries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};
use common::Gateway;

/// What the origin answers on one path.
#[derive(Clone, Debug, Default)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// When set, a matching `If-None-Match` gets a 304 (with `headers`).
    etag: Option<&'static str>,
    delay: Duration,
}

impl Answer {
    fn ok(headers: &[(&'static str, &str)], body: &str) -> Self {
        Answer {
            status: 200,
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            body: body.to_owned(),
            ..Answer::default()
        }
    }
}

#[derive(Default)]
struct OriginState {
    answers: HashMap<String, Answer>,
    hits: HashMap<String, usize>,
    /// Request headers of the last request per path.
    seen: HashMap<String, HeaderMap>,
}

#[derive(Clone, Default)]
struct Origin(Arc<Mutex<OriginState>>);

impl Origin {
    fn set(&self, path: &str, a: Answer) {
        self.0.lock().unwrap().answers.insert(path.to_owned(), a);
    }
    fn hits(&self, path: &str) -> usize {
        self.0.lock().unwrap().hits.get(path).copied().unwrap_or(0)
    }
    fn seen(&self, path: &str) -> HeaderMap {
        self.0
            .lock()
            .unwrap()
            .seen
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
    async fn wait_hits(&self, path: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.hits(path) < n {
            assert!(
                Instant::now() < deadline,
                "{path}: origin hits {} < {n}",
                self.hits(path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(State(origin): State<Origin>, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let a = {
        let mut s = origin.0.lock().unwrap();
        *s.hits.entry(path.clone()).or_default() += 1;
        s.seen.insert(path.clone(), req.headers().clone());
        s.answers.get(&path).cloned()
    };
    let Some(a) = a else {
        return Response::builder()
            .status(404)
            .body(Body::from("unscripted"))
            .unwrap();
    };
    if !a.delay.is_zero() {
        tokio::time::sleep(a.delay).await;
    }
    let not_modified = a.etag.is_some_and(|e| {
        req.headers()
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == e.as_bytes())
    });
    let mut b = Response::builder().status(if not_modified { 304 } else { a.status });
    for (k, v) in &a.headers {
        b = b.header(*k, v);
    }
    if let Some(e) = a.etag {
        b = b.header("etag", e);
    }
    let body = if not_modified || req.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::from(a.body.clone())
    };
    b.body(body).unwrap()
}

async fn start_origin() -> (SocketAddr, Origin) {
    let origin = Origin::default();
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, origin)
}

fn config(origin: SocketAddr, server_cache: &str) -> String {
    format!(
        r#"
server:
  cache: {{{server_cache}}}
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  origin: {{endpoints: [{{address: "{origin}"}}]}}
routes:
  - id: cached
    match: {{path: {{prefix: /c/}}}}
    upstream: origin
    timeout: 500ms
    cache: {{}}
  - id: ttl
    match: {{path: {{prefix: /ttl/}}}}
    upstream: origin
    cache: {{default_ttl: 60s}}
  - id: cookie
    match: {{path: {{prefix: /cookie/}}}}
    upstream: origin
    cache: {{set_cookie: strip}}
  - id: keyed
    match: {{path: {{prefix: /keyed/}}}}
    upstream: origin
    cache: {{key: {{query: [page], headers: [x-tenant]}}}}
  - id: small
    match: {{path: {{prefix: /small/}}}}
    upstream: origin
    cache: {{max_object_size: 10}}
  - id: plain
    match: {{path: {{prefix: /plain/}}}}
    upstream: origin
"#
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// One request of a matrix row: method, headers, and what `Cache-Status` must contain.
struct Step {
    method: Method,
    headers: &'static [(&'static str, &'static str)],
    status: &'static str,
}

const fn get(status: &'static str) -> Step {
    Step {
        method: Method::GET,
        headers: &[],
        status,
    }
}

const fn get_with(headers: &'static [(&'static str, &'static str)], status: &'static str) -> Step {
    Step {
        method: Method::GET,
        headers,
        status,
    }
}

struct Row {
    name: &'static str,
    path: &'static str,
    answer: Answer,
    steps: Vec<Step>,
    origin_hits: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behaviour_matrix() {
    let (addr, origin) = start_origin().await;
    let gw = Gateway::start(&config(addr, "")).await;
    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(600));
    let ok = Answer::ok;
    let rows = vec![
        Row {
            name: "max-age is stored and served",
            path: "/c/max-age",
            answer: ok(&[("cache-control", "max-age=60")], "a"),
            steps: vec![
                get("fwd=uri-miss; fwd-status=200; stored"),
                get("gateway; hit; ttl="),
            ],
            origin_hits: 1,
        },
        Row {
            name: "s-maxage is stored",
            path: "/c/s-maxage",
            answer: ok(&[("cache-control", "s-maxage=60")], "a"),
            steps: vec![get("stored"), get("hit")],
            origin_hits: 1,
        },
        Row {
            name: "Expires in the future is stored",
            path: "/c/expires",
            answer: ok(&[("expires", future.as_str())], "a"),
            steps: vec![get("stored"), get("hit")],
            origin_hits: 1,
        },
        Row {
            name: "no-store is never stored",
            path: "/c/no-store",
            answer: ok(&[("cache-control", "no-store, max-age=60")], "a"),
            steps: vec![get("detail=origin-not-cacheable"), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "private is never stored",
            path: "/c/private",
            answer: ok(&[("cache-control", "private, max-age=60")], "a"),
            steps: vec![get("fwd="), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "no declared freshness, no default: not stored",
            path: "/c/undeclared",
            answer: ok(&[], "a"),
            steps: vec![get("fwd="), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "public alone gives no freshness",
            path: "/c/public-only",
            answer: ok(&[("cache-control", "public")], "a"),
            steps: vec![get("fwd="), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "the route's default_ttl applies when nothing is declared",
            path: "/ttl/undeclared",
            answer: ok(&[], "a"),
            steps: vec![get("stored"), get("hit; ttl=")],
            origin_hits: 1,
        },
        Row {
            name: "the route's default_ttl never overrides no-store",
            path: "/ttl/no-store",
            answer: ok(&[("cache-control", "no-store")], "a"),
            steps: vec![get("fwd="), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "Age counts against max-age: arrived stale, refetched",
            path: "/c/aged",
            answer: ok(&[("cache-control", "max-age=60"), ("age", "100")], "a"),
            steps: vec![get("stored"), get("fwd=stale; fwd-status=200")],
            origin_hits: 2,
        },
        Row {
            name: "no-cache is stored but revalidated every time",
            path: "/c/no-cache",
            answer: Answer {
                etag: Some("\"v1\""),
                ..ok(&[("cache-control", "no-cache")], "a")
            },
            steps: vec![
                get("stored"),
                get("fwd=stale; fwd-status=304"),
                get("fwd=stale; fwd-status=304"),
            ],
            origin_hits: 3,
        },
        Row {
            name: "must-revalidate with max-age=0 revalidates",
            path: "/c/must-revalidate",
            answer: Answer {
                etag: Some("\"m\""),
                ..ok(&[("cache-control", "max-age=0, must-revalidate")], "a")
            },
            steps: vec![get("stored"), get("fwd=stale; fwd-status=304")],
            origin_hits: 2,
        },
        Row {
            name: "proxy-revalidate with max-age=0 revalidates",
            path: "/c/proxy-revalidate",
            answer: Answer {
                etag: Some("\"p\""),
                ..ok(&[("cache-control", "max-age=0, proxy-revalidate")], "a")
            },
            steps: vec![get("stored"), get("fwd=stale; fwd-status=304")],
            origin_hits: 2,
        },
        Row {
            name: "Authorization: not stored without permission",
            path: "/c/auth-private",
            answer: ok(&[("cache-control", "max-age=60")], "a"),
            steps: vec![
                get_with(&[("authorization", "Bearer a")], "detail=authorization"),
                get_with(&[("authorization", "Bearer a")], "fwd="),
            ],
            origin_hits: 2,
        },
        Row {
            name: "Authorization: public allows storing and serving",
            path: "/c/auth-public",
            answer: ok(&[("cache-control", "public, max-age=60")], "a"),
            steps: vec![
                get_with(&[("authorization", "Bearer a")], "stored"),
                get_with(&[("authorization", "Bearer b")], "hit"),
            ],
            origin_hits: 1,
        },
        Row {
            name: "Authorization: s-maxage allows storing and serving",
            path: "/c/auth-smaxage",
            answer: ok(&[("cache-control", "s-maxage=60")], "a"),
            steps: vec![
                get_with(&[("authorization", "Bearer a")], "stored"),
                get_with(&[("authorization", "Bearer b")], "hit"),
            ],
            origin_hits: 1,
        },
        Row {
            name: "Authorization: an anonymous entry is not served to it",
            path: "/c/auth-anon-entry",
            answer: ok(&[("cache-control", "max-age=60")], "a"),
            steps: vec![
                get("stored"),
                get_with(&[("authorization", "Bearer a")], "fwd="),
                get("hit"),
            ],
            origin_hits: 2,
        },
        Row {
            name: "Set-Cookie is not stored by default",
            path: "/c/cookie",
            answer: ok(
                &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
                "a",
            ),
            steps: vec![get("detail=set-cookie"), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "set_cookie: strip stores without the cookie",
            path: "/cookie/strip",
            answer: ok(
                &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
                "a",
            ),
            steps: vec![get("stored"), get("hit")],
            origin_hits: 1,
        },
        Row {
            name: "Vary splits variants",
            path: "/c/vary",
            answer: ok(
                &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                "a",
            ),
            steps: vec![
                get_with(&[("accept-language", "de")], "fwd=uri-miss"),
                get_with(&[("accept-language", "en")], "fwd=vary-miss"),
                get_with(&[("accept-language", "de")], "hit"),
                get_with(&[("accept-language", "en")], "hit"),
            ],
            origin_hits: 2,
        },
        Row {
            name: "Vary: * is never served from cache",
            path: "/c/vary-star",
            answer: ok(&[("cache-control", "max-age=60"), ("vary", "*")], "a"),
            steps: vec![get("detail=vary-star"), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "error statuses are not stored",
            path: "/c/error",
            answer: Answer {
                status: 500,
                ..ok(&[("cache-control", "max-age=60")], "a")
            },
            steps: vec![get("detail=status"), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "404 with max-age is stored",
            path: "/c/not-found",
            answer: Answer {
                status: 404,
                ..ok(&[("cache-control", "max-age=60")], "a")
            },
            steps: vec![get("stored"), get("hit")],
            origin_hits: 1,
        },
        Row {
            name: "HEAD is answered from a stored GET",
            path: "/c/head",
            answer: ok(&[("cache-control", "max-age=60")], "body"),
            steps: vec![
                get("stored"),
                Step {
                    method: Method::HEAD,
                    headers: &[],
                    status: "hit",
                },
            ],
            origin_hits: 1,
        },
        Row {
            name: "a HEAD miss fetches and stores the full GET",
            path: "/c/head-first",
            answer: ok(&[("cache-control", "max-age=60")], "body"),
            steps: vec![
                Step {
                    method: Method::HEAD,
                    headers: &[],
                    status: "stored",
                },
                get("hit"),
            ],
            origin_hits: 1,
        },
        Row {
            name: "POST is forwarded, never stored",
            path: "/c/post",
            answer: ok(&[("cache-control", "max-age=60")], "a"),
            steps: vec![
                Step {
                    method: Method::POST,
                    headers: &[],
                    status: "fwd=method",
                },
                get("fwd=uri-miss"),
                get("hit"),
            ],
            origin_hits: 2,
        },
        Row {
            name: "larger than max_object_size: not stored",
            path: "/small/big",
            answer: ok(&[("cache-control", "max-age=60")], "0123456789abcdef"),
            steps: vec![get("fwd="), get("fwd=")],
            origin_hits: 2,
        },
        Row {
            name: "key: listed query parameters and headers only",
            path: "/keyed/a",
            answer: ok(&[("cache-control", "max-age=60")], "a"),
            steps: vec![
                get_with(&[("x-tenant", "t1")], "stored"),
                get_with(&[("x-tenant", "t2")], "stored"),
                get_with(&[("x-tenant", "t1"), ("x-other", "z")], "hit"),
            ],
            origin_hits: 2,
        },
    ];
    let c = client();
    let mut failures = Vec::new();
    for row in rows {
        origin.set(row.path, row.answer.clone());
        for (i, step) in row.steps.iter().enumerate() {
            let mut req = c.request(step.method.clone(), gw.url(row.path));
            for (k, v) in step.headers {
                req = req.header(*k, *v);
            }
            let r = req.send().await.unwrap();
            let status = cache_status(&r);
            let code = r.status();
            let head = step.method == Method::HEAD;
            let body = r.text().await.unwrap();
            if !status.contains(step.status) {
                failures.push(format!(
                    "{}: step {i}: Cache-Status {status:?} lacks {:?}",
                    row.name, step.status
                ));
            }
            if code.as_u16() != row.answer.status {
                failures.push(format!("{}: step {i}: status {code}", row.name));
            }
            if !head && step.method == Method::GET && body != row.answer.body {
                failures.push(format!("{}: step {i}: body {body:?}", row.name));
            }
        }
        let hits = origin.hits(row.path);
        if hits != row.origin_hits {
            failures.push(format!(
                "{}: origin hits {hits}, want {}",
                row.name, row.origin_hits
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    gw.wait_metrics(&[
        r#"gateway_cache_requests_total{outcome="hit",route="cached"}"#,
        r#"gateway_cache_requests_total{outcome="miss",route="cached"}"#,
        r#"gateway_cache_requests_total{outcome="uncacheable",route="cached"}"#,
        r#"gateway_cache_requests_total{outcome="revalidated",route="cached"}"#,
        r#"gateway_cache_requests_total{outcome="expired",route="cached"}"#,
        r#"gateway_cache_requests_total{outcome="bypass",route="cached"}"#,
        r#"gateway_cache_revalidations_total{result="not_modified",route="cached"}"#,
        "gateway_cache_stored_bytes",
    ])
    .await;

    // The stripped cookie never reached a client.
    let r = c.get(gw.url("/cookie/strip")).send().await.unwrap();
    assert!(r.headers().get("set-cookie").is_none());
    // Routes without `cache:` say nothing about caching.
    origin.set("/plain/x", ok(&[("cache-control", "max-age=60")], "p"));
    let r = c.get(gw.url("/plain/x")).send().await.unwrap();
    assert!(r.headers().get("cache-status").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_conditionals_range_and_hop_by_hop() {
    let (addr, origin) = start_origin().await;
    let gw = Gateway::start(&config(addr, "")).await;
    let c = client();

    // A 304 refreshes the stored headers.
    origin.set(
        "/c/reval",
        Answer {
            etag: Some("\"e1\""),
            ..Answer::ok(
                &[("cache-control", "no-cache"), ("x-version", "1")],
                "body-1",
            )
        },
    );
    let r = c.get(gw.url("/c/reval")).send().await.unwrap();
    assert_eq!(r.headers()["x-version"], "1");
    origin.set(
        "/c/reval",
        Answer {
            etag: Some("\"e1\""),
            ..Answer::ok(
                &[("cache-control", "max-age=60"), ("x-version", "2")],
                "body-1",
            )
        },
    );
    let r = c.get(gw.url("/c/reval")).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd-status=304"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(origin.seen("/c/reval")["if-none-match"], "\"e1\"");
    assert_eq!(r.headers()["x-version"], "2");
    assert_eq!(r.text().await.unwrap(), "body-1");
    // Now fresh for 60s from the 304: a hit with the new headers.
    let r = c.get(gw.url("/c/reval")).send().await.unwrap();
    assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    assert_eq!(r.headers()["x-version"], "2");
    assert_eq!(origin.hits("/c/reval"), 2);

    // Last-Modified validators are sent as If-Modified-Since.
    origin.set(
        "/c/lm",
        Answer::ok(
            &[
                ("cache-control", "no-cache"),
                ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ],
            "lm",
        ),
    );
    c.get(gw.url("/c/lm")).send().await.unwrap();
    c.get(gw.url("/c/lm")).send().await.unwrap();
    assert_eq!(
        origin.seen("/c/lm")["if-modified-since"],
        "Wed, 21 Oct 2015 07:28:00 GMT"
    );

    // A client's own conditional request gets a 304 from the cache.
    origin.set(
        "/c/cond",
        Answer {
            etag: Some("\"c1\""),
            ..Answer::ok(&[("cache-control", "max-age=60")], "cond")
        },
    );
    c.get(gw.url("/c/cond")).send().await.unwrap();
    let r = c
        .get(gw.url("/c/cond"))
        .header("if-none-match", "\"c1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(cache_status(&r).contains("hit"));
    let r = c
        .get(gw.url("/c/cond"))
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(origin.hits("/c/cond"), 1);
    // A client's conditional on a miss is not passed on: the full response is stored.
    origin.set(
        "/c/cond-miss",
        Answer {
            etag: Some("\"m1\""),
            ..Answer::ok(&[("cache-control", "max-age=60")], "full")
        },
    );
    let r = c
        .get(gw.url("/c/cond-miss"))
        .header("if-none-match", "\"m1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(origin.seen("/c/cond-miss").get("if-none-match").is_none());
    let r = c.get(gw.url("/c/cond-miss")).send().await.unwrap();
    assert!(cache_status(&r).contains("hit"));
    assert_eq!(r.text().await.unwrap(), "full");

    // Range requests are served from the stored full response.
    origin.set(
        "/c/range",
        Answer::ok(&[("cache-control", "max-age=60")], "0123456789"),
    );
    let r = c
        .get(gw.url("/c/range"))
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text().await.unwrap(), "2345");
    assert!(
        origin.seen("/c/range").get("range").is_none(),
        "origin got the whole body request"
    );
    let r = c
        .get(gw.url("/c/range"))
        .header("range", "bytes=7-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(cache_status(&r).contains("hit"));
    assert_eq!(r.headers()["content-range"], "bytes 7-9/10");
    assert_eq!(r.text().await.unwrap(), "789");
    assert_eq!(origin.hits("/c/range"), 1);

    // Hop-by-hop headers and those named in Connection are neither stored nor forwarded.
    origin.set(
        "/c/hop",
        Answer::ok(
            &[
                ("cache-control", "max-age=60"),
                ("connection", "x-hop"),
                ("x-hop", "secret"),
                ("x-end", "kept"),
            ],
            "hop",
        ),
    );
    for _ in 0..2 {
        let r = c
            .get(gw.url("/c/hop"))
            .header("connection", "x-client-hop")
            .header("x-client-hop", "1")
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("x-hop").is_none());
        assert_eq!(r.headers()["x-end"], "kept");
    }
    assert!(origin.seen("/c/hop").get("x-client-hop").is_none());
    assert_eq!(origin.hits("/c/hop"), 1);

    // Cache tags are for purging, not for clients.
    origin.set(
        "/c/tagged",
        Answer::ok(&[("cache-control", "max-age=60"), ("cache-tag", "t")], "t"),
    );
    let r = c.get(gw.url("/c/tagged")).send().await.unwrap();
    assert!(r.headers().get("cache-tag").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_and_stale_if_error() {
    let (addr, origin) = start_origin().await;
    let gw = Gateway::start(&config(addr, "")).await;
    let c = client();

    // `Age` beyond max-age: stored already stale, no waiting needed.
    origin.set(
        "/c/swr",
        Answer::ok(
            &[
                ("cache-control", "max-age=10, stale-while-revalidate=600"),
                ("age", "20"),
            ],
            "old",
        ),
    );
    c.get(gw.url("/c/swr")).send().await.unwrap();
    origin.set(
        "/c/swr",
        Answer::ok(&[("cache-control", "max-age=600")], "new"),
    );
    let r = c.get(gw.url("/c/swr")).send().await.unwrap();
    let status = cache_status(&r);
    assert!(
        status.contains("hit; ttl=-") && status.contains("stale-while-revalidate"),
        "{status}"
    );
    assert_eq!(r.text().await.unwrap(), "old", "served stale at once");
    // One background refresh...
    origin.wait_hits("/c/swr", 2).await;
    // ...after which the new response is a fresh hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get(gw.url("/c/swr")).send().await.unwrap();
        let status = cache_status(&r);
        if r.text().await.unwrap() == "new" {
            assert!(status.contains("hit; ttl="), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "refresh never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.hits("/c/swr"), 2, "exactly one background refresh");

    // stale-if-error: the origin answers 503.
    origin.set(
        "/c/sie",
        Answer::ok(
            &[
                ("cache-control", "max-age=10, stale-if-error=600"),
                ("age", "20"),
            ],
            "kept",
        ),
    );
    c.get(gw.url("/c/sie")).send().await.unwrap();
    origin.set(
        "/c/sie",
        Answer {
            status: 503,
            ..Answer::ok(&[], "down")
        },
    );
    let r = c.get(gw.url("/c/sie")).send().await.unwrap();
    let status = cache_status(&r);
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        status.contains("fwd=stale; fwd-status=503") && status.contains("stale-if-error"),
        "{status}"
    );
    assert_eq!(r.text().await.unwrap(), "kept");

    // stale-if-error: the origin times out (route timeout 500ms).
    origin.set(
        "/c/sie-timeout",
        Answer::ok(
            &[
                ("cache-control", "max-age=10, stale-if-error=600"),
                ("age", "20"),
            ],
            "kept",
        ),
    );
    c.get(gw.url("/c/sie-timeout")).send().await.unwrap();
    origin.set(
        "/c/sie-timeout",
        Answer {
            delay: Duration::from_secs(3),
            ..Answer::ok(&[], "late")
        },
    );
    let r = c.get(gw.url("/c/sie-timeout")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", cache_status(&r));
    // The failed origin request costs the client its connection, and it is told so.
    assert_eq!(r.headers()["connection"], "close");
    assert!(
        cache_status(&r).contains("stale-if-error"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.text().await.unwrap(), "kept");

    // Without stale-if-error the failure goes to the client.
    origin.set(
        "/c/no-sie",
        Answer::ok(&[("cache-control", "max-age=10"), ("age", "20")], "x"),
    );
    c.get(gw.url("/c/no-sie")).send().await.unwrap();
    origin.set(
        "/c/no-sie",
        Answer {
            status: 503,
            ..Answer::ok(&[], "down")
        },
    );
    let r = c.get(gw.url("/c/no-sie")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(cache_status(&r).contains("fwd="), "{}", cache_status(&r));
    // The gateway's own 504 on a caching route carries Cache-Status too.
    origin.set(
        "/c/slow",
        Answer {
            delay: Duration::from_secs(3),
            ..Answer::ok(&[("cache-control", "max-age=60")], "late")
        },
    );
    let r = c.get(gw.url("/c/slow")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        cache_status(&r).starts_with("gateway; fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );

    // The first stale request starts the refresh; a poll of the loop above that comes
    // before the refresh lands is served stale too, so "at least one" (the line exists
    // once the counter moved).
    gw.wait_metrics(&[
        r#"gateway_cache_stale_served_total{reason="stale_while_revalidate",route="cached"} "#,
        r#"gateway_cache_stale_served_total{reason="stale_if_error",route="cached"} 2"#,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate() {
    let (addr, origin) = start_origin().await;
    let gw = Gateway::start(&config(addr, "")).await;
    let c = client();
    for p in ["/c/items", "/c/items/7", "/c/other"] {
        origin.set(p, Answer::ok(&[("cache-control", "max-age=600")], "v1"));
        c.get(gw.url(p)).send().await.unwrap();
        assert!(cache_status(&c.get(gw.url(p)).send().await.unwrap()).contains("hit"));
    }
    // POST to the collection answers 201 with Location of the item.
    origin.set(
        "/c/items",
        Answer {
            status: 201,
            ..Answer::ok(
                &[("location", "/c/items/7"), ("cache-control", "max-age=600")],
                "v2",
            )
        },
    );
    let r = c.post(gw.url("/c/items")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(cache_status(&r).contains("fwd=method"));
    for p in ["/c/items", "/c/items/7"] {
        let r = c.get(gw.url(p)).send().await.unwrap();
        assert!(
            cache_status(&r).contains("fwd=uri-miss"),
            "{p} was invalidated"
        );
    }
    assert!(cache_status(&c.get(gw.url("/c/other")).send().await.unwrap()).contains("hit"));
    // A failed unsafe request invalidates nothing.
    origin.set(
        "/c/other",
        Answer {
            status: 500,
            ..Answer::ok(&[], "no")
        },
    );
    c.delete(gw.url("/c/other")).send().await.unwrap();
    assert!(cache_status(&c.get(gw.url("/c/other")).send().await.unwrap()).contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_make_one_origin_request() {
    let (addr, origin) = start_origin().await;
    let gw = Gateway::start(&config(addr, "lock_timeout: 10s")).await;
    origin.set(
        "/c/hot",
        Answer {
            delay: Duration::from_millis(300),
            ..Answer::ok(&[("cache-control", "max-age=600")], "hot")
        },
    );
    let c = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = gw.url("/c/hot");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let r = c.get(&url).send().await.unwrap();
                (r.status(), cache_status(&r), r.text().await.unwrap())
            })
        })
        .collect();
    let mut collapsed = 0;
    for t in tasks {
        let (status, cs, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hot");
        if cs.contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(
        origin.hits("/c/hot"),
        1,
        "100 concurrent misses, one origin request"
    );
    assert!(collapsed > 0, "some requests waited for the fill");
    let text = gw.wait_metrics(&["gateway_cache_coalesced_total"]).await;
    assert!(text.contains(r#"gateway_cache_coalesced_total{route="cached"}"#));
}

async fn purge(gw: &Gateway, body: &str) -> (u16, serde_json::Value) {
    let r = client()
        .post(gw.admin_url("/admin/cache/purge"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_url_prefix_tag_and_all() {
    let (addr, origin) = start_origin().await;
    let gw = Gateway::start(&config(addr, "")).await;
    let c = client();
    let entries: &[(&str, &[(&'static str, &str)])] = &[
        ("/c/p/a", &[("cache-tag", "red, blue")]),
        ("/c/p/b", &[("surrogate-key", "blue green")]),
        ("/c/q/a", &[]),
        ("/c/q/b", &[("cache-tag", "red")]),
    ];
    let fill = || async {
        for (p, h) in entries {
            let mut headers = vec![("cache-control", "max-age=600")];
            headers.extend_from_slice(h);
            origin.set(p, Answer::ok(&headers, p));
            c.get(gw.url(p)).send().await.unwrap();
            assert!(cache_status(&c.get(gw.url(p)).send().await.unwrap()).contains("hit"));
        }
        // Two variants of one URL by query.
        c.get(gw.url("/c/q/a?x=1")).send().await.unwrap();
    };
    let is_hit = |p: &'static str| {
        let c = c.clone();
        let url = gw.url(p);
        async move { cache_status(&c.get(url).send().await.unwrap()).contains("hit") }
    };

    fill().await;
    assert_eq!(
        purge(&gw, r#"{"url": "/c/p/a"}"#).await,
        (200, serde_json::json!({"purged": 1}))
    );
    assert!(!is_hit("/c/p/a").await);
    assert!(is_hit("/c/p/b").await);
    // With a host it must match the host the client used.
    assert_eq!(
        purge(&gw, r#"{"url": "http://elsewhere.example/c/p/b"}"#)
            .await
            .1["purged"],
        0
    );
    let own = format!(r#"{{"url": "http://127.0.0.1:{}/c/p/b"}}"#, gw.port);
    assert_eq!(purge(&gw, &own).await.1["purged"], 1);

    fill().await;
    assert_eq!(purge(&gw, r#"{"prefix": "/c/q/"}"#).await.1["purged"], 3);
    assert!(!is_hit("/c/q/b").await);
    assert!(is_hit("/c/p/a").await);

    fill().await;
    assert_eq!(purge(&gw, r#"{"tag": "blue"}"#).await.1["purged"], 2);
    assert!(!is_hit("/c/p/a").await);
    assert!(!is_hit("/c/p/b").await);
    assert!(is_hit("/c/q/b").await);
    assert_eq!(purge(&gw, r#"{"tag": "red"}"#).await.1["purged"], 2);

    fill().await;
    let all = purge(&gw, r#"{"all": true}"#).await.1["purged"]
        .as_u64()
        .unwrap();
    assert!(all >= 5, "{all}");
    assert!(!is_hit("/c/q/a").await);
    assert_eq!(
        purge(&gw, r#"{"all": true}"#).await.1["purged"],
        1,
        "only the entry just refilled"
    );

    // Bad purges are 4xx with a JSON error.
    for bad in ["", "{}", r#"{"url": "x"}"#, r#"{"colour": "red"}"#] {
        let (status, body) = purge(&gw, bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "bad_purge");
    }
    let r = client()
        .get(gw.admin_url("/admin/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    gw.wait_metrics(&["gateway_cache_purged_total"]).await;

    // A reload keeps what is stored: the cache lives outside the runtime.
    origin.set(
        "/c/keep",
        Answer::ok(&[("cache-control", "max-age=600")], "k"),
    );
    c.get(gw.url("/c/keep")).send().await.unwrap();
    let text = std::fs::read_to_string(&gw.config).unwrap();
    common::write_atomic(&gw.config, &format!("{text}\n# reloaded\n"));
    gw.wait_config("reload", |v| v["version"] == 2).await;
    assert!(is_hit("/c/keep").await, "entry survived the reload");
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| {
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_evicts_and_bounds_the_process() {
    const CAP: u64 = 2 * 1024 * 1024;
    const OBJECT: usize = 100 * 1024;
    const OBJECTS: usize = 300; // 30 MiB through a 2 MiB cache
    let (addr, origin) = start_origin().await;
    let gw = Gateway::start(&config(addr, &format!("max_bytes: {CAP}"))).await;
    let c = client();
    let body = "x".repeat(OBJECT);
    // Warm up allocator and connection pools before the baseline.
    for i in 0..20 {
        let p = format!("/c/warm/{i}");
        origin.set(&p, Answer::ok(&[("cache-control", "max-age=600")], &body));
        c.get(gw.url(&p))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let before = rss_bytes(gw.child.id());
    for i in 0..OBJECTS {
        let p = format!("/c/fill/{i}");
        origin.set(&p, Answer::ok(&[("cache-control", "max-age=600")], &body));
        let r = c.get(gw.url(&p)).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), OBJECT);
    }
    let after = rss_bytes(gw.child.id());
    let stored = gw.metric("gateway_cache_stored_bytes").await as u64;
    let evicted = gw.metric("gateway_cache_evictions_total").await;
    assert!(stored <= CAP, "stored {stored} over the cap {CAP}");
    assert!(stored > CAP / 2, "the cache is in use: {stored}");
    assert!(
        evicted >= (OBJECTS as f64) - (CAP as f64 / OBJECT as f64) - 25.0,
        "evictions {evicted}"
    );
    let growth = after.saturating_sub(before);
    eprintln!(
        "rss before {before} after {after} growth {growth}; stored {stored}; evicted {evicted}"
    );
    assert!(
        growth < 12 * 1024 * 1024,
        "process grew {growth} bytes while {} bytes went through a {CAP} byte cache",
        OBJECTS * OBJECT
    );
    // The newest entries are still there; the oldest were evicted.
    let last = format!("/c/fill/{}", OBJECTS - 1);
    assert!(cache_status(&c.get(gw.url(&last)).send().await.unwrap()).contains("hit"));
    assert!(!cache_status(&c.get(gw.url("/c/fill/0")).send().await.unwrap()).contains("hit"));
    let info: serde_json::Value = c
        .get(gw.admin_url("/admin/cache"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["max_bytes"], CAP);
}
