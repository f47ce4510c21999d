//! Owns the Kubernetes side of discovery: one kube-runtime watcher per resource and
//! scope (Services plus EndpointSlices, or legacy Endpoints), each reducing objects to
//! the model's few fields as they arrive and handing complete relists over as one
//! update, and the [`WatchHandle`] that reports health and confirms held mass
//! deletions. The publishing rules live in [`crate::engine`].
//!
//! API health is observed on the client itself: every request the watchers make goes
//! through a thin wrapper that records a successful response (the last contact) or a
//! failure (error, 5xx/429/401/403, or no response headers within
//! [`CONTACT_TIMEOUT`]), so an outage is measured from its first failed request and ends
//! at the first successful one, even when no object changed meanwhile. Every chunk a
//! watch delivers counts as contact too (bookmarks included), so the last contact stays
//! recent on a healthy watch that has no changes to report.
//!
//! A watch resumed from its last resourceVersion trusts the API server to replay every
//! change since; one restored from an older state (or one that lost events) does not,
//! and the watch would never notice. So each stream also relists in full: periodically
//! ([`Relist::interval`], jittered so replicas do not relist together) and when a watch
//! failed for longer than [`Relist::after_gap`]. A relist replaces the stream's objects
//! in one step, and what it finds different is counted as repaired drift.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as disc;
use kube::api::{Api, Resource};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::engine::{Coalesce, HeldDeletion, MassDeletionGuard};
use crate::engine::{Engine, SharedStatus, Status, Update, with_status};
use crate::metrics::DiscoveryMetrics;
use crate::model::{self, Object};
use crate::snapshot::SnapshotReceiver;

/// A request without response headers for this long counts as an outage (a silently
/// hanging API server), while the request itself keeps waiting.
pub const CONTACT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which API carries the endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// `discovery.k8s.io/v1` EndpointSlices.
    #[default]
    EndpointSlices,
    /// Legacy `v1` Endpoints, for clusters without EndpointSlices.
    Endpoints,
}

/// When a stream relists in full, besides the relists the watch protocol asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relist {
    /// Relist this often, plus a random up to a tenth more.
    pub interval: Duration,
    /// Relist when a watch comes back after failing for longer than this.
    pub after_gap: Duration,
}

impl Default for Relist {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            after_gap: Duration::from_secs(30),
        }
    }
}

impl Relist {
    /// The next periodic relist, `interval` plus up to 10% jitter.
    fn next(&self) -> Instant {
        let jitter = self.interval.mul_f64(fastrand::f64() * 0.1);
        Instant::now() + self.interval + jitter
    }
}

#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub source: Source,
    /// Namespaces to watch; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Label selector applied to Services and to endpoints objects (the EndpointSlice
    /// controller copies a Service's labels onto its slices).
    pub label_selector: Option<String>,
    pub coalesce: Coalesce,
    pub mass_deletion: MassDeletionGuard,
    pub relist: Relist,
    pub metrics: DiscoveryMetrics,
    /// Spans of snapshot builds and relists (`crate::trace`); `None`: none.
    pub tracer: Option<crate::trace::SnapshotTracer>,
}

impl WatchConfig {
    /// Defaults: EndpointSlices in all namespaces, 100 ms / 1 s coalescing, guard at 50%
    /// of at least 10 endpoints, relists every 5 min and after a 30 s watch gap.
    pub fn new(metrics: DiscoveryMetrics) -> Self {
        Self {
            source: Source::default(),
            namespaces: Vec::new(),
            label_selector: None,
            coalesce: Coalesce::default(),
            mass_deletion: MassDeletionGuard::default(),
            relist: Relist::default(),
            metrics,
            tracer: None,
        }
    }
}

/// A point-in-time view of the watcher's health.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchStatus {
    /// The first snapshot has been published.
    pub synced: bool,
    /// Version of the last published snapshot (0 before the first).
    pub version: u64,
    /// Time since the API server last answered successfully.
    pub last_contact_age: Option<Duration>,
    /// Length of the current outage; `None` while the API server answers.
    pub outage: Option<Duration>,
    pub held_mass_deletion: Option<HeldDeletion>,
}

impl From<&Status> for WatchStatus {
    fn from(s: &Status) -> Self {
        Self {
            synced: s.synced,
            version: s.version,
            last_contact_age: s.last_contact.map(|t| t.elapsed()),
            outage: s.outage(),
            held_mass_deletion: s.held,
        }
    }
}

