//! The fake API server's object store: current objects, one global increasing
//! `resourceVersion`, and a bounded history of change events from which watches
//! replay and consistent list pages are rebuilt (as etcd and the watch cache do).
//!
//! `compacted` is the oldest resourceVersion the history can still serve: a watch
//! or a paginated list from an older version gets `410 Expired`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use super::resources::{RESOURCES, Resource};

/// Objects are ordered by resource, then namespace, then name: the order the API
/// server lists them in (it follows the etcd key `/registry/RESOURCE/NS/NAME`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub resource: usize,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn resource(&self) -> &'static Resource {
        &RESOURCES[self.resource]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: Key,
    /// The object after the change (for DELETED: its last state, at the deletion's version).
    pub object: Arc<Value>,
    /// The object before the change, to undo it and to tell selector transitions.
    pub prev: Option<Arc<Value>>,
}

/// Why a write was refused, as the API reports it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriteError {
    AlreadyExists,
    NotFound,
    Conflict,
}

#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    compacted: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Event>,
    history_limit: usize,
}

/// Metadata the server owns: ignored when deciding whether a write changed anything.
const SERVER_FIELDS: &[&str] = &["resourceVersion", "uid", "creationTimestamp", "generation"];

fn without_server_fields(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_FIELDS {
            meta.remove(*field);
        }
    }
    copy
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        // Real clusters never hand out small versions; starting high keeps "0" special.
        let start = 1000;
        Self {
            rv: start,
            compacted: start,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
        }
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    pub fn get(&self, key: &Key) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    /// Creates (`create_only`), replaces (`must_exist`) or upserts one object.
    /// Returns the resulting resourceVersion; an unchanged object keeps its version
    /// and emits nothing, as the API server's no-op updates do.
    pub fn write(
        &mut self,
        key: Key,
        mut object: Value,
        create_only: bool,
        must_exist: bool,
    ) -> Result<(u64, Arc<Value>), WriteError> {
        if key.resource().namespaced
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("namespace".into(), json!(key.namespace));
        }
        let prev = self.objects.get(&key).cloned();
        match (&prev, create_only, must_exist) {
            (Some(_), true, _) => return Err(WriteError::AlreadyExists),
            (None, _, true) => return Err(WriteError::NotFound),
            _ => {}
        }
        if let Some(prev) = &prev {
            // Optimistic concurrency: a stated resourceVersion must be the current one.
            let stated = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            let current = prev
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            if must_exist && stated.is_some() && stated != current {
                return Err(WriteError::Conflict);
            }
            if without_server_fields(prev) == without_server_fields(&object) {
                return Ok((parse_rv(prev), prev.clone()));
            }
        }
        let rv = self.rv + 1;
        let (uid, created, generation) = match &prev {
            Some(p) => (
                p.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                p.pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or(Value::Null),
                p.pointer("/metadata/generation")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
                    + 1,
            ),
            None => (
                json!(uuid::Uuid::new_v4().to_string()),
                json!(now_rfc3339()),
                1,
            ),
        };
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert("uid".into(), uid);
            meta.insert("creationTimestamp".into(), created);
            meta.insert("generation".into(), json!(generation));
        }
        let object = Arc::new(object);
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.objects.insert(key.clone(), object.clone());
        self.push(Event {
            rv,
            kind,
            key,
            object: object.clone(),
            prev,
        });
        Ok((rv, object))
    }

    /// Removes one object; the DELETED event carries its last state at a new version.
    pub fn delete(&mut self, key: &Key) -> Option<Arc<Value>> {
        let prev = self.objects.remove(key)?;
        let rv = self.rv + 1;
        let mut last = (*prev).clone();
        if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let last = Arc::new(last);
        self.push(Event {
            rv,
            kind: EventType::Deleted,
            key: key.clone(),
            object: last.clone(),
            prev: Some(prev),
        });
        Some(last)
    }

    /// Replaces (or adds) one object with no event in the history, as an API server
    /// restored from a different state serves it: a list shows it, a watch resuming
    /// from an earlier version never hears of it. Versions handed out before stay
    /// valid (the history is kept).
    pub fn write_silently(&mut self, key: Key, mut object: Value) {
        let rv = self.rv + 1;
        let prev = self.objects.get(&key);
        let uid = prev
            .and_then(|p| p.pointer("/metadata/uid").cloned())
            .unwrap_or_else(|| json!(uuid::Uuid::new_v4().to_string()));
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            if key.resource().namespaced {
                meta.insert("namespace".into(), json!(key.namespace));
            }
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert("uid".into(), uid);
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        }
        self.rv = rv;
        self.objects.insert(key, Arc::new(object));
    }

    /// Removes one object with no event (see [`Store::write_silently`]).
    pub fn delete_silently(&mut self, key: &Key) -> bool {
        self.objects.remove(key).is_some()
    }

    fn push(&mut self, event: Event) {
        self.rv = event.rv;
        self.history.push_back(event);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Forgets all history: only the current version can still be watched from.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// The events after `rv`, or `None` when the history no longer reaches back that far.
    pub fn events_after(&self, rv: u64) -> Option<Vec<Event>> {
        if rv < self.compacted {
            return None;
        }
        // Versions increase along the history: find the first later one directly.
        let start = self.history.partition_point(|e| e.rv <= rv);
        Some(self.history.range(start..).cloned().collect())
    }

    /// Every object of `resource` as it was at version `rv` (current objects with the
    /// later history undone), or `None` when that version is compacted away.
    pub fn objects_at(&self, resource: usize, rv: u64) -> Option<Vec<(Key, Arc<Value>)>> {
        if rv < self.compacted || rv > self.rv {
            return None;
        }
        let mut view: BTreeMap<Key, Arc<Value>> = self
            .objects
            .iter()
            .filter(|(k, _)| k.resource == resource)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for event in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if event.key.resource != resource {
                continue;
            }
            match &event.prev {
                Some(prev) => view.insert(event.key.clone(), prev.clone()),
                None => view.remove(&event.key),
            };
        }
        Some(view.into_iter().collect())
    }
}

