//! The status page in a real browser: headless Chromium (Debian's `chromium`, driven
//! through `chromedriver` with `fantoccini`) loads `GET /` from the admin listener of
//! the real gateway running config/local.yaml in front of the sample services, finds
//! every route id, shows the TLS listener's certificates with their days left (the one
//! expiring within 14 days in the warning style, an expired one in the error style),
//! sees an endpoint turn unhealthy when its service stops, logs no console error, and
//! makes cross-origin `fetch`es through a route with a CORS policy from a web app's
//! origin (allowed there, refused on a route without CORS; the page's
//! own CSP keeps it from fetching elsewhere). It saves a screenshot (with
//! `UPDATE_SCREENSHOT=1` also to gateway/docs/status-page.png, shown in the README).
//! One browser start for the whole file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Member, free_port};
use example_services::stack::{Stack, StackConfig};
use fantoccini::{ClientBuilder, Locator};
use serde_json::{Value, json};

const ISSUER: &str = "http://127.0.0.1:8080/auth";

/// chromedriver on a free loopback port, stopped (by PID) on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(names: &[&str]) -> String {
    for n in names {
        for dir in ["/usr/bin", "/usr/lib/chromium", "/usr/local/bin"] {
            let p = format!("{dir}/{n}");
            if std::path::Path::new(&p).exists() {
                return p;
            }
        }
    }
    panic!(
        "none of {names:?} is installed: .ci/deps installs Debian's chromium and chromium-driver"
    );
}