/// Controls the running watcher; dropping it stops every task.
pub struct WatchHandle {
    status: SharedStatus,
    confirm: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl WatchHandle {
    pub fn status(&self) -> WatchStatus {
        with_status(&self.status, |s| WatchStatus::from(&*s))
    }

    /// Publish the change currently held by the mass-deletion guard (if any).
    pub fn confirm_mass_deletion(&self) {
        self.confirm.notify_one();
    }

    /// Stop watching. The last snapshot stays in the receivers.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle")
            .field("status", &self.status())
            .finish()
    }
}

/// Wrap `client` so that every response updates the shared health status.
fn observed_client(client: kube::Client, status: SharedStatus) -> kube::Client {
    let namespace = client.default_namespace().to_owned();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let client = client.clone();
        let status = status.clone();
        // Health is kept per resource URL (the path without its query), so one
        // resource answering does not hide another one failing.
        let path = req.uri().path().to_owned();
        async move {
            let response = client.send(req);
            tokio::pin!(response);
            let result = tokio::select! {
                r = &mut response => r,
                () = tokio::time::sleep(CONTACT_TIMEOUT) => {
                    mark_failing(&status, &path);
                    response.await
                }
            };
            match &result {
                Ok(r) if is_contact(r.status()) => mark_contact(&status, &path),
                _ => mark_failing(&status, &path),
            }
            // Each chunk of the body is the API server talking: on a watch that is
            // every event and every bookmark.
            result.map(|response| {
                response.map(|body| {
                    body.map_frame(move |frame| {
                        if frame.is_data() {
                            mark_contact(&status, &path);
                        }
                        frame
                    })
                })
            })
        }
    });
    kube::Client::new(service, namespace)
}

/// A response that shows the API server working for us: success, or 410 Gone (the
/// normal signal to relist).
fn is_contact(status: http::StatusCode) -> bool {
    status.is_success() || status == http::StatusCode::GONE
}

fn mark_contact(status: &SharedStatus, path: &str) {
    with_status(status, |s| {
        s.last_contact = Some(Instant::now());
        s.failing.remove(path);
    });
}

fn mark_failing(status: &SharedStatus, path: &str) {
    with_status(status, |s| {
        if !s.failing.contains_key(path) {
            s.failing.insert(path.to_owned(), Instant::now());
        }
    });
}

/// Start watching on the current tokio runtime. The receiver holds `None` until the
/// first complete list of every watched resource has been published.
pub fn spawn(client: kube::Client, config: WatchConfig) -> (SnapshotReceiver, WatchHandle) {
    let status = SharedStatus::default();
    let client = observed_client(client, status.clone());
    let (tx, rx) = tokio::sync::watch::channel(None);
    let (updates_tx, updates) = mpsc::channel(1024);
    let confirm = Arc::new(Notify::new());
    let scopes: Vec<Option<&str>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        let mut ns: Vec<&str> = config.namespaces.iter().map(String::as_str).collect();
        ns.sort_unstable();
        ns.dedup();
        ns.into_iter().map(Some).collect()
    };
    let mut watcher_config = watcher::Config::default();
    if let Some(selector) = &config.label_selector {
        watcher_config = watcher_config.labels(selector);
    }
    let mut tasks = Vec::new();
    let mut stream = 0;
    for namespace in scopes {
        let ctx = |stream| StreamCtx {
            stream,
            updates: updates_tx.clone(),
            status: status.clone(),
            metrics: config.metrics.clone(),
            config: watcher_config.clone(),
            relist: config.relist,
            tracer: config.tracer.clone(),
        };
        tasks.push(tokio::spawn(run_stream(
            api::<core::Service>(&client, namespace),
            ctx(stream),
            "services",
            model::strip_service,
        )));
        stream += 1;
        let task = match config.source {
            Source::EndpointSlices => tokio::spawn(run_stream(
                api::<disc::EndpointSlice>(&client, namespace),
                ctx(stream),
                "endpointslices",
                model::strip_endpoint_slice,
            )),
            Source::Endpoints => tokio::spawn(run_stream(
                api::<core::Endpoints>(&client, namespace),
                ctx(stream),
                "endpoints",
                model::strip_endpoints,
            )),
        };
        tasks.push(task);
        stream += 1;
    }
    let engine = Engine::new(
        stream,
        config.coalesce,
        config.mass_deletion,
        config.metrics.clone(),
        status.clone(),
    )
    .with_tracer(config.tracer.clone());
    tasks.push(tokio::spawn(engine.run(updates, tx, confirm.clone())));
    (
        rx,
        WatchHandle {
            status,
            confirm,
            tasks,
        },
    )
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

