//! Owns the decision of *when* and *whether* to publish: the single task that applies
//! watch updates to the [`Model`], coalesces bursts, holds mass deletions for
//! confirmation, and sends each new [`Snapshot`] to the receivers.
//!
//! Rules, in the order they apply:
//! - nothing is published before every watch stream has delivered one complete list;
//! - a relist arrives as one [`Update::Relist`] and is applied in one step, so no
//!   snapshot ever shows half of it;
//! - after a change, publishing waits for `quiet` without further changes, but never
//!   longer than `max_delay` after the first unpublished change;
//! - a candidate equal to the last snapshot publishes nothing;
//! - a candidate removing more than `max_removed_share` of the last snapshot's endpoints
//!   (when it had at least `min_endpoints`) is held until confirmed, or until a later
//!   state no longer trips the guard.
//!
//! Each build attempt is one `discovery.snapshot` span when a tracer is set
//! (`crate::trace`): what triggered it, whether the guard held it, what went out.
//!
//! Time is `tokio::time`, so tests drive it with a paused clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::metrics::DiscoveryMetrics;
use crate::model::{Model, Object, ObjectId};
use crate::snapshot::{Snapshot, SnapshotSender};
use crate::trace::{BUILD_STEP_SPAN, BuildSpan, Outcome, SnapshotTracer, Trigger};

/// Burst coalescing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coalesce {
    /// Publish once no change arrived for this long...
    pub quiet: Duration,
    /// ...or at the latest this long after the first unpublished change.
    pub max_delay: Duration,
}

impl Default for Coalesce {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// The mass-deletion guard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MassDeletionGuard {
    /// A publish removing more than this share (0..=1) of the last snapshot's endpoints
    /// is held. 1.0 disables the guard.
    pub max_removed_share: f64,
    /// Below this many endpoints in the last snapshot the guard does not apply (scaling
    /// a small deployment to zero is routine).
    pub min_endpoints: usize,
}

impl Default for MassDeletionGuard {
    fn default() -> Self {
        Self {
            max_removed_share: 0.5,
            min_endpoints: 10,
        }
    }
}

/// A change held by the mass-deletion guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldDeletion {
    pub removed_endpoints: usize,
    pub total_endpoints: usize,
    pub since: Instant,
}

/// What the engine and the watch streams report about themselves.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// The first snapshot was published.
    pub synced: bool,
    pub version: u64,
    /// When the API server last answered successfully.
    pub last_contact: Option<Instant>,
    /// Since when each failing resource URL has been failing; empty while healthy.
    pub failing: HashMap<String, Instant>,
    pub held: Option<HeldDeletion>,
}

impl Status {
    /// How long the current outage has lasted: since the oldest failure of a resource
    /// that has not answered successfully since.
    pub fn outage(&self) -> Option<Duration> {
        self.failing.values().min().map(|t| t.elapsed())
    }
}

pub(crate) type SharedStatus = Arc<Mutex<Status>>;

pub(crate) fn with_status<R>(status: &SharedStatus, f: impl FnOnce(&mut Status) -> R) -> R {
    f(&mut status.lock().unwrap_or_else(PoisonError::into_inner))
}

/// One message from a watch stream. `stream` identifies the stream; each object comes
/// from exactly one stream.
#[derive(Debug)]
pub enum Update {
    /// A complete list of one stream; `resource` names it in metrics.
    Relist {
        stream: usize,
        resource: &'static str,
        objects: Vec<Object>,
    },
    Apply {
        stream: usize,
        object: Object,
    },
    Delete {
        id: ObjectId,
    },
}

pub struct Engine {
    /// This watcher's instance id: with the version, it tells a restart apart.
    epoch: Arc<str>,
    model: Model,
    streams_synced: Vec<bool>,
    coalesce: Coalesce,
    guard: MassDeletionGuard,
    metrics: DiscoveryMetrics,
    status: SharedStatus,
    last: Arc<Snapshot>,
    last_total: usize,
    first_change: Option<Instant>,
    last_change: Instant,
    /// `None`: no spans are built.
    tracer: Option<SnapshotTracer>,
    /// What changed since the last build attempt (for its span).
    trigger: Trigger,
}

