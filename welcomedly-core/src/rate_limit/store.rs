//! The local limiter's state: one bounded, sharded map per policy from key fingerprint to TAT.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::key::Key;
use super::quota::{Gcra, GcraOutcome};

/// Keys are stored as 64-bit fingerprints from a randomly seeded hash: fixed-size entries, no
/// allocation per key, and a seed an attacker cannot know. Two keys of one policy share a bucket
/// with probability ~n²/2⁶⁵ (1 in 360 000 for a million live keys): a negligible, fail-safe error.
type Fingerprint = u64;

/// The fingerprint is already uniformly random; spread it so that neither the shard bits (the
/// top ones) nor a constant pattern reach the map's bucket index or control bytes.
#[derive(Default)]
struct SpreadHasher(u64);

impl Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<Fingerprint, u64, BuildHasherDefault<SpreadHasher>>;

/// A bounded map from key to TAT for one policy.
pub(crate) struct KeyedStore {
    shards: Box<[Mutex<Map>]>,
    shard_shift: u32,
    shard_mask: usize,
    cap_per_shard: usize,
    seed: foldhash::fast::RandomState,
    evicted: AtomicU64,
}

impl KeyedStore {
    /// A store holding at most about `max_keys` keys.
    pub(crate) fn new(max_keys: usize) -> Self {
        // About a thousand keys per shard: sweeps stay short, contention stays low.
        let shards = (max_keys / 1024).clamp(1, 64).next_power_of_two().min(64);
        let cap_per_shard = max_keys.div_ceil(shards).max(1);
        Self {
            shards: (0..shards).map(|_| Mutex::new(Map::default())).collect(),
            shard_shift: 64 - shards.trailing_zeros(),
            shard_mask: shards - 1,
            cap_per_shard,
            seed: foldhash::fast::RandomState::default(),
            evicted: AtomicU64::new(0),
        }
    }

    pub(crate) fn fingerprint(&self, key: &Key) -> Fingerprint {
        match key {
            // The most common key, hashed as one word instead of the derived field by field
            // (two discriminants, a length and four bytes). Bit 32 keeps these words apart from
            // the small integers that keys without data hash to.
            Key::Ip(IpAddr::V4(ip)) => self.seed.hash_one(u64::from(ip.to_bits()) | 1 << 32),
            _ => self.seed.hash_one(key),
        }
    }

    fn shard(&self, fp: Fingerprint) -> MutexGuard<'_, Map> {
        let i = fp.checked_shr(self.shard_shift).unwrap_or(0) as usize & self.shard_mask;
        // In bounds by construction: `shards.len()` is a power of two >= 1 and `shard_mask` is
        // `len - 1`.
        #[allow(clippy::indexing_slicing)]
        let shard = &self.shards[i];
        // A panic while holding the lock cannot leave a TAT half-written (it is one u64), so a
        // poisoned shard is still consistent: keep using it instead of failing every request.
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides without charging.
    pub(crate) fn peek(
        &self,
        fp: Fingerprint,
        gcra: &Gcra,
        now: impl FnOnce() -> u64,
    ) -> GcraOutcome {
        let map = self.shard(fp);
        gcra.decide(map.get(&fp).copied(), now())
    }

    /// Decides and, when admitted, charges — under one lock and, for a known key, one lookup.
    ///
    /// `now` is read under the key's lock: two requests for one key are decided in the order
    /// of their clock readings, so one that read the clock first but took the lock second is
    /// never refused for a "future" the other one's reading made (at a full burst, any
    /// inversion refused it: a spurious 429 for two concurrent requests).
    pub(crate) fn check_and_charge(
        &self,
        fp: Fingerprint,
        gcra: &Gcra,
        now: impl FnOnce() -> u64,
    ) -> GcraOutcome {
        let mut map = self.shard(fp);
        let now = now();
        if let Some(tat) = map.get_mut(&fp) {
            let outcome = gcra.decide(Some(*tat), now);
            if outcome.allowed {
                *tat = outcome.new_tat;
            }
            return outcome;
        }
        let outcome = gcra.decide(None, now);
        if outcome.allowed {
            self.insert(&mut map, fp, outcome.new_tat, now);
        }
        outcome
    }

