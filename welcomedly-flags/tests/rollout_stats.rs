//! Seeded simulations of guarded rollouts judged by `rollout::sequential::test`: the false-rollback
//! rate of healthy changes under continuous monitoring (against a naive z-test repeated on the
//! same data), and the power and requests-to-detection for error-ratio and latency regressions.
//!
//! Run `cargo test -p welcomedly-flags --test rollout_stats -- --nocapture` to see the tables.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use welcomedly_flags::rollout::histogram::{LatencyHistogram, slow_requests};
use welcomedly_flags::rollout::sequential::{Arm, SequentialConfig, Verdict, test};

/// Requests per arm between two looks at the data.
const BATCH: u64 = 50;
/// Requests per arm at the end of a rollout.
const HORIZON: u64 = 20_000;

/// The events among the first `n` Bernoulli(p) trials, drawn by geometric gaps between events so
/// a 1 % stream costs one random number per event rather than per trial.
struct BernoulliStream {
    log_q: f64,
    next_event: u64,
    arm: Arm,
}

impl BernoulliStream {
    fn new(p: f64, rng: &mut fastrand::Rng) -> Self {
        let log_q = (1.0 - p).ln();
        let mut stream = Self {
            log_q,
            next_event: 0,
            arm: Arm::default(),
        };
        stream.next_event = stream.gap(rng);
        stream
    }

    /// The gap to the next event, at least 1 (the first event is trial `gap`, counting from 1).
    fn gap(&self, rng: &mut fastrand::Rng) -> u64 {
        if self.log_q == 0.0 {
            return u64::MAX / 2;
        }
        let u = 1.0 - rng.f64(); // (0, 1]
        1 + (u.ln() / self.log_q).floor() as u64
    }

    /// Serves `n` more trials and returns the cumulative arm.
    fn serve(&mut self, n: u64, rng: &mut fastrand::Rng) -> Arm {
        self.arm.trials += n;
        while self.next_event <= self.arm.trials {
            self.arm.events += 1;
            self.next_event += self.gap(rng);
        }
        self.arm
    }
}

/// The cumulative (control, treatment) counts at every look of one simulated rollout.
fn error_path(
    rng: &mut fastrand::Rng,
    p_control: f64,
    p_treatment: f64,
    control_batch: u64,
    treatment_batch: u64,
) -> Vec<(Arm, Arm)> {
    let mut control = BernoulliStream::new(p_control, rng);
    let mut treatment = BernoulliStream::new(p_treatment, rng);
    (0..HORIZON / BATCH)
        .map(|_| {
            (
                control.serve(control_batch, rng),
                treatment.serve(treatment_batch, rng),
            )
        })
        .collect()
}

/// The treatment requests at the first look where `rejects` says so, if any.
fn first_rejection(path: &[(Arm, Arm)], rejects: impl Fn(Arm, Arm) -> bool) -> Option<u64> {
    path.iter()
        .find(|&&(c, t)| rejects(c, t))
        .map(|&(_, t)| t.trials)
}

fn msprt(cfg: SequentialConfig) -> impl Fn(Arm, Arm) -> bool {
    move |c, t| test(c, t, &cfg).verdict == Verdict::Regression
}

/// What a dashboard without sequential statistics does: a one-sided pooled two-proportion z-test
/// at level `alpha`, valid for one look, repeated at every look.
fn naive_z_test(alpha_z: f64, min_trials: u64) -> impl Fn(Arm, Arm) -> bool {
    move |c, t| {
        if c.trials < min_trials || t.trials < min_trials {
            return false;
        }
        let (n_c, n_t) = (c.trials as f64, t.trials as f64);
        let pooled = (c.events + t.events) as f64 / (n_c + n_t);
        let se = (pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t)).sqrt();
        se > 0.0 && (t.rate() - c.rate()) / se >= alpha_z
    }
}

/// `z` with `P(Z ≥ z) = 0.05`.
const Z_95: f64 = 1.644_853_626_951_472_2;

/// The value at quantile `q` of a sorted, non-empty slice.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Detection rate, median and p90 requests per (treatment) arm to detection.
struct Power {
    rollouts: usize,
    detected: Vec<u64>,
}

impl Power {
    fn new(rollouts: usize, mut detected: Vec<u64>) -> Self {
        detected.sort_unstable();
        Self { rollouts, detected }
    }

    fn rate(&self) -> f64 {
        self.detected.len() as f64 / self.rollouts as f64
    }

