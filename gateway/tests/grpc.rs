//! gRPC through the real gateway binary (an h2c listener) to the sample tonic service
//! (`shop.Inventory`, h2c upstreams): unary, server streaming (each message as it is
//! sent, not buffered) and client streaming, trailers passed through, routes matching
//! `match.grpc`, the gateway's own answers as gRPC statuses (UNIMPLEMENTED,
//! UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE,
//! DEADLINE_EXCEEDED, never JSON), `grpc-timeout` bounding the upstream wait, and
//! retries on UNAVAILABLE only where the route's retry names `grpc_unavailable`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "protocols/client.rs"]
mod client;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Gateway;
use example_services::inventory::{
    GetItemRequest, Inventory, InventoryClient, Item, ListItemsRequest, RestockRequest,
};
use serde_json::json;
use tonic::Code;
use tonic::codegen::tokio_stream::{self, StreamExt};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

async fn inventory(inv: Inventory) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example_services::inventory::serve(
        listener,
        inv,
        std::future::pending(),
    ));
    addr
}

/// Accepts connections and never answers: an upstream that hangs.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

fn config(up: SocketAddr, draining: SocketAddr, hole: SocketAddr) -> String {
    format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}", h2c: true}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
jwt_providers:
  hmac: {{algorithms: [HS256], secret: "{SECRET}", issuer: test}}
rate_limit_policies:
  calls: {{rate: "2/m", burst: 2, key: [client_ip]}}
upstreams:
  inventory: {{protocol: h2c, endpoints: [{{address: "{up}"}}]}}
  flaky:
    protocol: h2c
    load_balancing: round_robin
    endpoints: [{{address: "{draining}"}}, {{address: "{up}"}}]
  down: {{protocol: h2c, endpoints: [{{address: "127.0.0.1:1"}}]}}
  hole: {{protocol: h2c, endpoints: [{{address: "{hole}"}}]}}
routes:
  - id: get
    match: {{hosts: [plain.test], grpc: {{service: shop.Inventory, method: Get}}}}
    upstream: inventory
    response_headers: {{set: {{x-route: get}}}}
  - id: inventory
    match: {{hosts: [plain.test], grpc: {{service: shop.Inventory}}}}
    upstream: inventory
  - id: secure
    match: {{hosts: [secure.test], grpc: {{service: shop.Inventory}}}}
    auth:
      jwt:
        providers: [hmac]
        claims: [{{claim: scope, contains: "inventory:read"}}]
    upstream: inventory
  - id: limited
    match: {{hosts: [limited.test], grpc: {{service: shop.Inventory}}}}
    rate_limits: [calls]
    upstream: inventory
  - id: retried
    match: {{hosts: [retried.test], grpc: {{service: shop.Inventory}}}}
    retry: {{attempts: 2, retry_on: [grpc_unavailable]}}
    upstream: flaky
  - id: not-retried
    match: {{hosts: [not-retried.test], grpc: {{service: shop.Inventory}}}}
    retry: {{attempts: 2, retry_on: [gateway_error]}}
    upstream: flaky
  - id: down
    match: {{hosts: [down.test], grpc: {{service: shop.Inventory}}}}
    upstream: down
  - id: hole
    match: {{hosts: [hole.test], grpc: {{service: shop.Inventory}}}}
    timeout: 30s
    upstream: hole
"#
    )
}

async fn client(gw: &Gateway, host: &str) -> InventoryClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", gw.port))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    InventoryClient::new(channel)
}

fn token(scope: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "svc", "iss": "test", "exp": exp, "scope": scope}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn get(sku: &str) -> GetItemRequest {
    GetItemRequest { sku: sku.into() }
}

