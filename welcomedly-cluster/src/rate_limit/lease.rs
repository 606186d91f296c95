//! Leased local shares: an instance takes a slice of a hot key's cluster-wide budget from Redis
//! ([`script::LEASE`]) and spends it locally, without a Redis call per request.
//!
//! This module is the table of one backend's leases, pure bookkeeping on instants it is given
//! (so its tests run on virtual time); the backend makes the Redis calls. Per `(policy, key)`
//! the table holds one entry:
//!
//! - `Seen(until)`: the key's last request went to Redis directly; a second request before
//!   `until` (one lease lifetime) makes the key hot and takes a lease;
//! - `Fetching(until)`: a lease call is in flight; other requests of the key go to Redis
//!   directly meanwhile (they never wait on it); past `until` the call is taken as lost (its
//!   request was dropped) and the next request fetches again;
//! - `Leased`: tokens granted by Redis, spent locally until none is left or the lease expires.
//!   An expired lease's unspent tokens are given back: in the next lease call of the key, or by
//!   the backend's sweep ([`Leases::take_give_backs`]).
//!
//! The table is sharded and capped: past the cap, expired entries are swept, and a key that
//! still finds no room is decided in Redis as without leases, so client-controlled keys cannot
//! grow it.
//!
//! [`script::LEASE`]: super::script::LEASE

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use welcomedly_core::rate_limit::backend::{Decision, DecisionSource, Key, PolicySpec};

/// A leased policy's slice is its burst divided by this: with `I` instances, the tokens held
/// unspent when a request is refused stay under `I / 64` of the burst (4.7 % of it on 3
/// instances), the early-refusal bound of the [module docs](super).
pub const LEASE_SHARE: u64 = 64;

/// The smallest burst a policy may lease from: `LEASE_MIN_BURST / LEASE_SHARE` = 16 tokens per
/// lease, so a lease call stands for at least 16 requests. Below it a per-key rate is low enough
/// that one script call per request (coalesced) costs little, and the early-refusal bound would
/// be a large part of a small quota.
pub const LEASE_MIN_BURST: u64 = 1024;

/// The longest a lease lives: its tokens are withheld from the other instances at most this
/// long (plus the sweep period, 100 ms).
pub const LEASE_MAX_LIFETIME: Duration = Duration::from_secs(1);

/// How often the backend gives back the unspent tokens of leases that expired untouched.
pub(super) const GIVE_BACK_PERIOD: Duration = Duration::from_millis(100);

/// Table shards (each its own lock, so concurrent hot keys rarely meet).
const SHARDS: usize = 16;

/// How a leased policy leases: computed once from its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    /// Tokens asked for per lease.
    pub(super) size: u64,
    /// How long a lease is spent locally: the time `size` tokens take to refill, at most
    /// [`LEASE_MAX_LIFETIME`].
    pub(super) lifetime: Duration,
    /// The script's interval and window, µs (as the acquire scripts have them).
    pub(super) interval_us: u64,
    pub(super) window_us: u64,
}

impl Plan {
    /// The plan of a policy with these script arguments, or why it cannot lease.
    pub(super) fn new(
        policy: &PolicySpec,
        interval_us: u64,
        window_us: u64,
    ) -> Result<Self, String> {
        let burst = window_us / interval_us.max(1);
        if burst < LEASE_MIN_BURST {
            return Err(format!(
                "the rate-limit policy `{}` is opted into leases, but its burst is {burst} (under {LEASE_MIN_BURST}): a lease pays only for high limits; raise the quota or take `{}` off the leased policies",
                policy.name(),
                policy.name()
            ));
        }
        let size = burst / LEASE_SHARE;
        let lifetime =
            Duration::from_micros(size.saturating_mul(interval_us)).min(LEASE_MAX_LIFETIME);
        Ok(Self {
            size,
            lifetime,
            interval_us,
            window_us,
        })
    }
}

/// What a request of a leased policy does.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// Admitted from this instance's lease: no Redis call.
    Spend(Decision),
    /// Take a lease (giving back `give_back` tokens of an expired one in the same call).
    Fetch { give_back: u64 },
    /// Decided in Redis directly, as without leases.
    Direct,
}