pub(crate) fn parse_rv(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            resource: 1,
            namespace: "x".into(),
            name: name.into(),
        }
    }

    fn obj(name: &str, v: u32) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"v": v}})
    }

    #[test]
    fn history_replays_undoes_and_expires() {
        let mut s = Store::new(3);
        let start = s.rv();
        let (r1, _) = s.write(key("a"), obj("a", 1), false, false).unwrap();
        let (r2, _) = s.write(key("a"), obj("a", 2), false, false).unwrap();
        // The same content again is a no-op: same version, no event.
        assert_eq!(s.write(key("a"), obj("a", 2), false, false).unwrap().0, r2);
        let (_, b) = s.write(key("b"), obj("b", 1), false, false).unwrap();
        assert_eq!(b.pointer("/metadata/namespace").unwrap(), "x");
        assert_eq!(s.events_after(start).unwrap().len(), 3);
        let at_r1 = s.objects_at(1, r1).unwrap();
        assert_eq!(at_r1.len(), 1);
        assert_eq!(at_r1[0].1.pointer("/spec/v").unwrap(), 1);
        s.delete(&key("a")).unwrap();
        // Limit 3: the first event fell out, so its version can no longer be served.
        assert!(s.events_after(start).is_none());
        assert_eq!(s.events_after(r1).unwrap().len(), 3);
        assert_eq!(s.objects_at(1, r2).unwrap().len(), 1);
        s.compact();
        assert!(s.objects_at(1, r2).is_none());
        assert!(s.events_after(s.rv()).unwrap().is_empty());
        assert_eq!(
            s.write(key("b"), obj("b", 1), true, false).unwrap_err(),
            WriteError::AlreadyExists
        );
        assert_eq!(
            s.write(key("c"), obj("c", 1), false, true).unwrap_err(),
            WriteError::NotFound
        );
    }
}
