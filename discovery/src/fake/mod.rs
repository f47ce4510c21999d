//! A fake Kubernetes API server for tests (feature `fake`): real HTTP on 127.0.0.1,
//! faithful enough that the kube-rs client and the `kubectl` binary both work
//! against it, with switches for the failures a real API server shows.
//!
//! What it serves, and how closely:
//! - discovery documents (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/G`,
//!   `/apis/G/V`) in the legacy form, for the kinds in [`resources`](self);
//! - list (cluster-wide and per namespace) with `labelSelector`, `fieldSelector`
//!   (`metadata.name`, `metadata.namespace`), `limit`/`continue` pages that stay
//!   consistent at the first page's version (410 Expired once compacted), and one
//!   global increasing `resourceVersion`;
//! - get, create (POST), replace (PUT), delete, and JSON merge patch;
//! - watch as chunked newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`,
//!   `BOOKMARK`, `ERROR`) replayed from a bounded history: from a version (events
//!   after it), from `0`/unset (synthetic ADDED for the current state first), or with
//!   `sendInitialEvents=true` (state, then a bookmark marking the end of it); a label
//!   selector turns objects leaving or entering it into DELETED/ADDED as the watch
//!   cache does; an expired version gets an in-stream `ERROR` with a 410 `Status`;
//!   `timeoutSeconds` ends the stream cleanly;
//! - errors as `Status` objects with the API's reasons (`NotFound`, `Expired`...);
//! - server-side printing (`Table`) for `kubectl get`, with the real columns for
//!   EndpointSlices, Services and Endpoints and Name/Age for the other kinds.
//!
//! Writes made by the test through [`FakeApiServer::apply`] and
//! [`FakeApiServer::delete`] go through the same store and history as HTTP writes.

mod list;
mod request;
mod resources;
mod responses;
mod server;
mod store;
mod table;
mod watch;
mod write;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use store::{Key, Store};

/// A failure the fake injects into requests, from the moment it is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Serve normally.
    #[default]
    None,
    /// Close each connection without answering; open watches are cut mid-stream.
    DropConnections,
    /// Accept requests and never answer while the fault lasts; open watches go
    /// silent (no events, no bookmarks). Requests resume once it is cleared.
    Hang,
    /// Answer every request with this HTTP status and a matching `Status` body
    /// (429 carries `Retry-After: 1`). Open watches are unaffected, as with RBAC.
    Status(u16),
    /// Answer each new request only after this delay.
    Delay(Duration),
}

/// Why [`FakeApiServer::try_apply`] refused an object.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApplyError(String);

/// How much change history is kept for watches and paginated lists by default.
pub const DEFAULT_HISTORY: usize = 10_000;

#[derive(Debug)]
pub(crate) struct State {
    store: Store,
    fault: Fault,
    /// Method and `path?query` of every request, oldest first.
    requests: Vec<(http::Method, String)>,
    /// Bumped by [`FakeApiServer::disconnect_watches`]; a watch ends when it moves.
    disconnects: u64,
    /// Bumped by [`FakeApiServer::expire_watches`]; a watch gets 410 when it moves.
    expiries: u64,
    open_watches: usize,
    bookmark_interval: Duration,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Ticks on every change of state, waking watches and hung requests.
    changes: tokio::sync::watch::Sender<u64>,
    addr: SocketAddr,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the store half-written (each
        // write completes before publishing), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.lock().closed = true;
        self.shared.notify();
    }
}

/// A running fake API server. Clones share one server; it stops (its listener
/// closes and open watches end) when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct FakeApiServer {
    handle: Arc<Handle>,
}