/// Unspent tokens of an expired lease, to give back to Redis.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct GiveBack {
    /// The key's Redis name.
    pub(super) name: Box<[u8]>,
    /// Its Redis Cluster slot.
    pub(super) slot: u16,
    /// Unspent tokens.
    pub(super) tokens: u64,
    /// The policy's interval, µs (what one token moves the key's TAT).
    pub(super) interval_us: u64,
}

/// What a lease call answered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    /// Tokens granted (at least 1; the request that fetched spends the first).
    pub(super) granted: u64,
    /// What Redis has left for the key after the grant.
    pub(super) remaining: u64,
    /// Time until the key is whole again, as of the grant.
    pub(super) reset: Duration,
}

#[derive(Debug)]
struct Lease {
    tokens: u64,
    expires: Instant,
    /// Redis's remaining after the grant.
    remaining: u64,
    /// When the key would be whole again had every granted token been spent.
    reset_at: Instant,
    interval: Duration,
    name: Box<[u8]>,
    slot: u16,
    interval_us: u64,
}

impl Lease {
    fn decision(&self, now: Instant) -> Decision {
        // The tokens still held will be spent here or given back: they are not counted as spent.
        let held = self
            .interval
            .saturating_mul(u32::try_from(self.tokens).unwrap_or(u32::MAX));
        Decision {
            allowed: true,
            remaining: self.remaining.saturating_add(self.tokens),
            reset: self
                .reset_at
                .saturating_duration_since(now)
                .saturating_sub(held),
            retry_after: Duration::ZERO,
            source: DecisionSource::Store,
        }
    }

    fn give_back(&self) -> Option<GiveBack> {
        (self.tokens > 0).then(|| GiveBack {
            name: self.name.clone(),
            slot: self.slot,
            tokens: self.tokens,
            interval_us: self.interval_us,
        })
    }
}

#[derive(Debug)]
enum Entry {
    Seen(Instant),
    Fetching(Instant),
    Leased(Lease),
}

/// Fingerprints are hashes already: the map's own hash only needs to be fast.
type Map = HashMap<u64, Entry, foldhash::fast::RandomState>;
type Shard = Mutex<Map>;

/// One backend's leases.
pub(super) struct Leases {
    /// Per policy index: its plan, when leased.
    plans: OnceLock<Box<[Option<Plan>]>>,
    shards: Box<[Shard]>,
    /// Never used: what `shard` falls back to instead of panicking (there are always `SHARDS`).
    spare: Shard,
    per_shard: usize,
    seed: foldhash::fast::RandomState,
    /// Unspent tokens of leases dropped from the table (evicted, or replaced after a lost call),
    /// waiting for the sweep.
    pending: Mutex<Vec<GiveBack>>,
    taken: AtomicU64,
    spent: AtomicU64,
    returned: AtomicU64,
}

impl Leases {
    /// A table of at most `cap` keys (0: no leases at all).
    pub(super) fn new(cap: usize) -> Self {
        Self {
            plans: OnceLock::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            spare: Mutex::default(),
            per_shard: cap.div_ceil(SHARDS),
            seed: foldhash::fast::RandomState::default(),
            pending: Mutex::default(),
            taken: AtomicU64::new(0),
            spent: AtomicU64::new(0),
            returned: AtomicU64::new(0),
        }
    }

    /// Sets the plans, per policy index (once, when the layer is built).
    pub(super) fn prepare(&self, plans: Box<[Option<Plan>]>) {
        let _ = self.plans.get_or_init(|| plans);
    }

    /// The most keys the table holds (0: no leases).
    pub(super) fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// The plan of the policy at `index`, when it leases.
    pub(super) fn plan(&self, index: usize) -> Option<Plan> {
        if self.per_shard == 0 {
            return None;
        }
        *self.plans.get()?.get(index)?
    }

    /// The table's fingerprint of `key` under the policy at `index`.
    pub(super) fn fingerprint(&self, index: usize, key: &Key) -> u64 {
        self.seed.hash_one((index, key))
    }

