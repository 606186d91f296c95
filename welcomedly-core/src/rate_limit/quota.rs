//! Quotas ("N per period, burst B") and the GCRA arithmetic shared by every backend.
//!
//! The Generic Cell Rate Algorithm keeps one number per key: the *theoretical arrival time*
//! (TAT) of the next request if the client used its quota evenly. A request at `now` is admitted
//! when `max(tat, now) + T - now <= T * burst`, where `T = period / count` is the emission
//! interval; admitting it moves the TAT forward by `T`. The Redis backend of welcomedly-cluster runs
//! the same arithmetic in a Lua script (in microseconds), so a key is limited the same way whether
//! its state lives in this process or in Redis.

use std::time::Duration;

/// How many requests a key may make: `count` per `period`, with bursts of up to `burst`
/// requests at once (default: `count`).
///
/// Written the way it reads, so it cannot be misread:
///
/// ```
/// use std::time::Duration;
/// use welcomedly_core::rate_limit::Quota;
///
/// let login = Quota::per_minute(5);                    // 5 per minute, bursts of 5
/// let api = Quota::per_minute(200).with_burst(50);     // 200 per minute, bursts of 50
/// let upload = Quota::new(3, Duration::from_secs(60)); // 3 per 60 s
/// assert_eq!(login.count(), 5);
/// assert_eq!(api.burst(), 50);
/// assert_eq!(upload.period(), Duration::from_secs(60));
/// ```
///
/// A zero count, burst or period is rejected when the layer is built
/// ([`BuildError`](super::BuildError)), not here, so presets stay `const`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: Option<u32>,
}

impl Quota {
    /// `count` requests per `period`.
    pub const fn new(count: u32, period: Duration) -> Self {
        Self {
            count,
            period,
            burst: None,
        }
    }

    /// `count` requests per second.
    pub const fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub const fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub const fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// Allow bursts of up to `burst` requests at once (default: the count).
    #[must_use]
    pub const fn with_burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Requests per period.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The largest burst admitted at once.
    pub const fn burst(&self) -> u32 {
        match self.burst {
            Some(b) => b,
            None => self.count,
        }
    }

    /// The GCRA parameters of this quota, or `None` when the count, burst or period is zero.
    pub fn gcra(&self) -> Option<Gcra> {
        let burst = self.burst();
        if self.count == 0 || burst == 0 || self.period.is_zero() {
            return None;
        }
        let period = u64::try_from(self.period.as_nanos()).ok()?;
        // Rounded up so the emission interval never admits more than `count` per period.
        let interval = period.div_ceil(u64::from(self.count));
        Some(Gcra {
            interval,
            window: interval.checked_mul(u64::from(burst))?,
        })
    }
}

impl From<governor::Quota> for Quota {
    /// A governor quota: one request per replenish interval, bursts of `burst_size`.
    fn from(q: governor::Quota) -> Self {
        Quota::new(1, q.replenish_interval()).with_burst(q.burst_size().get())
    }
}

/// GCRA parameters in nanoseconds: the emission interval `T` and the window `T * burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    window: u64,
}

/// The verdict of the GCRA for one key at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraOutcome {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The TAT to store when the request is admitted (unchanged state otherwise).
    pub new_tat: u64,
    /// Requests still admitted at once after this one (0 when rejected).
    pub remaining: u64,
    /// Nanoseconds until the key's quota is whole again.
    pub reset: u64,
    /// Nanoseconds until a rejected request would be admitted (0 when admitted).
    pub retry_after: u64,
}

impl Gcra {
    /// Emission interval `T` in nanoseconds.
    pub const fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// `T * burst` in nanoseconds: how far ahead of now the TAT may run.
    pub const fn window_nanos(&self) -> u64 {
        self.window
    }

