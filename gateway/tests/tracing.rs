//! OpenTelemetry tracing end to end: the real gateway binary exports OTLP/HTTP to an
//! in-process receiver (decoded with `opentelemetry-proto`), in front of the orders
//! sample service, which continues the trace (its server span and its database call)
//! and exports to the same receiver. Also: invalid `traceparent`s start a new trace and
//! are not forwarded, retries show as sibling attempt spans, `trace_id` is in error
//! bodies and the access log, ratio 0 records nothing, and without `tracing:` the
//! trace headers pass through untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::otlp::{Got, receiver, wait_spans};
use common::{Gateway, echo_upstream, free_port};
use serde_json::Value;

/// The orders service in process, tracing into `receiver` as `orders`.
async fn orders_service(
    receiver: SocketAddr,
) -> (SocketAddr, opentelemetry_sdk::trace::SdkTracerProvider) {
    use example_services::common::{db, http::Metrics, trace};
    use example_services::orders::{self, OrdersState};
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(reqwest::Client::new())
        .with_endpoint(format!("http://{receiver}/v1/traces"))
        .build()
        .unwrap();
    let provider = trace::provider("orders", exporter);
    opentelemetry::global::set_tracer_provider(provider.clone());
    let pool = db::open("sqlite::memory:", orders::SCHEMA).await.unwrap();
    // GETs never call catalog.
    let state = OrdersState::new(pool, "http://127.0.0.1:9", Duration::from_millis(200)).unwrap();
    let app = orders::app(state, Arc::new(Metrics::new("orders").unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, provider)
}

fn config(receiver: SocketAddr, ratio: f64, orders: SocketAddr, echo: SocketAddr) -> String {
    let dead = |p: u16| format!("{{address: \"127.0.0.1:{p}\"}}");
    format!(
        r#"
server: {{shutdown_grace_period: 5s}}
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
tracing:
  sample_ratio: {ratio}
  service_name: edge
  batch_interval: 50ms
  otlp: {{endpoint: "http://{receiver}", protocol: http, headers: {{x-api-key: not-a-secret-really}}}}
upstreams:
  orders: {{endpoints: [{{address: "{orders}"}}]}}
  echo: {{endpoints: [{{address: "{echo}"}}]}}
  dead:
    connect_timeout: 1s
    endpoints: [{}, {}]
routes:
  - {{id: orders-list, match: {{path: {{exact: /v1/orders}}}}, upstream: orders}}
  - {{id: echo, match: {{path: {{prefix: /echo}}}}, upstream: echo}}
  - id: dead
    match: {{path: {{prefix: /dead}}}}
    upstream: dead
    retry: {{attempts: 2, retry_on: [connect_failure], backoff_base: 1ms, backoff_max: 2ms}}
"#,
        dead(free_port()),
        dead(free_port()),
    )
}

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_gateway_orders_and_its_database() {
    let (recv, store) = receiver().await;
    let (orders, provider) = orders_service(recv).await;
    let echo = echo_upstream("echo").await;
    let gw = Gateway::start(&config(recv, 1.0, orders, echo)).await;
    let c = reqwest::Client::new();

    // A sampled parent from the client: everything joins its trace.
    let r = c
        .get(gw.url("/v1/orders"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .header("x-user-id", "alice")
        .header("authorization", "Bearer very-secret-token-value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log());
    let flush = provider.clone();
    tokio::task::spawn_blocking(move || flush.force_flush())
        .await
        .unwrap()
        .unwrap();
    let of_trace = |g: &[Got]| -> Vec<Got> {
        g.iter()
            .filter(|s| s.trace_id() == PARENT_TRACE)
            .cloned()
            .collect()
    };
    let got = wait_spans(&store, "gateway and orders spans", |g| {
        let t = of_trace(g);
        t.iter().any(|s| s.service == "edge" && s.span.kind == 2)
            && t.iter().any(|s| s.service == "edge" && s.span.kind == 3)
            && t.iter().any(|s| s.service == "orders" && s.span.kind == 2)
            && t.iter()
                .any(|s| s.service == "orders" && s.span.name == "SELECT orders")
    })
    .await;
    let spans = of_trace(&got);
    let find = |service: &str, kind: i32| {
        spans
            .iter()
            .find(|s| s.service == service && s.span.kind == kind)
            .cloned()
            .unwrap()
    };
    // Kinds: 2 server, 3 client.
    let server = find("edge", 2);
    let attempt = find("edge", 3);
    let service = find("orders", 2);
    let db = spans
        .iter()
        .find(|s| s.span.name == "SELECT orders")
        .unwrap();
    assert_eq!(
        server.parent_id(),
        PARENT_SPAN,
        "continues the client's span"
    );
    assert_eq!(attempt.parent_id(), server.span_id());
    assert_eq!(
        service.parent_id(),
        attempt.span_id(),
        "orders continues the attempt"
    );
    assert_eq!(
        db.parent_id(),
        service.span_id(),
        "the database call is the service's child"
    );
    assert_eq!(server.span.name, "GET orders-list");
    assert_eq!(server.attr("http.route").as_deref(), Some("orders-list"));
    assert_eq!(server.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.attr("gateway.upstream").as_deref(), Some("orders"));
    assert_eq!(
        server.attr("gateway.upstream.endpoint"),
        Some(orders.to_string())
    );
    assert_eq!(attempt.attr("server.port"), Some(orders.port().to_string()));
    assert_eq!(
        attempt.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(service.attr("http.route").as_deref(), Some("/v1/orders"));
    // The tracestate went along; the token went nowhere.
    assert_eq!(attempt.span.trace_state, "vendor=abc");
    for s in &spans {
        assert!(!s.all_values().contains("very-secret-token-value"), "{s:?}");
    }
    // The access log line carries the trace id (lines are written in batches: wait).
    let log = gw.wait_log(PARENT_TRACE).await;
    assert!(
        log.lines()
            .any(|l| l.contains("access_log") && l.contains(PARENT_TRACE)),
        "{log}"
    );

    // An invalid traceparent starts a new trace and is not forwarded as it was.
    let invalid = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let r: Value = c
        .get(gw.url("/echo/x"))
        .header("traceparent", invalid)
        .header("tracestate", "vendor=stale")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = r["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert_ne!(sent, invalid);
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[3]), ("00", "01"));
    assert_ne!(parts[1], "00000000000000000000000000000000");
    assert!(r["headers"].get("tracestate").is_none(), "{r}");
    let new_trace = parts[1].to_owned();
    wait_spans(&store, "the new trace's server span", |g| {
        g.iter()
            .any(|s| s.trace_id() == new_trace && s.span.kind == 2 && s.parent_id().is_empty())
    })
    .await;

    // Retries are sibling attempt spans; the 502 body names the trace.
    let r = c.get(gw.url("/dead/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    let trace = body["error"]["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(trace.len(), 32, "{body}");
    let got = wait_spans(&store, "two attempts of the dead route", |g| {
        g.iter()
            .filter(|s| s.trace_id() == trace && s.span.kind == 3)
            .count()
            == 2
            && g.iter().any(|s| s.trace_id() == trace && s.span.kind == 2)
    })
    .await;
    let server = got
        .iter()
        .find(|s| s.trace_id() == trace && s.span.kind == 2)
        .unwrap();
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("502")
    );
    // Status code 2: error.
    assert_eq!(server.span.status.as_ref().map(|s| s.code), Some(2));
    let mut tries: Vec<String> = got
        .iter()
        .filter(|s| s.trace_id() == trace && s.span.kind == 3)
        .map(|a| {
            assert_eq!(a.parent_id(), server.span_id());
            assert!(a.attr("error.type").is_some(), "{a:?}");
            a.attr("gateway.attempt").unwrap()
        })
        .collect();
    tries.sort();
    assert_eq!(tries, ["1", "2"]);
    assert!(gw.metric("gateway_trace_spans_exported_total").await >= 7.0);
}

#[tokio::test]
async fn ratio_zero_records_nothing_but_still_propagates() {
    let (recv, store) = receiver().await;
    let echo = echo_upstream("echo").await;
    let gw = Gateway::start(&config(recv, 0.0, echo, echo)).await;
    let c = reqwest::Client::new();
    let r: Value = c
        .get(gw.url("/echo/y"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = r["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert!(sent.ends_with("-00"), "not sampled: {sent}");
    let trace = sent.split('-').nth(1).unwrap().to_owned();
    // A 404 names the trace too.
    let body: Value = c
        .get(gw.url("/nowhere"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"]["trace_id"].as_str().unwrap().len(), 32);
    // A sampled parent is still followed at ratio 0.
    let r = c
        .get(gw.url("/echo/z"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_spans(&store, "the sampled parent's span", |g| {
        g.iter().any(|s| s.trace_id() == PARENT_TRACE)
    })
    .await;
    let got = store.lock().unwrap().clone();
    assert!(
        got.iter().all(|s| s.trace_id() != trace),
        "unsampled trace exported"
    );
    let log = gw.wait_log(&trace).await;
    assert!(log.contains(&trace), "trace id in the access log:\n{log}");
}

#[tokio::test]
async fn without_tracing_trace_headers_pass_through_untouched() {
    let echo = echo_upstream("echo").await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams: {{echo: {{endpoints: [{{address: "{echo}"}}]}}}}
routes: [{{id: echo, upstream: echo}}]
"#
    ))
    .await;
    let c = reqwest::Client::new();
    for tp in [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "not even close",
    ] {
        let r: Value = c
            .get(gw.url("/a"))
            .header("traceparent", tp)
            .header("tracestate", "k=v")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let h: HashMap<String, Value> = serde_json::from_value(r["headers"].clone()).unwrap();
        assert_eq!(h["traceparent"], tp);
        assert_eq!(h["tracestate"], "k=v");
    }
    let gone = c.get(gw.url("/a")).send().await.unwrap();
    let r: Value = gone.json().await.unwrap();
    assert!(r["headers"].get("traceparent").is_none());
}

#[test]
fn bad_tracing_sections_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{name: public, address: "127.0.0.1:1"}]
tracing:
  sample_ratio: 1.5
  otlp: {endpoint: "collector:4318", protocol: udp, headers: {"bad header": x}}
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for needle in [
        "tracing.sample_ratio",
        "tracing.otlp.endpoint",
        "tracing.otlp.protocol",
        "tracing.otlp.headers.bad header",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
}

#[tokio::test]
async fn spans_go_to_a_file_without_a_collector() {
    let echo = echo_upstream("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spans.jsonl");
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
tracing: {{sample_ratio: 1.0, file: "{}", batch_interval: 50ms}}
upstreams: {{echo: {{endpoints: [{{address: "{echo}"}}]}}}}
routes: [{{id: echo, upstream: echo}}]
"#,
        file.display()
    ))
    .await;
    let r = reqwest::Client::new()
        .get(gw.url("/a"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "spans not written:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let server = lines.iter().find(|l| l["kind"] == "server").unwrap();
    assert_eq!(server["trace_id"], PARENT_TRACE);
    assert_eq!(server["parent_span_id"], PARENT_SPAN);
    assert_eq!(server["service"], "gateway");
    assert_eq!(server["attributes"]["http.route"], "echo");
    let attempt = lines.iter().find(|l| l["kind"] == "client").unwrap();
    assert_eq!(attempt["parent_span_id"], server["span_id"]);
}

#[tokio::test]
async fn server_errors_are_exported_even_when_not_sampled() {
    let (recv, store) = receiver().await;
    let echo = echo_upstream("echo").await;
    let gw = Gateway::start(&config(recv, 0.0, echo, echo)).await;
    let c = reqwest::Client::new();
    // Unsampled by the ratio, and by a client's parent that says "not sampled".
    let unsampled_parent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-00");
    let r = c
        .get(gw.url("/dead/x"))
        .header("traceparent", &unsampled_parent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["trace_id"], PARENT_TRACE, "{body}");
    let r = c.get(gw.url("/dead/y")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    let fresh = body["error"]["trace_id"].as_str().unwrap().to_owned();
    let got = wait_spans(&store, "the server spans of both 502s", |g| {
        g.iter().any(|s| s.trace_id() == PARENT_TRACE) && g.iter().any(|s| s.trace_id() == fresh)
    })
    .await;
    for (trace, parent) in [(PARENT_TRACE, PARENT_SPAN), (fresh.as_str(), "")] {
        let spans: Vec<&Got> = got.iter().filter(|s| s.trace_id() == trace).collect();
        assert_eq!(spans.len(), 1, "the server span alone: {spans:#?}");
        let s = spans[0];
        assert_eq!(s.span.kind, 2);
        assert_eq!(s.parent_id(), parent);
        assert_eq!(s.span.name, "GET dead");
        assert_eq!(
            s.attr("gateway.trace.sampled_by").as_deref(),
            Some("server_error")
        );
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("502"));
        assert_eq!(s.attr("gateway.upstream.tries").as_deref(), Some("2"));
        assert_eq!(s.span.status.as_ref().map(|s| s.code), Some(2));
        // Started when the request came in, not when it failed: the two connect
        // attempts (and the backoff between them) lie inside it.
        assert!(s.span.start_time_unix_nano < s.span.end_time_unix_nano);
    }
    // The access log names the same trace.
    gw.wait_log(&fresh).await;

    // `sample_errors: false`: a 502 of an unsampled trace stays unrecorded.
    let (recv, store) = receiver().await;
    let cfg = config(recv, 0.0, echo, echo).replace(
        "sample_ratio: 0\n",
        "sample_ratio: 0\n  sample_errors: false\n",
    );
    assert!(cfg.contains("sample_errors"), "{cfg}");
    let gw = Gateway::start(&cfg).await;
    let r = c.get(gw.url("/dead/z")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    let quiet = body["error"]["trace_id"].as_str().unwrap().to_owned();
    // A sampled request after it, as a marker that export went on.
    let r = c
        .get(gw.url("/echo/after"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = wait_spans(&store, "the marker span", |g| {
        g.iter().any(|s| s.trace_id() == PARENT_TRACE)
    })
    .await;
    assert!(got.iter().all(|s| s.trace_id() != quiet), "{got:#?}");
}

#[tokio::test]
async fn the_forward_auth_call_continues_the_trace() {
    let (recv, store) = receiver().await;
    let echo = echo_upstream("echo").await;
    let (authz, seen) = common::header_recorder("/check", &["traceparent", "tracestate"]).await;
    let cfg = config(recv, 1.0, echo, echo).replace(
        "routes:\n",
        &format!(
            "routes:\n  - id: guarded\n    match: {{path: {{prefix: /guarded}}}}\n    \
             auth: {{forward: {{url: 'http://{authz}/check', send_headers: [traceparent, tracestate, accept]}}}}\n    \
             upstream: echo\n"
        ),
    );
    let gw = Gateway::start(&cfg).await;
    let r = reqwest::Client::new()
        .get(gw.url("/guarded/x"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log());
    let got = seen.lock().unwrap().first().cloned().unwrap();
    let (parent, state) = (got[0].clone(), got[1].clone());
    let got = wait_spans(&store, "the forward_auth span", |g| {
        g.iter()
            .any(|s| s.trace_id() == PARENT_TRACE && s.span.name == "forward_auth")
            && g.iter()
                .any(|s| s.trace_id() == PARENT_TRACE && s.span.kind == 2)
    })
    .await;
    let fa = got
        .iter()
        .find(|s| s.trace_id() == PARENT_TRACE && s.span.name == "forward_auth")
        .unwrap();
    let server = got
        .iter()
        .find(|s| s.trace_id() == PARENT_TRACE && s.span.kind == 2)
        .unwrap();
    assert_eq!(fa.parent_id(), server.span_id());
    // Not the client's header passed along: the check's own span is the parent.
    assert_eq!(
        parent,
        format!("00-{PARENT_TRACE}-{}-01", fa.span_id()),
        "traceparent the auth service got"
    );
    assert_eq!(state, "vendor=abc");
}