async fn driver() -> Driver {
    let port = free_port();
    let child = Command::new(find(&["chromedriver"]))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Driver {
        child,
        port,
        _profile: tempfile::tempdir().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d
}

/// The browser's console messages at level SEVERE (chromedriver's log endpoint).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

fn severe(log: &Value) -> Vec<String> {
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A self-signed pair for `name` that ends in `days`, written to `dir`: its file paths.
fn certificate(dir: &std::path::Path, name: &str, days: u64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.not_after = (std::time::SystemTime::now() + Duration::from_secs(days * 86_400)).into();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// config/local.yaml with the stack's addresses, the notifications service replaced by
/// a member the test can stop, health checks every 200 ms, a CORS policy on the
/// catalog route that allows `web_app` (an origin serving a browser app), and an `https`
/// listener serving `certs` (cert file, key file).
fn config(
    stack: &Stack,
    notifications: &Member,
    web_app: &str,
    certs: &[(String, String)],
) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/local.yaml"))
            .unwrap();
    let text = text
        .replace(ISSUER, "{ISSUER}")
        .replace("127.0.0.1:8080", "127.0.0.1:{PORT}")
        .replace("127.0.0.1:9901", "127.0.0.1:{ADMIN}")
        .replace("127.0.0.1:3001", &stack.auth.to_string())
        .replace("127.0.0.1:3002", &stack.users.to_string())
        .replace("127.0.0.1:3003", &stack.catalog.to_string())
        .replace("127.0.0.1:3004", &stack.orders.to_string())
        .replace("127.0.0.1:3005", &notifications.addr.to_string())
        .replace("{ISSUER}", ISSUER);
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    for (_, u) in doc["upstreams"].as_mapping_mut().unwrap().iter_mut() {
        if let Some(h) = u.get_mut("health_check") {
            h["interval"] = "200ms".into();
            h["unhealthy_threshold"] = 1.into();
        }
    }
    let certificates: Vec<serde_yaml_ng::Value> = certs
        .iter()
        .map(|(c, k)| {
            serde_yaml_ng::from_str(&format!("{{cert_file: \"{c}\", key_file: \"{k}\"}}")).unwrap()
        })
        .collect();
    let mut https: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "{{name: https, address: \"127.0.0.1:{}\", tls: {{}}}}",
        free_port()
    ))
    .unwrap();
    https["tls"]["certificates"] = certificates.into();
    doc["listeners"].as_sequence_mut().unwrap().push(https);
    for r in doc["routes"].as_sequence_mut().unwrap() {
        if r["id"] == "catalog" {
            r["cors"] = serde_yaml_ng::from_str(
                &format!(r#"{{allow_origins: ["{web_app}"], allow_methods: [GET], allow_headers: [x-demo], expose_headers: [x-request-id]}}"#),
            )
            .unwrap();
        }
    }
    serde_yaml_ng::to_string(&doc).unwrap()
}

async fn wait_js(c: &fantoccini::Client, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.execute(script, vec![]).await.unwrap();
        if !v.is_null() && v != json!(false) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let any = || "127.0.0.1:0".parse().unwrap();
    let stack = Stack::start(StackConfig {
        auth: any(),
        users: any(),
        catalog: any(),
        orders: any(),
        notifications: any(),
        data_dir: None,
        issuer: ISSUER.into(),
        admin: None,
        key_encryption: None,
        redis_url: None,
        backup: Default::default(),
    })
    .await
    .unwrap();
    let mut notifications = Member::start("notifications");
    // A browser app on an origin of its own, for the cross-origin fetches (the status
    // page's policy only lets it talk to the admin listener).
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::response::Html(
                r#"<!doctype html><title>web app</title><link rel="icon" href="data:,">"#,
            )
        }),
    );
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_app = format!("http://{}", app_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(app_listener, app).await.unwrap() });
    // A TLS listener with a certificate ending in 5 days (a warning on the page) and
    // one with a year left.
    let cert_dir = tempfile::tempdir().unwrap();
    let certs = [
        certificate(cert_dir.path(), "soon.test", 5),
        certificate(cert_dir.path(), "later.test", 365),
    ];
    let gw = Gateway::start(&config(&stack, &notifications, &web_app, &certs)).await;
    let routes: Vec<String> = gw.admin_json("/admin/routes").await["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(routes.len() >= 5, "{routes:?}");
    // Some traffic, so the rates and sparklines have something to show.
    let http = reqwest::Client::new();
    for _ in 0..20 {
        http.get(gw.url("/api/v1/catalog/products"))
            .send()
            .await
            .unwrap();
        http.get(gw.url("/nowhere")).send().await.unwrap();
    }

    let d = driver().await;
    // ring and aws-lc-rs are both compiled in (kube, pingora): name one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": find(&["chromium", "chromium-browser"]),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000",
                format!("--user-data-dir={}", d._profile.path().display()),
            ],
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let c = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .unwrap();

    c.goto(&gw.admin_url("/")).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "gateway status");
    for id in &routes {
        c.wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(&format!("#routes tr[data-route=\"{id}\"]")))
            .await
            .unwrap_or_else(|e| panic!("route {id} not on the page: {e}"));
    }
    // The TLS section: a row per certificate, with its days left and state.
    let cert_row = |name: &str| format!("#tls tr[data-listener=\"https\"][data-cert=\"{name}\"]");
    let soon = c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(&cert_row("soon.test")))
        .await
        .unwrap();
    assert_eq!(
        soon.attr("data-state").await.unwrap().as_deref(),
        Some("expiring")
    );
    let cells = soon.find_all(Locator::Css("td")).await.unwrap();
    let days: f64 = cells[4].text().await.unwrap().parse().unwrap();
    assert!((4.0..=5.0).contains(&days), "{days}");
    assert!(
        cells[4]
            .attr("class")
            .await
            .unwrap()
            .unwrap()
            .contains("warn")
    );
    assert_eq!(cells[5].text().await.unwrap(), certs[0].0);
    let later = c.find(Locator::Css(&cert_row("later.test"))).await.unwrap();
    assert_eq!(
        later.attr("data-state").await.unwrap().as_deref(),
        Some("ok")
    );
    let none = c.find(Locator::Id("tls-none")).await.unwrap();
    assert!(!none.is_displayed().await.unwrap());
    // The gateway refuses an expired pair at load, so only a gateway that ran past a
    // notAfter shows one: the page is handed such a document (its own polls, edited
    // in the browser) and must show the error style; then one without certificates.
    let edit = |change: &str| {
        format!(
            r#"window.origFetch = window.origFetch || window.fetch;
               window.fetch = async (...args) => {{
                 const r = await window.origFetch(...args);
                 if (!String(args[0]).endsWith("/admin/status")) return r;
                 const s = await r.json();
                 {change}
                 return new Response(JSON.stringify(s), {{status: r.status}});
               }};"#
        )
    };
    c.execute(&edit("s.tls[1].seconds_left = -2 * 86400;"), vec![])
        .await
        .unwrap();
    let expired = format!(
        "const r = document.querySelector('{}'); return r && r.dataset.state === 'expired' && r.cells[4].className.includes('bad') && r.cells[4].textContent;",
        cert_row("later.test")
    );
    let text = wait_js(&c, "the expired certificate's row", &expired).await;
    assert_eq!(text, "expired 2.0 d ago");
    c.execute(&edit("s.tls = [];"), vec![]).await.unwrap();
    wait_js(
        &c,
        "no TLS listeners",
        "return !document.getElementById('tls-none').hidden && document.getElementById('tls').hidden;",
    )
    .await;
    c.execute("window.fetch = window.origFetch;", vec![])
        .await
        .unwrap();
    wait_js(
        &c,
        "the certificates back",
        "return document.querySelectorAll('#tls tbody tr').length === 2;",
    )
    .await;

    let endpoint = notifications.addr.to_string();
    let row = format!("#upstreams tr[data-endpoint=\"{endpoint}\"]");
    let healthy = format!(
        "const r = document.querySelector('{row}'); return r && r.dataset.healthy === 'true';"
    );
    wait_js(&c, "the notifications endpoint healthy", &healthy).await;
    // Let a few seconds of history accumulate for the screenshot's sparklines.
    for _ in 0..3 {
        for _ in 0..10 {
            http.get(gw.url("/api/v1/catalog/products"))
                .send()
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"),
        &png,
    )
    .unwrap();
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png"),
            &png,
        )
        .unwrap();
    }

    // Stop the service: its endpoint turns unhealthy on the page.
    notifications.kill();
    let unhealthy = format!(
        "const r = document.querySelector('{row}'); return r && r.dataset.healthy === 'false';"
    );
    wait_js(&c, "the notifications endpoint unhealthy", &unhealthy).await;

    // No console errors so far.
    let log = c.issue_cmd(BrowserLog).await.unwrap();
    let errors = severe(&log);
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // The status page may not fetch elsewhere (its Content-Security-Policy).
    let script = format!(
        r#"const done = arguments[arguments.length - 1];
           fetch("{}").then(r => done({{status: r.status}})).catch(e => done({{error: String(e)}}));"#,
        gw.url("/api/v1/catalog/products")
    );
    let got = c.execute_async(&script, vec![]).await.unwrap();
    assert!(got.get("error").is_some(), "CSP must block it: {got}");

    // From the web app's origin, a cross-origin fetch through the CORS route: allowed
    // (a preflight for the custom header, then the request, the exposed header).
    c.goto(&web_app).await.unwrap();
    let script = format!(
        r#"const done = arguments[arguments.length - 1];
           fetch("{}", {{headers: {{"x-demo": "1"}}}})
             .then(r => done({{status: r.status, rid: r.headers.get("x-request-id")}}))
             .catch(e => done({{error: String(e)}}));"#,
        gw.url("/api/v1/catalog/products")
    );
    let got = c.execute_async(&script, vec![]).await.unwrap();
    if got["status"] != 200 {
        let log = c.issue_cmd(BrowserLog).await.unwrap();
        panic!("{got}: {log:#}\n{}", gw.log());
    }
    assert!(got["rid"].as_str().is_some_and(|r| !r.is_empty()), "{got}");
    // From a route without CORS the browser refuses to hand over the answer.
    let script = format!(
        r#"const done = arguments[arguments.length - 1];
           fetch("{}").then(r => done({{status: r.status}})).catch(e => done({{error: String(e)}}));"#,
        gw.url("/api/v1/orders")
    );
    let got = c.execute_async(&script, vec![]).await.unwrap();
    assert!(
        got.get("error").is_some(),
        "the browser must block it: {got}"
    );

    c.close().await.unwrap();
    stack.stop().await;
}

