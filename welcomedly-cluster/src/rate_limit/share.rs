//! Local-first shares: every instance keeps a small, fixed share of each key's cluster-wide
//! budget and spends it without asking Redis; the rest of the budget is the key's pool in Redis.
//!
//! A policy opted in ([`RedisRateLimitConfig::local_first`](super::RedisRateLimitConfig::local_first))
//! with a burst `B` and `I` live instances is split into `I` local shares of `s` tokens and a
//! pool of `B - I × s` tokens, each refilling at its part of the rate ([`Gcra::part`]): parts
//! whose tokens add up to the burst never admit together more than the whole, over any span of
//! time. So the limit holds without a Redis call for a key's first requests on an instance
//! (`s` of them, then one per `window / s`), which is what a flood of distinct keys (one client
//! address per request) is made of; a key busy on an instance spends its share, then asks the
//! pool as without local shares (with leases, if the policy leases too).
//!
//! `s = min(B / 64, B / (8 × I))`, at least 1 (a policy needs a burst of at least
//! [`LOCAL_FIRST_MIN_BURST`]): all shares together are at most an eighth of the burst. The
//! price is early refusal for a client whose requests all reach one instance: the other
//! instances' shares are out of its reach, at most `(I - 1) × s` tokens (2 of 100 on 3
//! instances).
//!
//! The split follows the live instance count (membership). The bound needs every instance to
//! use the same count: while they disagree (an instance joined and the others have not seen it
//! yet, a few milliseconds on the bus; an instance still starting, which uses the configured
//! count until membership feeds it), the keys may be admitted up to one share per instance
//! more. An instance that restarts forgets what it spent from its shares: up to `s` more per
//! key and restart. A share's table is bounded: when it is full of live entries a new key is
//! decided in the pool, never by evicting a spent share (which would hand it out again).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use welcomedly_core::rate_limit::backend::{Gcra, GcraOutcome, Key};

/// A share is at most the burst divided by this.
pub const LOCAL_FIRST_SHARE: u64 = 64;

/// All instances' shares together are at most the burst divided by this.
const ALL_SHARES: u64 = 8;

/// The smallest burst a local-first policy may have: one token per share on a single instance.
pub const LOCAL_FIRST_MIN_BURST: u64 = LOCAL_FIRST_SHARE;

/// Table shards (each its own lock).
const SHARDS: usize = 16;

/// A full shard is swept after at least `per_shard / SWEEP_EVERY` new keys found no room...
const SWEEP_EVERY: usize = 8;

/// ... or `SWEEP_PERIOD` (ns) after its last sweep: a trickle of new keys after a flood finds
/// the expired entries swept within this, while a flood pays at most one sweep per shard per
/// period (16 × 10 sweeps a second: a few milliseconds of CPU a second with the default table).
const SWEEP_PERIOD: u64 = 100_000_000;

/// A policy's quota split between this instance's share and the pool in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Split {
    /// This instance's share.
    pub(super) local: Gcra,
    /// The pool in Redis.
    pub(super) pool: Gcra,
}

/// The split of `whole` between `instances` local shares and the pool, or `None` when the burst
/// is too small for a share of at least one token per instance (then the whole quota is the
/// pool's).
pub(super) fn split(whole: Gcra, instances: u32) -> Option<Split> {
    let burst = whole.burst();
    let instances = u64::from(instances.max(1));
    let share = (burst / LOCAL_FIRST_SHARE).min(burst / (ALL_SHARES * instances));
    if share == 0 {
        return None;
    }
    Some(Split {
        local: whole.part(share),
        pool: whole.part(burst - instances * share),
    })
}

struct Shard {
    /// Key fingerprint → TAT (ns on this table's clock).
    map: HashMap<u64, u64, foldhash::fast::RandomState>,
    /// When the shard is full of live entries: no sweep before this (the earliest TAT in it),
    /// so a flood of new keys costs one sweep per expiry, not one per key.
    next_sweep: u64,
    /// New keys refused room since the last sweep. A sweep visits the whole shard: it waits
    /// for `per_shard / 8` of them (or [`SWEEP_PERIOD`] since the last one), so a flood pays
    /// at most 8 entry visits per request even when the entries expire one by one (each expiry
    /// freeing a single place).
    misses: usize,
    /// When the shard was last swept.
    last_sweep: u64,
}

/// One backend's local shares: per `(policy, key)` the TAT of this instance's share.
pub(super) struct Shares {
    /// Per policy index: whether it is local-first.
    policies: OnceLock<Box<[bool]>>,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    seed: foldhash::fast::RandomState,
    epoch: Instant,
    spent: AtomicU64,
    full: AtomicU64,
    /// Entries visited by sweeps since start (what a full table costs).
    swept: AtomicU64,
}

