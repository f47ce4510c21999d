//! Owns ASCII case-folded hash keys for `case_insensitive` exact paths and prefix
//! segments: stored as written, hashed and compared ignoring ASCII case, and looked up
//! with a borrowed `&str` ([`Folded`]) so that a lookup never allocates a lower-cased
//! copy.

use std::hash::{Hash, Hasher};

/// A stored key, compared ignoring ASCII case.
#[derive(Clone, Debug)]
pub(super) struct FoldedKey(pub(super) Box<str>);

/// A borrowed lookup key, equivalent to a [`FoldedKey`] of the same letters.
pub(super) struct Folded<'a>(pub(super) &'a str);

fn hash_folded<H: Hasher>(s: &str, state: &mut H) {
    for b in s.bytes() {
        state.write_u8(b.to_ascii_lowercase());
    }
    // As `str` does: a terminator, so that ("ab", "c") and ("a", "bc") differ.
    state.write_u8(0xff);
}

impl Hash for FoldedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_folded(&self.0, state);
    }
}

impl PartialEq for FoldedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for FoldedKey {}

impl Hash for Folded<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_folded(self.0, state);
    }
}

impl indexmap::Equivalent<FoldedKey> for Folded<'_> {
    fn equivalent(&self, key: &FoldedKey) -> bool {
        self.0.eq_ignore_ascii_case(&key.0)
    }
}

/// Segment-boundary prefix test ignoring ASCII case (see `pattern::prefix_matches`).
pub fn prefix_matches_folded(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    let (p, q) = (prefix.as_bytes(), path.as_bytes());
    q.len() >= p.len()
        && q[..p.len()].eq_ignore_ascii_case(p)
        && (q.len() == p.len() || q[p.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;

    #[test]
    fn folded_lookup() {
        let mut m: IndexMap<FoldedKey, u32> = IndexMap::new();
        m.insert(FoldedKey("/Admin".into()), 1);
        assert_eq!(m.get(&Folded("/ADMIN")), Some(&1));
        assert_eq!(m.get(&Folded("/admin")), Some(&1));
        assert_eq!(m.get(&Folded("/admins")), None);
        assert!(prefix_matches_folded("/Admin", "/aDmin/x"));
        assert!(prefix_matches_folded("/admin", "/ADMIN"));
        assert!(!prefix_matches_folded("/admin", "/ADMINx"));
        assert!(!prefix_matches_folded("/admin", "/adm"));
    }
}