    /// This quota divided among `share` instances (the local fallback of a cluster-wide limit):
    /// the emission interval grows `share` times (the cluster-wide rate stays the quota's), the
    /// burst shrinks to `burst / share` rounded **up**. Rounded down, a small burst lost most of
    /// itself — 5 failed logins over 3 instances left 1 per instance, 3 in the cluster, and one
    /// request in flight on an instance (a reservation) refused the same client's next one —
    /// while rounding up lets a client spread over every instance burst at most `share - 1`
    /// requests past the quota.
    #[must_use]
    pub fn divided(&self, share: u32) -> Gcra {
        let share = u64::from(share.max(1));
        let burst = (self.window / self.interval).max(1);
        let interval = self.interval.saturating_mul(share);
        Gcra {
            interval,
            window: interval.saturating_mul(burst.div_ceil(share)),
        }
    }

    /// The part of this quota that admits `tokens` of its burst at `tokens / burst` of its
    /// rate: the same window (the time an empty key takes to be whole again), an emission
    /// interval of `window / tokens` rounded up. Parts whose tokens add up to at most the burst
    /// never admit together more than the whole quota over any span of time: each admits at
    /// most `tokens + span / interval`, and the tokens and the rates add up to at most the
    /// whole's. A backend splitting a cluster-wide limit between the instances' local shares
    /// and a shared pool decides each with its part. `tokens` 0 is taken as 1.
    #[must_use]
    pub fn part(&self, tokens: u64) -> Gcra {
        let tokens = tokens.max(1);
        let interval = self.window.div_ceil(tokens).max(1);
        Gcra {
            interval,
            window: interval.saturating_mul(tokens),
        }
    }

    /// The burst: requests admitted at once by a key that is whole (`window / interval`, at
    /// least 1).
    pub const fn burst(&self) -> u64 {
        let b = self.window / self.interval;
        if b == 0 { 1 } else { b }
    }

    /// Decides one request at `now` for a key whose stored TAT is `tat` (`None`: never seen or
    /// expired). Pure: the caller stores `new_tat` only if it commits.
    pub fn decide(&self, tat: Option<u64>, now: u64) -> GcraOutcome {
        let tat = tat.map_or(now, |t| t.max(now));
        let new_tat = tat.saturating_add(self.interval);
        let ahead = new_tat - now;
        if ahead <= self.window {
            GcraOutcome {
                allowed: true,
                new_tat,
                remaining: (self.window - ahead) / self.interval,
                reset: ahead,
                retry_after: 0,
            }
        } else {
            GcraOutcome {
                allowed: false,
                new_tat: tat,
                remaining: 0,
                reset: tat - now,
                retry_after: ahead - self.window,
            }
        }
    }

    /// Gives back one admitted request's charge (a policy that charges only some response
    /// statuses reserves at admission and refunds the others; a request rejected by another
    /// policy refunds the policies that had admitted it): the TAT moves back by `T`, never below
    /// `now` (a key cannot bank capacity beyond a full burst).
    pub fn refund(&self, tat: u64, now: u64) -> u64 {
        tat.saturating_sub(self.interval).max(now)
    }
}

