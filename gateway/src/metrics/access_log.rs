//! Owns the access-log writer's metric definitions: lines written, lines dropped (the
//! queue was full, or a write failed), failed writes.

use prometheus::{IntCounter, Registry};

#[derive(Debug, Clone)]
pub struct AccessLogMetrics {
    /// Lines written to the access log's target.
    pub lines: IntCounter,
    /// Lines lost: the writer fell behind and the queue was full, or a write failed.
    pub dropped: IntCounter,
    /// Batches whose write failed (their lines are counted in `dropped`).
    pub write_errors: IntCounter,
}

impl AccessLogMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(Self {
            lines: counter("gateway_access_log_lines_total", "Access-log lines written")?,
            dropped: counter(
                "gateway_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind (queue full) or a write failed",
            )?,
            write_errors: counter(
                "gateway_access_log_write_errors_total",
                "Access-log batches that could not be written",
            )?,
        })
    }
}
