//! `server.redis.password_file`: cluster rate limits against a `redis-server` that
//! requires a password (`--requirepass`). With the right password in the file Redis
//! decides (its limit state appears in Redis, and the limit is enforced); without it or
//! with a wrong one the connection fails (NOAUTH / WRONGPASS), the circuit opens at the
//! first failure (`consecutive_failures: 1`) and `fail_closed` answers 503. The file is
//! read on connect, so one written after start-up is used.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Gateway, RedisServer, echo_upstream};

const PASSWORD: &str = "correct-horse-battery-staple";

fn config(redis: &str, upstream: &str, password_file: Option<&std::path::Path>) -> String {
    let password = password_file.map_or(String::new(), |f| {
        format!("\n    password_file: \"{}\"", f.display())
    });
    format!(
        r#"
server:
  redis:
    url: "{redis}"
    timeout: 500ms
    circuit_breaker: {{consecutive_failures: 1, probe_interval: 100ms, close_after: 1}}{password}
listeners: [{{name: public, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
rate_limit_policies:
  closed: {{rate: 2/h, burst: 2, key: [route], scope: cluster, on_redis_failure: fail_closed}}
upstreams:
  one: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - {{id: closed, match: {{path: {{prefix: /closed}}}}, rate_limits: [closed], upstream: one}}
"#
    )
}

/// Keys in Redis, asked with the password (the gateway's limit state).
fn keys_in(redis: &RedisServer) -> i64 {
    let client =
        redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port)).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("DBSIZE").query(&mut conn).unwrap()
}

async fn statuses(gw: &Gateway, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            reqwest::get(gw.url("/closed"))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_authenticates_to_a_redis_that_requires_one() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let up = echo_upstream("one").await.to_string();
    let dir = tempfile::tempdir().unwrap();

    // The right password, with the trailing newline `echo` or `kubectl create secret
    // --from-file` leaves: Redis decides, so the third request is limited.
    let good = dir.path().join("password");
    std::fs::write(&good, format!("{PASSWORD}\n")).unwrap();
    let gw = Gateway::start(&config(&redis.url(), &up, Some(&good))).await;
    assert_eq!(keys_in(&redis), 0);
    assert_eq!(statuses(&gw, 3).await, [200, 200, 429]);
    assert_eq!(keys_in(&redis), 1, "the limit was decided in Redis");

    // No password: NOAUTH on every call, and fail_closed refuses.
    let anonymous = Gateway::start(&config(&redis.url(), &up, None)).await;
    assert_eq!(statuses(&anonymous, 2).await, [503, 503]);

    // A wrong password: the same.
    let bad = dir.path().join("wrong");
    std::fs::write(&bad, "not it").unwrap();
    let wrong = Gateway::start(&config(&redis.url(), &up, Some(&bad))).await;
    assert_eq!(statuses(&wrong, 2).await, [503, 503]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_password_file_fails_closed_until_it_appears() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let up = echo_upstream("one").await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    let gw = Gateway::start(&config(&redis.url(), &up, Some(&file))).await;
    // Not there yet (a Secret the kubelet has not mounted): no call reaches Redis.
    assert_eq!(statuses(&gw, 1).await, [503]);
    std::fs::write(&file, PASSWORD).unwrap();
    // The next connect reads it (reconnects are at most every 250 ms; each request
    // tries again, so poll a bounded number of times).
    let mut seen = Vec::new();
    for _ in 0..100 {
        let s = statuses(&gw, 1).await[0];
        seen.push(s);
        if s != 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen.last(), Some(&200), "{seen:?}");
    assert_eq!(statuses(&gw, 2).await, [200, 429]);
    assert_eq!(keys_in(&redis), 1, "the limit was decided in Redis");
}