    fn row(&self, label: &str) -> String {
        let (median, p90) = if self.detected.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                percentile(&self.detected, 0.5).to_string(),
                percentile(&self.detected, 0.9).to_string(),
            )
        };
        format!(
            "| {label:<28} | {:>6.1} % | {median:>8} | {p90:>8} |",
            100.0 * self.rate()
        )
    }
}

const TABLE_HEAD: &str =
    "| effect                       | detected | median n | p90 n    |\n|---|---|---|---|";

#[test]
fn healthy_changes_are_rarely_rolled_back_under_continuous_monitoring() {
    const ROLLOUTS: usize = 10_000;
    let cfg = SequentialConfig::default();
    let mut rng = fastrand::Rng::with_seed(0x5EED_A0A0);
    let (mut ours, mut naive) = (0usize, 0usize);
    for _ in 0..ROLLOUTS {
        let path = error_path(&mut rng, 0.01, 0.01, BATCH, BATCH);
        ours += usize::from(first_rejection(&path, msprt(cfg)).is_some());
        naive += usize::from(
            first_rejection(&path, naive_z_test(Z_95, cfg.min_trials_per_arm)).is_some(),
        );
    }
    let (ours, naive) = (
        ours as f64 / ROLLOUTS as f64,
        naive as f64 / ROLLOUTS as f64,
    );
    println!(
        "A/A, both arms 1 % errors, {ROLLOUTS} rollouts, a look every {BATCH} requests per arm up to \
         {HORIZON}: false rollbacks mSPRT {:.2} %, naive z-test at 5 % {:.2} %",
        100.0 * ours,
        100.0 * naive
    );
    // The guarantee, with a margin for the normal approximation and simulation noise
    // (the standard error of a 5 % rate over 10 000 rollouts is 0.22 %).
    assert!(ours <= cfg.alpha + 0.005, "false-rollback rate {ours}");
    // The same data judged by a z-test that is only valid for a single look: far above 5 %.
    assert!(naive > 3.0 * cfg.alpha, "naive false-alarm rate {naive}");
}

#[test]
fn healthy_changes_hold_with_unequal_arms_and_rare_errors() {
    const ROLLOUTS: usize = 2_000;
    let cfg = SequentialConfig::default();
    let mut rng = fastrand::Rng::with_seed(0x5EED_A0A1);
    let mut rows = Vec::new();
    // (label, error rate, control per look, treatment per look): 10 % and 1 % rollouts (the
    // treatment gets 50 per look, the control 450 or 4 950) and a rare-error service at 0.1 %.
    // A normal approximation alone gives 9.8 % false rollbacks on the last one.
    for (label, p, control_batch, treatment_batch) in [
        ("1 %, 10 % rollout", 0.01, 450, 50),
        ("1 %, 1 % rollout", 0.01, 4_950, 50),
        ("0.1 %, 50/50", 0.001, 50, 50),
        ("0.1 %, 1 % rollout", 0.001, 4_950, 50),
        ("5 %, 10 % rollout", 0.05, 450, 50),
    ] {
        let mut false_rollbacks = 0usize;
        for _ in 0..ROLLOUTS {
            let path = error_path(&mut rng, p, p, control_batch, treatment_batch);
            false_rollbacks += usize::from(first_rejection(&path, msprt(cfg)).is_some());
        }
        let rate = false_rollbacks as f64 / ROLLOUTS as f64;
        rows.push(format!("| {label:<20} | {:>5.2} % |", 100.0 * rate));
        // Standard error of 5 % over 2 000 rollouts: 0.49 %.
        assert!(
            rate <= cfg.alpha + 0.015,
            "{label}: false-rollback rate {rate}"
        );
    }
    println!(
        "A/A false rollbacks, {ROLLOUTS} rollouts each:\n| arms | false rollbacks |\n|---|---|\n{}",
        rows.join("\n")
    );
}

