//! Owns consistent hashing: a ketama-style ring of virtual nodes, with optional bounded
//! load (Mirrokni et al., "Consistent Hashing with Bounded Loads"): a key goes to the
//! first endpoint clockwise whose in-flight count is under `factor` x the average.
//!
//! Hashes are FNV-1a with a splitmix64 finalizer: fixed, so every gateway replica maps a
//! key to the same endpoint, and independent of the Rust version.

use super::Endpoint;

/// Virtual nodes per unit of weight (weights are first divided by their gcd). The count
/// must not depend on how many endpoints there are, or adding one would reshuffle the
/// others' points; 400 keeps each endpoint's share within a few percent of its weight.
const POINTS_PER_WEIGHT: u64 = 400;
/// Ring size cap (8 bytes a point); huge weight sums are scaled down to fit.
const MAX_POINTS: u64 = 2 << 20;

/// A stable 64-bit hash of `bytes`.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finalizer: FNV alone clusters similar keys.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[derive(Debug)]
pub struct HashRing {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u32, u32)>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl HashRing {
    /// Points are derived from each endpoint's address, not its position, so an endpoint
    /// keeps its points when others come and go.
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.weight.max(1)))
            .collect();
        let g = weights.iter().copied().fold(0, gcd).max(1);
        let total: u64 = weights.iter().map(|w| w / g * POINTS_PER_WEIGHT).sum();
        let scale = |w: u64| {
            let n = w / g * POINTS_PER_WEIGHT;
            if total > MAX_POINTS {
                (n * MAX_POINTS / total).max(1)
            } else {
                n
            }
        };
        let mut points = Vec::with_capacity(total.min(MAX_POINTS) as usize);
        let mut key = Vec::new();
        for (i, (e, w)) in endpoints.iter().zip(&weights).enumerate() {
            for v in 0..scale(*w) {
                key.clear();
                key.extend_from_slice(e.address.as_bytes());
                key.push(b'#');
                key.extend_from_slice(&v.to_le_bytes());
                points.push(((hash64(&key) >> 32) as u32, i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint for `key`: the first `usable` one clockwise from the key. With
    /// `bounded_load = Some(c)`, also skip endpoints whose in-flight count is at or above
    /// `ceil(c x (in_flight + 1) / n)`, `in_flight` being the pool's total.
    pub fn find(
        &self,
        key: u64,
        endpoints: &[Endpoint],
        bounded_load: Option<f64>,
        in_flight: u64,
        usable: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let key = (key >> 32) as u32;
        let start = self.points.partition_point(|(p, _)| *p < key) % self.points.len();
        let cap = bounded_load
            .map(|factor| (factor * (in_flight + 1) as f64 / endpoints.len() as f64).ceil() as u32);
        let mut fallback = None;
        // Walk clockwise; every endpoint appears within one full turn.
        for i in 0..self.points.len() {
            let idx = self.points[(start + i) % self.points.len()].1 as usize;
            if !usable(idx) {
                continue;
            }
            match cap {
                Some(cap) if endpoints[idx].state.outstanding() >= cap => {
                    fallback.get_or_insert(idx);
                }
                _ => return Some(idx),
            }
        }
        fallback
    }
}