    /// Gives back one admitted request's charge ([`Gcra::refund`]). A key evicted meanwhile has
    /// nothing to give back.
    pub(crate) fn refund(&self, fp: Fingerprint, gcra: &Gcra, now: u64) {
        let mut map = self.shard(fp);
        if let Some(tat) = map.get_mut(&fp) {
            *tat = gcra.refund(*tat, now);
        }
    }

    /// Inserts a key that is not in the map, making room first when the shard is full.
    fn insert(&self, map: &mut Map, fp: Fingerprint, tat: u64, now: u64) {
        if map.len() >= self.cap_per_shard {
            self.make_room(map, now);
        }
        map.insert(fp, tat);
    }

    /// Frees at least an eighth of the shard, so the O(n) work here is amortised over the next
    /// n/8 insertions: first every expired key (its TAT is in the past, so it is
    /// indistinguishable from a new key), then, under a flood of live keys, the keys whose TAT is
    /// nearest (the least limited: forgetting them costs the least accuracy).
    fn make_room(&self, map: &mut Map, now: u64) {
        let before = map.len();
        map.retain(|_, tat| *tat > now);
        let target = self.cap_per_shard - (self.cap_per_shard / 8).max(1);
        if map.len() > target {
            let mut tats: Vec<u64> = map.values().copied().collect();
            let cut = map.len() - target;
            let (_, threshold, _) = tats.select_nth_unstable(cut - 1);
            let threshold = *threshold;
            let mut to_drop = cut;
            map.retain(|_, tat| {
                if to_drop > 0 && *tat <= threshold {
                    to_drop -= 1;
                    false
                } else {
                    true
                }
            });
            self.evicted
                .fetch_add((before - map.len()) as u64, Ordering::Relaxed);
        }
    }

    /// Keys currently held (expired ones included until swept).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Live keys dropped to stay within the bound, since creation.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for KeyedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStore")
            .field("shards", &self.shards.len())
            .field("cap_per_shard", &self.cap_per_shard)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Quota;
    use std::net::{IpAddr, Ipv4Addr};

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound() {
        let store = KeyedStore::new(10_000);
        let g = Quota::per_minute(5).gcra().unwrap();
        // One million distinct sources within one minute: every key stays live.
        for i in 0..1_000_000u32 {
            let key = Key::Ip(IpAddr::V4(Ipv4Addr::from(i)));
            let fp = store.fingerprint(&key);
            assert!(
                store
                    .check_and_charge(fp, &g, || u64::from(i) * 1000)
                    .allowed
            );
        }
        assert!(
            store.len() <= 10_000 + store.shards.len(),
            "{}",
            store.len()
        );
        assert!(store.evicted() >= 990_000 - 10_000);
    }

    #[test]
    fn expired_keys_are_swept_before_live_ones_are_dropped() {
        let store = KeyedStore::new(100);
        let g = Quota::per_second(1).gcra().unwrap();
        let limited = store.fingerprint(&Key::Global);
        assert!(store.check_and_charge(limited, &g, || 0).allowed);
        // 99 others that expire after one second.
        for i in 0..99u32 {
            let fp = store.fingerprint(&Key::Ip(IpAddr::V4(Ipv4Addr::from(i))));
            store.check_and_charge(fp, &g, || 0);
        }
        // Two seconds later the limited key is charged again (live), and new keys push out only
        // the expired ones.
        assert!(store.check_and_charge(limited, &g, || 2 * SEC).allowed);
        for i in 1000..1050u32 {
            let fp = store.fingerprint(&Key::Ip(IpAddr::V4(Ipv4Addr::from(i))));
            store.check_and_charge(fp, &g, || 2 * SEC);
        }
        assert_eq!(store.evicted(), 0);
        assert!(!store.peek(limited, &g, || 2 * SEC).allowed);
    }

    #[test]
    fn peek_does_not_charge() {
        let store = KeyedStore::new(10);
        let g = Quota::per_minute(1).gcra().unwrap();
        let fp = store.fingerprint(&Key::Global);
        for _ in 0..10 {
            assert!(store.peek(fp, &g, || 0).allowed);
        }
        assert!(store.check_and_charge(fp, &g, || 0).allowed);
        assert!(!store.peek(fp, &g, || 0).allowed);
        store.refund(fp, &g, 0);
        assert!(store.peek(fp, &g, || 0).allowed);
    }
}