impl Shares {
    /// A table of at most about `cap` keys (0: no local shares).
    pub(super) fn new(cap: usize) -> Self {
        Self {
            policies: OnceLock::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        next_sweep: 0,
                        misses: 0,
                        last_sweep: 0,
                    })
                })
                .collect(),
            per_shard: cap.div_ceil(SHARDS),
            seed: foldhash::fast::RandomState::default(),
            epoch: Instant::now(),
            spent: AtomicU64::new(0),
            full: AtomicU64::new(0),
            swept: AtomicU64::new(0),
        }
    }

    /// Marks the local-first policies, per policy index (once, when the layer is built).
    pub(super) fn prepare(&self, policies: Box<[bool]>) {
        let _ = self.policies.get_or_init(|| policies);
    }

    /// Whether the policy at `index` is local-first.
    pub(super) fn is_local_first(&self, index: usize) -> bool {
        self.per_shard > 0
            && self
                .policies
                .get()
                .and_then(|p| p.get(index))
                .copied()
                .unwrap_or(false)
    }

    /// The table's fingerprint of `key` under the policy at `index`.
    pub(super) fn fingerprint(&self, index: usize, key: &Key) -> u64 {
        self.seed.hash_one((index, key))
    }

    /// Nanoseconds on the table's clock.
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard(&self, fp: u64) -> Option<MutexGuard<'_, Shard>> {
        let i = usize::try_from(fp % SHARDS as u64).unwrap_or(0);
        // A panic under the lock cannot leave a TAT half-written (one u64): keep using it.
        Some(
            self.shards
                .get(i)?
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Decides the request with fingerprint `fp` against this instance's share (`local`) at
    /// `now` and charges it when admitted. `None`: the key has no entry and the table has no
    /// room for one; the caller decides in the pool.
    pub(super) fn spend(&self, fp: u64, local: &Gcra, now: u64) -> Option<GcraOutcome> {
        let mut shard = self.shard(fp)?;
        if let Some(tat) = shard.map.get_mut(&fp) {
            let outcome = local.decide(Some(*tat), now);
            if outcome.allowed {
                *tat = outcome.new_tat;
                self.spent.fetch_add(1, Ordering::Relaxed);
            }
            return Some(outcome);
        }
        if shard.map.len() >= self.per_shard {
            let due = shard.misses >= self.per_shard / SWEEP_EVERY
                || now >= shard.last_sweep.saturating_add(SWEEP_PERIOD);
            if now < shard.next_sweep || !due {
                shard.misses = shard.misses.saturating_add(1);
                self.full.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            shard.misses = 0;
            shard.last_sweep = now;
            self.swept.fetch_add(
                u64::try_from(shard.map.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            // Expired entries are whole shares again: forgetting them changes nothing.
            shard.map.retain(|_, tat| *tat > now);
            if shard.map.len() >= self.per_shard {
                shard.next_sweep = shard.map.values().copied().min().unwrap_or(now);
                self.full.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let outcome = local.decide(None, now);
        if outcome.allowed {
            shard.map.insert(fp, outcome.new_tat);
            self.spent.fetch_add(1, Ordering::Relaxed);
        }
        Some(outcome)
    }

    /// Gives one admission's charge back to the share of `fp` (a policy charging by response
    /// status refunds the others).
    pub(super) fn refund(&self, fp: u64, local: &Gcra, now: u64) {
        if let Some(mut shard) = self.shard(fp)
            && let Some(tat) = shard.map.get_mut(&fp)
        {
            *tat = local.refund(*tat, now);
        }
    }

    /// Requests admitted from local shares, and keys decided in the pool because the table was
    /// full, since start.
    pub(super) fn stats(&self) -> (u64, u64) {
        (
            self.spent.load(Ordering::Relaxed),
            self.full.load(Ordering::Relaxed),
        )
    }

    /// Entries visited by the sweeps of full shards since start.
    #[cfg(test)]
    fn swept(&self) -> u64 {
        self.swept.load(Ordering::Relaxed)
    }

    /// Keys in the table (expired ones included until swept).
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use welcomedly_core::rate_limit::Quota;

    const SEC: u64 = 1_000_000_000;

    fn whole(per_minute: u32) -> Gcra {
        Quota::per_minute(per_minute).gcra().unwrap()
    }

    #[test]
    fn the_shares_and_the_pool_add_up_to_the_burst() {
        for (per_minute, instances, share) in [
            (100, 3, 1),
            (200, 3, 3),
            (6400, 3, 100),
            (6400, 40, 20),
            (64, 1, 1),
        ] {
            let s = split(whole(per_minute), instances).unwrap();
            assert_eq!(s.local.burst(), share, "{per_minute}/min on {instances}");
            assert_eq!(
                s.pool.burst() + u64::from(instances) * share,
                u64::from(per_minute)
            );
        }
        // Too small a burst for a token per instance: the pool is the whole.
        assert_eq!(split(whole(63), 1), None);
        assert_eq!(split(whole(100), 13), None);
    }

    #[test]
    fn a_share_admits_its_tokens_then_refills_at_its_part_of_the_rate() {
        let shares = Shares::new(64);
        shares.prepare(Box::new([true]));
        let s = split(whole(6400), 3).unwrap();
        let fp = shares.fingerprint(0, &Key::Global);
        let admitted = (0..150)
            .filter(|_| shares.spend(fp, &s.local, 0).unwrap().allowed)
            .count();
        assert_eq!(admitted, 100);
        // 100 tokens of 6 400 a minute refill one every 0.6 s.
        assert!(!shares.spend(fp, &s.local, SEC / 2).unwrap().allowed);
        assert!(shares.spend(fp, &s.local, SEC * 6 / 10).unwrap().allowed);
        // A refund gives the charge back.
        shares.refund(fp, &s.local, SEC * 6 / 10);
        assert!(shares.spend(fp, &s.local, SEC * 6 / 10).unwrap().allowed);
        assert!(!shares.spend(fp, &s.local, SEC * 6 / 10).unwrap().allowed);
        assert_eq!(shares.stats().0, 102);
    }

    #[test]
    fn a_full_table_sends_new_keys_to_the_pool_and_never_hands_a_spent_share_out_again() {
        let shares = Shares::new(SHARDS * 4);
        let s = split(whole(100), 3).unwrap();
        let mut spent = Vec::new();
        let mut refused_room = 0;
        for i in 0..1000u32 {
            let fp = shares.fingerprint(0, &Key::Ip(std::net::Ipv4Addr::from(i).into()));
            match shares.spend(fp, &s.local, 0) {
                Some(o) => {
                    assert!(o.allowed);
                    spent.push(fp);
                }
                None => refused_room += 1,
            }
        }
        assert!(shares.len() <= SHARDS * 4);
        assert!(refused_room > 0);
        assert_eq!(shares.stats(), (spent.len() as u64, refused_room));
        // Every key that spent its share is still refused here (not evicted and refilled).
        for fp in &spent {
            assert!(!shares.spend(*fp, &s.local, SEC).unwrap().allowed);
        }
        // Once the shares refill (a minute for 1 of 100 a minute), new keys find room again.
        let fp = shares.fingerprint(0, &Key::Global);
        assert!(shares.spend(fp, &s.local, 61 * SEC).unwrap().allowed);
    }

    /// A flood of distinct keys, each spending its share once, arriving twice as fast as a
    /// full table's shares expire (one by one, each on its own instant): the sweeps of the full
    /// shards visit at most 8 entries per request, while the table still takes new keys as
    /// places free up. (Swept at every expiry, each sweep freed one place and visited the
    /// whole shard: 15 visits per request here, about 1 000 with the default table.)
    #[test]
    fn a_flood_of_new_keys_on_a_full_table_costs_a_few_entry_visits_per_request() {
        const PER_SHARD: usize = 64;
        let shares = Shares::new(SHARDS * PER_SHARD);
        // 64 a second on one instance: a share of 1 token, whole again 1 s after its spend.
        let s = split(Quota::per_second(64).gcra().unwrap(), 1).unwrap();
        let capacity = (SHARDS * PER_SHARD) as u64;
        let gap = SEC / (2 * capacity);
        let requests = 40_000u64;
        let mut in_table = 0u64;
        for i in 0..requests {
            let key = Key::Ip(std::net::Ipv4Addr::from(u32::try_from(i).unwrap()).into());
            let fp = shares.fingerprint(0, &key);
            if let Some(o) = shares.spend(fp, &s.local, i * gap) {
                assert!(o.allowed, "a new key's share is whole");
                in_table += 1;
            }
            assert!(shares.len() <= SHARDS * PER_SHARD);
        }
        let visits = shares.swept();
        assert!(
            visits <= 8 * requests,
            "{visits} entries visited by sweeps for {requests} requests"
        );
        // Over the flood's span (about 19.5 table lifetimes) the table took at least half the
        // keys a perfectly swept one would have.
        let lifetimes = requests * gap / SEC;
        assert!(
            in_table >= lifetimes * capacity / 2,
            "only {in_table} keys got a share over {lifetimes} lifetimes of {capacity}"
        );
    }

    /// After a flood, a trickle: the table is full of shares that have all refilled, and a new
    /// key arriving now and then gets a share at once (swept a period after the last sweep),
    /// not after an eighth of the shard's size of keys sent to the pool.
    #[test]
    fn a_trickle_after_a_flood_finds_the_expired_entries_swept() {
        let shares = Shares::new(SHARDS * 64);
        let s = split(whole(100), 1).unwrap();
        let mut i = 0u32;
        while shares.stats().1 == 0 {
            let fp = shares.fingerprint(0, &Key::Ip(std::net::Ipv4Addr::from(i).into()));
            let _ = shares.spend(fp, &s.local, 0);
            i += 1;
        }
        // A minute later every share is whole again: each new key of the trickle, a second
        // apart, is admitted from its share.
        for j in 0..20u64 {
            let key = Key::Ip(std::net::Ipv4Addr::from(0x0A00_0000 + j as u32).into());
            let fp = shares.fingerprint(0, &key);
            let o = shares.spend(fp, &s.local, (61 + j) * SEC);
            assert!(o.is_some_and(|o| o.allowed), "trickle key {j}: {o:?}");
        }
    }
}
