//! Owns the `echo` service: every request is answered with a JSON description of itself
//! (method, path, query, headers except credentials, body size and a body preview) and the
//! service's name, plus a few helper
//! endpoints for exercising a proxy: `/healthz`, `/delay/{ms}`, `/status/{code}`, and
//! the WebSocket echo `/ws`: every text or binary message comes back as it was; the
//! text `whoami` is answered with the `x-user-id` the upgrade request carried (what a
//! gateway set from a verified token), and `close` makes the service close first.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// Longest `/delay/{ms}` honoured, so a stray request cannot park a task for long.
const MAX_DELAY_MS: u64 = 30_000;
/// Largest request body read; larger bodies get 413.
const MAX_BODY: usize = 8 << 20;
/// Bytes of a UTF-8 body echoed back as text.
const BODY_PREVIEW: usize = 4096;

#[derive(Clone, Debug)]
struct EchoState {
    name: String,
}

/// The echo router. `name` is returned in the body and the `x-served-by` header.
pub fn app(name: &str) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/delay/{ms}", get(delay))
        .route("/status/{code}", get(status))
        .route("/ws", get(ws))
        .fallback(echo)
        .with_state(EchoState {
            name: name.to_owned(),
        })
}

fn served_by(state: &EchoState, mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&state.name) {
        resp.headers_mut().insert("x-served-by", v);
    }
    resp
}

fn describe(state: &EchoState, req: &Request, body: &[u8]) -> Value {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        // Credentials are never echoed back.
        .filter(|(k, _)| !matches!(k.as_str(), "authorization" | "cookie"))
        .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or("<binary>"))))
        .collect();
    let preview = std::str::from_utf8(&body[..body.len().min(BODY_PREVIEW)]).ok();
    json!({
        "service": state.name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
        "body_bytes": body.len(),
        "body": preview,
    })
}

async fn echo(State(state): State<EchoState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let body = json!({"error": {"code": "body_too_large", "message": "request body is larger than 8 MiB"}});
            return served_by(
                &state,
                (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response(),
            );
        }
    };
    let req = Request::from_parts(parts, axum::body::Body::empty());
    let body = describe(&state, &req, &bytes);
    served_by(&state, Json(body).into_response())
}

async fn delay(State(state): State<EchoState>, Path(ms): Path<u64>, req: Request) -> Response {
    tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
    let body = describe(&state, &req, &[]);
    served_by(&state, Json(body).into_response())
}

async fn ws(
    State(state): State<EchoState>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let user = headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    served_by(&state, upgrade.on_upgrade(move |s| ws_echo(s, user)))
}

/// Echo frames until the client closes (answered with a close) or asks the service
/// to close first.
async fn ws_echo(mut socket: WebSocket, user: String) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "whoami" => Message::Text(user.clone().into()),
            Message::Text(t) if t.as_str() == "close" => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "bye".into(),
                    })))
                    .await;
                return;
            }
            Message::Text(_) | Message::Binary(_) => msg,
            // The close answer is queued by the library and flushed by the next read,
            // which then ends the loop; pings are answered the same way.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

async fn status(State(state): State<EchoState>, Path(code): Path<u16>) -> Response {
    let resp = match StatusCode::from_u16(code) {
        Ok(s) => (s, Json(json!({"status": code}))).into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "bad_status", "message": "status must be 100-999"}})),
        )
            .into_response(),
    };
    served_by(&state, resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn echoes_the_request() {
        let resp = app("users")
            .oneshot(
                Request::builder()
                    .uri("/a/b?x=1")
                    .header("x-test", "yes")
                    .header("authorization", "Bearer secret")
                    .body(Body::from("hello"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-served-by"], "users");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["path"], "/a/b");
        assert_eq!(v["query"], "x=1");
        assert_eq!(v["headers"]["x-test"], "yes");
        assert!(v["headers"].get("authorization").is_none());
        assert_eq!(v["body_bytes"], 5);
        assert_eq!(v["body"], "hello");
    }

    #[tokio::test]
    async fn status_endpoint() {
        let resp = app("s")
            .oneshot(
                Request::builder()
                    .uri("/status/503")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
