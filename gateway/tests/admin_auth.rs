//! Admin API security through the real binary: a bearer token on every admin request
//! but the probes (rotated by rewriting its file), one 401 for every path, `gateway
//! check` refusing a reachable admin address without a token, and no secret in any
//! admin view or log line (header values routes set, URL credentials and queries).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Gateway, echo_upstream, write_atomic};

const TOKEN: &str = "admin-token-0123456789abcdef";
const UPSTREAM_KEY: &str = "upstream-api-key-never-shown";
const JWKS_SECRET: &str = "jwks-query-secret";

fn config(upstream: &str, token_file: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}", token_file: "{token_file}"}}
jwt_providers:
  idp:
    algorithms: [RS256]
    issuer: https://id.example.com
    jwks: {{url: "http://user:pw-{JWKS_SECRET}@127.0.0.1:1/jwks.json?key={JWKS_SECRET}", start_timeout: 100ms, refresh_min: 1s}}
upstreams:
  one: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - id: keyed
    match: {{path: {{prefix: /keyed}}}}
    request_headers: {{set: {{x-api-key: "{UPSTREAM_KEY}"}}, add: {{x-extra: "{UPSTREAM_KEY}"}}}}
    upstream: one
  - id: guarded
    match: {{path: {{prefix: /guarded}}}}
    auth: {{jwt: {{providers: [idp]}}}}
    upstream: one
