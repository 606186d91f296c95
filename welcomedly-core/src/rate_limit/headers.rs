//! The values of the `RateLimit-Policy` and `RateLimit` headers, computed once per policy so that
//! a response only copies them.
//!
//! A header value is a [`Bytes`]: cloning one built at run time bumps a reference count that
//! every core serving the policy shares (a contended cache line), and formatting a fresh one per
//! response costs an allocation, a validation and a free. Values built here point into `'static`
//! text instead, so a clone is a plain copy and a drop does nothing.
//!
//! The text is leaked, on purpose and with bounds: it is interned (building the same policies
//! again — a test suite, a configuration reload — reuses the text instead of leaking it again),
//! and once [`LEAK_BUDGET`] bytes are leaked per process, new text falls back to shared
//! reference-counted values (correct, only slower).

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::HeaderValue;

use super::backend::Decision;
use super::quota::{Gcra, ceil_secs};

/// The most text leaked per process for header values (1 MiB): far more than any real set of
/// policies needs (a 200-per-minute policy needs about 5 KiB).
const LEAK_BUDGET: usize = 1 << 20;

/// The most `RateLimit` values precomputed per policy (about 100 KiB of text and values).
const MAX_LIMIT_VALUES: u64 = 4096;

/// The values precomputed for a policy with more than [`MAX_LIMIT_VALUES`]: those of the
/// remaining counts nearest a full quota only, which are what a key that is far from its limit
/// (most keys, most of the time: a fresh client, a load test's generous quota) is answered.
const PARTIAL_LIMIT_VALUES: u64 = 256;

struct Interned {
    texts: HashSet<&'static str>,
    leaked: usize,
}

static INTERNED: Mutex<Option<Interned>> = Mutex::new(None);

/// `text` with a `'static` lifetime: the interned copy, or a new leaked one while the budget
/// lasts.
fn intern(text: &str) -> Option<&'static str> {
    // Only layer builds get here, never requests: a lock is fine. A panic cannot leave the set
    // half-updated in a harmful way (at worst a text leaks without being recorded).
    let mut guard = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    let interned = guard.get_or_insert_with(|| Interned {
        texts: HashSet::new(),
        leaked: 0,
    });
    if let Some(s) = interned.texts.get(text) {
        return Some(s);
    }
    let leaked = interned.leaked.checked_add(text.len())?;
    if leaked > LEAK_BUDGET {
        return None;
    }
    interned.leaked = leaked;
    let s: &'static str = Box::leak(Box::from(text));
    interned.texts.insert(s);
    Some(s)
}

/// Header values for the given ranges of `text`, pointing into one interned copy of it (or,
/// when `interned` is false or the budget is spent, one shared copy).
fn values(text: &str, ranges: &[(usize, usize)], interned: bool) -> Option<Box<[HeaderValue]>> {
    let bytes = match interned.then(|| intern(text)).flatten() {
        Some(s) => Bytes::from_static(s.as_bytes()),
        None => Bytes::copy_from_slice(text.as_bytes()),
    };
    ranges
        .iter()
        .map(|&(start, end)| {
            let part = bytes.get(start..end)?;
            HeaderValue::from_maybe_shared(bytes.slice_ref(part)).ok()
        })
        .collect()
}

/// `"name";q=5;w=60`, computed once per policy.
pub(crate) fn policy_header(
    quoted_name: &str,
    count: u64,
    period_secs: u64,
) -> Option<HeaderValue> {
    let text = format!("{quoted_name};q={count};w={period_secs}");
    values(&text, &[(0, text.len())], true)?.into_vec().pop()
}

/// Every `RateLimit` value a policy's own GCRA can produce, when there are few enough of them.
///
/// A decision's remaining count `r` and reset `t` (whole seconds) both follow from how far the
/// key's TAT is ahead of now, so for each `r` the possible `t` form one short range: the table
/// holds about `burst + window in seconds` values, indexed by `r` then `t`. A policy with more
/// values than [`MAX_LIMIT_VALUES`] gets the top rows only (the remaining counts nearest its
/// burst, within [`PARTIAL_LIMIT_VALUES`]). Decisions it does not cover (a fallback's divided
/// quota, Redis's microsecond rounding, a big policy's lower counts) are formatted instead.
#[derive(Debug, Default)]
pub(crate) struct LimitHeaders {
    /// The remaining count of the first row (0 when the table is complete).
    first: u64,
    /// Per remaining count from `first` up: index of its first value, and the reset of that
    /// value. One extra row closes the last range.
    rows: Box<[(u32, u64)]>,
    values: Box<[HeaderValue]>,
}

