//! A fixed-bucket latency histogram: bounded memory, mergeable, stored as 64 integers.
//!
//! [`LatencyHistogram`] counts durations in [`BUCKETS`] = 64 buckets with log-spaced bounds
//! ([`LOWER_BOUNDS_MICROS`]): bucket 0 holds everything under 1 ms, buckets 1…62 grow by a factor
//! `60 000^(1/62) ≈ 1.194` each (about 19 % wide) from 1 ms to 60 s, and bucket 63 holds
//! everything from 60 s on. The layout is fixed, so histograms from any instance and any time
//! bucket add up ([`merge`](LatencyHistogram::merge)), and one is stored as a plain JSON array of
//! 64 counts (for instance one Redis hash field per arm and time bucket); nothing a client sends
//! changes its size.
//!
//! The latency guard of a rollout compares the *share of slow requests* in both arms, with
//! "slow" set by the control arm: [`slow_requests`] takes the control's quantile (say p95), widens
//! it by a tolerance, and counts the requests of each arm at or above it, giving two
//! [`Arm`]s for [`sequential::test`](super::sequential::test()). Both arms are counted against the
//! same bucket bound, so the bucket width rounds the threshold but does not bias the comparison.
//!
//! ```
//! use std::time::Duration;
//! use welcomedly_flags::rollout::histogram::{slow_requests, LatencyHistogram};
//!
//! let mut control = LatencyHistogram::new();
//! let mut treatment = LatencyHistogram::new();
//! for ms in 1..=100 {
//!     control.record(Duration::from_millis(ms));
//!     treatment.record(Duration::from_millis(ms * 2));
//! }
//! let p95 = control.quantile(0.95).unwrap();
//! assert!(p95 >= Duration::from_millis(95) && p95 <= Duration::from_millis(114));
//!
//! let slow = slow_requests(&control, &treatment, 0.95, 0.0);
//! assert_eq!(slow.control.trials, 100);
//! assert!(slow.treatment.events > slow.control.events);
//!
//! // Stored as 64 counts.
//! let json = serde_json::to_string(&control)?;
//! let back: LatencyHistogram = serde_json::from_str(&json)?;
//! assert_eq!(back, control);
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sequential::Arm;

/// The number of buckets of a [`LatencyHistogram`].
pub const BUCKETS: usize = 64;

/// The lower bound of each bucket in microseconds: `0`, then `round(1000 · r^(i−1))` for
/// `i = 1…63` with `r = 60 000^(1/62)`, so bucket 1 starts at 1 ms and bucket 63 at 60 s.
/// Bucket `i` holds durations in `[LOWER_BOUNDS_MICROS[i], LOWER_BOUNDS_MICROS[i + 1])`; the last
/// one has no upper bound.
pub const LOWER_BOUNDS_MICROS: [u64; BUCKETS] = [
    0, 1000, 1194, 1426, 1703, 2034, 2428, 2900, 3463, 4136, 4939, 5898, 7043, 8410, 10043, 11993,
    14322, 17103, 20424, 24390, 29125, 34781, 41534, 49599, 59230, 70731, 84464, 100865, 120450,
    143838, 171768, 205120, 244949, 292511, 349309, 417135, 498131, 594854, 710358, 848290,
    1013004, 1209702, 1444592, 1725092, 2060056, 2460062, 2937738, 3508165, 4189353, 5002808,
    5974215, 7134241, 8519512, 10173765, 12149227, 14508269, 17325372, 20689477, 24706798,
    29504172, 35233062, 42074343, 50244010, 60000000,
];

