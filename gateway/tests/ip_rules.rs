//! IP rules end to end through the real gateway binary: on a listener (every request,
//! even one no route matches) and on routes, on the client address behind trusted
//! proxies (the same one rate limits and the access log use), deny winning over allow,
//! a 403 with the JSON body.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Gateway;

fn config(echo: std::net::SocketAddr) -> String {
    format!(
        "
server: {{trusted_proxies: [127.0.0.1]}}
listeners:
  - {{name: main, address: '127.0.0.1:{{PORT}}', ip: {{deny: [198.51.100.0/24]}}}}
admin: {{address: '127.0.0.1:{{ADMIN}}'}}
upstreams:
  echo: {{endpoints: [{{address: '{echo}'}}]}}
routes:
  - id: office
    match: {{path: {{prefix: /office}}}}
    ip: {{allow: [203.0.113.0/24, '2001:db8::/32'], deny: [203.0.113.66]}}
    upstream: echo
  - id: open
    match: {{path: {{prefix: /open}}}}
    upstream: echo
"
    )
}

async fn status(gw: &Gateway, path: &str, xff: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(gw.url(path));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn listener_and_route_rules() {
    let gw = Gateway::start(&config(common::echo_upstream("echo").await)).await;
    let cases = [
        ("/office/a", Some("203.0.113.9"), 200),
        ("/office/a", Some("203.0.113.66"), 403),
        ("/office/a", Some("192.0.2.1"), 403),
        ("/office/a", Some("2001:db8::7"), 200),
        // The peer itself (127.0.0.1) is a trusted proxy, not in the allow list.
        ("/office/a", None, 403),
        ("/open", Some("192.0.2.1"), 200),
        // Listener rules apply to every route, and before routing.
        ("/open", Some("198.51.100.20"), 403),
        ("/office/a", Some("198.51.100.20"), 403),
        ("/nowhere", Some("198.51.100.20"), 403),
        ("/nowhere", Some("192.0.2.1"), 404),
        // Only the last untrusted hop counts: a client cannot prepend an allowed address.
        ("/office/a", Some("203.0.113.9, 192.0.2.1"), 403),
    ];
    for (path, xff, want) in cases {
        let (s, body) = status(&gw, path, xff).await;
        assert_eq!(s, want, "{path} from {xff:?}: {body}");
        if s == 403 {
            assert_eq!(body["error"]["code"], "ip_forbidden");
        }
    }
    gw.wait_metrics(&[
        "gateway_ip_denied_total{route=\"-\",scope=\"listener\"} 1",
        "gateway_ip_denied_total{route=\"office\",scope=\"route\"} 4",
    ])
    .await;
}