/// A non-loopback admin listener needs its token; the page asks for it and keeps it in
/// `sessionStorage`, and the data it fetches is refused without it (the same 401 for
/// every path).
#[tokio::test]
async fn status_data_needs_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}", token_file: "{}"}}
routes: [{{id: hello, direct_response: {{status: 200, body: hi}}}}]
"#,
        token.display()
    ))
    .await;
    let c = reqwest::Client::new();
    let page = c.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("sessionStorage"),
        "the page keeps the token per tab"
    );
    let mut bodies = Vec::new();
    for path in ["/admin/status", "/admin/nope"] {
        for auth in [None, Some("Bearer wrong-token-of-length")] {
            let mut r = c.get(gw.admin_url(path));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} {auth:?}");
            bodies.push((auth.is_some(), r.text().await.unwrap()));
        }
    }
    // The same answer whether or not the path exists.
    assert_eq!(bodies[0], bodies[2]);
    assert_eq!(bodies[1], bodies[3]);
    let ok = c
        .get(gw.admin_url("/admin/status"))
        .bearer_auth("0123456789abcdef0123")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let s: Value = ok.json().await.unwrap();
    assert_eq!(s["routes"][0]["id"], "hello");
    // No TLS listener: no certificates.
    assert_eq!(s["tls"], json!([]));
}
