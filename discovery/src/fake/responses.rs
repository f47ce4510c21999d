//! The fake API server's response building: JSON bodies, the `Status` objects the
//! API server answers every failure with (reasons by code, `NotFound`,
//! `AlreadyExists`, `Expired`, injected faults), and [`Reject`] for requests refused
//! before any work. Every other part of the fake answers through these, so failures
//! look alike whichever handler produced them.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::resources::Resource;

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn ok(value: &Value) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// A `Status` object as the API server returns for every failure.
fn status_object(code: u16, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason_for(code),
        "code": code,
    });
    if let (Some(details), Some(map)) = (details, status.as_object_mut()) {
        map.insert("details".into(), details);
    }
    status
}

pub(crate) fn status(code: u16, message: &str, details: Option<Value>) -> Response<Body> {
    let http_code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(http_code, &status_object(code, message, details))
}

pub(crate) fn not_found_path() -> Response<Body> {
    status(
        404,
        "the server could not find the requested resource",
        None,
    )
}

pub(crate) fn not_found(resource: &Resource, name: &str) -> Response<Body> {
    status(
        404,
        &format!("{} \"{name}\" not found", resource.qualified()),
        Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
    )
}

pub(crate) fn bad_request(message: &str) -> Response<Body> {
    status(400, message, None)
}

/// A request refused before any work: the HTTP code and the Status message.
pub(crate) struct Reject(pub(crate) u16, pub(crate) String);

impl Reject {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self(400, message.into())
    }

    pub(crate) fn respond(self) -> Response<Body> {
        status(self.0, &self.1, None)
    }
}

pub(crate) fn already_exists(resource: &Resource, name: &str) -> Response<Body> {
    let mut body = status_object(
        409,
        &format!("{} \"{name}\" already exists", resource.qualified()),
        Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
    );
    body["reason"] = json!("AlreadyExists");
    json_response(StatusCode::CONFLICT, &body)
}

pub(crate) fn injected_status(code: u16, req: &Request<Incoming>) -> Response<Body> {
    let message = match code {
        403 => format!(
            "forbidden: User \"system:serviceaccount:fake:fake\" cannot {} {}",
            req.method(),
            req.uri().path()
        ),
        429 => "Too many requests, please try again later.".to_owned(),
        _ => format!("injected failure {code} for {}", req.uri().path()),
    };
    let details = (code == 429).then(|| json!({"retryAfterSeconds": 1}));
    let mut response = status(code, &message, details);
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

pub(crate) fn expired_status(message: &str) -> Value {
    status_object(410, message, None)
}