    fn shard(&self, fp: u64) -> std::sync::MutexGuard<'_, Map> {
        // The low bits pick the shard; the map hashes the whole value again.
        let i = usize::try_from(fp % SHARDS as u64).unwrap_or(0);
        self.shards
            .get(i)
            .unwrap_or(&self.spare)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What the request with fingerprint `fp` of a policy leasing by `plan` does at `now`.
    pub(super) fn step(&self, fp: u64, plan: &Plan, now: Instant) -> Step {
        let mut map = self.shard(fp);
        let fetch = Entry::Fetching(now + plan.lifetime);
        match map.get_mut(&fp) {
            Some(Entry::Leased(l)) if now < l.expires && l.tokens > 0 => {
                l.tokens -= 1;
                self.spent.fetch_add(1, Ordering::Relaxed);
                Step::Spend(l.decision(now))
            }
            Some(e @ Entry::Leased(_)) => {
                // Spent (or expired): the key is hot, take the next lease, giving back what an
                // expired one left in the same call.
                let give_back = match &*e {
                    Entry::Leased(l) if now >= l.expires => l.tokens,
                    _ => 0,
                };
                *e = fetch;
                Step::Fetch { give_back }
            }
            Some(Entry::Fetching(until)) if now < *until => Step::Direct,
            Some(e @ Entry::Fetching(_)) => {
                *e = fetch;
                Step::Fetch { give_back: 0 }
            }
            Some(e @ Entry::Seen(_)) => {
                if matches!(e, Entry::Seen(until) if now < *until) {
                    *e = fetch;
                    Step::Fetch { give_back: 0 }
                } else {
                    *e = Entry::Seen(now + plan.lifetime);
                    Step::Direct
                }
            }
            None => {
                if map.len() >= self.per_shard {
                    let mut dropped = Vec::new();
                    sweep(&mut map, now, &mut dropped);
                    self.defer(dropped);
                }
                if map.len() < self.per_shard {
                    map.insert(fp, Entry::Seen(now + plan.lifetime));
                }
                Step::Direct
            }
        }
    }

    /// A lease call for `fp` answered with `grant` at `now`: the fetching request spends the
    /// first token, the rest is leased. Returns that request's decision.
    pub(super) fn granted(
        &self,
        fp: u64,
        plan: &Plan,
        grant: Grant,
        name: Box<[u8]>,
        slot: u16,
        now: Instant,
    ) -> Decision {
        self.taken.fetch_add(1, Ordering::Relaxed);
        let lease = Lease {
            tokens: grant.granted.saturating_sub(1),
            expires: now + plan.lifetime,
            remaining: grant.remaining,
            reset_at: now + grant.reset,
            interval: Duration::from_micros(plan.interval_us),
            name,
            slot,
            interval_us: plan.interval_us,
        };
        let decision = lease.decision(now);
        let mut map = self.shard(fp);
        let room = map.len() < self.per_shard;
        match map.get_mut(&fp) {
            Some(e) => {
                if let Entry::Leased(old) = &*e
                    && let Some(g) = old.give_back()
                {
                    self.defer(vec![g]);
                }
                *e = if lease.tokens > 0 {
                    Entry::Leased(lease)
                } else {
                    Entry::Seen(now + plan.lifetime)
                };
            }
            None if room && lease.tokens > 0 => {
                map.insert(fp, Entry::Leased(lease));
            }
            // No room (or nothing left): hand the tokens straight back.
            None => self.defer(lease.give_back().into_iter().collect()),
        }
        decision
    }

    /// A lease call for `fp` granted nothing or failed: the key stays hot (its next request
    /// fetches again) and the request is decided by the caller.
    pub(super) fn not_granted(&self, fp: u64, plan: &Plan, now: Instant) {
        let mut map = self.shard(fp);
        if let Some(e) = map.get_mut(&fp) {
            *e = Entry::Seen(now + plan.lifetime);
        }
    }