/// A call the gateway answered itself: its gRPC status, and the gateway's request id
/// in the metadata (so it was not the upstream).
fn gateway_status(r: Result<tonic::Response<Item>, tonic::Status>) -> tonic::Status {
    let status = r.expect_err("the gateway should refuse the call");
    assert!(
        status.metadata().get("x-request-id").is_some(),
        "{status:?}"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_pass_with_their_trailers() {
    let pace = Arc::new(tokio::sync::Semaphore::new(0));
    let up = inventory(Inventory::new("inv-1").paced(Arc::clone(&pace))).await;
    let draining = inventory(Inventory::new("inv-2").draining()).await;
    let gw = Gateway::start(&config(up, draining, black_hole().await)).await;
    let mut c = client(&gw, "plain.test").await;

    // Unary: the answer and its OK trailers (tonic fails a call whose trailers are
    // missing), through the method route.
    let resp = c.get(get("apple")).await.unwrap();
    assert_eq!(resp.metadata().get("x-route").unwrap(), "get");
    let item = resp.into_inner();
    assert_eq!((item.sku.as_str(), item.quantity), ("apple", 12));
    assert_eq!(item.served_by, "inv-1");

    // The upstream's own error status and message come through as it sent them.
    let status = c.get(get("nope")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no item \"nope\"");

    // Server streaming: the first item arrives while the service still holds the
    // others (it sends each after a permit), so nothing buffers the stream.
    let mut stream = c
        .list(ListItemsRequest { limit: 4 })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the first item is not held back")
        .unwrap()
        .unwrap();
    assert_eq!(first.sku, "apple");
    pace.add_permits(3);
    let mut rest = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
    {
        rest.push(item.unwrap().sku);
    }
    assert_eq!(rest, ["banana", "cherry", "date"]);

    // Client streaming: the request stream reaches the service message by message.
    let deltas = tokio_stream::iter([
        RestockRequest {
            sku: "fig".into(),
            quantity: 2,
        },
        RestockRequest {
            sku: "fig".into(),
            quantity: 5,
        },
    ]);
    let item = c.restock(deltas).await.unwrap().into_inner();
    assert_eq!((item.sku.as_str(), item.quantity), ("fig", 7));

    // Bidirectional streaming, ping-pong: each answer arrives before the next request
    // message is sent, so neither direction waits for the other's end.
    let (tx, rx) = tokio::sync::mpsc::channel::<RestockRequest>(1);
    let mut answers = c
        .adjust(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for (quantity, want) in [(1, 13), (4, 17), (3, 20)] {
        tx.send(RestockRequest {
            sku: "apple".into(),
            quantity,
        })
        .await
        .unwrap();
        let item = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("an answer before the request stream ends")
            .unwrap()
            .unwrap();
        assert_eq!((item.sku.as_str(), item.quantity), ("apple", want));
    }
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .expect("the call ends after the request stream");
    assert!(end.is_none(), "{end:?}");
    assert_eq!(c.get(get("apple")).await.unwrap().into_inner().quantity, 20);

    // Many calls share the multiplexed connections; all succeed.
    let calls = (0..20).map(|i| {
        let mut c = c.clone();
        async move {
            let sku = ["apple", "banana", "cherry", "date"][i % 4];
            c.get(get(sku)).await.map(|r| r.into_inner().sku)
        }
    });
    for r in futures_util::future::join_all(calls).await {
        assert!(r.is_ok(), "{r:?}");
    }

    // No route for another service: UNIMPLEMENTED from the gateway, not a JSON 404.
    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", gw.port))
            .unwrap()
            .origin("http://plain.test".parse().unwrap())
            .connect()
            .await
            .unwrap(),
    );
    raw.ready().await.unwrap();
    let r: Result<tonic::Response<Item>, _> = raw
        .unary(
            tonic::Request::new(get("apple")),
            http::uri::PathAndQuery::from_static("/shop.Payments/Charge"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = gateway_status(r);
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "no route matches this request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_are_grpc_statuses() {
    let up = inventory(Inventory::new("inv-1")).await;
    let draining = inventory(Inventory::new("inv-2").draining()).await;
    let gw = Gateway::start(&config(up, draining, black_hole().await)).await;

    // JWT: no token -> UNAUTHENTICATED; a token without the scope -> PERMISSION_DENIED.
    let mut c = client(&gw, "secure.test").await;
    let status = gateway_status(c.get(get("apple")).await);
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(get("apple"));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token("inventory:write"))
            .parse()
            .unwrap(),
    );
    assert_eq!(
        gateway_status(c.get(req).await).code(),
        Code::PermissionDenied
    );
    let mut req = tonic::Request::new(get("apple"));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token("inventory:read"))
            .parse()
            .unwrap(),
    );
    assert_eq!(c.get(req).await.unwrap().into_inner().sku, "apple");

    // Rate limit: two calls pass, the third is RESOURCE_EXHAUSTED.
    let mut c = client(&gw, "limited.test").await;
    for _ in 0..2 {
        c.get(get("apple")).await.unwrap();
    }
    assert_eq!(
        gateway_status(c.get(get("apple")).await).code(),
        Code::ResourceExhausted
    );

    // An upstream that refuses connections: UNAVAILABLE.
    let mut c = client(&gw, "down.test").await;
    let status = gateway_status(c.get(get("apple")).await);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Raw HTTP/2 (tonic would enforce a grpc-timeout itself): the gateway's answer is a
    // trailers-only 200, no body, no JSON.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let call = |host: &str, timeout: Option<&str>| {
        let mut h2 = h2.clone();
        let mut req = http::Request::post(format!("http://{host}/shop.Inventory/Get"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        let req = req.body(()).unwrap();
        async move {
            h2 = h2.ready().await.unwrap();
            let (resp, mut send) = h2.send_request(req, false).unwrap();
            send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), resp)
                .await
                .expect("an answer within 10s")
                .unwrap()
        }
    };
    let resp = call("secure.test", None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "16");
    assert_eq!(
        resp.headers()["grpc-message"],
        "this route needs a bearer token"
    );
    // No message and no JSON: the stream ends without a data byte.
    let mut body = resp.into_body();
    let mut bytes = 0;
    while let Some(chunk) = body.data().await {
        bytes += chunk.unwrap().len();
    }
    assert_eq!(bytes, 0, "no body after a gateway status");

    // On the wire that answer is trailers-only: one HEADERS frame with END_STREAM and no
    // DATA frame (strict gRPC clients read the status only from such a frame or from
    // trailers).
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let literal = |name: &str, value: &str| {
        let mut b = vec![0x00, name.len() as u8];
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
        b
    };
    // :method POST, :scheme http, then :path and :authority by their static indexes.
    let mut block = vec![0x83, 0x86, 0x04, 19];
    block.extend_from_slice(b"/shop.Inventory/Get");
    block.extend_from_slice(&[0x01, 11]);
    block.extend_from_slice(b"secure.test");
    block.extend(literal("content-type", "application/grpc"));
    block.extend(literal("te", "trailers"));
    let mut wire = client::PREFACE.to_vec();
    wire.extend(client::frame(4, 0, 0, &[]));
    wire.extend(client::frame(1, 0x4, 1, &block));
    wire.extend(client::frame(0, 0x1, 1, &[0, 0, 0, 0, 0]));
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &wire)
        .await
        .unwrap();
    let frames = client::read_frames(&mut tcp, Duration::from_secs(2), true).await;
    let on_stream: Vec<_> = frames.iter().filter(|f| f.2 == 1).collect();
    assert_eq!(on_stream.len(), 1, "one frame on the stream: {on_stream:?}");
    let (kind, flags, _, _) = on_stream[0];
    assert_eq!(*kind, 1, "HEADERS");
    assert_eq!(flags & 0x1, 0x1, "END_STREAM on the HEADERS frame");

    // An upstream that never answers, with the caller's grpc-timeout (500ms) shorter
    // than the route's 30s timeout: the gateway gives up at the caller's deadline.
    let resp = call("hole.test", Some("500m")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "4", "{:?}", resp.headers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_only_when_the_route_says_so() {
    let up = inventory(Inventory::new("inv-1")).await;
    let draining = inventory(Inventory::new("inv-2").draining()).await;
    let gw = Gateway::start(&config(up, draining, black_hole().await)).await;

    // Round robin over [draining, healthy]: with grpc_unavailable every call lands on
    // the healthy endpoint in the end.
    let mut c = client(&gw, "retried.test").await;
    for _ in 0..6 {
        let item = c.get(get("apple")).await.unwrap().into_inner();
        assert_eq!(item.served_by, "inv-1");
    }
    // Without it (gateway_error is about HTTP 502/503/504), half of the calls get
    // the draining endpoint's UNAVAILABLE, as it sent it.
    let mut c = client(&gw, "not-retried.test").await;
    let mut unavailable = 0;
    for _ in 0..6 {
        match c.get(get("apple")).await {
            Ok(r) => assert_eq!(r.into_inner().served_by, "inv-1"),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable);
                assert_eq!(s.message(), "inv-2 is draining");
                unavailable += 1;
            }
        }
    }
    assert_eq!(unavailable, 3);
    gw.wait_metrics(&[
        "gateway_upstream_retries_total{reason=\"grpc_unavailable\",upstream=\"flaky\"} 6",
    ])
    .await;
}
