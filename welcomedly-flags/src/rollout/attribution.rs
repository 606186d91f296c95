//! Attribution: which arm of a guarded flag served a request, with its status and latency.
//!
//! [`Attribution`] is shared by the [`FlagsLayer`](crate::layer::FlagsLayer) (given with
//! [`FlagsLayer::attribution`](crate::layer::FlagsLayer::attribution)) and the rollout agent
//! that flushes its counts to Redis. Only guarded flags are counted (at most [`MAX_GUARDED`]),
//! and only evaluations the split decided (reason `SPLIT`): a user a target or rule sends to
//! the treatment is not part of the comparison. Per flag and arm the counters are fixed: requests,
//! errors, application counter, and [`LATENCY_BUCKETS`] latency buckets. No client text becomes a
//! key or a label.
//!
//! ```
//! use welcomedly_flags::rollout::attribution::Attribution;
//! use welcomedly_flags::rollout::plan::Plan;
//!
//! let attribution = Attribution::new();
//! attribution.guard([("new-checkout", &Plan::default())]);
//! assert!(attribution.is_guarded("new-checkout"));
//! assert!(!attribution.is_guarded("other"));
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::histogram::{BUCKETS, LatencyHistogram};
use super::plan::{ErrorGuard, Plan};
use crate::Reason;

/// The most flags guarded at once (each takes two bits of a request's record).
pub const MAX_GUARDED: usize = 16;

/// The number of latency buckets per arm: the [`LatencyHistogram`]'s fixed buckets.
pub const LATENCY_BUCKETS: usize = BUCKETS;

/// The bucket of a latency.
pub fn latency_bucket(elapsed: Duration) -> usize {
    LatencyHistogram::bucket_of(elapsed)
}

/// The arms of a guarded rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArmKind {
    /// The baseline variant.
    Control,
    /// The new variant.
    Treatment,
}

impl ArmKind {
    /// `"control"` or `"treatment"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Treatment => "treatment",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Control => 0,
            Self::Treatment => 1,
        }
    }
}

/// What one arm served: plain counts (summed over time buckets and instances).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmCounts {
    /// Requests served.
    pub requests: u64,
    /// Of which errors (as the plan's error guard counts them).
    pub errors: u64,
    /// Requests that incremented the plan's application counter.
    pub counter: u64,
    /// Requests per latency bucket (see [`LatencyHistogram`]).
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Default for ArmCounts {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            counter: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl ArmCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ArmCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.counter = self.counter.saturating_add(other.counter);
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.counter == 0
    }

    /// The latency histogram.
    pub fn histogram(&self) -> LatencyHistogram {
        LatencyHistogram::from_counts(self.latency)
    }
}

struct ArmCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    counter: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for ArmCounters {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ArmCounters {
    fn take(&self) -> ArmCounts {
        let mut c = ArmCounts {
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
            counter: self.counter.swap(0, Ordering::Relaxed),
            ..ArmCounts::default()
        };
        for (a, b) in c.latency.iter_mut().zip(self.latency.iter()) {
            *a = b.swap(0, Ordering::Relaxed);
        }
        c
    }

    fn put_back(&self, c: &ArmCounts) {
        self.requests.fetch_add(c.requests, Ordering::Relaxed);
        self.errors.fetch_add(c.errors, Ordering::Relaxed);
        self.counter.fetch_add(c.counter, Ordering::Relaxed);
        for (a, b) in self.latency.iter().zip(c.latency.iter()) {
            a.fetch_add(*b, Ordering::Relaxed);
        }
    }
}

/// The counters of one guarded flag (kept across updates of the guarded set).
struct FlagCounters {
    arms: [ArmCounters; 2],
}

pub(crate) struct GuardedFlag {
    key: Box<str>,
    treatment: Box<str>,
    control: Box<str>,
    errors: Option<ErrorGuard>,
    counter: Option<Box<str>>,
    counters: Arc<FlagCounters>,
}

/// The guarded flags at one moment, pinned by a request for its lifetime.
#[derive(Default)]
pub(crate) struct Guarded {
    flags: Vec<GuardedFlag>,
}

impl Guarded {
    pub(crate) fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
}

/// The guarded flags and their per-arm counters. Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct Attribution {
    guarded: Arc<ArcSwap<Guarded>>,
}

