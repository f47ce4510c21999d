//! Watch streams: query parsing into a [`WatchSpec`] (start version, initial
//! events, bookmarks, timeout), and the task that replays the store's history as
//! newline-delimited JSON events, translating objects entering or leaving the label
//! selector into ADDED/DELETED, sending bookmarks, and obeying faults (cut, hang,
//! expire, disconnect) while the stream is open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::request::{Target, in_scope, selectors};
use super::resources::{RESOURCES, Resource};
use super::responses::{Body, bad_request, expired_status, status};
use super::store::{Event, EventType, Key};
use super::table::{self, Include};
use super::{Fault, Shared};
use crate::selector::{FieldSelector, LabelSelector};

/// Where a watch starts.
enum Start {
    /// The current state as synthetic ADDED events, then changes; with
    /// `sendInitialEvents` a bookmark marks the end of the state.
    Current { end_bookmark: bool },
    /// Changes after this version.
    After(u64),
}

struct WatchSpec {
    resource_index: usize,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    timeout: Option<Duration>,
    start: Start,
    /// Events carry one-row Tables instead of objects (`kubectl get -w`).
    as_table: Option<Include>,
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

pub(crate) fn start_watch(
    shared: Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
    as_table: Option<Include>,
) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r.respond(),
    };
    let flag = |name: &str| matches!(query.get(name).map(String::as_str), Some("1" | "true"));
    let bookmarks = flag("allowWatchBookmarks");
    let timeout = match query.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None => None,
        // 0 means the server's default, as unset does.
        Some(Ok(0)) => None,
        Some(Ok(secs)) => Some(Duration::from_secs(secs)),
        Some(Err(_)) => return bad_request("timeoutSeconds must be a non-negative integer"),
    };
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let rv_match = query.get("resourceVersionMatch").map(String::as_str);
    let start = if flag("sendInitialEvents") {
        if rv_match != Some("NotOlderThan") {
            return status(
                422,
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                None,
            );
        }
        if !bookmarks {
            return status(
                422,
                "allowWatchBookmarks: Required value: allowWatchBookmarks is required when sendInitialEvents is set",
                None,
            );
        }
        Start::Current { end_bookmark: true }
    } else if rv_match.is_some_and(|m| !m.is_empty()) {
        return status(
            422,
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            None,
        );
    } else if rv.is_empty() || rv == "0" {
        Start::Current {
            end_bookmark: false,
        }
    } else {
        match rv.parse::<u64>() {
            Ok(rv) => Start::After(rv),
            Err(_) => return bad_request(&format!("invalid resource version {rv:?}")),
        }
    };
    let spec = WatchSpec {
        resource_index: target.resource_index,
        namespace: target.namespace.clone(),
        labels,
        fields,
        bookmarks,
        timeout,
        start,
        as_table,
    };
    let (tx, rx) = mpsc::channel::<Chunk>(256);
    tokio::spawn(run_watch(shared, spec, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(resource: &Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": metadata}),
    )
}

impl WatchSpec {
    /// One watch event line for `object`, as this watch renders objects.
    fn event(&self, kind: &str, object: &Value) -> Bytes {
        match self.as_table {
            None => line(kind, object),
            Some(include) => {
                let resource = &RESOURCES[self.resource_index];
                let metadata = json!({"resourceVersion": object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or_default()});
                line(kind, &table::table(resource, [object], metadata, include))
            }
        }
    }

    fn selects(&self, key: &Key, object: &Value) -> bool {
        key.resource == self.resource_index
            && in_scope(key, &self.namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event as this watch sees it: an object entering the selector is ADDED,
    /// one leaving it is DELETED (what the API server's watch cache sends).
    fn translate(&self, event: &Event) -> Option<Bytes> {
        if event.key.resource != self.resource_index || !in_scope(&event.key, &self.namespace) {
            return None;
        }
        let now = self.selects(&event.key, &event.object);
        let before = event
            .prev
            .as_ref()
            .is_some_and(|p| self.selects(&event.key, p));
        let kind = match (event.kind, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Deleted, true, _) => EventType::Deleted,
            _ => return None,
        };
        Some(self.event(kind.as_str(), &event.object))
    }
}

/// Counts an open watch for as long as it lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> Self {
        shared.lock().open_watches += 1;
        shared.notify();
        Self(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open_watches = state.open_watches.saturating_sub(1);
        drop(state);
        self.0.notify();
    }
}

/// What one pass over the shared state tells the watch to do.
enum Step {
    Send(Vec<Bytes>),
    /// Send these, then end the stream cleanly.
    Finish(Vec<Bytes>),
    /// Cut the connection mid-stream.
    Cut,
    /// Hung: send nothing, not even bookmarks, until the fault changes.
    Silent,
}

async fn send_all(tx: &mpsc::Sender<Chunk>, chunks: Vec<Bytes>) -> bool {
    for chunk in chunks {
        if tx.send(Ok(Frame::data(chunk))).await.is_err() {
            return false;
        }
    }
    true
}

async fn run_watch(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Chunk>) {
    let _open = OpenWatch::new(shared.clone());
    let resource = &RESOURCES[spec.resource_index];
    let mut changes = shared.changes.subscribe();
    let mut expired = false;
    let (mut cursor, first, disconnects, expiries, interval) = {
        let state = shared.lock();
        let mut first = Vec::new();
        let cursor = match spec.start {
            Start::Current { end_bookmark } => {
                let rv = state.store.rv();
                for (key, object) in state
                    .store
                    .objects_at(spec.resource_index, rv)
                    .unwrap_or_default()
                {
                    if spec.selects(&key, &object) {
                        first.push(spec.event("ADDED", &object));
                    }
                }
                if end_bookmark {
                    first.push(bookmark(resource, rv, true));
                }
                rv
            }
            Start::After(rv) => {
                if rv < state.store.compacted() {
                    expired = true;
                    first.push(line(
                        "ERROR",
                        &expired_status(&format!(
                            "too old resource version: {rv} ({})",
                            state.store.compacted()
                        )),
                    ));
                }
                rv
            }
        };
        (
            cursor,
            first,
            state.disconnects,
            state.expiries,
            state.bookmark_interval,
        )
    };
    // An expired start version gets the ERROR event and the stream ends.
    if !send_all(&tx, first).await || expired {
        return;
    }
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut next_bookmark = Instant::now() + interval;
    loop {
        let step = {
            let state = shared.lock();
            if state.closed || state.disconnects != disconnects {
                Step::Finish(Vec::new())
            } else if state.fault == Fault::DropConnections {
                Step::Cut
            } else if state.fault == Fault::Hang {
                Step::Silent
            } else if state.expiries != expiries {
                Step::Finish(vec![line(
                    "ERROR",
                    &expired_status(&format!(
                        "too old resource version: {cursor} ({})",
                        state.store.compacted()
                    )),
                )])
            } else {
                match state.store.events_after(cursor) {
                    None => Step::Finish(vec![line(
                        "ERROR",
                        &expired_status(&format!(
                            "too old resource version: {cursor} ({})",
                            state.store.compacted()
                        )),
                    )]),
                    Some(events) => {
                        let mut out: Vec<Bytes> =
                            events.iter().filter_map(|e| spec.translate(e)).collect();
                        cursor = cursor.max(state.store.rv());
                        if spec.bookmarks && Instant::now() >= next_bookmark {
                            out.push(bookmark(resource, cursor, false));
                            next_bookmark = Instant::now() + state.bookmark_interval;
                        }
                        Step::Send(out)
                    }
                }
            }
        };
        let hung = match step {
            Step::Send(chunks) => {
                if !send_all(&tx, chunks).await {
                    return;
                }
                false
            }
            Step::Finish(chunks) => {
                let _ = send_all(&tx, chunks).await;
                return;
            }
            Step::Cut => {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection dropped by the injected fault",
                    )))
                    .await;
                return;
            }
            Step::Silent => true,
        };
        if !hung && deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        // Wake on a change, the next bookmark, the timeout, or the client leaving.
        let mut wake = if spec.bookmarks && !hung {
            next_bookmark
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        if let (Some(d), false) = (deadline, hung) {
            wake = wake.min(d);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(wake) => {}
            () = tx.closed() => return,
        }
    }
}