/// Whole seconds, rounded up (`Retry-After` must never promise an earlier time than the real one).
pub(crate) fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn five_per_minute_admits_a_burst_of_five_then_one_per_twelve_seconds() {
        let g = Quota::per_minute(5).gcra().unwrap();
        let mut tat = None;
        for i in 0..5 {
            let o = g.decide(tat, 0);
            assert!(o.allowed, "request {i} of the burst");
            assert_eq!(o.remaining, 4 - i);
            tat = Some(o.new_tat);
        }
        let o = g.decide(tat, 0);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 12 * SEC);
        assert_eq!(o.reset, 60 * SEC);
        assert!(!g.decide(tat, 12 * SEC - 1).allowed);
        assert!(g.decide(tat, 12 * SEC).allowed);
    }

    #[test]
    fn a_refund_undoes_one_admission() {
        let g = Quota::per_minute(5).gcra().unwrap();
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(g.decide(tat, 0).new_tat);
        }
        assert!(!g.decide(tat, 0).allowed);
        let refunded = g.refund(tat.unwrap(), 0);
        let o = g.decide(Some(refunded), 0);
        assert!(o.allowed);
        assert_eq!(o.new_tat, tat.unwrap());
        // Never below now: refunding an idle key banks nothing.
        assert_eq!(g.refund(3 * SEC, 10 * SEC), 10 * SEC);
    }

    #[test]
    fn zero_values_have_no_gcra() {
        assert!(Quota::per_minute(0).gcra().is_none());
        assert!(Quota::per_minute(5).with_burst(0).gcra().is_none());
        assert!(Quota::new(5, Duration::ZERO).gcra().is_none());
    }

    #[test]
    fn divided_quota_admits_a_share() {
        let g = Quota::per_minute(6).gcra().unwrap().divided(3);
        assert_eq!(g.interval_nanos(), 30 * SEC);
        assert_eq!(g.window_nanos(), 60 * SEC);
        // A small burst keeps its fair part, rounded up: 5 over 3 instances is 2 each.
        let g = Quota::per_minute(5).gcra().unwrap().divided(3);
        assert_eq!(g.interval_nanos(), 36 * SEC);
        assert_eq!(g.window_nanos(), 72 * SEC);
        // Never below one request.
        let g = Quota::per_minute(2).gcra().unwrap().divided(8);
        assert_eq!(g.window_nanos(), g.interval_nanos());
    }

    #[test]
    fn parts_of_a_quota_never_admit_more_than_the_whole() {
        // 100 a minute split into three local shares of 1 and a pool of 97: from a standing
        // start and over the next minute, together at most what the whole admits.
        let whole = Quota::per_minute(100).gcra().unwrap();
        assert_eq!(whole.burst(), 100);
        let local = whole.part(1);
        let pool = whole.part(97);
        assert_eq!((local.burst(), pool.burst()), (1, 97));
        assert!(local.interval_nanos() >= 60 * SEC);
        let admitted_over = |g: Gcra, span: u64| {
            let (mut tat, mut n) = (None, 0u64);
            let mut now = 0;
            while now <= span {
                let o = g.decide(tat, now);
                if o.allowed {
                    tat = Some(o.new_tat);
                    n += 1;
                } else {
                    now += SEC / 10;
                }
            }
            n
        };
        let whole_n = admitted_over(whole, 60 * SEC);
        let parts_n = 3 * admitted_over(local, 60 * SEC) + admitted_over(pool, 60 * SEC);
        assert!(parts_n <= whole_n, "{parts_n} > {whole_n}");
        assert!(
            parts_n + 3 >= whole_n,
            "the parts lose more than rounding: {parts_n} vs {whole_n}"
        );
    }

    #[test]
    fn governor_quota_converts() {
        let q = governor::Quota::per_second(std::num::NonZeroU32::new(10).unwrap());
        let g = Quota::from(q).gcra().unwrap();
        assert_eq!(g.interval_nanos(), SEC / 10);
        assert_eq!(g.window_nanos(), SEC);
    }

    proptest! {
        /// A client told to come back after `Retry-After` seconds (rounded up) is admitted then,
        /// and not one nanosecond of the real wait earlier.
        #[test]
        fn waiting_retry_after_is_enough(count in 1u32..1000, period_s in 1u64..3600,
                                         burst in 1u32..100, hits in 1usize..200,
                                         gaps in proptest::collection::vec(0u64..5 * SEC, 200)) {
            let g = Quota::new(count, Duration::from_secs(period_s)).with_burst(burst).gcra().unwrap();
            let (mut now, mut tat) = (0u64, None);
            for gap in gaps.iter().take(hits) {
                now += gap;
                let o = g.decide(tat, now);
                if o.allowed {
                    tat = Some(o.new_tat);
                } else {
                    prop_assert!(o.retry_after > 0);
                    prop_assert!(!g.decide(tat, now + o.retry_after - 1).allowed);
                    let later = now + ceil_secs(o.retry_after) * SEC;
                    prop_assert!(g.decide(tat, later).allowed);
                }
            }
        }

        /// In any window of length `w`, at most `burst + w / T` requests are admitted.
        #[test]
        fn never_admits_more_than_burst_plus_rate(count in 1u32..100, burst in 1u32..20,
                                                  gaps in proptest::collection::vec(0u64..SEC, 1..300)) {
            let g = Quota::per_second(count).with_burst(burst).gcra().unwrap();
            let (mut now, mut tat, mut admitted) = (0u64, None, Vec::new());
            for gap in gaps {
                now += gap;
                let o = g.decide(tat, now);
                if o.allowed { tat = Some(o.new_tat); admitted.push(now); }
            }
            for (i, start) in admitted.iter().enumerate() {
                let w = 2 * SEC;
                let n = admitted[i..].iter().take_while(|t| **t < start + w).count() as u64;
                prop_assert!(n <= u64::from(burst) + w / g.interval_nanos() + 1);
            }
        }

        /// A quota split as the Redis backend's local-first shares split it (`I` shares of
        /// `s = min(B / 64, B / (8 I))` and a pool of the rest, the pool's interval rounded up
        /// to whole microseconds as the script has it), with odd bursts and per-second,
        /// per-minute and per-hour periods: under any schedule of requests, each sent to one of
        /// the parts, the parts together admit in any span `w` starting at an admission at most
        /// what the whole admits, `B + w / T`. (Each part given one token more fails it.)
        #[test]
        fn parts_never_admit_more_than_the_whole(count in 1u32..5000, unit in 0u64..3,
                                                 burst in 64u32..400, instances in 1u64..12,
                                                 events in proptest::collection::vec((0u64..64, 0u64..64), 1..2000)) {
            let period = Duration::from_secs([1, 60, 3600][usize::try_from(unit).unwrap()]);
            let whole = Quota::new(count, period).with_burst(burst).gcra().unwrap();
            let b = whole.burst();
            let share = (b / 64).min(b / (8 * instances));
            prop_assume!(share > 0);
            let pool = whole.part(b - instances * share);
            // The script's rounding: interval µs rounded up, window = interval × burst.
            let us = pool.interval.div_ceil(1000) * 1000;
            let pool = Gcra { interval: us, window: us * pool.burst() };
            let mut parts: Vec<(Gcra, Option<u64>)> = (0..instances)
                .map(|_| (whole.part(share), None))
                .collect();
            parts.push((pool, None));
            let (mut now, mut admitted) = (0u64, Vec::new());
            for (gap, to) in events {
                // Mostly none (bursts), else up to 2 of the whole's intervals, in sixteenths.
                now += whole.interval / 16 * gap.saturating_sub(32);
                // The client asks the parts in turn from a random one, until one admits it.
                let n = parts.len();
                let first = usize::try_from(to).unwrap() % n;
                for j in 0..n {
                    let (g, tat) = &mut parts[(first + j) % n];
                    let o = g.decide(*tat, now);
                    if o.allowed {
                        *tat = Some(o.new_tat);
                        admitted.push(now);
                        break;
                    }
                }
            }
            for (i, start) in admitted.iter().enumerate() {
                for w in [0, whole.interval, 10 * whole.interval, whole.window, u64::MAX - start] {
                    let n = admitted[i..].partition_point(|t| *t - start <= w) as u64;
                    prop_assert!(n <= b + w / whole.interval,
                        "{n} admitted in {w} ns from {start}: more than {b} + {}", w / whole.interval);
                }
            }
        }

        /// Remaining never exceeds burst - 1 and reset never exceeds the window.
        #[test]
        fn headers_stay_in_range(count in 1u32..1000, burst in 1u32..100, tat in proptest::option::of(0u64..100 * SEC), now in 0u64..100 * SEC) {
            let g = Quota::per_minute(count).with_burst(burst).gcra().unwrap();
            let o = g.decide(tat, now);
            prop_assert!(o.remaining < u64::from(burst));
            prop_assert!(o.reset <= g.window_nanos() + 100 * SEC);
            if o.allowed { prop_assert!(o.reset <= g.window_nanos()); }
        }
    }
}