impl fmt::Debug for Attribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.guarded.load();
        f.debug_list()
            .entries(g.flags.iter().map(|f| &*f.key))
            .finish()
    }
}

impl Attribution {
    /// An attribution guarding nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Guards these flags (and stops guarding any other). Counters of a flag guarded before
    /// with the same arms are kept; at most [`MAX_GUARDED`] flags are taken (the first ones).
    pub fn guard<'a>(&self, flags: impl IntoIterator<Item = (&'a str, &'a Plan)>) {
        let old = self.guarded.load();
        let mut next = Guarded::default();
        for (key, plan) in flags.into_iter().take(MAX_GUARDED) {
            if next.flags.iter().any(|f| &*f.key == key) {
                continue;
            }
            let counters = old
                .flags
                .iter()
                .find(|f| {
                    &*f.key == key && *f.treatment == *plan.treatment && *f.control == *plan.control
                })
                .map_or_else(
                    || {
                        Arc::new(FlagCounters {
                            arms: Default::default(),
                        })
                    },
                    |f| f.counters.clone(),
                );
            next.flags.push(GuardedFlag {
                key: key.into(),
                treatment: plan.treatment.as_str().into(),
                control: plan.control.as_str().into(),
                errors: plan.guards.error_ratio.clone(),
                counter: plan.guards.counter.as_ref().map(|c| c.name.as_str().into()),
                counters,
            });
        }
        self.guarded.store(Arc::new(next));
    }

    /// Whether `key` is guarded now.
    pub fn is_guarded(&self, key: &str) -> bool {
        self.guarded.load().flags.iter().any(|f| &*f.key == key)
    }

    /// Takes (and resets) the counts of every guarded flag: `(flag, control, treatment)`,
    /// flags with nothing counted left out.
    pub fn take(&self) -> Vec<(String, ArmCounts, ArmCounts)> {
        let g = self.guarded.load();
        g.flags
            .iter()
            .filter_map(|f| {
                let [c, t] = &f.counters.arms;
                let (c, t) = (c.take(), t.take());
                (!(c.is_empty() && t.is_empty())).then(|| (f.key.to_string(), c, t))
            })
            .collect()
    }

    /// Puts counts taken by [`take`](Self::take) back (their flush failed: nothing is lost).
    pub fn put_back(&self, flag: &str, control: &ArmCounts, treatment: &ArmCounts) {
        let g = self.guarded.load();
        if let Some(f) = g.flags.iter().find(|f| &*f.key == flag) {
            f.counters.arms[0].put_back(control);
            f.counters.arms[1].put_back(treatment);
        }
    }

    /// The guarded set a request pins (`None` when nothing is guarded: no cost per request).
    pub(crate) fn pin(&self) -> Option<Arc<Guarded>> {
        // A guard first: no reference count is touched while nothing is guarded.
        let g = self.guarded.load();
        (!g.is_empty()).then(|| arc_swap::Guard::into_inner(g))
    }
}

/// One request's record: which arm of which guarded flag served it, and whether it
/// incremented a guarded counter. Two bits per guarded flag, no allocation.
pub(crate) struct Recording {
    guarded: Arc<Guarded>,
    /// Bit `2i`: flag `i` served its control; bit `2i + 1`: its treatment.
    served: AtomicU32,
    /// Bit `i`: the request incremented flag `i`'s counter.
    counted: AtomicU32,
}

impl Recording {
    pub(crate) fn new(guarded: Arc<Guarded>) -> Self {
        Self {
            guarded,
            served: AtomicU32::new(0),
            counted: AtomicU32::new(0),
        }
    }