/// Counts of durations in 64 fixed log-spaced buckets (see the [module docs](self)).
///
/// Serializes as a JSON array of exactly [`BUCKETS`] counts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub struct LatencyHistogram {
    counts: [u64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the occupied buckets, as (lower bound in µs, count).
        let occupied = LOWER_BOUNDS_MICROS
            .iter()
            .zip(self.counts.iter())
            .filter(|&(_, &count)| count > 0);
        f.debug_map().entries(occupied).finish()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            counts: [0; BUCKETS],
        }
    }

    /// A histogram from stored counts (bucket `i` counts durations from
    /// `LOWER_BOUNDS_MICROS[i]`).
    #[must_use]
    pub const fn from_counts(counts: [u64; BUCKETS]) -> Self {
        Self { counts }
    }

    /// The counts per bucket, to store.
    #[must_use]
    pub const fn counts(&self) -> &[u64; BUCKETS] {
        &self.counts
    }

    /// The index of the bucket that holds `latency`.
    #[must_use]
    pub fn bucket_of(latency: Duration) -> usize {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // LOWER_BOUNDS_MICROS[0] is 0, so at least one bound is <= micros.
        LOWER_BOUNDS_MICROS
            .partition_point(|&bound| bound <= micros)
            .saturating_sub(1)
    }

    /// Counts one duration (saturating).
    pub fn record(&mut self, latency: Duration) {
        if let Some(count) = self.counts.get_mut(Self::bucket_of(latency)) {
            *count = count.saturating_add(1);
        }
    }

    /// Adds another histogram's counts to this one (saturating).
    pub fn merge(&mut self, other: &Self) {
        for (count, add) in self.counts.iter_mut().zip(other.counts.iter()) {
            *count = count.saturating_add(*add);
        }
    }

    /// The number of durations counted (saturating).
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |sum, &count| sum.saturating_add(count))
    }

    /// The `q`-quantile (`0 ≤ q ≤ 1`, clamped), rounded *up* to the upper bound of its bucket
    /// (at most about 19 % above the true value); `None` when the histogram is empty or `q` is
    /// NaN. A quantile in the last bucket is reported as 60 s (it is at least that).
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.total();
        if total == 0 || q.is_nan() {
            return None;
        }
        // The rank of the quantile among 1..=total; the float-to-int cast saturates.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(count);
            if seen >= rank {
                let upper = LOWER_BOUNDS_MICROS
                    .get(index + 1)
                    .or(LOWER_BOUNDS_MICROS.last())
                    .copied()
                    .unwrap_or(0);
                return Some(Duration::from_micros(upper));
            }
        }
        None
    }

    /// The number of durations in buckets that start at or above `threshold`: durations of at
    /// least `threshold`, at bucket resolution (a bucket the threshold falls inside is not
    /// counted).
    #[must_use]
    pub fn count_above(&self, threshold: Duration) -> u64 {
        let micros = u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX);
        LOWER_BOUNDS_MICROS
            .iter()
            .zip(self.counts.iter())
            .filter(|&(&bound, _)| bound >= micros)
            .fold(0u64, |sum, (_, &count)| sum.saturating_add(count))
    }
}

impl From<LatencyHistogram> for Vec<u64> {
    fn from(histogram: LatencyHistogram) -> Self {
        histogram.counts.to_vec()
    }
}

impl TryFrom<Vec<u64>> for LatencyHistogram {
    type Error = HistogramLengthError;

    fn try_from(counts: Vec<u64>) -> Result<Self, Self::Error> {
        let len = counts.len();
        <[u64; BUCKETS]>::try_from(counts)
            .map(Self::from_counts)
            .map_err(|_| HistogramLengthError { len })
    }
}

/// Stored counts that are not a [`LatencyHistogram`]: the wrong number of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramLengthError {
    len: usize,
}

impl fmt::Display for HistogramLengthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a latency histogram is {BUCKETS} bucket counts, found {}: the stored value was written \
             by another version or damaged; discard it",
            self.len
        )
    }
}

impl std::error::Error for HistogramLengthError {}

/// Both arms' counts of slow requests, for [`sequential::test`](super::sequential::test()).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowRequests {
    /// The threshold both arms were counted against, in microseconds (the control's quantile
    /// times `1 + tolerance`); `None` when the control arm is empty.
    pub threshold_micros: Option<u64>,
    /// The control arm: its requests, and those at or above the threshold.
    pub control: Arm,
    /// The treatment arm: its requests, and those at or above the threshold.
    pub treatment: Arm,
}