impl Engine {
    pub fn new(
        streams: usize,
        coalesce: Coalesce,
        guard: MassDeletionGuard,
        metrics: DiscoveryMetrics,
        status: SharedStatus,
    ) -> Self {
        Self {
            epoch: uuid::Uuid::new_v4().simple().to_string().into(),
            model: Model::new(),
            streams_synced: vec![false; streams],
            coalesce,
            guard,
            metrics,
            status,
            last: Arc::new(Snapshot::default()),
            last_total: 0,
            first_change: None,
            last_change: Instant::now(),
            tracer: None,
            trigger: Trigger::default(),
        }
    }

    /// Record a span per build attempt with `tracer`.
    pub fn with_tracer(mut self, tracer: Option<SnapshotTracer>) -> Self {
        self.tracer = tracer;
        self
    }

    fn synced(&self) -> bool {
        self.streams_synced.iter().all(|s| *s)
    }

    /// Apply one update; `true` when the model changed.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Relist {
                stream,
                resource,
                objects,
            } => {
                let relisted = self
                    .streams_synced
                    .get_mut(stream)
                    .is_some_and(|s| std::mem::replace(s, true));
                let differed = self.model.relist(stream, objects);
                self.trigger.relists += 1;
                if relisted && differed > 0 {
                    self.trigger.repaired += differed as u64;
                    // The watch had missed these: a relist after the first one is the
                    // only way drift (an API server restored from an older state, a
                    // lost event) is repaired.
                    self.metrics
                        .relist_repairs
                        .with_label_values(&[resource])
                        .inc_by(differed as u64);
                    tracing::warn!(
                        resource,
                        objects = differed,
                        "discovery: relist repaired objects the watch had missed"
                    );
                }
                differed > 0
            }
            Update::Apply { stream, object } => {
                self.trigger.watch_events += 1;
                self.model.apply(stream, object)
            }
            Update::Delete { id } => {
                self.trigger.watch_events += 1;
                self.model.delete(&id)
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let first = self.first_change?;
        Some((self.last_change + self.coalesce.quiet).min(first + self.coalesce.max_delay))
    }

    /// Try to publish the model; `force` skips the mass-deletion guard.
    fn publish(&mut self, tx: &SnapshotSender, force: bool) {
        self.first_change = None;
        let first = tx.borrow().is_none();
        if !self.model.has_dirty() && !first {
            return;
        }
        let trigger = std::mem::take(&mut self.trigger);
        let span = BuildSpan::start(self.tracer.as_ref(), &self.epoch, trigger, first, force);
        let started = std::time::Instant::now();
        let candidate = {
            let _step = span.step(BUILD_STEP_SPAN);
            self.model.candidate(&self.last, self.last_total)
        };
        self.metrics
            .rebuild_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = |version| Outcome {
            version,
            services: candidate.services.len(),
            endpoints: candidate.total_endpoints,
            changed_services: candidate.changed,
            removed_endpoints: candidate.removed_endpoints,
        };
        if candidate.changed == 0 && !first {
            span.unchanged(outcome(self.last.version));
            self.model.published();
            self.release_hold();
            return;
        }
        let trips = self.last_total >= self.guard.min_endpoints
            && self.guard.max_removed_share < 1.0
            && candidate.removed_endpoints as f64
                > self.guard.max_removed_share * self.last_total as f64;
        if trips && !force {
            let newly = with_status(&self.status, |s| {
                let newly = s.held.is_none();
                s.held = Some(HeldDeletion {
                    removed_endpoints: candidate.removed_endpoints,
                    total_endpoints: self.last_total,
                    since: s.held.map_or_else(Instant::now, |h| h.since),
                });
                newly
            });
            if newly {
                self.metrics.mass_deletions_held.inc();
            }
            span.held(outcome(self.last.version));
            self.metrics.mass_deletion_held.set(1);
            tracing::warn!(
                removed = candidate.removed_endpoints,
                total = self.last_total,
                share = self.guard.max_removed_share,
                "discovery: change would remove more than the allowed share of endpoints; held until confirmed (keeping the last snapshot)"
            );
            return;
        }
        if force && trips {
            tracing::warn!(
                removed = candidate.removed_endpoints,
                total = self.last_total,
                "discovery: mass deletion confirmed; publishing"
            );
        }
        self.release_hold();
        self.model.published();
        span.published(outcome(self.last.version + 1));
        let snapshot = Arc::new(Snapshot {
            epoch: self.epoch.clone(),
            version: self.last.version + 1,
            services: candidate.services,
        });
        self.last_total = candidate.total_endpoints;
        self.last = snapshot.clone();
        self.metrics.publishes.inc();
        self.metrics.synced.set(1);
        self.metrics.snapshot_version.set(snapshot.version as i64);
        self.metrics.services.set(snapshot.services.len() as i64);
        self.metrics.endpoints.set(self.last_total as i64);
        with_status(&self.status, |s| {
            s.synced = true;
            s.version = snapshot.version;
        });
        tracing::debug!(
            version = snapshot.version,
            changed = candidate.changed,
            "discovery: published snapshot"
        );
        tx.send_replace(Some(snapshot));
    }

    fn release_hold(&self) {
        let was = with_status(&self.status, |s| s.held.take());
        if was.is_some() {
            self.metrics.mass_deletion_held.set(0);
            tracing::info!("discovery: held mass deletion released");
        }
    }

    fn update_staleness(&self) {
        let (outage, contact) = with_status(&self.status, |s| {
            (s.outage(), s.last_contact.map(|t| t.elapsed()))
        });
        let outage_secs = outage.map_or(0.0, |d| d.as_secs_f64());
        self.metrics.stale_seconds.set(outage_secs);
        self.metrics.source_outage_seconds.set(outage_secs);
        self.metrics
            .source_connected
            .set(i64::from(outage.is_none() && contact.is_some()));
        self.metrics
            .last_contact_age_seconds
            .set(contact.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// Run until every update sender is gone or the snapshot receivers are all dropped.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<Update>,
        tx: SnapshotSender,
        confirm: Arc<Notify>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.deadline();
            tokio::select! {
                update = updates.recv() => {
                    let Some(update) = update else { break };
                    let was_synced = self.synced();
                    if self.apply(update) {
                        let now = Instant::now();
                        self.last_change = now;
                        self.first_change.get_or_insert(now);
                    }
                    if self.synced() && !was_synced {
                        // Readiness waits on this first snapshot: no coalescing delay.
                        self.publish(&tx, false);
                    } else if !self.synced() {
                        // Changes before the first sync wait for it.
                        self.first_change = None;
                    }
                }
                () = async {
                    if let Some(d) = deadline { tokio::time::sleep_until(d).await }
                }, if deadline.is_some() => {
                    self.publish(&tx, false);
                }
                () = confirm.notified() => {
                    let held = with_status(&self.status, |s| s.held.is_some());
                    if held {
                        self.publish(&tx, true);
                    }
                }
                _ = tick.tick() => self.update_staleness(),
                () = tx.closed() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Conditions;
    use crate::model::{Data, Group, Kind, ServiceInfo, SliceData, SliceEndpoint, SlicePort};
    use crate::snapshot::{ServiceKey, SnapshotReceiver};
    use std::net::IpAddr;

    const SERVICES: usize = 0;
    const SLICES: usize = 1;

    fn service(name: &str) -> Object {
        Object {
            id: ObjectId {
                kind: Kind::Service,
                namespace: "ns".into(),
                name: name.into(),
            },
            data: Some(Data::Service(ServiceInfo::default())),
        }
    }

    fn slice(name: &str, svc: &str, ips: std::ops::Range<u8>) -> Object {
        Object {
            id: ObjectId {
                kind: Kind::EndpointSlice,
                namespace: "ns".into(),
                name: name.into(),
            },
            data: Some(Data::Slice(SliceData {
                service: ServiceKey::new("ns", svc),
                groups: vec![Group {
                    ports: vec![SlicePort {
                        name: String::new(),
                        port: 80,
                        app_protocol: None,
                    }],
                    endpoints: ips
                        .map(|i| SliceEndpoint {
                            addresses: vec![IpAddr::from([10, 0, 0, i])],
                            conditions: Conditions::default(),
                            for_zones: vec![],
                        })
                        .collect(),
                }],
            })),
        }
    }

    struct Harness {
        tx: mpsc::Sender<Update>,
        rx: SnapshotReceiver,
        confirm: Arc<Notify>,
        status: SharedStatus,
    }

    fn start(guard: MassDeletionGuard) -> Harness {
        let (tx, updates) = mpsc::channel(64);
        let (stx, rx) = tokio::sync::watch::channel(None);
        let status = SharedStatus::default();
        let confirm = Arc::new(Notify::new());
        let engine = Engine::new(
            2,
            Coalesce::default(),
            guard,
            DiscoveryMetrics::unregistered().unwrap(),
            status.clone(),
        );
        tokio::spawn(engine.run(updates, stx, confirm.clone()));
        Harness {
            tx,
            rx,
            confirm,
            status,
        }
    }

    impl Harness {
        async fn send(&self, u: Update) {
            self.tx.send(u).await.unwrap();
        }
        fn version(&self) -> u64 {
            self.rx.borrow().as_ref().map_or(0, |s| s.version)
        }
        fn backends(&self, svc: &str) -> usize {
            self.rx.borrow().as_ref().unwrap().services[&ServiceKey::new("ns", svc)]
                .backends
                .values()
                .map(Vec::len)
                .sum()
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_published_before_both_lists() {
        let h = start(MassDeletionGuard::default());
        h.send(Update::Relist {
            stream: SERVICES,
            resource: "services",
            objects: vec![service("a")],
        })
        .await;
        h.send(Update::Apply {
            stream: SLICES,
            object: slice("a-1", "a", 1..3),
        })
        .await;
        settle().await;
        assert!(h.rx.borrow().is_none());
        h.send(Update::Relist {
            stream: SLICES,
            resource: "endpointslices",
            objects: vec![slice("a-1", "a", 1..3)],
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.version(), 1);
        assert_eq!(h.backends("a"), 2);
    }

    async fn synced(guard: MassDeletionGuard, ips: std::ops::Range<u8>) -> Harness {
        let h = start(guard);
        h.send(Update::Relist {
            stream: SERVICES,
            resource: "services",
            objects: vec![service("a"), service("b")],
        })
        .await;
        h.send(Update::Relist {
            stream: SLICES,
            resource: "endpointslices",
            objects: vec![slice("a-1", "a", ips), slice("b-1", "b", 200..201)],
        })
        .await;
        settle().await;
        assert_eq!(h.version(), 1);
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_publishes_once_and_churn_publishes_within_the_max_delay() {
        let mut h = synced(MassDeletionGuard::default(), 1..2).await;
        h.rx.mark_unchanged();
        for i in 2..20u8 {
            h.send(Update::Apply {
                stream: SLICES,
                object: slice("a-1", "a", 1..i),
            })
            .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!h.rx.has_changed().unwrap());
        settle().await;
        assert_eq!(h.version(), 2);
        assert_eq!(h.backends("a"), 18);

        // Sustained churn: a change every 50 ms never leaves 100 ms of quiet, yet a
        // snapshot goes out by the max delay.
        let start = Instant::now();
        let mut published_at = None;
        for i in 0..40u8 {
            h.send(Update::Apply {
                stream: SLICES,
                object: slice("a-1", "a", 1..(30 + i)),
            })
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if published_at.is_none() && h.version() == 3 {
                published_at = Some(start.elapsed());
            }
        }
        let at = published_at.unwrap();
        assert!(at <= Duration::from_millis(1050), "{at:?}");
        assert!(at >= Duration::from_millis(950), "{at:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn identical_relists_and_no_op_changes_publish_nothing() {
        let h = synced(MassDeletionGuard::default(), 1..3).await;
        let before = h.rx.borrow().clone().unwrap();
        h.send(Update::Relist {
            stream: SLICES,
            resource: "endpointslices",
            objects: vec![slice("a-1", "a", 1..3), slice("b-1", "b", 200..201)],
        })
        .await;
        // The same content under a new slice name: the model changes, the snapshot not.
        h.send(Update::Relist {
            stream: SLICES,
            resource: "endpointslices",
            objects: vec![slice("a-2", "a", 1..3), slice("b-1", "b", 200..201)],
        })
        .await;
        settle().await;
        assert_eq!(h.version(), 1);
        assert!(Arc::ptr_eq(&before, h.rx.borrow().as_ref().unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_is_applied_atomically_and_unchanged_services_are_shared() {
        let mut h = synced(MassDeletionGuard::default(), 1..3).await;
        let before = h.rx.borrow().clone().unwrap();
        h.rx.mark_unchanged();
        h.send(Update::Relist {
            stream: SLICES,
            resource: "endpointslices",
            objects: vec![slice("a-1", "a", 1..5), slice("b-1", "b", 200..201)],
        })
        .await;
        h.rx.changed().await.unwrap();
        let after = h.rx.borrow().clone().unwrap();
        assert_eq!(after.version, 2);
        assert_eq!(h.backends("a"), 4);
        let b = ServiceKey::new("ns", "b");
        assert!(Arc::ptr_eq(&before.services[&b], &after.services[&b]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_service_removes_its_backends() {
        let h = synced(MassDeletionGuard::default(), 1..3).await;
        h.send(Update::Delete {
            id: service("b").id,
        })
        .await;
        settle().await;
        assert_eq!(h.version(), 2);
        assert!(
            !h.rx
                .borrow()
                .as_ref()
                .unwrap()
                .services
                .contains_key(&ServiceKey::new("ns", "b"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_mass_deletion_is_held_until_confirmed_or_undone() {
        let guard = MassDeletionGuard {
            max_removed_share: 0.5,
            min_endpoints: 10,
        };
        let h = synced(guard, 1..21).await;
        // A relist that loses 16 of 21 endpoints is held.
        h.send(Update::Relist {
            stream: SLICES,
            resource: "endpointslices",
            objects: vec![slice("a-1", "a", 1..5), slice("b-1", "b", 200..201)],
        })
        .await;
        settle().await;
        assert_eq!(h.version(), 1);
        let held = with_status(&h.status, |s| s.held).unwrap();
        assert_eq!((held.removed_endpoints, held.total_endpoints), (16, 21));

        // A later state that no longer trips the guard is published without confirmation.
        h.send(Update::Relist {
            stream: SLICES,
            resource: "endpointslices",
            objects: vec![slice("a-1", "a", 1..15), slice("b-1", "b", 200..201)],
        })
        .await;
        settle().await;
        assert_eq!(h.version(), 2);
        assert_eq!(h.backends("a"), 14);
        assert!(with_status(&h.status, |s| s.held).is_none());

        // Held again, then confirmed.
        h.send(Update::Relist {
            stream: SLICES,
            resource: "endpointslices",
            objects: vec![slice("b-1", "b", 200..201)],
        })
        .await;
        settle().await;
        assert_eq!(h.version(), 2);
        h.confirm.notify_one();
        settle().await;
        assert_eq!(h.version(), 3);
        assert_eq!(h.backends("a"), 0);
        assert!(with_status(&h.status, |s| s.held).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn small_services_scale_to_zero_without_the_guard() {
        let h = synced(MassDeletionGuard::default(), 1..4).await;
        h.send(Update::Apply {
            stream: SLICES,
            object: slice("a-1", "a", 1..1),
        })
        .await;
        settle().await;
        assert_eq!(h.version(), 2);
        assert_eq!(h.backends("a"), 0);
    }
}
