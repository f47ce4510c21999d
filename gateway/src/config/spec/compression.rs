//! Builds `compression:` blocks (routes and listeners) into the compression feature's
//! `CompressionSpec`: algorithms in order of preference, levels checked against each
//! encoder's range, content-type patterns.

use std::sync::Arc;

use super::policies::CompressionChoice;
use super::{Errors, wire};
use crate::compression::{Algo, CompressionSpec, DEFAULT_TYPES, TypePattern};

pub(super) fn compression(e: &mut Errors, path: &str, c: &wire::Compression) -> CompressionChoice {
    if c.enabled == Some(false) {
        if !c.algorithms.is_empty()
            || c.min_bytes.is_some()
            || !c.content_types.is_empty()
            || c.level.is_some()
        {
            e.push(path, "enabled: false takes no other settings");
        }
        return CompressionChoice::Off;
    }
    let before = e.len();
    let mut algos: Vec<Algo> = Vec::new();
    for (i, raw) in c.algorithms.iter().enumerate() {
        match Algo::parse(raw) {
            Some(a) if algos.contains(&a) => e.push(
                format!("{path}.algorithms[{i}]"),
                format!("{raw:?} is listed twice"),
            ),
            Some(a) => algos.push(a),
            None => e.push(
                format!("{path}.algorithms[{i}]"),
                format!("unknown algorithm {raw:?}: use zstd, br or gzip"),
            ),
        }
    }
    if c.algorithms.is_empty() {
        algos = vec![Algo::Zstd, Algo::Brotli, Algo::Gzip];
    }
    let level_of = |a: Algo, e: &mut Errors| -> u32 {
        let (lo, hi, default) = a.levels();
        let (given, p) = match &c.level {
            None => return default,
            Some(wire::CompressionLevel::All(n)) => (Some(*n), format!("{path}.level")),
            Some(wire::CompressionLevel::Each(m)) => (
                m.iter()
                    .find(|(k, _)| Algo::parse(k) == Some(a))
                    .map(|(_, v)| *v),
                format!("{path}.level.{}", a.token()),
            ),
        };
        match given {
            None => default,
            Some(n) if (lo..=hi).contains(&n) => n,
            Some(n) => {
                e.push(p, format!("{} level {n} must be {lo}-{hi}", a.token()));
                default
            }
        }
    };
    let algorithms: Vec<(Algo, u32)> = algos.iter().map(|a| (*a, level_of(*a, e))).collect();
    if let Some(wire::CompressionLevel::Each(m)) = &c.level {
        for k in m.keys() {
            if !Algo::parse(k).is_some_and(|a| algos.contains(&a)) {
                e.push(
                    format!("{path}.level.{k}"),
                    format!("{k:?} is not one of this block's algorithms"),
                );
            }
        }
    }
    let types: Vec<&str> = if c.content_types.is_empty() {
        DEFAULT_TYPES.to_vec()
    } else {
        c.content_types.iter().map(String::as_str).collect()
    };
    let content_types = types
        .iter()
        .enumerate()
        .filter_map(|(i, t)| e.take(format!("{path}.content_types[{i}]"), TypePattern::parse(t)))
        .collect();
    if e.len() != before {
        return CompressionChoice::Inherit;
    }
    CompressionChoice::On(Arc::new(CompressionSpec {
        algorithms,
        min_bytes: c.min_bytes.unwrap_or(1024),
        content_types,
    }))
}
