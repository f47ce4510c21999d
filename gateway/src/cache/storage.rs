//! Owns the process-wide cache storage: Pingora's in-memory storage wrapped so the
//! gateway knows what is stored. The wrapper keeps an index of committed entries (URL,
//! tags, size) for purges by URL, path prefix and tag, counts evictions, and makes
//! metadata updates safe against a concurrent purge.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
use tokio::sync::Mutex;

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

/// Pingora's `MemCache` plus the index; one per process (see `super::STORAGE`).
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

    /// Entries removed to stay under the byte cap, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Committed entries.
    pub fn objects(&self) -> usize {
        self.objects.load(Ordering::Relaxed)
    }

    /// Remove what `what` selects; returns how many stored responses were removed.
    pub async fn purge_matching(&'static self, what: &Purge) -> usize {
        let victims = self.index.lock().await.select(what);
        let span = Span::inactive();
        let handle = span.handle();
        let mut removed = 0;
        for (_, compact) in victims {
            match self
                .purge(
                    PurgeTarget::Active(&compact),
                    PurgeType::Invalidation,
                    &handle,
                )
                .await
            {
                Ok(PurgeOutcome::Purged(_)) => {
                    self.eviction
                        .remove(CacheEntryKeyRef::from_entry_id(&compact, None));
                    removed += 1;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cache purge failed"),
            }
        }
        removed
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
        let inner = self.inner.get_miss_handler(key, meta, trace).await?;
        // Headers count towards the byte cap too, not only the body.
        let header_bytes = meta
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + 64;
        Ok(Box::new(TrackedMiss {
            inner: Some(inner),
            storage: self,
            hash: key.combined(),
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
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let mut index = self.index.lock().await;
        let outcome = self.inner.purge(target, purge_type, trace).await?;
        if matches!(outcome, PurgeOutcome::Purged(_)) {
            index.remove(&target.key().combined());
            self.objects.store(index.entries.len(), Ordering::Relaxed);
            if matches!(purge_type, PurgeType::Eviction) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(outcome)
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let _index = self.index.lock().await;
        self.inner.expire(target, trace).await
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        // The in-memory store panics on a missing entry; a purge or eviction may have
        // removed it while this revalidation was in flight. The index lock orders the two.
        let index = self.index.lock().await;
        if !index.entries.contains_key(&key.combined()) {
            return Ok(false);
        }
        self.inner.update_meta(key, meta, trace).await
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
        let mut index = self.storage.index.lock().await;
        let finished = inner.finish().await?;
        if let Some(entry) = self.entry.take() {
            index.insert(std::mem::take(&mut self.hash), entry);
            self.storage
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
