//! Rate-limited logging of accept errors: a full file table (`EMFILE`) fails every `accept`
//! until a descriptor is freed, and one line per failure buried the log (425 lines in 40 s
//! under a slow-client flood). One line per [`ACCEPT_ERROR_LOG_INTERVAL`] at most, each with the
//! number of errors left out since the previous one, and one line when accepting works again.

use std::time::{Duration, Instant};

/// The shortest time between two "accept failed" lines.
pub(super) const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Decides which accept errors are logged; time is passed in, so tests need no clock.
#[derive(Debug)]
pub(super) struct AcceptErrorLog {
    interval: Duration,
    last_line: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrorLog {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_line: None,
            suppressed: 0,
        }
    }

    /// An accept failed at `now`: `Some(n)` when a line is due, `n` being the errors left out
    /// since the previous line; `None` when this one is counted instead.
    pub(super) fn on_error(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            self.last_line = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// An accept succeeded: `Some(n)` when `n > 0` errors were left out since the last line
    /// (say so once, with the count), else `None`.
    pub(super) fn on_accept(&mut self) -> Option<u64> {
        if self.suppressed == 0 {
            return None;
        }
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Log an accept error through this limiter.
    pub(super) fn error(&mut self, err: &std::io::Error) {
        if let Some(suppressed) = self.on_error(Instant::now()) {
            tracing::error!(
                error = %err,
                suppressed,
                interval_s = self.interval.as_secs(),
                "accept failed; retrying shortly (at most one such line per interval, \
                 `suppressed` counts the ones left out). If the error is \"Too many open \
                 files\", lower WELCOMEDLY_MAX_CONNECTIONS or raise the open-file limit"
            );
        }
    }

    /// Note a successful accept (logs once when errors were left out).
    pub(super) fn accepted(&mut self) {
        if let Some(suppressed) = self.on_accept() {
            tracing::warn!(
                suppressed,
                "accepting again after accept errors (`suppressed` counts those not logged)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let mut log = AcceptErrorLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.on_error(at(0)), Some(0), "the first error is logged");
        // An EMFILE every 100 ms for 40 s: 400 errors, 4 lines.
        let mut lines = vec![(0, 0)];
        for n in 1..400u64 {
            if let Some(suppressed) = log.on_error(at(n * 100)) {
                lines.push((n * 100, suppressed));
            }
        }
        assert_eq!(
            lines,
            [(0, 0), (10_000, 99), (20_000, 99), (30_000, 99)],
            "one line per 10 s, each counting the 99 errors between"
        );
        assert_eq!(log.on_accept(), Some(99), "recovery reports the rest");
        assert_eq!(log.on_accept(), None, "once");
        assert_eq!(
            log.on_error(at(41_000)),
            Some(0),
            "a later error after a quiet interval is logged at once"
        );
    }
}
