//! Owns the process-wide cache storage: Pingora's in-memory storage wrapped so the
//! gateway knows what is stored. The wrapper keeps an index of committed entries (URL,
//! tags, size) for purges by URL, path prefix and tag, counts evictions, and makes
//! metadata updates safe against a concurrent purge.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::{CacheHashKey, CompactCacheKey};
use pingora::cache::storage::{HandleMiss, MissFinishType};
use pingora::cache::trace::{Span, SpanHandle};
use pingora::cache::{
    CacheEntryId, CacheEntryKeyRef, CacheKey, CacheMeta, HitHandler, MemCache, MissHandler,
    PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora::prelude::Result;

use super::policy;

/// Where a stored response came from; attached to the cache key as an extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryUrl {
    /// Lower case, as the client sent it (port included).
    pub host: String,
    pub path: String,
    pub query: Option<String>,
}

#[derive(Debug)]
struct Entry {
    compact: CompactCacheKey,
    url: Option<EntryUrl>,
    tags: Vec<String>,
}

/// Committed entries by storage hash, with lookups by path and tag.
#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    by_path: HashMap<String, HashSet<String>>,
    by_tag: HashMap<String, HashSet<String>>,
    /// Fills in progress per storage hash.
    writing: HashMap<String, usize>,
    /// Hashes purged while a fill was in progress: removed when the last fill ends.
    pending: HashSet<String>,
}

impl Index {
    fn insert(&mut self, hash: String, entry: Entry) {
        self.remove(&hash);
        if let Some(url) = &entry.url {
            self.by_path
                .entry(url.path.clone())
                .or_default()
                .insert(hash.clone());
        }
        for t in &entry.tags {
            self.by_tag
                .entry(t.clone())
                .or_default()
                .insert(hash.clone());
        }
        self.entries.insert(hash, entry);
    }

    fn remove(&mut self, hash: &str) -> bool {
        let Some(entry) = self.entries.remove(hash) else {
            return false;
        };
        if let Some(url) = &entry.url
            && let Some(set) = self.by_path.get_mut(&url.path)
        {
            set.remove(hash);
            if set.is_empty() {
                self.by_path.remove(&url.path);
            }
        }
        for t in &entry.tags {
            if let Some(set) = self.by_tag.get_mut(t) {
                set.remove(hash);
                if set.is_empty() {
                    self.by_tag.remove(t);
                }
            }
        }
        true
    }

    fn select(&self, what: &Purge) -> Vec<(String, CompactCacheKey)> {
        let pick = |hash: &String| {
            self.entries
                .get(hash)
                .map(|e| (hash.clone(), e.compact.clone()))
        };
        match what {
            Purge::All => self
                .entries
                .iter()
                .map(|(h, e)| (h.clone(), e.compact.clone()))
                .collect(),
            Purge::Url { host, path, query } => self
                .by_path
                .get(path)
                .into_iter()
                .flatten()
                .filter(|h| {
                    self.entries.get(*h).is_some_and(|e| {
                        e.url.as_ref().is_some_and(|u| {
                            &u.query == query && host.as_deref().is_none_or(|want| u.host == want)
                        })
                    })
                })
                .filter_map(pick)
                .collect(),
            Purge::Prefix(prefix) => self
                .by_path
                .iter()
                .filter(|(p, _)| p.starts_with(prefix.as_str()))
                .flat_map(|(_, set)| set.iter())
                .filter_map(pick)
                .collect(),
            Purge::Tag(tag) => self
                .by_tag
                .get(tag)
                .into_iter()
                .flatten()
                .filter_map(pick)
                .collect(),
        }
    }
}

/// What to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purge {
    /// One URL: this path and exactly this query (every variant and key part);
    /// `host: None` matches every host.
    Url {
        host: Option<String>,
        path: String,
        query: Option<String>,
    },
    /// Every path starting with this.
    Prefix(String),
    /// Every response tagged so by `Cache-Tag` or `Surrogate-Key`.
    Tag(String),
    All,
}

