//! Owns the access-log writer: a bounded byte queue the request path appends whole
//! lines to, and one thread that swaps the queue for an empty buffer and writes the
//! batch with one `write_all`, after `buffer_bytes` or `flush_interval`, whichever
//! comes first (nginx's `access_log ... buffer= flush=`). Two buffers trade places, so
//! the steady state allocates nothing.
//!
//! The writer is the only code that does I/O; a request holds the queue's lock for a
//! `memcpy` of one line. `reopen` (SIGUSR1, after logrotate renamed the file) and
//! `shutdown` (write what is queued, then stop; bounded, so a stuck disk cannot hold the
//! process) are messages to the writer, handled between batches.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{AccessLogSettings, Entry, Target, format_line};
use crate::metrics::AccessLogMetrics;

/// Longest `shutdown` waits for the last batch to be written.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Queue {
    bytes: Vec<u8>,
    lines: u64,
    reopen: bool,
    stop: bool,
    /// Set by the writer once it stopped: nothing more will be written.
    done: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer (a batch is full, reopen, stop).
    wake: Condvar,
    /// Wakes `shutdown` when the writer is done.
    stopped: Condvar,
    buffer_bytes: usize,
    max_queued_bytes: usize,
    flush_interval: Duration,
    metrics: AccessLogMetrics,
}

impl Shared {
    fn lock(&self) -> Option<MutexGuard<'_, Queue>> {
        // A poisoned lock means a panic while holding it, which only a `memcpy` or the
        // swap does; the queue is still a valid byte buffer, so keep using it.
        Some(self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The access log's handle: cloned into every place that logs; `shutdown` once.
#[derive(Debug)]
pub struct AccessLog {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Where the writer writes.
#[derive(Debug)]
enum Sink {
    Stdout,
    File { path: PathBuf, file: File },
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

impl Sink {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        match self {
            // Through the process's stdout lock: diagnostic lines (also on stdout) never
            // land inside an access-log line.
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(batch)?;
                out.flush()
            }
            Sink::File { file, .. } => file.write_all(batch),
        }
    }

    fn reopen(&mut self) {
        if let Sink::File { path, file } = self {
            match open(path) {
                Ok(f) => {
                    *file = f;
                    tracing::info!(path = %path.display(), "access log reopened");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file");
                }
            }
        }
    }
}

impl AccessLog {
    /// Open the target (so a bad path fails start-up) and start the writer thread.
    pub fn start(settings: &AccessLogSettings, metrics: AccessLogMetrics) -> io::Result<Self> {
        let mut sink = match &settings.target {
            Target::Stdout => Sink::Stdout,
            Target::File(path) => Sink::File {
                file: open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("access log {}: {e}", path.display()))
                })?,
                path: path.clone(),
            },
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                bytes: Vec::with_capacity(settings.buffer_bytes * 2),
                ..Queue::default()
            }),
            wake: Condvar::new(),
            stopped: Condvar::new(),
            buffer_bytes: settings.buffer_bytes,
            max_queued_bytes: settings.max_queued_bytes,
            flush_interval: settings.flush_interval,
            metrics,
        });
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || run(&writer, &mut sink))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue `entry`'s line; never waits for I/O. Dropped (and counted) when the queue
    /// is full or the log has been shut down.
    pub fn write(&self, entry: &Entry<'_>) {
        if format_line(entry, |line| self.push(line)).is_none() {
            self.shared.metrics.dropped.inc();
        }
    }

    fn push(&self, line: &[u8]) {
        let s = &self.shared;
        let Some(mut q) = s.lock() else {
            return;
        };
        if q.stop || q.bytes.len() + line.len() > s.max_queued_bytes {
            drop(q);
            s.metrics.dropped.inc();
            return;
        }
        let before = q.bytes.len();
        q.bytes.extend_from_slice(line);
        q.lines += 1;
        let crossed = before < s.buffer_bytes && q.bytes.len() >= s.buffer_bytes;
        drop(q);
        // Only the line that fills a batch wakes the writer: a futex wake per line would
        // cost a syscall per request, which is what the writer exists to avoid.
        if crossed {
            s.wake.notify_one();
        }
    }

    /// Reopen the file by name (SIGUSR1 after logrotate renamed it); lines queued
    /// before go to the old file. Nothing to do for stdout.
    pub fn reopen(&self) {
        if let Some(mut q) = self.shared.lock() {
            q.reopen = true;
        }
        self.shared.wake.notify_one();
    }

    /// Write everything queued and stop the writer. Waits at most 10 s (a writer stuck
    /// on a full pipe or a hung disk cannot hold the process); later lines are dropped.
    pub fn shutdown(&self) {
        let s = &self.shared;
        let Some(mut q) = s.lock() else {
            return;
        };
        q.stop = true;
        s.wake.notify_one();
        let deadline = Instant::now() + SHUTDOWN_DEADLINE;
        while !q.done {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!("access log writer did not finish within 10s; exiting without it");
                return;
            }
            q = match s.stopped.wait_timeout(q, deadline - now) {
                Ok((q, _)) => q,
                Err(p) => p.into_inner().0,
            };
        }
        drop(q);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// The writer thread: wait for a full batch, the flush interval, reopen or stop; swap
