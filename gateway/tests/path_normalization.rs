//! Path variants cannot skip a protected route (issue 20, finding 3), through the real
//! binary: with `/admin` behind a JWT and a broad unauthenticated route to the same
//! upstream, no spelling of `/admin` reaches the upstream without a token; what
//! backends read differently gets a JSON 400 with a stable code; the opt-ins accept
//! encoded slashes and `;` parameters only when that reading stays on the same route;
//! and the cache key and purges use the normalized path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Gateway, Member};
use serde_json::{Value, json};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn config(upstream: &str) -> String {
    format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
jwt_providers:
  hmac: {{algorithms: [HS256], secret: "{SECRET}", issuer: https://issuer.test}}
upstreams:
  app: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - id: admin
    match: {{path: {{prefix: /admin, case_insensitive: true}}}}
    auth: {{jwt: {{providers: [hmac]}}}}
    upstream: app
  - id: files
    match: {{path: {{prefix: /files, allow_encoded_slashes: true, allow_path_parameters: true}}}}
    upstream: app
  - id: cached
    match: {{path: {{prefix: /cached}}}}
    cache: {{default_ttl: 60s}}
    upstream: app
  - id: public
    match: {{path: {{prefix: /}}}}
    upstream: app
"#
    )
}

/// Send one request line as written (no client-side normalization) and return the
/// status and body.
fn raw_get(port: u16, target: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status for {target}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"]["code"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_protected_path_skips_its_auth() {
    let upstream = Member::start("app");
    let gw = Gateway::start(&config(&upstream.addr.to_string())).await;
    // (target, status, code): none of these may reach the upstream.
    let cases = [
        ("/admin", 401, "unauthenticated"),
        ("/admin/users", 401, "unauthenticated"),
        ("/ADMIN", 401, "unauthenticated"),
        ("/Admin/users", 401, "unauthenticated"),
        ("/%61dmin", 401, "unauthenticated"),
        ("/%41DMIN/x", 401, "unauthenticated"),
        ("//admin", 401, "unauthenticated"),
        ("/public/../admin", 401, "unauthenticated"),
        ("/public/%2e%2e/admin", 401, "unauthenticated"),
        ("/admin;x", 400, "path_parameters"),
        ("/admin;jsessionid=1/users", 400, "path_parameters"),
        ("/admin%2F", 400, "encoded_slash"),
        ("/%2Fadmin", 400, "encoded_slash"),
        ("/public/..%2Fadmin", 400, "encoded_slash"),
        ("/public%5C..%5Cadmin", 400, "encoded_slash"),
        ("/admin%00", 400, "encoded_nul"),
        ("/admin%2500", 400, "double_encoding"),
        ("/%252Fadmin", 400, "double_encoding"),
        ("/public\\..\\admin", 400, "backslash_in_path"),
        ("/\\admin", 400, "backslash_in_path"),
        ("/admin%0d%0aX:1", 400, "invalid_path_character"),
        ("/admin%zz", 400, "invalid_percent_encoding"),
        ("/admin%ff", 400, "invalid_utf8_path"),
        // Through the route that accepts encoded slashes and parameters: read the way
        // a lenient backend reads them, these are /admin.
        ("/files/..%2Fadmin", 400, "ambiguous_path"),
        ("/files/..;/admin", 400, "ambiguous_path"),
        ("/files/%2F..%2F..%2Fadmin", 400, "ambiguous_path"),
    ];
    let mut wrong = Vec::new();
    for (target, status, want) in cases {
        let (got, body) = raw_get(gw.port, target);
        if got != status || code(&body) != want {
            wrong.push(format!("{target}: {got} {body}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );
    assert_eq!(upstream.hits(), 0, "a variant reached the upstream");

    // What is forwarded is the normalized form.
    let forwarded = |target: &str| {
        let (status, body) = raw_get(gw.port, target);
        assert_eq!(status, 200, "{target}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()["path"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(forwarded("/%70ublic/./a//b/../c"), "/public/a/c");
    assert_eq!(forwarded("/x%3fy%2a"), "/x%3Fy%2A");
    // The opt-ins: accepted where they stay on their route, forwarded as sent.
    assert_eq!(forwarded("/files/a%2fb"), "/files/a%2Fb");
    assert_eq!(forwarded("/files/report;v=2"), "/files/report;v=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_key_and_purge_use_the_normalized_path() {
    let upstream = Member::start("app");
    let gw = Gateway::start(&config(&upstream.addr.to_string())).await;
    let status = |target: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines()
            .find_map(|l| l.strip_prefix("cache-status: "))
            .unwrap_or_else(|| panic!("no Cache-Status: {out}"))
            .to_owned()
    };
    assert!(status("/cached/x").contains("fwd=uri-miss"));
    for variant in [
        "/cached/x",
        "//cached/x",
        "/./cached/x",
        "/cached//%78",
        "/c/../cached/x",
    ] {
        let s = status(variant);
        assert!(s.contains("hit"), "{variant} is the same entry: {s}");
    }
    assert_eq!(upstream.hits(), 1);
    // A prefix purge written with a variant of the path removes the one entry.
    let purged: Value = reqwest::Client::new()
        .post(gw.admin_url("/admin/cache/purge"))
        .json(&json!({"prefix": "//cached/"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"], 1, "{purged}");
    assert!(status("/./cached/x").contains("fwd=uri-miss"));
    let purged: Value = reqwest::Client::new()
        .post(gw.admin_url("/admin/cache/purge"))
        .json(&json!({"url": "/cached/%78"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"], 1, "{purged}");
}

#[test]
fn check_refuses_paths_that_could_never_match() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.yaml");
    let run = |routes: &str| {
        std::fs::write(
            &file,
            format!("listeners: [{{name: a, address: '127.0.0.1:8080'}}]\nroutes:\n{routes}"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("check")
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) =
        run("  - {id: r, match: {path: {prefix: /%61pi}}, direct_response: {status: 200}}\n");
    assert!(
        !ok && err.contains("not in normal form") && err.contains("/api"),
        "{err}"
    );
    let (ok, err) =
        run("  - {id: r, match: {path: {exact: /a//b}}, direct_response: {status: 200}}\n");
    assert!(!ok && err.contains("routes[0].match.path.exact"), "{err}");
    let (ok, err) =
        run("  - {id: r, match: {path: {exact: '/a;b'}}, direct_response: {status: 200}}\n");
    assert!(!ok && err.contains("allow_path_parameters"), "{err}");
    let (ok, err) = run(
        "  - {id: r, match: {path: {exact: '/a;b', allow_path_parameters: true}}, direct_response: {status: 200}}\n",
    );
    assert!(ok, "{err}");
    let (ok, err) = run(
        "  - {id: r, match: {path: {regex: '/a', case_insensitive: true}}, direct_response: {status: 200}}\n",
    );
    assert!(!ok && err.contains("case_insensitive"), "{err}");
}
