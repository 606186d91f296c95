//! Clients Redis rejected, remembered until their retry time: during a flood a rejected client
//! is answered 429 locally instead of costing Redis one script call per retry.
//!
//! Bounded per policy: when a policy's table is full, expired entries are swept; if it is still
//! full the new rejection is simply not remembered (Redis keeps deciding that client, so the
//! limit holds either way: this is only a cache of Redis's answers). A remembered rejection can
//! outlast the real one only when the key's charges were refunded meanwhile (a policy charging
//! by status): it then errs on the side of the limit, by at most the retry time.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use welcomedly_core::rate_limit::backend::Key;

/// Per remembered client (a fingerprint of its key): until when it is rejected.
type Table = Mutex<HashMap<u64, Instant>>;

pub(crate) struct Rejections {
    cap: usize,
    seed: foldhash::fast::RandomState,
    tables: OnceLock<Box<[Table]>>,
}

impl Rejections {
    /// At most `cap` remembered clients per policy; 0 remembers nothing.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            seed: foldhash::fast::RandomState::default(),
            tables: OnceLock::new(),
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
        let map = table.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *map.get(&fp)?;
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
        let mut map = table.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.cap && !map.contains_key(&fp) {
            map.retain(|_, until| *until > now);
            if map.len() >= self.cap {
                return;
            }
        }
        map.insert(fp, now + retry_after);
    }

    #[cfg(test)]
    fn len(&self, policy: usize) -> usize {
        self.table(policy).map_or(0, |t| {
            t.lock().unwrap_or_else(PoisonError::into_inner).len()
        })
    }
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

    #[test]
    fn zero_remembers_nothing() {
        let r = Rejections::new(0);
        r.prepare(1);
        r.remember(0, &ip(1), Duration::from_secs(60));
        assert!(r.rejected_for(0, &ip(1)).is_none());
    }
}