impl FakeApiServer {
    /// Binds 127.0.0.1 on a free port and serves on the current tokio runtime.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` and serves on the current tokio runtime.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                store: Store::new(DEFAULT_HISTORY),
                fault: Fault::None,
                requests: Vec::new(),
                disconnects: 0,
                expiries: 0,
                open_watches: 0,
                bookmark_interval: Duration::from_secs(1),
                closed: false,
            }),
            changes: tokio::sync::watch::channel(0).0,
            addr,
        });
        let accept = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(FakeApiServer {
            handle: Arc::new(Handle { shared, accept }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared().addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A kubeconfig whose current context points at this server (namespace `default`,
    /// a static bearer token the fake accepts like any other).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
users:
- name: fake
  user:
    token: fake-token
preferences: {{}}
",
            url = self.url()
        )
    }

    /// A kube-rs configuration for this server, ready for `kube::Client::try_from`.
    pub fn kube_config(&self) -> kube::Config {
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.addr().to_string())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        kube::Config::new(uri)
    }

    /// Creates or replaces the object identified by its apiVersion, kind, namespace
    /// (default `default` for namespaced kinds) and name; sets `resourceVersion`,
    /// `uid` and `creationTimestamp` and emits ADDED or MODIFIED. Returns the new
    /// resourceVersion (unchanged, with no event, when the content is identical).
    ///
    /// # Panics
    /// When [`try_apply`](Self::try_apply) fails: the object has no apiVersion, kind
    /// or metadata.name, or is of a kind the fake does not serve. That is a broken
    /// test fixture, not a runtime condition.
    pub fn apply(&self, object: Value) -> u64 {
        match self.try_apply(object) {
            Ok(rv) => rv,
            Err(e) => panic!("FakeApiServer::apply: {e}"),
        }
    }

    /// [`apply`](Self::apply) for objects that come from outside a test (files).
    pub fn try_apply(&self, object: Value) -> Result<u64, ApplyError> {
        let key = object_key(&object).map_err(|why| ApplyError(format!("{why}: {object}")))?;
        let result = self.shared().lock().store.write(key, object, false, false);
        self.shared().notify();
        result
            .map(|(rv, _)| rv)
            .map_err(|e| ApplyError(format!("{e:?}")))
    }

    /// Deletes one object and emits DELETED; false when it did not exist.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(key) = key_for(api_version, kind, namespace, name) else {
            return false;
        };
        let deleted = self.shared().lock().store.delete(&key).is_some();
        self.shared().notify();
        deleted
    }

    /// The stored object, as a get would return it.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = key_for(api_version, kind, namespace, name)?;
        self.shared().lock().store.get(&key).map(|v| (**v).clone())
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared().lock().store.rv()
    }

    /// Applies to subsequent requests, and to open watches for `DropConnections`
    /// (cut) and `Hang` (silenced).
    pub fn set_fault(&self, fault: Fault) {
        self.shared().lock().fault = fault;
        self.shared().notify();
    }

    pub fn fault(&self) -> Fault {
        self.shared().lock().fault.clone()
    }

    /// Forgets the watch history: watches and list continuations from any version
    /// older than the current one get 410 Expired (as after an etcd compaction).
    pub fn compact(&self) {
        self.shared().lock().store.compact();
        self.shared().notify();
    }

    /// Compacts and sends every open watch an in-stream `ERROR` with a 410 Expired
    /// `Status`, then ends it, as the API server does to a watcher that fell too far
    /// behind. Clients must relist.
    pub fn expire_watches(&self) {
        {
            let mut state = self.shared().lock();
            state.store.compact();
            state.expiries += 1;
        }
        self.shared().notify();
    }

    /// Ends every open watch cleanly, as the API server does when `timeoutSeconds`
    /// passes or it restarts gracefully. Clients resume from their last version.
    pub fn disconnect_watches(&self) {
        self.shared().lock().disconnects += 1;
        self.shared().notify();
    }

    /// Simulates an API server that restarts serving a different state than it had
    /// (restored from an older etcd backup, or with changes its watch cache never
    /// turned into events): every open watch ends, as at a restart, and `objects`
    /// replace the stored ones of the same identity and `deleted` (apiVersion, kind,
    /// namespace, name) disappear, all without any watch event. Versions handed out
    /// before stay valid, so a watch that resumes from one replays nothing of the
    /// change; only a new list shows it.
    pub fn restart_with(
        &self,
        objects: Vec<Value>,
        deleted: &[(&str, &str, &str, &str)],
    ) -> Result<(), ApplyError> {
        let keys = objects
            .iter()
            .map(|o| object_key(o).map_err(|why| ApplyError(format!("{why}: {o}"))))
            .collect::<Result<Vec<_>, _>>()?;
        {
            let mut state = self.shared().lock();
            for (key, object) in keys.into_iter().zip(objects) {
                state.store.write_silently(key, object);
            }
            for (api_version, kind, namespace, name) in deleted {
                if let Some(key) = key_for(api_version, kind, namespace, name) {
                    state.store.delete_silently(&key);
                }
            }
            state.disconnects += 1;
        }
        self.shared().notify();
        Ok(())
    }

    /// How often open watches that allow bookmarks get one (default 1 s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared().lock().bookmark_interval = interval.max(Duration::from_millis(10));
        self.shared().notify();
    }

    /// How many watch streams are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared().lock().open_watches
    }

    /// How many requests so far had a `path?query` starting with `path_prefix`.
    pub fn requests(&self, path_prefix: &str) -> usize {
        self.shared()
            .lock()
            .requests
            .iter()
            .filter(|(_, target)| target.starts_with(path_prefix))
            .count()
    }

    /// Every request so far as `METHOD path?query`, oldest first.
    pub fn request_log(&self) -> Vec<String> {
        self.shared()
            .lock()
            .requests
            .iter()
            .map(|(method, target)| format!("{method} {target}"))
            .collect()
    }

    /// Waits until `condition` holds for the server (checked on every change:
    /// write, fault, watch opened or closed, request served).
    pub async fn wait_for(&self, mut condition: impl FnMut(&FakeApiServer) -> bool) {
        let mut changes = self.shared().changes.subscribe();
        while !condition(self) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

fn key_for(api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Key> {
    let resource = resources::RESOURCES
        .iter()
        .position(|r| r.matches(api_version, kind))?;
    let namespaced = resources::RESOURCES[resource].namespaced;
    Some(Key {
        resource,
        namespace: if namespaced {
            namespace.to_owned()
        } else {
            String::new()
        },
        name: name.to_owned(),
    })
}

fn object_key(object: &Value) -> Result<Key, String> {
    let field = |p: &str| object.pointer(p).and_then(Value::as_str);
    let api_version = field("/apiVersion").ok_or("no apiVersion")?;
    let kind = field("/kind").ok_or("no kind")?;
    let name = field("/metadata/name")
        .filter(|n| !n.is_empty())
        .ok_or("no metadata.name")?;
    let namespace = field("/metadata/namespace").unwrap_or("default");
    key_for(api_version, kind, namespace, name)
        .ok_or_else(|| format!("the fake does not serve {api_version} {kind}"))
}
