//! API keys and consumers end to end: the real gateway binary in front of an echo
//! upstream. Keys by digest at every source, the consumer forwarded (client copies
//! stripped), groups, disabled consumers, ambiguous and oversized keys, JWT-or-key
//! (`any_of`), per-consumer rate limits, `keys_file` hot reload, `gateway hash-key`, and
//! keys never showing up in the access log or the admin API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Gateway;
use serde_json::Value;

fn digest(key: &str) -> String {
    hex::encode(gateway::apikey::digest(key.as_bytes()))
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn config(upstream: std::net::SocketAddr, keys_file: &std::path::Path) -> String {
    format!(
        "
listeners: [{{name: main, address: '127.0.0.1:{{PORT}}'}}]
admin: {{address: '127.0.0.1:{{ADMIN}}'}}
upstreams:
  echo: {{endpoints: [{{address: '{upstream}'}}]}}
consumers:
  - {{name: acme, groups: [partners, gold], keys: ['{}']}}
  - {{name: intern, groups: [interns], keys: ['{}']}}
  - {{name: banned, groups: [partners], keys: ['{}'], disabled: true}}
  - {{name: filed, groups: [partners], keys_file: '{}'}}
jwt_providers:
  h: {{algorithms: [HS256], secret: '{SECRET}', issuer: test}}
rate_limit_policies:
  per-consumer: {{rate: 2/m, key: [consumer]}}
routes:
  - id: keyed
    match: {{path: {{prefix: /keyed}}}}
    auth: {{api_key: {{sources: ['header:x-api-key', 'query:api_key', 'cookie:key']}}}}
    upstream: echo
  - id: partners
    match: {{path: {{prefix: /partners}}}}
    auth: {{api_key: {{allow_groups: [partners], deny_groups: [gold], consumer_header: X-Partner, strip: false}}}}
    upstream: echo
  - id: either
    match: {{path: {{prefix: /either}}}}
    auth:
      any_of:
        - {{jwt: {{providers: [h], claims_to_headers: {{sub: X-User-Id}}}}}}
        - {{api_key: {{}}}}
    upstream: echo
  - id: limited
    match: {{path: {{prefix: /limited}}}}
    auth: {{api_key: {{}}}}
    rate_limits: [per-consumer]
    upstream: echo
  - id: open
    match: {{path: {{prefix: /open}}}}
    upstream: echo
",
        digest("acme-key-0001"),
        digest("intern-key-0001"),
        digest("banned-key-0001"),
        keys_file.display(),
    )
}

async fn start() -> (Gateway, std::path::PathBuf, tempfile::TempDir) {
    let upstream = common::echo_upstream("echo").await;
    let keys_dir = tempfile::tempdir().unwrap();
    let keys_file = keys_dir.path().join("filed.keys");
    std::fs::write(
        &keys_file,
        format!("# filed\n{}\n", digest("filed-key-0001")),
    )
    .unwrap();
    let gw = Gateway::start(&config(upstream, &keys_file)).await;
    (gw, keys_file, keys_dir)
}

async fn get(
    client: &reqwest::Client,
    url: String,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, h, body)
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn keys_consumers_groups_and_refusals() {
    let (gw, _keys, _dir) = start().await;
    let c = reqwest::Client::new();

    // A key at each source: the consumer goes upstream, the key does not.
    let (s, _, body) = get(
        &c,
        gw.url("/keyed/a"),
        &[("x-api-key", "acme-key-0001"), ("x-consumer", "spoofed")],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer"], "acme");
    assert!(
        body["headers"].get("x-api-key").is_none(),
        "the key is stripped: {body}"
    );
    let (s, _, body) = get(&c, gw.url("/keyed/a?x=1&api_key=acme-key-0001"), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(body["query"], "x=1", "the query key is stripped: {body}");
    assert_eq!(body["headers"]["x-consumer"], "acme");
    let (s, _, body) = get(
        &c,
        gw.url("/keyed/a"),
        &[("cookie", "theme=dark; key=intern-key-0001")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["headers"]["x-consumer"], "intern");

    // A client cannot claim a consumer on a route without auth either.
    let (_, _, body) = get(
        &c,
        gw.url("/open"),
        &[("x-consumer", "acme"), ("x-partner", "acme")],
    )
    .await;
    assert!(body["headers"].get("x-consumer").is_none(), "{body}");
    assert!(body["headers"].get("x-partner").is_none(), "{body}");

    // Missing, unknown, oversized: 401 with a challenge; the same answer for any wrong key.
    let (s, h, body) = get(&c, gw.url("/keyed/a"), &[]).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("api_key_missing"))
    );
    assert_eq!(h["www-authenticate"], "ApiKey realm=\"gateway\"");
    let (s, _, wrong) = get(&c, gw.url("/keyed/a"), &[("x-api-key", "acme-key-0002")]).await;
    assert_eq!(
        (s, wrong["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let huge = "k".repeat(10 * 1024);
    let (s, _, body) = get(&c, gw.url("/keyed/a"), &[("x-api-key", &huge)]).await;
    assert_eq!(s, 401);
    assert_eq!(body["error"]["message"], wrong["error"]["message"]);
    // Two different keys: 400; the same key twice is fine.
    let (s, _, body) = get(
        &c,
        gw.url("/keyed/a?api_key=intern-key-0001"),
        &[("x-api-key", "acme-key-0001")],
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("ambiguous_api_key"))
    );
    let (s, _, _) = get(
        &c,
        gw.url("/keyed/a?api_key=acme-key-0001"),
        &[("x-api-key", "acme-key-0001")],
    )
    .await;
    assert_eq!(s, 200);
    // Disabled consumer: 403.
    let (s, _, body) = get(&c, gw.url("/keyed/a"), &[("x-api-key", "banned-key-0001")]).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("consumer_disabled"))
    );

    // Groups: partners but not gold; a custom consumer header; the key kept (strip: false).
    let (s, _, body) = get(&c, gw.url("/partners"), &[("x-api-key", "filed-key-0001")]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["headers"]["x-partner"], "filed");
    assert_eq!(body["headers"]["x-api-key"], "filed-key-0001");
    for key in ["acme-key-0001", "intern-key-0001"] {
        let (s, _, body) = get(&c, gw.url("/partners"), &[("x-api-key", key)]).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (403, Some("consumer_not_allowed")),
            "{key}"
        );
    }

    // Keys never reach the access log, metrics or the admin API.
    gw.wait_metrics(&["gateway_api_key_checks_total{result=\"ambiguous\",route=\"keyed\"} 1"])
        .await;
    let admin = reqwest::get(gw.admin_url("/admin/consumers"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(admin.contains("\"acme\""), "{admin}");
    let routes = reqwest::get(gw.admin_url("/admin/routes"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let log = gw.wait_log("\"consumer\":\"acme\"").await;
    for text in [&admin, &routes, &metrics, &log] {
        for secret in ["acme-key-0001", "intern-key-0001", &digest("acme-key-0001")] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }
    assert!(
        log.contains("\"consumer\":\"acme\""),
        "the access log names the consumer"
    );
}

#[tokio::test]
async fn jwt_or_api_key_and_per_consumer_limits() {
    let (gw, _keys, _dir) = start().await;
    let c = reqwest::Client::new();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = hs256(&serde_json::json!({"iss": "test", "sub": "ada", "exp": exp}));
    let bearer = format!("Bearer {token}");

    let (s, _, body) = get(&c, gw.url("/either"), &[("authorization", &bearer)]).await;
    assert_eq!(s, 200);
    assert_eq!(body["headers"]["x-user-id"], "ada");
    assert!(body["headers"].get("x-consumer").is_none());
    let (s, _, body) = get(&c, gw.url("/either"), &[("x-api-key", "acme-key-0001")]).await;
    assert_eq!(s, 200);
    assert_eq!(body["headers"]["x-consumer"], "acme");
    // Neither: one 401 naming both schemes.
    let (s, h, body) = get(&c, gw.url("/either"), &[]).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let challenge = h["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"h\"") && challenge.contains("ApiKey"),
        "{challenge}"
    );
    // A bad key is refused as such; a bad token as such.
    let (s, _, body) = get(&c, gw.url("/either"), &[("x-api-key", "nope")]).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (s, _, body) = get(
        &c,
        gw.url("/either"),
        &[("authorization", "Bearer not.a.jwt")],
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    // A verified key wins over a bad token.
    let (s, _, _) = get(
        &c,
        gw.url("/either"),
        &[
            ("authorization", "Bearer x.y.z"),
            ("x-api-key", "acme-key-0001"),
        ],
    )
    .await;
    assert_eq!(s, 200);

    // The limit counts per consumer: acme's two requests do not spend intern's.
    for _ in 0..2 {
        let (s, _, _) = get(&c, gw.url("/limited"), &[("x-api-key", "acme-key-0001")]).await;
        assert_eq!(s, 200);
    }
    let (s, _, _) = get(&c, gw.url("/limited"), &[("x-api-key", "acme-key-0001")]).await;
    assert_eq!(s, 429);
    let (s, _, _) = get(&c, gw.url("/limited"), &[("x-api-key", "intern-key-0001")]).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn keys_file_changes_reload_the_keys() {
    let (gw, keys_file, _dir) = start().await;
    let c = reqwest::Client::new();
    let (s, _, _) = get(&c, gw.url("/keyed"), &[("x-api-key", "filed-key-0002")]).await;
    assert_eq!(s, 401);
    let before = gw.admin_config().await["version"].as_u64().unwrap();
    // Rotate: the new key in, the old one out, without touching the config file.
    common::write_atomic(&keys_file, &format!("{}\n", digest("filed-key-0002")));
    gw.wait_config("keys reload", |v| v["version"].as_u64() > Some(before))
        .await;
    let (s, _, body) = get(&c, gw.url("/keyed"), &[("x-api-key", "filed-key-0002")]).await;
    assert_eq!(s, 200);
    assert_eq!(body["headers"]["x-consumer"], "filed");
    let (s, _, _) = get(&c, gw.url("/keyed"), &[("x-api-key", "filed-key-0001")]).await;
    assert_eq!(s, 401);
    // A broken keys file keeps the running keys and says why.
    let version = gw.admin_config().await["version"].as_u64().unwrap();
    common::write_atomic(&keys_file, "not a digest\n");
    let cfg = gw
        .wait_config("rejected keys file", |v| v["last_reload"]["ok"] == false)
        .await;
    assert_eq!(cfg["version"].as_u64(), Some(version));
    let text = cfg["last_reload"]["error_text"].to_string();
    assert!(
        text.contains("keys_file") && text.contains("line 1"),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let (s, _, _) = get(&c, gw.url("/keyed"), &[("x-api-key", "filed-key-0002")]).await;
        assert_eq!(s, 200, "the running keys still work");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn hash_key_prints_the_digest() {
    let run = |input: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("hash-key")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(b"acme-key-0001\n");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        digest("acme-key-0001")
    );
    assert_eq!(run(b"acme-key-0001").stdout, out.stdout, "newline or not");
    let empty = run(b"\n");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no key"));
}