#[test]
fn error_ratio_regressions_are_found() {
    const ROLLOUTS: usize = 1_000;
    let cfg = SequentialConfig::default();
    let mut rng = fastrand::Rng::with_seed(0x5EED_E440);
    let mut rows = Vec::new();
    let mut powers = Vec::new();
    for increase_pp in [0.5, 1.0, 2.0, 3.0, 5.0] {
        let detected = (0..ROLLOUTS)
            .filter_map(|_| {
                let path = error_path(&mut rng, 0.01, 0.01 + increase_pp / 100.0, BATCH, BATCH);
                first_rejection(&path, msprt(cfg))
            })
            .collect();
        let power = Power::new(ROLLOUTS, detected);
        rows.push(power.row(&format!("errors 1 % → {} %", 1.0 + increase_pp)));
        powers.push((increase_pp, power));
    }
    println!(
        "Error ratio, {ROLLOUTS} rollouts per effect, requests per arm, horizon {HORIZON}:\n{TABLE_HEAD}\n{}",
        rows.join("\n")
    );
    // Power grows with the effect, and +2 pp is found almost always.
    for pair in powers.windows(2) {
        assert!(pair[0].1.rate() <= pair[1].1.rate() + 0.01);
    }
    let two_pp = &powers[2].1;
    assert!(two_pp.rate() >= 0.99, "+2 pp detected in {}", two_pp.rate());
    assert!(percentile(&two_pp.detected, 0.9) <= 5_000);
}

/// Latencies from a lognormal distribution (median 100 ms, σ = 0.5 in log space, so p95 ≈
/// 228 ms) times `factor`, recorded into a histogram.
fn serve_latencies(histogram: &mut LatencyHistogram, n: u64, factor: f64, rng: &mut fastrand::Rng) {
    const MEDIAN_MS: f64 = 100.0;
    const SIGMA: f64 = 0.5;
    for _ in 0..n {
        // Box–Muller: one standard normal per request.
        let (u, v) = (1.0 - rng.f64(), rng.f64());
        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        let ms = MEDIAN_MS * factor * (SIGMA * z).exp();
        histogram.record(Duration::from_secs_f64(ms / 1000.0));
    }
}

/// One latency rollout: the treatment requests at the first look where the share above the
/// control's p95 is a regression, if any.
fn latency_rollout(rng: &mut fastrand::Rng, factor: f64, cfg: &SequentialConfig) -> Option<u64> {
    let (mut control, mut treatment) = (LatencyHistogram::new(), LatencyHistogram::new());
    for _ in 0..HORIZON / BATCH {
        serve_latencies(&mut control, BATCH, 1.0, rng);
        serve_latencies(&mut treatment, BATCH, factor, rng);
        let slow = slow_requests(&control, &treatment, 0.95, 0.0);
        if test(slow.control, slow.treatment, cfg).verdict == Verdict::Regression {
            return Some(slow.treatment.trials);
        }
    }
    None
}

#[test]
fn latency_regressions_are_found_and_healthy_latency_holds() {
    const HEALTHY_ROLLOUTS: usize = 400;
    const ROLLOUTS: usize = 300;
    let cfg = SequentialConfig::default();
    let mut rng = fastrand::Rng::with_seed(0x5EED_1A7E);
    let false_rollbacks = (0..HEALTHY_ROLLOUTS)
        .filter(|_| latency_rollout(&mut rng, 1.0, &cfg).is_some())
        .count();
    let false_rate = false_rollbacks as f64 / HEALTHY_ROLLOUTS as f64;
    let mut rows = vec![format!(
        "| {:<28} | {:>6.1} % | {:>8} | {:>8} |",
        "latency unchanged (A/A)",
        100.0 * false_rate,
        "-",
        "-"
    )];
    let mut powers = Vec::new();
    for increase in [10, 30, 50] {
        let factor = 1.0 + f64::from(increase) / 100.0;
        let detected = (0..ROLLOUTS)
            .filter_map(|_| latency_rollout(&mut rng, factor, &cfg))
            .collect();
        let power = Power::new(ROLLOUTS, detected);
        rows.push(power.row(&format!("latency +{increase} % (lognormal)")));
        powers.push(power);
    }
    println!(
        "Latency: share above the control's p95, {ROLLOUTS} rollouts per effect ({HEALTHY_ROLLOUTS} A/A), \
         requests per arm, horizon {HORIZON}:\n{TABLE_HEAD}\n{}",
        rows.join("\n")
    );
    // Standard error of 5 % over 400 rollouts: 1.1 %.
    assert!(
        false_rate <= cfg.alpha + 0.03,
        "latency A/A false rollbacks {false_rate}"
    );
    let thirty = &powers[1];
    assert!(thirty.rate() >= 0.99, "+30 % detected in {}", thirty.rate());
    assert!(powers[0].rate() <= thirty.rate() && thirty.rate() <= powers[2].rate() + 0.01);
}