/// Run one of the in-memory store's operations to completion right here. They are
/// `async` only to fit the `Storage` trait and never suspend, so this lets them run
/// under the (synchronous) index lock, which is what orders purges against fills.
/// Should one ever suspend, the caller gets an error instead of a wrong answer.
fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn suspended<T>() -> Result<T> {
    pingora::Error::e_explain(
        pingora::ErrorType::InternalError,
        "in-memory cache operation suspended",
    )
}

/// Pingora's `MemCache` plus the index; one per process (see `super::STORAGE`).
///
/// `MemCache` removes an in-progress fill together with the stored entry when purging,
/// and its fill then panics on finishing. So a purge (or eviction) of a key that is
/// being filled is deferred: the fill is discarded instead of committed, and the stored
/// entry is removed once no fill for it is left.
pub struct TrackedStorage {
    inner: MemCache,
    index: Mutex<Index>,
    evictions: AtomicU64,
    /// Committed entries, mirrored from the index for lock-free reads.
    objects: AtomicUsize,
    eviction: &'static (dyn EvictionManager + Sync),
}

impl std::fmt::Debug for TrackedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedStorage").finish_non_exhaustive()
    }
}

impl TrackedStorage {
    pub fn new(eviction: &'static (dyn EvictionManager + Sync)) -> Self {
        Self {
            inner: MemCache::new(),
            index: Mutex::new(Index::default()),
            evictions: AtomicU64::new(0),
            objects: AtomicUsize::new(0),
            eviction,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves consistent-enough maps; keep serving.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries removed to stay under the byte cap, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Committed entries.
    pub fn objects(&self) -> usize {
        self.objects.load(Ordering::Relaxed)
    }

    /// Remove what `what` selects; returns how many stored responses were removed.
    pub fn purge_matching(&'static self, what: &Purge) -> usize {
        let mut index = self.lock();
        let victims = index.select(what);
        let mut removed = 0;
        for (hash, compact) in victims {
            if self.remove_locked(&mut index, &hash, &compact, PurgeType::Invalidation) {
                self.eviction
                    .remove(CacheEntryKeyRef::from_entry_id(&compact, None));
                removed += 1;
            }
        }
        removed
    }

    /// Remove one committed entry, or defer it while a fill for the key is running.
    /// True when the entry is (or will be) gone.
    fn remove_locked(
        &'static self,
        index: &mut Index,
        hash: &str,
        compact: &CompactCacheKey,
        why: PurgeType,
    ) -> bool {
        if index.writing.get(hash).is_some_and(|n| *n > 0) {
            index.pending.insert(hash.to_owned());
            let known = index.remove(hash);
            self.objects.store(index.entries.len(), Ordering::Relaxed);
            return known;
        }
        let span = Span::inactive();
        let outcome = now(self
            .inner
            .purge(PurgeTarget::Active(compact), why, &span.handle()));
        let purged = matches!(outcome, Some(Ok(PurgeOutcome::Purged(_))));
        let known = index.remove(hash);
        self.objects.store(index.entries.len(), Ordering::Relaxed);
        purged || known
    }
}

#[async_trait]
impl Storage for TrackedStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.inner.lookup(key, trace).await
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        // Only the filling request reads its own fill this way, while its fill exists.
        self.inner
            .lookup_streaming_write(key, streaming_write_tag, trace)
            .await
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        // Headers count towards the byte cap too, not only the body.
        let header_bytes = meta
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + 64;
        let hash = key.combined();
        let inner = {
            let mut index = self.lock();
            let Some(inner) = now(self.inner.get_miss_handler(key, meta, trace)) else {
                return suspended();
            };
            let inner = inner?;
            *index.writing.entry(hash.clone()).or_default() += 1;
            inner
        };
        Ok(Box::new(TrackedMiss {
            inner: Some(inner),
            storage: self,
            hash,
            entry: Some(Entry {
                compact: key.to_compact(),
                url: key.extensions.get::<EntryUrl>().cloned(),
                tags: policy::tags(meta.headers()),
            }),
            header_bytes,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let compact = target.key();
        let hash = compact.combined();
        let mut index = self.lock();
        let removed = self.remove_locked(&mut index, &hash, compact, purge_type);
        if removed && matches!(purge_type, PurgeType::Eviction) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let _index = self.lock();
        now(self.inner.expire(target, trace)).unwrap_or_else(suspended)
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        // The in-memory store panics on a missing entry; a purge or eviction may have
        // removed it while this revalidation was in flight. The index lock orders them.
        let index = self.lock();
        if !index.entries.contains_key(&key.combined()) {
            return Ok(false);
        }
        now(self.inner.update_meta(key, meta, trace)).unwrap_or_else(suspended)
    }

    fn support_streaming_partial_write(&self) -> bool {
        self.inner.support_streaming_partial_write()
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

/// Records the entry in the index once the body is complete.
struct TrackedMiss {
    inner: Option<MissHandler>,
    storage: &'static TrackedStorage,
    hash: String,
    entry: Option<Entry>,
    header_bytes: usize,
}

impl TrackedMiss {
    /// This fill is over (finished or dropped): if it was the last one for its key and a
    /// purge waited for it, remove the stored entry now.
    fn end_fill(&self, index: &mut Index) {
        let left = match index.writing.get_mut(&self.hash) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left > 0 {
            return;
        }
        index.writing.remove(&self.hash);
        if index.pending.remove(&self.hash)
            && let Some(entry) = &self.entry
        {
            let storage = self.storage;
            storage.remove_locked(index, &self.hash, &entry.compact, PurgeType::Invalidation);
            storage
                .eviction
                .remove(CacheEntryKeyRef::from_entry_id(&entry.compact, None));
        }
    }
}

#[async_trait]
impl HandleMiss for TrackedMiss {
    async fn write_body(&mut self, data: bytes::Bytes, eof: bool) -> Result<()> {
        match self.inner.as_mut() {
            Some(h) => h.write_body(data, eof).await,
            None => pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "cache write after finish",
            ),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let Some(inner) = self.inner.take() else {
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "cache write finished twice",
            );
        };
        let storage = self.storage;
        let mut index = storage.lock();
        if index.pending.contains(&self.hash) {
            // Purged while filling: this response may predate the purge; drop it.
            drop(inner);
            self.end_fill(&mut index);
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "cache entry purged while it was being filled",
            );
        }
        let finished = match now(inner.finish()) {
            Some(r) => r,
            None => suspended(),
        };
        self.end_fill(&mut index);
        let finished = finished?;
        if let Some(entry) = self.entry.take() {
            index.insert(self.hash.clone(), entry);
            storage
                .objects
                .store(index.entries.len(), Ordering::Relaxed);
        }
        Ok(match finished {
            MissFinishType::Created(n) => MissFinishType::Created(n + self.header_bytes),
            other => other,
        })
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        self.inner.as_ref().and_then(|h| h.streaming_write_tag())
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        self.inner.as_ref().and_then(|h| h.entry_id())
    }
}

impl Drop for TrackedMiss {
    fn drop(&mut self) {
        // Abandoned before finishing (client gone, origin failed): the fill is over.
        if let Some(inner) = self.inner.take() {
            let storage = self.storage;
            let mut index = storage.lock();
            // Drop the store's fill first, so a deferred purge cannot meet it.
            drop(inner);
            self.end_fill(&mut index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, query: Option<&str>, host: &str, tags: &[&str]) -> Entry {
        Entry {
            compact: CacheKey::new(format!("{host}{path}{query:?}"), "").to_compact(),
            url: Some(EntryUrl {
                host: host.into(),
                path: path.into(),
                query: query.map(Into::into),
            }),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn storage() -> &'static TrackedStorage {
        let eviction: &'static pingora::cache::eviction::lru::Manager<1> = Box::leak(Box::new(
            pingora::cache::eviction::lru::Manager::with_capacity(1 << 20, 16),
        ));
        Box::leak(Box::new(TrackedStorage::new(eviction)))
    }

    fn meta() -> CacheMeta {
        let now = std::time::SystemTime::now();
        let header = pingora::http::ResponseHeader::build(200, None).unwrap();
        CacheMeta::new(now + std::time::Duration::from_secs(60), now, 0, 0, header)
    }

    fn key(path: &str) -> CacheKey {
        let mut k = CacheKey::new(format!("r\nh\n{path}"), "");
        k.extensions.insert(EntryUrl {
            host: "h".into(),
            path: path.into(),
            query: None,
        });
        k
    }

    async fn fill(s: &'static TrackedStorage, k: &CacheKey, body: &'static str) -> MissHandler {
        let span = Span::inactive();
        let mut h = s
            .get_miss_handler(k, &meta(), &span.handle())
            .await
            .unwrap();
        h.write_body(bytes::Bytes::from_static(body.as_bytes()), true)
            .await
            .unwrap();
        h
    }

    async fn stored(s: &'static TrackedStorage, k: &CacheKey) -> bool {
        let span = Span::inactive();
        s.lookup(k, &span.handle()).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn purge_during_a_fill_is_deferred_not_a_panic() {
        let s = storage();
        let k = key("/a");
        // A committed entry, then a refill in progress when the purge arrives.
        fill(s, &k, "v1").await.finish().await.unwrap();
        assert_eq!(s.objects(), 1);
        let refill = fill(s, &k, "v2").await;
        assert_eq!(s.purge_matching(&Purge::All), 1);
        // The fill that may predate the purge is discarded, and the old entry goes too.
        assert!(refill.finish().await.is_err());
        assert!(!stored(s, &k).await);
        assert_eq!(s.objects(), 0);

        // A fill abandoned after a purge of its key also removes the stored entry.
        fill(s, &k, "v3").await.finish().await.unwrap();
        let abandoned = fill(s, &k, "v4").await;
        let span = Span::inactive();
        let out = s
            .purge(
                PurgeTarget::Active(&k.to_compact()),
                PurgeType::Eviction,
                &span.handle(),
            )
            .await
            .unwrap();
        assert_eq!(out, PurgeOutcome::Purged(None));
        assert_eq!(s.evictions(), 1);
        drop(abandoned);
        assert!(!stored(s, &k).await);

        // Without a purge, a refill replaces the entry; update_meta of a gone entry is a no-op.
        fill(s, &k, "v5").await.finish().await.unwrap();
        fill(s, &k, "v6").await.finish().await.unwrap();
        assert_eq!(s.objects(), 1);
        assert!(s.update_meta(&k, &meta(), &span.handle()).await.unwrap());
        s.purge_matching(&Purge::All);
        assert!(!s.update_meta(&k, &meta(), &span.handle()).await.unwrap());
    }

    #[test]
    fn index_selects_by_url_prefix_tag_and_all() {
        let mut ix = Index::default();
        ix.insert("1".into(), entry("/a", None, "h1", &["x"]));
        ix.insert("2".into(), entry("/a", Some("q=1"), "h1", &["x", "y"]));
        ix.insert("3".into(), entry("/a", None, "h2", &[]));
        ix.insert("4".into(), entry("/ab/c", None, "h1", &["y"]));
        ix.insert("5".into(), entry("/b", None, "h1", &[]));
        let sel = |ix: &Index, p: Purge| {
            let mut v: Vec<String> = ix.select(&p).into_iter().map(|(h, _)| h).collect();
            v.sort();
            v
        };
        let url = |host: Option<&str>, path: &str, query: Option<&str>| Purge::Url {
            host: host.map(Into::into),
            path: path.into(),
            query: query.map(Into::into),
        };
        assert_eq!(sel(&ix, url(None, "/a", None)), ["1", "3"]);
        assert_eq!(sel(&ix, url(Some("h1"), "/a", None)), ["1"]);
        assert_eq!(sel(&ix, url(None, "/a", Some("q=1"))), ["2"]);
        assert_eq!(sel(&ix, url(None, "/zzz", None)), Vec::<String>::new());
        assert_eq!(sel(&ix, Purge::Prefix("/a".into())), ["1", "2", "3", "4"]);
        assert_eq!(sel(&ix, Purge::Tag("y".into())), ["2", "4"]);
        assert_eq!(sel(&ix, Purge::All).len(), 5);
        // Replacing and removing keep the secondary maps in step.
        ix.insert("2".into(), entry("/b", None, "h1", &[]));
        assert_eq!(sel(&ix, Purge::Tag("y".into())), ["4"]);
        assert!(ix.remove("4"));
        assert!(!ix.remove("4"));
        assert!(ix.by_tag.is_empty() || !ix.by_tag.contains_key("y"));
        assert_eq!(sel(&ix, Purge::Prefix("/a".into())), ["1", "3"]);
    }
}