    /// Gives one request's charge back to the live lease of `fp`, if there is one: the token
    /// came from Redis either way, so it may be spent here again or given back at expiry.
    pub(super) fn refund(&self, fp: u64, now: Instant) -> bool {
        let mut map = self.shard(fp);
        match map.get_mut(&fp) {
            Some(Entry::Leased(l)) if now < l.expires => {
                l.tokens = l.tokens.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// Drops every expired entry and returns what the expired leases left unspent, with the
    /// give-backs waiting since the last call.
    pub(super) fn take_give_backs(&self, now: Instant) -> Vec<GiveBack> {
        let mut out =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            sweep(&mut map, now, &mut out);
        }
        out
    }

    fn defer(&self, give_backs: Vec<GiveBack>) {
        if !give_backs.is_empty() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(give_backs);
        }
    }

    /// Counts given-back tokens.
    pub(super) fn returned(&self, tokens: u64) {
        self.returned.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Leases taken, requests admitted from leases, tokens given back.
    pub(super) fn stats(&self) -> (u64, u64, u64) {
        (
            self.taken.load(Ordering::Relaxed),
            self.spent.load(Ordering::Relaxed),
            self.returned.load(Ordering::Relaxed),
        )
    }

    /// Keys in the table.
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Removes expired entries, collecting what expired leases left unspent.
fn sweep(map: &mut Map, now: Instant, out: &mut Vec<GiveBack>) {
    map.retain(|_, e| match e {
        Entry::Seen(until) | Entry::Fetching(until) => now < *until,
        Entry::Leased(l) => {
            if now < l.expires {
                return true;
            }
            out.extend(l.give_back());
            false
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    const PLAN: Plan = Plan {
        size: 100,
        lifetime: Duration::from_millis(900),
        interval_us: 9_000,
        window_us: 9_000 * 6_400,
    };

    fn ip(i: u32) -> Key {
        Key::Ip(std::net::Ipv4Addr::from(i).into())
    }

    fn leases(cap: usize) -> Leases {
        let l = Leases::new(cap);
        l.prepare(vec![Some(PLAN)].into_boxed_slice());
        l
    }

    fn grant(n: u64) -> Grant {
        Grant {
            granted: n,
            remaining: 6_000,
            reset: Duration::from_micros(9_000 * 400),
        }
    }

    fn name() -> Box<[u8]> {
        b"wd:rl:{k}:hot".to_vec().into_boxed_slice()
    }

    #[test]
    fn a_one_off_key_takes_no_lease_and_a_hot_one_does() {
        let l = leases(1000);
        let t0 = Instant::now();
        let fp = l.fingerprint(0, &ip(1));
        assert_eq!(l.step(fp, &PLAN, t0), Step::Direct, "first request");
        // Its second request after a lifetime is a one-off again.
        let late = t0 + PLAN.lifetime + Duration::from_millis(1);
        assert_eq!(l.step(fp, &PLAN, late), Step::Direct);
        // Within a lifetime: hot.
        let t1 = late + Duration::from_millis(10);
        assert_eq!(l.step(fp, &PLAN, t1), Step::Fetch { give_back: 0 });
        // While the call is in flight the key's other requests go to Redis directly.
        assert_eq!(l.step(fp, &PLAN, t1), Step::Direct);
        let d = l.granted(fp, &PLAN, grant(100), name(), 7, t1);
        assert!(d.allowed);
        assert_eq!(
            d.remaining,
            6_000 + 99,
            "Redis's remaining plus the lease's tokens"
        );
        for i in 0..99 {
            match l.step(fp, &PLAN, t1) {
                Step::Spend(d) => assert_eq!(d.remaining, 6_000 + 98 - i),
                other => panic!("token {i}: {other:?}"),
            }
        }
        // Spent: the next request fetches the next lease, nothing to give back.
        assert_eq!(l.step(fp, &PLAN, t1), Step::Fetch { give_back: 0 });
        assert_eq!(l.stats(), (1, 99, 0));
        // Another key of the same policy, or the same key of another policy, is its own.
        assert_ne!(l.fingerprint(0, &ip(2)), fp);
        assert_ne!(l.fingerprint(1, &ip(1)), fp);
    }

    #[test]
    fn the_reset_counts_held_tokens_as_unspent() {
        let l = leases(1000);
        let t = Instant::now();
        let fp = l.fingerprint(0, &ip(1));
        l.step(fp, &PLAN, t);
        l.step(fp, &PLAN, t);
        let d = l.granted(fp, &PLAN, grant(100), name(), 7, t);
        // 400 intervals ahead at the grant, 99 of them still held here.
        assert_eq!(d.reset, Duration::from_micros(9_000 * 301));
        let Step::Spend(d) = l.step(fp, &PLAN, t + Duration::from_millis(9)) else {
            panic!("a spend");
        };
        assert_eq!(d.reset, Duration::from_micros(9_000 * 301));
    }

    #[test]
    fn an_expired_lease_gives_its_tokens_back() {
        let l = leases(1000);
        let t = Instant::now();
        let fp = l.fingerprint(0, &ip(1));
        l.step(fp, &PLAN, t);
        l.step(fp, &PLAN, t);
        l.granted(fp, &PLAN, grant(100), name(), 7, t);
        assert!(matches!(l.step(fp, &PLAN, t), Step::Spend(_)));
        // 98 left. The next request after expiry fetches and gives them back in the same call.
        let after = t + PLAN.lifetime;
        assert_eq!(l.step(fp, &PLAN, after), Step::Fetch { give_back: 98 });
        // One left untouched is given back by the sweep.
        let fp2 = l.fingerprint(0, &ip(2));
        l.step(fp2, &PLAN, t);
        l.step(fp2, &PLAN, t);
        l.granted(fp2, &PLAN, grant(10), name(), 7, t);
        assert!(l.take_give_backs(t).is_empty(), "not expired yet");
        let back = l.take_give_backs(after);
        assert_eq!(
            back,
            vec![GiveBack {
                name: name(),
                slot: 7,
                tokens: 9,
                interval_us: 9_000,
            }]
        );
        assert!(l.take_give_backs(after).is_empty(), "given back once");
    }

    #[test]
    fn a_refund_goes_back_to_a_live_lease_only() {
        let l = leases(1000);
        let t = Instant::now();
        let fp = l.fingerprint(0, &ip(1));
        assert!(!l.refund(fp, t), "no lease");
        l.step(fp, &PLAN, t);
        l.step(fp, &PLAN, t);
        l.granted(fp, &PLAN, grant(2), name(), 7, t);
        assert!(matches!(l.step(fp, &PLAN, t), Step::Spend(_)));
        assert_eq!(l.step(fp, &PLAN, t), Step::Fetch { give_back: 0 }, "spent");
        l.granted(fp, &PLAN, grant(2), name(), 7, t);
        assert!(l.refund(fp, t));
        assert!(matches!(l.step(fp, &PLAN, t), Step::Spend(_)));
        assert!(
            matches!(l.step(fp, &PLAN, t), Step::Spend(_)),
            "the refunded token"
        );
        assert!(
            !l.refund(fp, t + PLAN.lifetime),
            "expired: the refund goes to Redis"
        );
    }

    #[test]
    fn the_table_is_bounded_and_expired_entries_make_room() {
        let l = leases(160);
        let t = Instant::now();
        for i in 0..10_000 {
            let fp = l.fingerprint(0, &ip(i));
            assert_eq!(l.step(fp, &PLAN, t), Step::Direct);
            if i % 2 == 0 && l.step(fp, &PLAN, t) == (Step::Fetch { give_back: 0 }) {
                l.granted(fp, &PLAN, grant(5), name(), 1, t);
            }
        }
        assert!(l.len() <= 160, "{} keys", l.len());
        // A key that found no room is decided in Redis, never leased.
        let full = (10_000..20_000)
            .map(|i| l.fingerprint(0, &ip(i)))
            .find(|fp| {
                l.step(*fp, &PLAN, t);
                l.step(*fp, &PLAN, t) == Step::Direct
            });
        assert!(full.is_some());
        // After a lifetime every entry has expired: new keys find room, and the leases the
        // sweep dropped are given back.
        let later = t + PLAN.lifetime;
        let fp = l.fingerprint(0, &ip(99_999));
        assert_eq!(l.step(fp, &PLAN, later), Step::Direct);
        assert_eq!(l.step(fp, &PLAN, later), Step::Fetch { give_back: 0 });
        let back = l.take_give_backs(later);
        assert!(!back.is_empty() && back.iter().all(|g| g.tokens == 4));
    }

    #[test]
    fn a_lost_call_does_not_block_the_key() {
        let l = leases(1000);
        let t = Instant::now();
        let fp = l.fingerprint(0, &ip(1));
        l.step(fp, &PLAN, t);
        assert_eq!(l.step(fp, &PLAN, t), Step::Fetch { give_back: 0 });
        // The fetching request was dropped: after a lifetime the key fetches again.
        assert_eq!(
            l.step(fp, &PLAN, t + PLAN.lifetime),
            Step::Fetch { give_back: 0 }
        );
        l.not_granted(fp, &PLAN, t + PLAN.lifetime);
        assert_eq!(
            l.step(fp, &PLAN, t + PLAN.lifetime),
            Step::Fetch { give_back: 0 },
            "still hot after a refusal"
        );
    }

    #[test]
    fn no_table_no_leases() {
        let l = leases(0);
        assert!(l.plan(0).is_none());
        assert_eq!(l.capacity(), 0);
        assert!(leases(10).plan(0).is_some());
        assert!(leases(10).plan(1).is_none());
    }
}
