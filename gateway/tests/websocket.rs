//! WebSocket through the real gateway binary to the sample echo service's `/ws`: the
//! upgrade is routed and authenticated (JWT; refused without a token), rate limited,
//! frames flow both ways unbuffered, closing either side closes the other, and an idle
//! tunnel is closed after the route's `websocket.idle_timeout`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Gateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
jwt_providers:
  hmac: {{algorithms: [HS256], secret: "{SECRET}", issuer: test}}
rate_limit_policies:
  upgrades: {{rate: "3/m", burst: 3, key: [client_ip]}}
upstreams:
  echo: {{endpoints: [{{address: "{upstream}"}}]}}
routes:
  - id: ws
    match: {{path: {{exact: /ws}}}}
    auth: {{jwt: {{providers: [hmac], claims_to_headers: {{sub: X-User-Id}}}}}}
    upstream: echo
  - id: idle
    match: {{path: {{exact: /idle/ws}}}}
    rewrite: {{strip_prefix: /idle}}
    websocket: {{idle_timeout: 1s}}
    upstream: echo
  - id: limited
    match: {{path: {{exact: /limited/ws}}}}
    rewrite: {{strip_prefix: /limited}}
    rate_limits: [upgrades]
    upstream: echo
"#
    )
}

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "iss": "test", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &Gateway, path: &str, bearer: Option<&str>) -> Result<Ws, WsError> {
    let mut req = format!("ws://127.0.0.1:{}{path}", gw.port)
        .into_client_request()
        .unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake timed out")?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

/// The next data or close message, bounded in time.
async fn next(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no frame within 10s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_jwt_auth_both_ways_and_close_from_either_side() {
    let upstream = common::echo_upstream("ws-echo").await;
    let gw = Gateway::start(&config(upstream)).await;

    // Without a token the upgrade is refused with the JWT answer, never tunnelled.
    match connect(&gw, "/ws", None).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert!(resp.headers().contains_key("www-authenticate"));
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "unauthenticated");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    match connect(&gw, "/ws", Some("not-a-token")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }

    // With one, frames go both ways; the upstream saw the verified identity.
    let mut ws = connect(&gw, "/ws", Some(&token("alice"))).await.unwrap();
    ws.send(Message::text("whoami")).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::text("alice")
    );
    // One frame at a time: each answer arrives before the next is sent, so nothing
    // waits in a buffer for more data.
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::text(text));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::binary(big));

    // The client closes: the close reaches the service, whose answer comes back.
    ws.close(None).await.unwrap();
    match next(&mut ws).await {
        Some(Ok(Message::Close(_))) | None => {}
        Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {}
        other => panic!("expected the close answer, got {other:?}"),
    }

    // The service closes first: the client sees its close frame, then the end.
    let mut ws = connect(&gw, "/ws", Some(&token("bob"))).await.unwrap();
    ws.send(Message::text("close")).await.unwrap();
    match next(&mut ws).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the service's close, got {other:?}"),
    }
    assert!(
        matches!(next(&mut ws).await, None | Some(Err(_))),
        "the tunnel ends after the close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_apply_to_upgrades_and_idle_tunnels_are_closed() {
    let upstream = common::echo_upstream("ws-echo").await;
    let gw = Gateway::start(&config(upstream)).await;

    // Three upgrades pass the limit (and stay open); the fourth gets the 429.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&gw, "/limited/ws", None).await.unwrap());
    }
    match connect(&gw, "/limited/ws", None).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    for ws in &mut open {
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            next(ws).await.unwrap().unwrap(),
            Message::text("still here")
        );
    }

    // A tunnel that stays quiet past the route's idle timeout (1s) is closed; one that
    // keeps talking is not (each message comes back within the timeout).
    let mut ws = connect(&gw, "/idle/ws", None).await.unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::text("ping"));
    match next(&mut ws).await {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(other)) => panic!("expected the idle tunnel to end, got {other:?}"),
    }
}
