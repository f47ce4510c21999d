//! Owns the trace export metric definitions (the telemetry feature updates them): spans
//! exported, spans dropped by reason (the queue was full, the export failed, the
//! exporter stopped) and failed export calls.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct TelemetryMetrics {
    pub exported: IntCounter,
    pub dropped: IntCounterVec,
    pub export_failures: IntCounter,
}

impl TelemetryMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let exported = IntCounter::new(
            "gateway_trace_spans_exported_total",
            "Spans handed to the trace exporter successfully",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "gateway_trace_spans_dropped_total",
                "Finished spans not exported, by reason (queue_full, export_failed, exporter_stopped)",
            ),
            &["reason"],
        )?;
        let export_failures = IntCounter::new(
            "gateway_trace_export_failures_total",
            "Export calls to the trace backend that failed or timed out",
        )?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(export_failures.clone()))?;
        // Present from the start, so a dashboard sees 0 rather than nothing.
        for reason in ["queue_full", "export_failed", "exporter_stopped"] {
            dropped.with_label_values(&[reason]);
        }
        Ok(Self {
            exported,
            dropped,
            export_failures,
        })
    }
}
