//! Builds the `consumers` section into the API-key feature's `ConsumerSpec`s: names and
//! groups, key digests inline and from `keys_file`s (read here, so a bad file is a
//! config error and a reload keeps the running keys). Raw keys are refused outright.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{Errors, route_id_ok, wire};
use crate::apikey::{ConsumerSpec, Digest, parse_digest, parse_keys_file};

/// The consumers, and the key files they read (watched for changes).
pub(super) fn consumers(
    e: &mut Errors,
    list: &[wire::Consumer],
) -> (Vec<ConsumerSpec>, Vec<PathBuf>) {
    let mut out = Vec::new();
    let mut files = Vec::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut owners: HashMap<Digest, usize> = HashMap::new();
    for (i, c) in list.iter().enumerate() {
        let path = format!("consumers[{i}]");
        let before = e.len();
        if !route_id_ok(&c.name) {
            e.push(
                format!("{path}.name"),
                format!(
                    "consumer name {:?} must be 1-128 of A-Z a-z 0-9 - _ . :",
                    c.name
                ),
            );
        }
        if let Some(first) = names.insert(c.name.as_str(), i) {
            e.push(
                format!("{path}.name"),
                format!(
                    "duplicate consumer {:?} (first defined by consumers[{first}])",
                    c.name
                ),
            );
        }
        for (j, g) in c.groups.iter().enumerate() {
            if !route_id_ok(g) {
                e.push(
                    format!("{path}.groups[{j}]"),
                    format!("group {g:?} must be 1-128 of A-Z a-z 0-9 - _ . :"),
                );
            }
        }
        let mut keys = Vec::new();
        for (j, k) in c.keys.iter().enumerate() {
            if let Some(d) = e.take(format!("{path}.keys[{j}]"), parse_digest(k)) {
                keys.push(d);
            }
        }
        if let Some(file) = &c.keys_file {
            files.push(PathBuf::from(file));
            let p = format!("{path}.keys_file");
            let text = e.take(
                p.clone(),
                std::fs::read_to_string(file).map_err(|err| format!("cannot read {file:?}: {err}")),
            );
            if let Some(text) = text
                && let Some(more) = e.take(
                    p,
                    parse_keys_file(&text).map_err(|m| format!("{file:?}: {m}")),
                )
            {
                keys.extend(more);
            }
        }
        for d in &keys {
            match owners.get(d) {
                Some(owner) if *owner != i => e.push(
                    &path,
                    format!(
                        "a key of {:?} is also a key of consumers[{owner}]: a key identifies one consumer",
                        c.name
                    ),
                ),
                _ => {
                    owners.insert(*d, i);
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        if e.len() == before {
            out.push(ConsumerSpec {
                name: c.name.as_str().into(),
                groups: c.groups.clone(),
                keys,
                disabled: c.disabled,
            });
        }
    }
    (out, files)
}