"#
    )
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_token_and_rotates_it_without_restart() {
    let up = echo_upstream("one").await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let gw = Gateway::start(&config(&up, token_file.to_str().unwrap())).await;

    // Probes stay open.
    assert_eq!(get(&gw.admin_url("/healthz"), None).await.0, 200);
    assert_eq!(get(&gw.admin_url("/readyz"), None).await.0, 200);

    // Everything else needs the token, and the 401 does not tell whether a path exists.
    let (status, unknown_body) = get(&gw.admin_url("/no/such/path"), None).await;
    assert_eq!(status, 401);
    for path in ["/metrics", "/admin/config", "/admin/routes", "/admin/cache"] {
        let (status, body) = get(&gw.admin_url(path), None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body, unknown_body, "{path}: same answer as an unknown path");
        assert_eq!(
            get(&gw.admin_url(path), Some("wrong-token-0123456789"))
                .await
                .0,
            401
        );
        assert_eq!(get(&gw.admin_url(path), Some(TOKEN)).await.0, 200, "{path}");
    }
    let v: serde_json::Value = serde_json::from_str(&unknown_body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let r = reqwest::Client::new()
        .get(gw.admin_url("/admin/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer realm="gateway-admin""#
    );
    // Writes too: purge and the mass-deletion confirmation.
    let client = reqwest::Client::new();
    for path in [
        "/admin/cache/purge",
        "/admin/discovery/confirm-mass-deletion",
    ] {
        let r = client
            .post(gw.admin_url(path))
            .body(r#"{"all": true}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = client
        .post(gw.admin_url("/admin/cache/purge"))
        .bearer_auth(TOKEN)
        .body(r#"{"all": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Two Authorization lines are refused even when one is right.
    let r = client
        .get(gw.admin_url("/admin/config"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("authorization", "Bearer other-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Rotation: the Secret's file is replaced; no restart.
    let new_token = "rotated-token-0123456789abcdef";
    write_atomic(&token_file, new_token);
    assert_eq!(
        get(&gw.admin_url("/admin/config"), Some(new_token)).await.0,
        200
    );
    assert_eq!(
        get(&gw.admin_url("/admin/config"), Some(TOKEN)).await.0,
        401
    );
    // A broken file keeps the last good token.
    write_atomic(&token_file, "");
    assert_eq!(
        get(&gw.admin_url("/admin/config"), Some(new_token)).await.0,
        200
    );
    assert!(
        gw.log().contains("keeping the last good token"),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_views_and_logs_show_no_secret() {
    let up = echo_upstream("one").await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let gw = Gateway::start(&config(&up, token_file.to_str().unwrap())).await;
    // The header still reaches the upstream.
    let echoed: serde_json::Value = reqwest::get(gw.url("/keyed/x"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["headers"]["x-api-key"], UPSTREAM_KEY, "{echoed}");

    let (status, routes) = get(&gw.admin_url("/admin/routes"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(
        v["routes"][0]["request_headers"]["set"]["x-api-key"],
        "<redacted>"
    );
    assert_eq!(
        v["routes"][0]["request_headers"]["add"]["x-extra"],
        "<redacted>"
    );
    assert!(!routes.contains(UPSTREAM_KEY), "{routes}");

    // The JWKS fetch fails (nothing listens on port 1): its URL and error are shown
    // without the password or the query.
    let (_, jwt) = get(&gw.admin_url("/admin/jwt"), Some(TOKEN)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut jwt = jwt;
    while !jwt.contains("\"error\": \"") {
        assert!(
            std::time::Instant::now() < deadline,
            "no fetch error yet: {jwt}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        jwt = get(&gw.admin_url("/admin/jwt"), Some(TOKEN)).await.1;
    }
    let v: serde_json::Value = serde_json::from_str(&jwt).unwrap();
    assert_eq!(
        v["providers"][0]["url"],
        "http://<redacted>@127.0.0.1:1/jwks.json?<redacted>"
    );
    assert!(!jwt.contains(JWKS_SECRET), "{jwt}");
    for path in ["/admin/config", "/admin/upstreams", "/metrics"] {
        let (_, body) = get(&gw.admin_url(path), Some(TOKEN)).await;
        assert!(
            !body.contains(JWKS_SECRET) && !body.contains(UPSTREAM_KEY),
            "{path}: {body}"
        );
    }
    let log = gw.log();
    assert!(log.contains("JWKS fetch failed"), "{log}");
    assert!(
        !log.contains(JWKS_SECRET),
        "a secret reached the log:\n{log}"
    );
    assert!(
        !log.contains(UPSTREAM_KEY),
        "a secret reached the log:\n{log}"
    );
}

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const BASE: &str = "listeners: [{name: a, address: '127.0.0.1:8080'}]\nroutes: [{id: r, direct_response: {status: 200}}]\n";

#[test]
fn check_refuses_a_reachable_admin_without_a_token() {
    let (ok, out) = check(&format!("{BASE}admin: {{address: '0.0.0.0:9901'}}\n"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("admin.address") && out.contains("no token"),
        "{out}"
    );
    let (ok, out) = check(&format!("{BASE}admin: {{address: '[::]:9901'}}\n"));
    assert!(!ok, "{out}");
    let (ok, out) = check(&format!(
        "{BASE}admin: {{address: '0.0.0.0:9901', insecure_no_auth: true}}\n"
    ));
    assert!(ok, "{out}");
    let (ok, out) = check(&format!(
        "{BASE}admin: {{address: '0.0.0.0:9901', token_file: /run/secrets/admin/token, metrics_public: true}}\n"
    ));
    assert!(ok, "{out}");
    let (ok, out) = check(&format!(
        "{BASE}admin: {{address: '0.0.0.0:9901', token_env: ADMIN_TOKEN, insecure_no_auth: true}}\n"
    ));
    assert!(!ok && out.contains("admin.insecure_no_auth"), "{out}");
    // Loopback needs no token.
    let (ok, out) = check(&format!("{BASE}admin: {{address: '127.0.0.1:9901'}}\n"));
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_warns_at_start_and_metrics_public_opens_metrics() {
    let gw = Gateway::start(
        "listeners: [{name: a, address: '127.0.0.1:{PORT}'}]\n\
         admin: {address: '0.0.0.0:{ADMIN}', insecure_no_auth: true}\n\
         routes: [{id: r, direct_response: {status: 200}}]\n",
    )
    .await;
    assert!(
        gw.log()
            .contains("the admin API has no token and is reachable"),
        "{}",
        gw.log()
    );
    drop(gw);

    let gw = Gateway::start_with_env(
        "listeners: [{name: a, address: '127.0.0.1:{PORT}'}]\n\
         admin: {address: '127.0.0.1:{ADMIN}', token_env: GATEWAY_TEST_ADMIN_TOKEN, metrics_public: true}\n\
         routes: [{id: r, direct_response: {status: 200}}]\n",
        &[("GATEWAY_TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(get(&gw.admin_url("/metrics"), None).await.0, 200);
    assert_eq!(get(&gw.admin_url("/admin/config"), None).await.0, 401);
    assert_eq!(
        get(&gw.admin_url("/admin/config"), Some(TOKEN)).await.0,
        200
    );
}
