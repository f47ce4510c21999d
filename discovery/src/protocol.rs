//! Owns the control-plane stream format shared by the control-plane server and
//! client: newline-delimited JSON, one [`Message`] per line. The wire types name no
//! module above them, so both ends depend on this one and not on each other.
//!
//! A subscriber first receives a full `snapshot` (unless it resumed with `since` and
//! the server still has every change after that version), then one `update` per
//! published snapshot carrying only the Services that changed or disappeared, and a
//! `heartbeat` while nothing changes so a dead connection is noticed. Each update names
//! the version it applies to (`base`); a client whose version differs reconnects with
//! `since` rather than apply it. `epoch` changes when the server restarts, so versions
//! from an earlier run are never mistaken for current ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::snapshot::{Service, ServiceKey, Snapshot};

/// Path of the stream; query `since=<version>&epoch=<epoch>` to resume.
pub const STREAM_PATH: &str = "/v1/stream";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Snapshot {
        epoch: String,
        version: u64,
        services: BTreeMap<ServiceKey, Arc<Service>>,
    },
    Update {
        epoch: String,
        /// The version this update applies to.
        base: u64,
        version: u64,
        /// Services added or changed, in full.
        #[serde(default)]
        changed: BTreeMap<ServiceKey, Arc<Service>>,
        /// Services that no longer exist.
        #[serde(default)]
        removed: Vec<ServiceKey>,
    },
    Heartbeat {
        epoch: String,
        version: u64,
        /// How long the server has been cut off from its own source (the API server),
        /// so subscribers report the age of what they route with; absent while healthy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_outage_seconds: Option<f64>,
    },
}

/// The difference from `old` to `new`; unchanged Services (the same `Arc`, or equal)
/// are left out.
pub fn diff(epoch: &str, old: &Snapshot, new: &Snapshot) -> Message {
    let changed = new
        .services
        .iter()
        .filter(|(key, svc)| {
            old.services
                .get(*key)
                .is_none_or(|o| !Arc::ptr_eq(o, svc) && **o != ***svc)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed = old
        .services
        .keys()
        .filter(|k| !new.services.contains_key(*k))
        .cloned()
        .collect();
    Message::Update {
        epoch: epoch.to_owned(),
        base: old.version,
        version: new.version,
        changed,
        removed,
    }
}

/// `base` with `changed` and `removed` applied, keeping `base`'s `Arc` for every
/// Service the update does not name.
pub fn apply(
    base: &Snapshot,
    version: u64,
    changed: BTreeMap<ServiceKey, Arc<Service>>,
    removed: &[ServiceKey],
) -> Snapshot {
    let mut services = base.services.clone();
    for key in removed {
        services.remove(key);
    }
    services.extend(changed);
    Snapshot {
        epoch: base.epoch.clone(),
        version,
        services,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ServicePort;

    fn svc(port: u16) -> Arc<Service> {
        Arc::new(Service {
            ports: vec![ServicePort {
                name: "http".into(),
                port,
            }],
            backends: BTreeMap::new(),
        })
    }

    #[test]
    fn a_diff_applied_to_its_base_gives_the_new_snapshot() {
        let (a, b, c) = (
            ServiceKey::new("ns", "a"),
            ServiceKey::new("ns", "b"),
            ServiceKey::new("ns", "c"),
        );
        let shared = svc(1);
        let old = Snapshot {
            epoch: "".into(),
            version: 4,
            services: BTreeMap::from([(a.clone(), shared.clone()), (b.clone(), svc(2))]),
        };
        let new = Snapshot {
            epoch: "".into(),
            version: 5,
            services: BTreeMap::from([(a.clone(), shared), (c.clone(), svc(3))]),
        };
        let msg = diff("e", &old, &new);
        let text = serde_json::to_string(&msg).unwrap();
        assert!(text.starts_with(r#"{"type":"update""#), "{text}");
        let Message::Update {
            base,
            version,
            changed,
            removed,
            ..
        } = serde_json::from_str(&text).unwrap()
        else {
            panic!("not an update: {text}")
        };
        assert_eq!((base, version), (4, 5));
        assert_eq!(changed.keys().collect::<Vec<_>>(), vec![&c]);
        assert_eq!(removed, vec![b]);
        let rebuilt = apply(&old, version, changed, &removed);
        assert_eq!(rebuilt, new);
        assert!(Arc::ptr_eq(&rebuilt.services[&a], &old.services[&a]));
    }
}
