//! Exponential backoff with jitter, shared by every retry loop of the stores and the sync.

use std::time::Duration;

/// Delays that double from `first` up to `max`, each jittered to a random 50–100 % so that many
/// instances retrying after the same outage do not retry in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        let first = first.max(Duration::from_millis(1));
        Self {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The delay before the next attempt (jittered), and doubles the one after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = jittered(self.next);
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// Back to the first delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// `delay` scaled to a random 50–100 %.
pub(crate) fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let bounds = [100, 200, 400, 400];
        for max in bounds {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(max / 2) && d <= Duration::from_millis(max),
                "{d:?} not in {max}/2..={max}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
