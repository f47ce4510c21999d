//! The local OTLP/HTTP receiver of the tracing-overhead benchmark
//! (`benches/load/callgrind.sh`, `run.sh`): accepts `POST /v1/traces` (protobuf
//! `ExportTraceServiceRequest`), counts the spans in it and answers 200 with an empty
//! `ExportTraceServiceResponse`, as a collector would. `GET /count` answers
//! `spans=N exports=N rejected=N`, and the same line is printed on SIGTERM/SIGINT, so
//! the scripts can tell that spans really arrived (a run that exported nothing measured
//! nothing).
//!
//! `otlp_sink LISTEN_ADDR`

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
    exports: AtomicU64,
    /// Bodies that did not decode: a sign the exporter and the sink disagree.
    rejected: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
        format!(
            "spans={} exports={} rejected={}",
            self.spans.load(Ordering::Relaxed),
            self.exports.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed)
        )
    }
}

async fn traces(
    State(counts): State<Arc<Counts>>,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        counts.rejected.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            b"not an ExportTraceServiceRequest\n".to_vec(),
        );
    };
    let spans: usize = req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    counts.spans.fetch_add(spans as u64, Ordering::Relaxed);
    counts.exports.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the default action ends the process anyway.
        _ => std::future::pending().await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(listen) = std::env::args().nth(1) else {
        eprintln!("usage: otlp_sink LISTEN_ADDR");
        return ExitCode::from(2);
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("otlp_sink: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let counts = Arc::new(Counts::default());
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .route(
            "/count",
            get(|State(c): State<Arc<Counts>>| async move { format!("{}\n", c.line()) }),
        )
        .with_state(Arc::clone(&counts));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    println!("{}", counts.line());
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp_sink: {e}");
            ExitCode::FAILURE
        }
    }
}
