//! Clients Redis rejected, remembered until their retry time: during a flood a rejected client
//! is answered 429 locally instead of costing Redis one script call per retry.
//!
//! Bounded per policy: when a policy's table is full, expired entries are swept (at most once
//! per eighth of the table expired, so a flood of rejected clients does not sweep the whole
//! table per rejection); if it is still full the new rejection is simply not remembered (Redis keeps deciding that client, so the
//! limit holds either way: this is only a cache of Redis's answers). A remembered rejection can
//! outlast the real one only when the key's charges were refunded meanwhile (a policy charging
//! by status): it then errs on the side of the limit, by at most the retry time.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use welcomedly_core::rate_limit::backend::Key;

/// Per remembered client (a fingerprint of its key): until when it is rejected.
type Table = Mutex<Entries>;

#[derive(Default)]
struct Entries {
    map: HashMap<u64, Instant>,
    /// When the table is full: no sweep before this, the time by which an eighth of the
    /// entries left at the last sweep have expired (`None`: sweep at once). A sweep visits every
    /// entry; this way it frees at least an eighth of the table, so a flood of new rejections
    /// pays a few visits each instead of the whole table each.
    next_sweep: Option<Instant>,
    /// When the table was last swept: swept again after [`SWEEP_PERIOD`] even before
    /// `next_sweep` (the entries left may outlive many shorter ones added since).
    last_sweep: Option<Instant>,
}

/// The longest a full table goes unswept while new rejections come.
const SWEEP_PERIOD: Duration = Duration::from_millis(100);

pub(crate) struct Rejections {
    cap: usize,
    seed: foldhash::fast::RandomState,
    tables: OnceLock<Box<[Table]>>,
    /// Entries visited by sweeps since start.
    swept: AtomicU64,
}

impl Rejections {
    /// At most `cap` remembered clients per policy; 0 remembers nothing.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            seed: foldhash::fast::RandomState::default(),
            tables: OnceLock::new(),
            swept: AtomicU64::new(0),
        }
    }

    pub(crate) fn prepare(&self, policies: usize) {
        let _ = self
            .tables
            .get_or_init(|| (0..policies).map(|_| Mutex::default()).collect());
    }

    fn table(&self, policy: usize) -> Option<&Table> {
        if self.cap == 0 {
            return None;
        }
        self.tables.get()?.get(policy)
    }

    /// How long `key` stays rejected by `policy`, if Redis rejected it and that time has not
    /// passed.
    pub(crate) fn rejected_for(&self, policy: usize, key: &Key) -> Option<Duration> {
        let table = self.table(policy)?;
        let fp = self.seed.hash_one(key);
        let entries = table.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *entries.map.get(&fp)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Remembers that `policy` rejected `key` for `retry_after`.
    pub(crate) fn remember(&self, policy: usize, key: &Key, retry_after: Duration) {
        let Some(table) = self.table(policy) else {
            return;
        };
        let now = Instant::now();
        let fp = self.seed.hash_one(key);
        let mut entries = table.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = &mut *entries;
        if entries.map.len() >= self.cap && !entries.map.contains_key(&fp) {
            if entries.next_sweep.is_some_and(|t| now < t)
                && entries.last_sweep.is_some_and(|t| now < t + SWEEP_PERIOD)
            {
                return;
            }
            entries.last_sweep = Some(now);
            self.swept.fetch_add(
                u64::try_from(entries.map.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            entries.map.retain(|_, until| *until > now);
            entries.next_sweep = eighth_expired(&entries.map, self.cap);
            if entries.map.len() >= self.cap {
                return;
            }
        }
        entries.map.insert(fp, now + retry_after);
    }

    #[cfg(test)]
    fn len(&self, policy: usize) -> usize {
        self.table(policy).map_or(0, |t| {
            t.lock().unwrap_or_else(PoisonError::into_inner).map.len()
        })
    }
}

/// When an eighth of a table of `cap` has expired among the entries of `map`, or `None` when
/// fewer than that many are left (then the table refills with new entries before it is full).
fn eighth_expired(map: &HashMap<u64, Instant>, cap: usize) -> Option<Instant> {
    let k = cap / 8;
    if map.len() <= k {
        return None;
    }
    let mut untils: Vec<Instant> = map.values().copied().collect();
    let (_, kth, _) = untils.select_nth_unstable(k);
    Some(*kth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> Key {
        Key::Ip(std::net::Ipv4Addr::from(i).into())
    }

    #[test]
    fn a_rejection_lasts_its_retry_time() {
        let r = Rejections::new(10);
        r.prepare(2);
        r.remember(0, &ip(1), Duration::from_secs(60));
        assert!(r.rejected_for(0, &ip(1)).is_some());
        assert!(r.rejected_for(1, &ip(1)).is_none(), "per policy");
        assert!(r.rejected_for(0, &ip(2)).is_none());
        r.remember(0, &ip(3), Duration::ZERO);
        assert!(r.rejected_for(0, &ip(3)).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let r = Rejections::new(100);
        r.prepare(1);
        for i in 0..10_000 {
            r.remember(0, &ip(i), Duration::from_secs(60));
        }
        assert_eq!(r.len(0), 100);
        // Expired entries make room.
        let r = Rejections::new(100);
        r.prepare(1);
        for i in 0..100 {
            r.remember(0, &ip(i), Duration::ZERO);
        }
        r.remember(0, &ip(1000), Duration::from_secs(60));
        assert!(r.rejected_for(0, &ip(1000)).is_some());
        assert_eq!(r.len(0), 1);
    }

    /// A flood of new rejections on a full table of live ones: the sweeps visit a few entries per
    /// rejection, not the whole table each (as before: 100 visits per rejection here, 10 000
    /// with the default table).
    #[test]
    fn a_full_table_is_not_swept_per_rejection() {
        let r = Rejections::new(100);
        r.prepare(1);
        for i in 0..10_000 {
            r.remember(0, &ip(i), Duration::from_secs(60));
        }
        assert_eq!(r.len(0), 100);
        let swept = r.swept.load(Ordering::Relaxed);
        assert!(swept <= 8 * 10_000, "{swept} entries visited");
        assert!(
            swept <= 1_000,
            "{swept} entries visited for a table that never expires"
        );
    }

    #[test]
    fn zero_remembers_nothing() {
        let r = Rejections::new(0);
        r.prepare(1);
        r.remember(0, &ip(1), Duration::from_secs(60));
        assert!(r.rejected_for(0, &ip(1)).is_none());
    }
}
