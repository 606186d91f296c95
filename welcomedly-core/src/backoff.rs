//! [`Backoff`]: exponential delays with jitter, the one retry schedule of every reconnect loop
//! (the Redis link, the database router's probes).
//!
//! Each delay doubles the previous one up to a cap and is then scaled to a random 50–100 %, so
//! instances that lost the same server do not retry in lockstep.
//!
//! ```
//! use std::time::Duration;
//! use welcomedly_core::backoff::Backoff;
//!
//! let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
//! let mut delays = backoff.delays();
//! let first = delays.next_delay();
//! assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
//! // Later delays never pass the cap.
//! for _ in 0..20 {
//!     assert!(delays.next_delay() <= Duration::from_secs(2));
//! }
//! ```

use std::time::Duration;

/// An exponential backoff schedule with jitter: plain data, `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (before jitter). Default 100 ms.
    pub initial: Duration,
    /// The largest delay (before jitter). Default 2 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(2))
    }
}

impl Backoff {
    /// A schedule starting at `initial` and doubling up to `max` (a `max` below `initial` is
    /// taken as `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// A fresh run of delays (start one per outage).
    pub fn delays(&self) -> Delays {
        Delays {
            next: self.initial,
            max: self.max.max(self.initial),
        }
    }
}

/// One run of a [`Backoff`] schedule.
#[derive(Debug, Clone)]
pub struct Delays {
    next: Duration,
    max: Duration,
}

impl Delays {
    /// The next delay, jittered to 50–100 % of the schedule's value.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        jittered(d)
    }
}

/// `delay` scaled to a random 50–100 %.
pub fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let mut d = Backoff::new(Duration::from_millis(100), Duration::from_millis(400)).delays();
        let bounds = [100, 200, 400, 400, 400];
        for b in bounds {
            let got = d.next_delay();
            let b = Duration::from_millis(b);
            assert!(got >= b / 2 && got <= b, "{got:?} outside {b:?}/2..={b:?}");
        }
    }

    #[test]
    fn a_cap_below_the_start_is_the_start() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(10));
        assert_eq!(b.max, Duration::from_millis(100));
    }
}