struct StreamCtx {
    stream: usize,
    updates: mpsc::Sender<Update>,
    status: SharedStatus,
    metrics: DiscoveryMetrics,
    config: watcher::Config,
    relist: Relist,
    tracer: Option<crate::trace::SnapshotTracer>,
}

/// Follow one resource, sending relists whole and other events one by one; relist in
/// full periodically and after a long watch gap (see the module doc).
async fn run_stream<K>(api: Api<K>, ctx: StreamCtx, resource: &'static str, strip: fn(&K) -> Object)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let url = api.resource_url().to_owned();
    let start = || {
        watcher(api.clone(), ctx.config.clone())
            .default_backoff()
            .boxed()
    };
    let mut events = start();
    let mut relist: Option<Vec<Object>> = None;
    let mut next_relist = ctx.relist.next();
    // A relist this task forced is under way: do not force another before it is done.
    let mut forced = false;
    // Why the next complete list happens, and its span (Init to InitDone: every
    // page the list took) while it is under way.
    let mut reason = "initial";
    let mut relist_span = None;
    let count = |kind: &str| {
        ctx.metrics
            .events
            .with_label_values(&[resource, kind])
            .inc()
    };
    let force = |reason: &'static str| {
        ctx.metrics
            .forced_relists
            .with_label_values(&[resource, reason])
            .inc();
        tracing::info!(resource, reason, "discovery: full relist");
    };
    loop {
        // When the watch has been failing for longer than the bound (failing since the
        // first failure no answer has cleared; any chunk of a watch clears it, so a
        // reconnected quiet watch is no gap), do not trust a resume: come back with a
        // complete list. Checked on a timer, as a failing watch may retry seldom.
        let gap_at = with_status(&ctx.status, |s| s.failing.get(&url).copied())
            .map(|since| since + ctx.relist.after_gap);
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
            () = async {
                if let Some(at) = gap_at { tokio::time::sleep_until(at).await }
            }, if gap_at.is_some() && !forced => {
                let still = with_status(&ctx.status, |s| s.failing.contains_key(&url));
                if still {
                    force("gap");
                    reason = "gap";
                    events = start();
                    relist = None;
                    forced = true;
                }
                continue;
            }
            () = tokio::time::sleep_until(next_relist), if !forced => {
                force("periodic");
                reason = "periodic";
                // A new watcher starts with a complete list (then watches from it);
                // the old watch is dropped.
                events = start();
                relist = None;
                forced = true;
                next_relist = ctx.relist.next();
                continue;
            }
        };
        if event.is_ok() {
            // An event is the API server answering, as much as a response is.
            mark_contact(&ctx.status, &url);
        }
        let update = match event {
            Ok(Event::Init) => {
                count("init");
                relist = Some(Vec::new());
                relist_span = ctx.tracer.as_ref().map(|t| t.relist(resource, reason));
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                // Stripped on arrival: the full object is never kept.
                relist.get_or_insert_with(Vec::new).push(strip(&obj));
                continue;
            }
            Ok(Event::InitDone) => {
                count("init_done");
                ctx.metrics.relists.with_label_values(&[resource]).inc();
                forced = false;
                next_relist = ctx.relist.next();
                let objects = relist.take().unwrap_or_default();
                if let Some(span) = relist_span.take() {
                    span.objects(objects.len());
                }
                // Later lists not forced here are the watch starting over (its
                // resource version expired).
                reason = "resync";
                Update::Relist {
                    stream: ctx.stream,
                    resource,
                    objects,
                }
            }
            Ok(Event::Apply(obj)) => {
                count("apply");
                Update::Apply {
                    stream: ctx.stream,
                    object: strip(&obj),
                }
            }
            Ok(Event::Delete(obj)) => {
                count("delete");
                Update::Delete { id: strip(&obj).id }
            }
            Err(error) => {
                ctx.metrics
                    .watch_errors
                    .with_label_values(&[resource])
                    .inc();
                mark_failing(&ctx.status, &url);
                tracing::warn!(%error, resource, "discovery: watch failed; keeping the last snapshot and retrying with backoff");
                continue;
            }
        };
        if ctx.updates.send(update).await.is_err() {
            return;
        }
    }
}

fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_counts_as_contact_and_server_errors_do_not() {
        assert!(is_contact(http::StatusCode::OK));
        assert!(is_contact(http::StatusCode::GONE));
        assert!(!is_contact(http::StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!is_contact(http::StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_contact(http::StatusCode::FORBIDDEN));
    }
}