    /// Notes an evaluation of `key`: counted when the split served one of the arms.
    pub(crate) fn note(&self, key: &str, variant: Option<&str>, reason: &Reason<'_>) {
        let (Some(variant), Reason::Split(_)) = (variant, reason) else {
            return;
        };
        for (i, f) in self.guarded.flags.iter().enumerate() {
            if &*f.key != key {
                continue;
            }
            let arm = if *f.treatment == *variant {
                ArmKind::Treatment
            } else if *f.control == *variant {
                ArmKind::Control
            } else {
                return;
            };
            self.served
                .fetch_or(1 << (2 * i + arm.index()), Ordering::Relaxed);
            return;
        }
    }

    /// Notes that the request incremented application counter `name`.
    pub(crate) fn count(&self, name: &str) {
        for (i, f) in self.guarded.flags.iter().enumerate() {
            if f.counter.as_deref() == Some(name) {
                self.counted.fetch_or(1 << i, Ordering::Relaxed);
            }
        }
    }

    /// Adds the finished request to the arms that served it. `status` is `None` when the
    /// service failed without a response (an error for every guard).
    pub(crate) fn finish(&self, status: Option<u16>, elapsed: Duration) {
        let served = self.served.load(Ordering::Relaxed);
        if served == 0 {
            return;
        }
        let counted = self.counted.load(Ordering::Relaxed);
        let bucket = latency_bucket(elapsed);
        for (i, f) in self.guarded.flags.iter().enumerate() {
            let bits = (served >> (2 * i)) & 0b11;
            // A request served both arms of one flag (two contexts) is left out.
            let arm = match bits {
                0b01 => ArmKind::Control,
                0b10 => ArmKind::Treatment,
                _ => continue,
            };
            let Some(c) = f.counters.arms.get(arm.index()) else {
                continue;
            };
            c.requests.fetch_add(1, Ordering::Relaxed);
            let error = match (status, &f.errors) {
                (None, _) => true,
                (Some(s), Some(g)) => g.is_error(s),
                (Some(s), None) => (500..600).contains(&s),
            };
            if error {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
            if counted & (1 << i) != 0 {
                c.counter.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(b) = c.latency.get(bucket) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Match;

    #[test]
    fn latencies_land_in_the_histogram() {
        let mut c = ArmCounts::default();
        c.latency[latency_bucket(Duration::from_millis(3))] += 95;
        c.latency[latency_bucket(Duration::from_millis(80))] += 5;
        let h = c.histogram();
        assert_eq!(h.total(), 100);
        assert!(h.quantile(0.95).unwrap() < Duration::from_millis(5));
        assert!(h.quantile(0.96).unwrap() >= Duration::from_millis(80));
    }

    #[test]
    fn only_split_evaluations_of_guarded_flags_are_counted() {
        let a = Attribution::new();
        let plan = Plan::default();
        a.guard([("f", &plan)]);
        let split = Reason::Split(Match::Fallthrough);
        let r = Recording::new(a.pin().unwrap());
        r.note("f", Some("on"), &split);
        r.finish(Some(503), Duration::from_millis(4));
        let r = Recording::new(a.pin().unwrap());
        r.note("f", Some("off"), &split);
        r.finish(Some(200), Duration::from_millis(4));
        let r = Recording::new(a.pin().unwrap());
        r.note("f", Some("on"), &Reason::TargetingMatch(Match::Fallthrough));
        r.note("g", Some("on"), &split);
        r.finish(Some(500), Duration::from_millis(4));
        let taken = a.take();
        assert_eq!(taken.len(), 1);
        let (flag, control, treatment) = &taken[0];
        assert_eq!(flag, "f");
        assert_eq!((control.requests, control.errors), (1, 0));
        assert_eq!((treatment.requests, treatment.errors), (1, 1));
        assert!(a.take().is_empty(), "taken counts are reset");
        a.put_back("f", control, treatment);
        assert_eq!(a.take()[0].2.errors, 1);
        a.guard(std::iter::empty());
        assert!(a.pin().is_none());
    }
}
