//! Owns the file exporter (`tracing.file`): one JSON object per finished span and line,
//! for a machine without a collector (the local stack). Ids are lower-case hex as in
//! `traceparent`; times are Unix nanoseconds.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::Value;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde_json::{Map, json};

#[derive(Debug)]
pub struct FileExporter {
    out: Mutex<std::io::BufWriter<std::fs::File>>,
    service: String,
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn value(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        other => json!(other.as_str()),
    }
}

impl FileExporter {
    pub fn open(path: &Path) -> Result<FileExporter, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("tracing.file: cannot open {}: {e}", path.display()))?;
        Ok(FileExporter {
            out: Mutex::new(std::io::BufWriter::new(file)),
            service: String::new(),
        })
    }

    fn line(&self, s: &SpanData) -> serde_json::Value {
        let attributes: Map<String, serde_json::Value> = s
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), value(&kv.value)))
            .collect();
        json!({
            "service": self.service,
            "trace_id": s.span_context.trace_id().to_string(),
            "span_id": s.span_context.span_id().to_string(),
            "parent_span_id": (s.parent_span_id != opentelemetry::trace::SpanId::INVALID)
                .then(|| s.parent_span_id.to_string()),
            "name": s.name,
            "kind": format!("{:?}", s.span_kind).to_lowercase(),
            "start_unix_nano": nanos(s.start_time),
            "end_unix_nano": nanos(s.end_time),
            "status": match &s.status {
                opentelemetry::trace::Status::Error { description } => json!({"error": description}),
                opentelemetry::trace::Status::Ok => json!("ok"),
                opentelemetry::trace::Status::Unset => json!(null),
            },
            "attributes": attributes,
        })
    }
}

impl SpanExporter for FileExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut out = self
            .out
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("span file lock poisoned".into()))?;
        for s in &batch {
            let line = self.line(s);
            writeln!(out, "{line}")
                .map_err(|e| OTelSdkError::InternalFailure(format!("span file: {e}")))?;
        }
        out.flush()
            .map_err(|e| OTelSdkError::InternalFailure(format!("span file: {e}")))
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(v) = resource.get(&opentelemetry::Key::new("service.name")) {
            self.service = v.as_str().into_owned();
        }
    }
}