impl LimitHeaders {
    /// The table for `gcra`, empty when the policy has too many distinct values.
    pub(crate) fn new(quoted_name: &str, gcra: &Gcra) -> Self {
        Self::build(quoted_name, gcra, true).unwrap_or_default()
    }

    /// `interned`: whether the text goes into the process's bounded interned set (layers do);
    /// property tests build thousands of tables and must not spend the budget other tests rely on.
    fn build(quoted_name: &str, gcra: &Gcra, interned: bool) -> Option<Self> {
        let (interval, window) = (gcra.interval_nanos(), gcra.window_nanos());
        let burst = window / interval;
        if burst == 0 {
            return None;
        }
        // `ahead` (TAT after this request minus now) is in (window - (r+1)·interval,
        // window - r·interval] for remaining count r; admitted requests have ahead >= interval.
        // A rejected request reports r = 0 and a reset of its TAT minus now, which lies in
        // (window - interval, window]: row 0 covers that whole range.
        let secs = |r: u64| {
            let hi = window - r * interval;
            let lo = match r {
                0 => hi.saturating_sub(interval) + 1,
                _ => (hi.saturating_sub(interval) + 1).max(interval),
            };
            (ceil_secs(lo), ceil_secs(hi))
        };
        // The lowest remaining count whose row still fits in `budget` values, counting down
        // from the top row (at most `budget` steps, whatever the burst).
        let lowest_within = |budget: u64| {
            let (mut first, mut total) = (burst, 0u64);
            while let Some(r) = first.checked_sub(1) {
                let (lo, hi) = secs(r);
                total = total.saturating_add(hi - lo + 1);
                if total > budget {
                    break;
                }
                first = r;
            }
            first
        };
        let first = match lowest_within(MAX_LIMIT_VALUES) {
            0 => 0,
            _ => lowest_within(PARTIAL_LIMIT_VALUES),
        };
        if first == burst {
            return None;
        }
        let mut text = String::new();
        let mut ranges = Vec::new();
        let mut rows = Vec::new();
        let (mut r_buf, mut t_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
        for r in first..burst {
            let (lo, hi) = secs(r);
            rows.push((u32::try_from(ranges.len()).ok()?, lo));
            for t in lo..=hi {
                let start = text.len();
                text.push_str(quoted_name);
                text.push_str(";r=");
                text.push_str(r_buf.format(r));
                text.push_str(";t=");
                text.push_str(t_buf.format(t));
                ranges.push((start, text.len()));
            }
        }
        rows.push((u32::try_from(ranges.len()).ok()?, 0));
        Some(Self {
            first,
            rows: rows.into(),
            values: values(&text, &ranges, interned)?,
        })
    }

    fn get(&self, remaining: u64, reset_secs: u64) -> Option<HeaderValue> {
        let r = usize::try_from(remaining.checked_sub(self.first)?).ok()?;
        let (&(start, first), &(end, _)) = (self.rows.get(r)?, self.rows.get(r.checked_add(1)?)?);
        let i = u64::from(start).checked_add(reset_secs.checked_sub(first)?)?;
        if i >= u64::from(end) {
            return None;
        }
        self.values.get(usize::try_from(i).ok()?).cloned()
    }
}

/// `"name";r=3;t=12`: remaining requests and whole seconds (rounded up) until the quota is whole.
pub(crate) fn limit_header(
    quoted_name: &str,
    table: &LimitHeaders,
    decision: &Decision,
) -> Option<HeaderValue> {
    let reset = ceil_secs(u64::try_from(decision.reset.as_nanos()).unwrap_or(u64::MAX));
    if let Some(v) = table.get(decision.remaining, reset) {
        return Some(v);
    }
    let mut r = itoa::Buffer::new();
    let mut t = itoa::Buffer::new();
    let (r, t) = (r.format(decision.remaining), t.format(reset));
    let name = quoted_name.as_bytes();
    let mut v = Vec::with_capacity(name.len() + r.len() + t.len() + 6);
    v.extend_from_slice(name);
    v.extend_from_slice(b";r=");
    v.extend_from_slice(r.as_bytes());
    v.extend_from_slice(b";t=");
    v.extend_from_slice(t.as_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(v)).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rate_limit::Quota;
    use crate::rate_limit::backend::DecisionSource;
    use proptest::prelude::*;

    fn formatted(name: &str, d: &Decision) -> HeaderValue {
        limit_header(name, &LimitHeaders::default(), d).unwrap()
    }

    #[test]
    fn table_values_are_static_and_bounded() {
        let g = Quota::per_minute(200).gcra().unwrap();
        let t = LimitHeaders::new("\"api\"", &g);
        assert!(!t.values.is_empty() && t.values.len() <= 200 + 61);
        assert_eq!(t.get(199, 1).unwrap(), "\"api\";r=199;t=1");
        // Interned: a second build of the same policy points at the same text.
        let again = LimitHeaders::new("\"api\"", &g);
        assert_eq!(
            t.values[0].as_bytes().as_ptr(),
            again.values[0].as_bytes().as_ptr()
        );
        // A policy too big for a whole table gets its top rows: a fresh key's answer is there.
        let huge = Quota::per_second(1_000_000_000).with_burst(1_000_000_000);
        let g = huge.gcra().unwrap();
        let t = LimitHeaders::new("\"x\"", &g);
        assert!(!t.values.is_empty() && t.values.len() as u64 <= PARTIAL_LIMIT_VALUES);
        let fresh = Decision::from_outcome(&g.decide(None, 5), DecisionSource::Store);
        assert_eq!(fresh.remaining, 999_999_999);
        assert_eq!(
            limit_header("\"x\"", &t, &fresh).unwrap(),
            "\"x\";r=999999999;t=1"
        );
        assert_eq!(t.get(999_999_999, 1).unwrap(), "\"x\";r=999999999;t=1");
        assert!(
            t.get(5, 1).is_none(),
            "a low count is formatted, not tabled"
        );
    }

    proptest! {
        /// Whatever the GCRA decides, the table (when it has the value) says exactly what
        /// formatting would, and it has the value for every decision of the policy's own quota.
        #[test]
        fn table_matches_formatting(count in 1u32..300, period_s in 1u64..120, burst in 1u32..300,
                                    ahead in proptest::option::of(0u64..=1000),
                                    now in 0u64..200_000_000_000) {
            let g = Quota::new(count, Duration::from_secs(period_s)).with_burst(burst).gcra().unwrap();
            // A TAT the GCRA can reach: at most one window ahead of now (or none, or past).
            let tat = ahead.map(|a| (now + g.window_nanos() * a / 1000).saturating_sub(g.window_nanos() / 7));
            let table = LimitHeaders::build("\"p\"", &g, false).unwrap_or_default();
            prop_assume!(!table.values.is_empty());
            // Complete tables here; the top rows of bigger ones below.
            prop_assume!(table.first == 0);
            let d = Decision::from_outcome(&g.decide(tat, now), DecisionSource::Store);
            let reset = ceil_secs(u64::try_from(d.reset.as_nanos()).unwrap());
            let from_table = table.get(d.remaining, reset);
            prop_assert!(from_table.is_some(), "r={} t={}", d.remaining, reset);
            prop_assert_eq!(from_table.unwrap(), formatted("\"p\"", &d));
        }

        /// A policy too big for a whole table: what its top rows hold is what formatting says,
        /// they hold a fresh key's answer, and they stay within their budget.
        #[test]
        fn partial_tables_match_formatting(count in 1u32..1_000_000, period_s in 1u64..3600,
                                           burst in 1u32..10_000_000,
                                           ahead in proptest::option::of(0u64..=1000),
                                           now in 0u64..200_000_000_000) {
            let g = Quota::new(count, Duration::from_secs(period_s)).with_burst(burst).gcra().unwrap();
            let tat = ahead.map(|a| (now + g.window_nanos() * a / 1_000_000).saturating_sub(g.window_nanos() / 7));
            // None when even the top row has too many resets (a long emission interval).
            let table = LimitHeaders::build("\"p\"", &g, false);
            prop_assume!(table.is_some());
            let table = table.unwrap();
            prop_assert!(table.values.len() as u64 <= MAX_LIMIT_VALUES);
            if table.first > 0 {
                prop_assert!(table.values.len() as u64 <= PARTIAL_LIMIT_VALUES);
            }
            let d = Decision::from_outcome(&g.decide(tat, now), DecisionSource::Store);
            let reset = ceil_secs(u64::try_from(d.reset.as_nanos()).unwrap());
            if let Some(v) = table.get(d.remaining, reset) {
                prop_assert_eq!(v, formatted("\"p\"", &d));
            }
            let fresh = Decision::from_outcome(&g.decide(None, now), DecisionSource::Store);
            let fresh_reset = ceil_secs(u64::try_from(fresh.reset.as_nanos()).unwrap());
            prop_assert_eq!(table.get(fresh.remaining, fresh_reset), Some(formatted("\"p\"", &fresh)));
        }
    }
}