/// Counts the requests of each arm at or above the control arm's `quantile` widened by
/// `tolerance` (`0.1` = 10 % slower than the control's quantile is still fine). A non-finite or
/// negative tolerance counts as 0. With an empty control arm nothing is slow (and
/// [`sequential::test`](super::sequential::test()) answers
/// [`Insufficient`](super::sequential::Verdict::Insufficient) for it anyway).
#[must_use]
pub fn slow_requests(
    control: &LatencyHistogram,
    treatment: &LatencyHistogram,
    quantile: f64,
    tolerance: f64,
) -> SlowRequests {
    let tolerance = if tolerance.is_finite() {
        tolerance.max(0.0)
    } else {
        0.0
    };
    // The float-to-int cast saturates (and a NaN is impossible here: both factors are finite).
    let threshold_micros = control
        .quantile(quantile)
        .map(|q| (q.as_micros() as f64 * (1.0 + tolerance)).ceil() as u64);
    let count = |histogram: &LatencyHistogram| {
        let events = threshold_micros.map_or(0, |micros| {
            histogram.count_above(Duration::from_micros(micros))
        });
        Arm::new(histogram.total(), events)
    };
    SlowRequests {
        threshold_micros,
        control: count(control),
        treatment: count(treatment),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn bounds_follow_the_formula() {
        let ratio = 60_000f64.powf(1.0 / 62.0);
        assert_eq!(LOWER_BOUNDS_MICROS[0], 0);
        for (i, &bound) in LOWER_BOUNDS_MICROS.iter().enumerate().skip(1) {
            let want = (1000.0 * ratio.powi(i as i32 - 1)).round() as u64;
            assert_eq!(bound, want, "bucket {i}");
        }
        assert!(LOWER_BOUNDS_MICROS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn record_lands_in_the_right_bucket() {
        let mut h = LatencyHistogram::new();
        for (d, bucket) in [
            (Duration::ZERO, 0),
            (Duration::from_micros(999), 0),
            (Duration::from_millis(1), 1),
            (Duration::from_micros(1193), 1),
            (Duration::from_micros(1194), 2),
            (Duration::from_secs(59), 62),
            (Duration::from_secs(60), 63),
            (Duration::MAX, 63),
        ] {
            assert_eq!(LatencyHistogram::bucket_of(d), bucket, "{d:?}");
            h.record(d);
        }
        assert_eq!(h.total(), 8);
        assert_eq!(h.counts()[63], 2);
    }

    #[test]
    fn quantile_is_the_bucket_upper_bound() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=1000 {
            h.record(Duration::from_millis(ms));
        }
        for q in [0.01, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let got = h.quantile(q).unwrap();
            let exact = Duration::from_millis((q * 1000.0) as u64);
            assert!(got >= exact, "q{q}: {got:?} < {exact:?}");
            assert!(
                got.as_secs_f64() <= exact.as_secs_f64() * 1.2 + 1e-3,
                "q{q}: {got:?}"
            );
        }
        assert_eq!(h.quantile(f64::NAN), None);
        assert_eq!(h.quantile(-1.0), h.quantile(0.0));
        let mut slow = LatencyHistogram::new();
        slow.record(Duration::from_secs(3600));
        assert_eq!(slow.quantile(0.5), Some(Duration::from_secs(60)));
    }

    #[test]
    fn count_above_counts_whole_buckets_from_the_threshold() {
        let mut h = LatencyHistogram::new();
        for ms in [1, 2, 5, 10, 100, 1000] {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count_above(Duration::ZERO), 6);
        // 10 043 µs starts the bucket holding 10.043 ms…11.993 ms; 10 ms is below it.
        assert_eq!(h.count_above(Duration::from_micros(10_043)), 2);
        assert_eq!(h.count_above(Duration::from_micros(8_410)), 3);
        assert_eq!(h.count_above(Duration::MAX), 0);
    }

    proptest::proptest! {
        /// The quantile is the upper bound of the bucket holding the exact order statistic, and
        /// `count_above` never counts a duration below its threshold.
        #[test]
        fn quantile_and_count_above_bracket_the_data(
            mut micros in proptest::collection::vec(0u64..100_000_000, 1..200),
            q in 0.0f64..=1.0,
            threshold in 0u64..100_000_000,
        ) {
            let mut h = LatencyHistogram::new();
            for &m in &micros {
                h.record(Duration::from_micros(m));
            }
            micros.sort_unstable();
            let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
            let exact = micros[rank - 1];
            let got = u64::try_from(h.quantile(q).unwrap().as_micros()).unwrap();
            let bucket = LatencyHistogram::bucket_of(Duration::from_micros(exact));
            let upper = LOWER_BOUNDS_MICROS.get(bucket + 1).copied().unwrap_or(60_000_000);
            proptest::prop_assert_eq!(got, upper);
            let above = h.count_above(Duration::from_micros(threshold));
            let truly_above = micros.iter().filter(|&&m| m >= threshold).count() as u64;
            proptest::prop_assert!(above <= truly_above);
        }
    }

    #[test]
    fn merge_adds_and_saturates() {
        let mut a = LatencyHistogram::new();
        a.record(Duration::from_millis(3));
        let mut b = LatencyHistogram::from_counts([u64::MAX; BUCKETS]);
        b.merge(&a);
        assert_eq!(b.total(), u64::MAX);
        a.merge(&a.clone());
        assert_eq!(a.total(), 2);
    }

    #[test]
    fn json_is_64_counts_and_wrong_lengths_are_refused() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_millis(20));
        let json = serde_json::to_value(h).unwrap();
        assert_eq!(json.as_array().unwrap().len(), BUCKETS);
        let err = serde_json::from_str::<LatencyHistogram>("[1,2,3]").unwrap_err();
        assert!(err.to_string().contains("found 3"), "{err}");
    }

    #[test]
    fn slow_requests_share_one_threshold() {
        let (mut c, mut t) = (LatencyHistogram::new(), LatencyHistogram::new());
        let empty = slow_requests(&c, &t, 0.95, 0.1);
        assert_eq!(empty.threshold_micros, None);
        assert_eq!(empty.control, Arm::new(0, 0));
        for ms in 1..=100 {
            c.record(Duration::from_millis(ms));
            t.record(Duration::from_millis(ms + 50));
        }
        let slow = slow_requests(&c, &t, 0.95, 0.0);
        let threshold = slow.threshold_micros.unwrap();
        assert_eq!(
            slow.control.events,
            c.count_above(Duration::from_micros(threshold))
        );
        assert!(slow.control.events <= 5);
        assert!(slow.treatment.events > 40);
        // A huge tolerance pushes the threshold out of reach, without overflow.
        let none = slow_requests(&c, &t, 0.95, f64::MAX);
        assert_eq!((none.control.events, none.treatment.events), (0, 0));
        let nan = slow_requests(&c, &t, 0.95, f64::NAN);
        assert_eq!(nan, slow);
    }
}
