//! Owns the verified-token cache of one provider: a token already verified costs one
//! hash of its bytes and one lookup. Entries end at the token's `exp` and never live
//! longer than the configured TTL; an entry verified with an older key generation is a
//! miss, so a key change invalidates everything at once. Bounded: a full shard first
//! drops its expired entries, then an arbitrary one.
//!
//! The key is a SipHash (random per process) of the whole token; the stored token is
//! compared on a hit, so a hash collision can never let another token through.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

const SHARDS: usize = 16;

struct Entry {
    token: Box<str>,
    claims: Arc<Map<String, Value>>,
    /// Unix seconds after which the entry is dead.
    expires_at: i64,
    generation: u64,
}

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    hasher: RandomState,
    per_shard: usize,
    ttl_secs: i64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl TokenCache {
    /// `max_entries` 0 turns the cache off.
    pub fn new(max_entries: usize, ttl_secs: u64) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: max_entries.div_ceil(SHARDS),
            ttl_secs: ttl_secs.min(i64::MAX as u64) as i64,
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<HashMap<u64, Entry>> {
        &self.shards[(hash as usize) % SHARDS]
    }

    /// The claims of `token` if it was verified with key `generation` and is still live.
    pub fn get(&self, token: &str, generation: u64, now: i64) -> Option<Arc<Map<String, Value>>> {
        if self.per_shard == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(token.as_bytes());
        let shard = self.shard(hash).lock().ok()?;
        let e = shard.get(&hash)?;
        (e.generation == generation && now < e.expires_at && &*e.token == token)
            .then(|| Arc::clone(&e.claims))
    }

    /// Remember a verified token until `exp` (or the TTL, whichever is first).
    pub fn insert(
        &self,
        token: &str,
        claims: Arc<Map<String, Value>>,
        exp: Option<i64>,
        generation: u64,
        now: i64,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let until = now.saturating_add(self.ttl_secs);
        let expires_at = exp.map_or(until, |e| e.min(until));
        if expires_at <= now {
            return;
        }
        let hash = self.hasher.hash_one(token.as_bytes());
        let Ok(mut shard) = self.shard(hash).lock() else {
            return;
        };
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            shard.retain(|_, e| now < e.expires_at && e.generation == generation);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(
            hash,
            Entry {
                token: token.into(),
                claims,
                expires_at,
                generation,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Arc<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("sub".into(), "u1".into());
        Arc::new(m)
    }

    #[test]
    fn hit_until_exp_and_ttl() {
        let c = TokenCache::new(100, 60);
        c.insert("t1", claims(), Some(1_000), 1, 900);
        assert!(c.get("t1", 1, 950).is_some());
        assert!(c.get("t1", 1, 1_000).is_none(), "ends at exp");
        c.insert("t2", claims(), Some(10_000), 1, 900);
        assert!(c.get("t2", 1, 959).is_some());
        assert!(c.get("t2", 1, 960).is_none(), "never longer than the TTL");
        c.insert("t3", claims(), None, 1, 900);
        assert!(c.get("t3", 1, 959).is_some());
    }

    #[test]
    fn key_change_invalidates() {
        let c = TokenCache::new(100, 60);
        c.insert("t1", claims(), Some(1_000), 1, 900);
        assert!(c.get("t1", 2, 901).is_none());
    }

    #[test]
    fn other_token_misses() {
        let c = TokenCache::new(100, 60);
        c.insert("t1", claims(), Some(1_000), 1, 900);
        assert!(c.get("t1x", 1, 901).is_none());
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(32, 600);
        for i in 0..1_000 {
            c.insert(&format!("token-{i}"), claims(), None, 1, 0);
        }
        assert!(c.len() <= 32, "{}", c.len());
        // The newest entry is always kept.
        assert!(c.get("token-999", 1, 1).is_some());
    }

    #[test]
    fn off() {
        let c = TokenCache::new(0, 600);
        c.insert("t1", claims(), None, 1, 0);
        assert!(c.get("t1", 1, 1).is_none());
    }
}
