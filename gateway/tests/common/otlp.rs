//! An in-process OTLP/HTTP receiver for the tracing tests: `POST /v1/traces` with
//! protobuf bodies, decoded with `opentelemetry-proto`, kept for the test to look at.
//! Shared with the discovery crate's tracing test (included there by path).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// One received span and the `service.name` of its resource.
#[derive(Clone, Debug)]
pub struct Got {
    pub service: String,
    pub span: Span,
}

impl Got {
    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
    pub fn all_values(&self) -> String {
        format!("{:?}", self.span.attributes)
    }
}

pub type Store = Arc<Mutex<Vec<Got>>>;

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on a loopback port.
pub async fn receiver() -> (SocketAddr, Store) {
    let store: Store = Arc::default();
    let s = Arc::clone(&store);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let s = Arc::clone(&s);
            async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                let mut out = s.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                        .and_then(|a| a.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(AnyValue::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            out.push(Got {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, store)
}

/// Wait (bounded) until `pred` holds for the spans received so far.
pub async fn wait_spans(store: &Store, what: &str, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = store.lock().unwrap().clone();
        if pred(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; got {:#?}",
            got.iter()
                .map(|g| (&g.service, &g.span.name, g.trace_id()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