/// the queue out; write it outside the lock.
fn run(s: &Shared, sink: &mut Sink) {
    let mut batch: Vec<u8> = Vec::with_capacity(s.buffer_bytes * 2);
    // Write errors are logged when they start and when they end, not per batch.
    let mut failing = false;
    loop {
        let (lines, reopen, stop) = {
            let Some(mut q) = s.lock() else {
                return;
            };
            let deadline = Instant::now() + s.flush_interval;
            while !q.stop && !q.reopen && q.bytes.len() < s.buffer_bytes {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                q = match s.wake.wait_timeout(q, deadline - now) {
                    Ok((q, _)) => q,
                    Err(p) => p.into_inner().0,
                };
            }
            std::mem::swap(&mut q.bytes, &mut batch);
            (
                std::mem::take(&mut q.lines),
                std::mem::take(&mut q.reopen),
                q.stop,
            )
        };
        if !batch.is_empty() {
            match sink.write(&batch) {
                Ok(()) => {
                    s.metrics.lines.inc_by(lines);
                    if failing {
                        failing = false;
                        tracing::info!("access log writes succeed again");
                    }
                }
                Err(e) => {
                    s.metrics.dropped.inc_by(lines);
                    s.metrics.write_errors.inc();
                    if !failing {
                        failing = true;
                        tracing::error!(error = %e, "cannot write the access log; lines are dropped (gateway_access_log_dropped_total)");
                    }
                }
            }
            // A batch that grew past the bound (a long stall) gives its memory back.
            if batch.capacity() > s.max_queued_bytes * 2 {
                batch = Vec::with_capacity(s.buffer_bytes * 2);
            } else {
                batch.clear();
            }
        }
        if reopen {
            sink.reopen();
        }
        if stop {
            if let Some(mut q) = s.lock() {
                q.done = true;
            }
            s.stopped.notify_all();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::Format;

    fn settings(path: PathBuf, buffer: usize, max: usize) -> AccessLogSettings {
        AccessLogSettings {
            target: Target::File(path),
            format: Format::Json,
            buffer_bytes: buffer,
            flush_interval: Duration::from_secs(3600),
            max_queued_bytes: max,
        }
    }

    fn metrics() -> AccessLogMetrics {
        AccessLogMetrics::new(&prometheus::Registry::new()).unwrap()
    }

    #[test]
    fn shutdown_writes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let m = metrics();
        let log = AccessLog::start(&settings(path.clone(), 1 << 20, 1 << 22), m.clone()).unwrap();
        for i in 0..100 {
            log.write(&Entry::new(&format!("id{i}"), "r", "GET", 200));
        }
        log.shutdown();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert_eq!(m.lines.get(), 100);
        // After shutdown, lines are dropped and counted, never written.
        log.write(&Entry::new("late", "r", "GET", 200));
        assert_eq!(m.dropped.get(), 1);
        log.shutdown();
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let m = metrics();
        // A batch size the queue can never reach: the writer sleeps for an hour, so the
        // queue fills and stays full.
        let log = AccessLog::start(&settings(path.clone(), 1 << 20, 1000), m.clone()).unwrap();
        for _ in 0..100 {
            log.write(&Entry::new("0123456789abcdef", "r", "GET", 200));
        }
        let dropped = m.dropped.get();
        assert!(dropped > 0 && dropped < 100, "dropped {dropped}");
        log.shutdown();
        let written = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert_eq!(written + dropped, 100);
    }
}
