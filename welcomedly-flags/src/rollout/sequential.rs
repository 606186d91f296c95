//! An always-valid, one-sided sequential test: is the treatment arm worse than the control arm?
//!
//! Each arm is a count of Bernoulli trials and the events among them ([`Arm`]): errors among
//! requests (error ratio), requests slower than a threshold among requests (latency, see
//! [`histogram::slow_requests`](super::histogram::slow_requests)), or hits of an application
//! counter among requests (failed payments). [`test()`] asks whether the treatment's event rate
//! exceeds the control's by more than [`SequentialConfig::tolerance`], and answers
//! [`Verdict::Regression`] only when the evidence is strong enough that, **however often the test
//! is repeated on the growing counts** (after every request if you like), the chance of ever
//! answering `Regression` on a change that is not worse stays at most
//! [`SequentialConfig::alpha`].
//!
//! # The test
//!
//! Two always-valid tests run on the same counts, and the verdict is `Regression` only when
//! **both** reject. Each is exact in a limit and approximate elsewhere; the chance that both
//! reject is at most the chance that either does, so the guarantee holds wherever either one
//! holds: the first with many events, the second with rare events or a small treatment arm,
//! where the normal approximation is too optimistic (a 1 % rollout of a service at 0.1 % errors
//! sees a second error in its first 200 requests in 1.7 % of rollouts, which the normal
//! approximation calls a 4-sigma event).
//!
//! 1. The mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis and
//!    Walsh, *Always Valid Inference: Continuous Monitoring of A/B Tests* (Operations Research
//!    70(3), 2022), for the difference of two proportions, in its normal approximation, made
//!    one-sided. With `d̂ = p̂_T − p̂_C − tolerance` the observed excess and `V` its variance
//!    under the null (`p_T = p_C + tolerance`), the likelihood ratio of "the excess is δ"
//!    against "the excess is 0" is mixed over a half-normal prior `δ ~ |N(0, τ²)|` (only
//!    *worse* is an alternative):
//!
//!    ```text
//!    Λ = 2 · sqrt(V / (V + τ²)) · exp(τ² d̂² / (2 V (V + τ²))) · Φ(d̂ τ / sqrt(V (V + τ²)))
//!    ```
//!
//!    `V = p_C0(1 − p_C0)/n_C + p_T0(1 − p_T0)/n_T` from the pooled rate constrained to the
//!    null (`p_C0 = (e_C + e_T + 1 − n_T·tolerance) / (n_C + n_T + 2)`, `p_T0 = p_C0 +
//!    tolerance`; the pseudo-event keeps `V` above zero before the first event), which is right
//!    for arms of any sizes (a 5 % rollout against 95 % of the traffic).
//! 2. A conditional test on the events alone (the Poisson limit, as in Lindon and Malek,
//!    *Anytime-Valid Inference for Multinomial Count Data*, NeurIPS 2022): under the null each
//!    event lands in the treatment arm with probability `θ0 = ρ r0 / (ρ r0 + 1 − ρ)`, `ρ` the
//!    treatment's share of the trials and `r0 = p_T0 / p_C0` the relative risk the tolerance
//!    allows (1 without one). The likelihood ratio of relative risk `r0·m` against `r0` after
//!    `E` events, `e_T` of them the treatment's, is `m^e_T / (1 + θ0 (m − 1))^E`; it is mixed
//!    with equal weights over `m = 2^(j/2)`, `j = 1…16` (risks 1.41 to 256 times the null's).
//!
//! Under the null each ratio is a nonnegative supermartingale starting at 1, so by Ville's
//! inequality it reaches `1/α` with probability at most `α`, however often it is looked at. A
//! treatment *better* than the control makes both smaller still, so the one-sided null "not
//! worse by more than the tolerance" keeps the guarantee. [`Evidence::statistic`] is the smaller
//! of the two log ratios and [`Evidence::threshold`] is `ln(1/α)`.
//!
//! The mixing variance `τ²` ([`SequentialConfig::mixing`]) sets which differences the first test
//! finds fastest: differences near `τ` soonest, much smaller ones need many more requests. The
//! default ([`DEFAULT_MIXING`], `τ = 1` percentage point) suits error ratios of 0.1 %…10 % and
//! the share of requests slower than the control's p95.
//!
//! Both tests read the traffic split from the cumulative counts: they assume the split and the
//! base rate do not change together over the counted period. Across a ramp (1 % → 5 % → 25 %)
//! at a time of day when the error rate moves, start fresh counts at each step, or count each
//! step in its own pair of arms.
//!
//! # Error rates (from the seeded simulations in `tests/rollout_stats.rs`)
//!
//! Targets, with the defaults (`alpha = 0.05`, `tolerance = 0`, `mixing = 1e-4`,
//! `min_trials_per_arm = 100`) and the test repeated after every 50 treatment requests up to
//! 20 000:
//!
//! - **At most 5 % false rollbacks of a healthy change**, however often it is looked at. Measured:
//!   0.96 % of 10 000 rollouts with both arms at 1 % errors (a one-sided z-test at 5 % repeated
//!   at every look: 35.9 %); 0.05 %…1.2 % of 2 000 rollouts each at 0.1 %, 1 % and 5 % errors
//!   with 50/50, 10 % and 1 % rollouts; 0.5 % of 400 latency rollouts with unchanged latency.
//!   The two tests together are conservative: the price of staying valid for rare events.
//! - **An error ratio of 1 % → 3 % (+2 percentage points) is found in every rollout, within 850
//!   requests per arm in half of them and 1 800 in 90 %.** 1 % → 2 %: 2 650 / 5 750;
//!   1 % → 6 %: 400 / 550; 1 % → 1.5 %: found in 90 % of rollouts by 20 000 requests.
//! - **Latency 30 % slower (all of a lognormal distribution scaled by 1.3, counted as the share
//!   above the control's p95) is found in every rollout, within 550 requests per arm in half of
//!   them and 750 in 90 %.** 10 % slower: 2 750 / 5 700; 50 % slower: 350 / 450.
//!
//! Run `cargo test -p welcomedly-flags --test rollout_stats -- --nocapture` for the tables.
//!
//! ```
//! use welcomedly_flags::rollout::sequential::{test, Arm, SequentialConfig, Verdict};
//!
//! let cfg = SequentialConfig::default();
//! // Not enough requests yet.
//! assert_eq!(test(Arm::new(40, 1), Arm::new(40, 3), &cfg).verdict, Verdict::Insufficient);
//! // 1 % against 1.1 %: no evidence of harm.
//! let evidence = test(Arm::new(10_000, 100), Arm::new(10_000, 110), &cfg);
//! assert_eq!(evidence.verdict, Verdict::Holds);
//! // 1 % against 3 %: a regression.
//! let evidence = test(Arm::new(5_000, 50), Arm::new(5_000, 150), &cfg);
//! assert_eq!(evidence.verdict, Verdict::Regression);
//! assert!(evidence.statistic >= evidence.threshold);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// The default mixing variance `τ²`: `1e-4`, a standard deviation of one percentage point on the
/// difference of the two rates.
pub const DEFAULT_MIXING: f64 = 1e-4;

/// The smallest `alpha` [`test()`] uses (a smaller or non-finite one is raised to it).
const MIN_ALPHA: f64 = 1e-12;
/// The largest `alpha` [`test()`] uses: a false-rollback rate above one half is not a target.
const MAX_ALPHA: f64 = 0.5;
/// The largest tolerance [`test()`] uses (a rate difference of 1 can never be exceeded).
const MAX_TOLERANCE: f64 = 0.999;
/// The range of `τ²` [`test()`] uses.
const MIN_MIXING: f64 = 1e-12;
const MAX_MIXING: f64 = 1.0;

/// One arm of the comparison: trials (requests) and the events among them (errors, slow
/// requests, counter hits).
///
/// `events` greater than `trials` is treated as `trials` (every trial an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arm {
    /// The number of trials (requests served by this arm).
    pub trials: u64,
    /// The number of events among them (errors, slow requests, counter hits).
    pub events: u64,
}

impl Arm {
    /// An arm of `trials` trials with `events` events.
    #[must_use]
    pub const fn new(trials: u64, events: u64) -> Self {
        Self { trials, events }
    }

    /// Counts one trial, an event or not.
    pub fn record(&mut self, event: bool) {
        self.trials = self.trials.saturating_add(1);
        self.events = self.events.saturating_add(u64::from(event));
    }

    /// The sum of two counts of the same arm (two instances, two time buckets); saturating.
    #[must_use]
    pub const fn merge(self, other: Self) -> Self {
        Self {
            trials: self.trials.saturating_add(other.trials),
            events: self.events.saturating_add(other.events),
        }
    }

    /// The events, at most the trials.
    #[must_use]
    pub const fn clamped_events(self) -> u64 {
        if self.events < self.trials {
            self.events
        } else {
            self.trials
        }
    }

    /// The observed event rate, `events / trials` (0 when there are no trials).
    #[must_use]
    pub fn rate(self) -> f64 {
        if self.trials == 0 {
            0.0
        } else {
            self.clamped_events() as f64 / self.trials as f64
        }
    }
}

/// How [`test()`] decides (plain data, serde with camelCase names, every field defaulted).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SequentialConfig {
    /// The false-rollback rate to stay under: the chance, over the whole rollout and however
    /// often the test is repeated, of answering [`Verdict::Regression`] for a change that is not
    /// worse by more than the tolerance. In `(0, 0.5]`; default `0.05`.
    pub alpha: f64,
    /// The absolute increase of the event rate that is still acceptable (`0.002` allows the
    /// treatment 0.2 percentage points more errors). In `[0, 1)`; default `0.0`.
    pub tolerance: f64,
    /// The mixing variance `τ²` of the mSPRT on the rate difference: differences near `sqrt(τ²)`
    /// are detected fastest. Positive, at most 1; default [`DEFAULT_MIXING`] (`1e-4`, one
    /// percentage point).
    pub mixing: f64,
    /// Below this many trials in either arm the verdict is [`Verdict::Insufficient`]. This does
    /// not change the guarantee (the test is valid from the first trial); it keeps a rollout from
    /// being judged on a handful of requests. Default `100`.
    pub min_trials_per_arm: u64,
}

impl Default for SequentialConfig {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            tolerance: 0.0,
            mixing: DEFAULT_MIXING,
            min_trials_per_arm: 100,
        }
    }
}

impl SequentialConfig {
    /// Checks every field is in its range. [`test()`] itself never fails: it brings an out-of-range
    /// value into range (`alpha` into `[1e-12, 0.5]`, `tolerance` into `[0, 0.999]`, `mixing`
    /// into `[1e-12, 1]`, a non-finite value to its default), so call this where the
    /// configuration is read.
    ///
    /// # Errors
    ///
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.alpha > 0.0 && self.alpha <= MAX_ALPHA) {
            return Err(ConfigError::Alpha(self.alpha));
        }
        if !(self.tolerance >= 0.0 && self.tolerance < 1.0) {
            return Err(ConfigError::Tolerance(self.tolerance));
        }
        if !(self.mixing > 0.0 && self.mixing <= MAX_MIXING) {
            return Err(ConfigError::Mixing(self.mixing));
        }
        Ok(())
    }

    /// The configuration [`test()`] actually uses: every field brought into its range.
    fn sanitized(&self) -> Self {
        let defaults = Self::default();
        let pick = |value: f64, default: f64, min: f64, max: f64| {
            if value.is_finite() {
                value.clamp(min, max)
            } else {
                default
            }
        };
        Self {
            alpha: pick(self.alpha, defaults.alpha, MIN_ALPHA, MAX_ALPHA),
            tolerance: pick(self.tolerance, defaults.tolerance, 0.0, MAX_TOLERANCE),
            mixing: pick(self.mixing, defaults.mixing, MIN_MIXING, MAX_MIXING),
            min_trials_per_arm: self.min_trials_per_arm.max(1),
        }
    }
}

/// A [`SequentialConfig`] field out of its range.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `alpha` is not in `(0, 0.5]`.
    Alpha(f64),
    /// `tolerance` is not in `[0, 1)`.
    Tolerance(f64),
    /// `mixing` is not in `(0, 1]`.
    Mixing(f64),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alpha(v) => write!(
                f,
                "alpha {v} is not a false-rollback rate in (0, 0.5]: use e.g. 0.05"
            ),
            Self::Tolerance(v) => write!(
                f,
                "tolerance {v} is not an absolute rate increase in [0, 1): use e.g. 0.0 or 0.002"
            ),
            Self::Mixing(v) => write!(
                f,
                "mixing {v} is not a variance in (0, 1]: use the default 1e-4 (one percentage point)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What [`test()`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// An arm has fewer trials than [`SequentialConfig::min_trials_per_arm`]: no judgement yet.
    Insufficient,
    /// No evidence (so far) that the treatment is worse by more than the tolerance.
    Holds,
    /// The treatment is worse than the control by more than the tolerance, at the configured
    /// false-rollback rate.
    Regression,
}

/// The verdict of [`test()`] and the numbers behind it (serde with camelCase names, for history).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// The conclusion.
    pub verdict: Verdict,
    /// `ln Λ`, the log of the mixture likelihood ratio (0 before any data; negative when the
    /// data favour "not worse"). Always finite.
    pub statistic: f64,
    /// `ln(1/alpha)`: the verdict is [`Verdict::Regression`] when `statistic >= threshold` and
    /// both arms have enough trials.
    pub threshold: f64,
    /// The control arm's observed event rate.
    pub control_rate: f64,
    /// The treatment arm's observed event rate.
    pub treatment_rate: f64,
}

impl Evidence {
    /// `min(1, 1/Λ)` at this look. The smallest value over all looks so far is an always-valid
    /// p-value for "the treatment is not worse by more than the tolerance" (the verdict is
    /// [`Verdict::Regression`] once it is at most `alpha`, given enough trials).
    #[must_use]
    pub fn p_value(&self) -> f64 {
        (-self.statistic).exp().min(1.0)
    }
}

/// Tests whether `treatment` is worse than `control` by more than `cfg.tolerance` (see the
/// [module docs](self)). Stateless: call it with the cumulative counts of each arm as often as
/// you like. Never panics; an out-of-range `cfg` is brought into range
/// ([`SequentialConfig::validate`] reports it).
#[must_use]
pub fn test(control: Arm, treatment: Arm, cfg: &SequentialConfig) -> Evidence {
    let cfg = cfg.sanitized();
    let threshold = -cfg.alpha.ln();
    let statistic = log_evidence(control, treatment, cfg.tolerance, cfg.mixing);
    let verdict =
        if control.trials < cfg.min_trials_per_arm || treatment.trials < cfg.min_trials_per_arm {
            Verdict::Insufficient
        } else if statistic >= threshold {
            Verdict::Regression
        } else {
            Verdict::Holds
        };
    Evidence {
        verdict,
        statistic,
        threshold,
        control_rate: control.rate(),
        treatment_rate: treatment.rate(),
    }
}

/// The log evidence for "worse": the smaller of the two mixture ratios (see the module docs); 0
/// when an arm has no trials.
fn log_evidence(control: Arm, treatment: Arm, tolerance: f64, tau2: f64) -> f64 {
    if control.trials == 0 || treatment.trials == 0 {
        return 0.0;
    }
    let (n_c, n_t) = (control.trials as f64, treatment.trials as f64);
    let (e_c, e_t) = (
        control.clamped_events() as f64,
        treatment.clamped_events() as f64,
    );
    // The rates under the null, pooled with one pseudo-event in two pseudo-trials.
    let p_c0 =
        ((e_c + e_t + 1.0 - n_t * tolerance) / (n_c + n_t + 2.0)).clamp(0.0, 1.0 - tolerance);
    let p_t0 = p_c0 + tolerance;
    let normal = log_normal_mixture(
        e_t / n_t - e_c / n_c - tolerance,
        n_c,
        n_t,
        p_c0,
        p_t0,
        tau2,
    );
    let conditional = log_conditional_mixture(e_c, e_t, n_c, n_t, p_c0, p_t0);
    let log = normal.min(conditional);
    if log.is_finite() {
        log
    } else if log > 0.0 {
        f64::MAX
    } else {
        // NaN cannot arise from the clamped inputs; −∞ only from an underflow that means "no
        // evidence at all".
        f64::MIN
    }
}

/// `ln Λ` of the one-sided normal-mixture SPRT on the rate difference `excess` (already less the
/// tolerance), with the variance from the null rates.
fn log_normal_mixture(excess: f64, n_c: f64, n_t: f64, p_c0: f64, p_t0: f64, tau2: f64) -> f64 {
    let variance = (p_c0 * (1.0 - p_c0) / n_c + p_t0 * (1.0 - p_t0) / n_t).max(f64::MIN_POSITIVE);
    let sum = variance + tau2;
    let z = excess * (tau2 / (variance * sum)).sqrt();
    std::f64::consts::LN_2 - 0.5 * (tau2 / variance).ln_1p()
        + tau2 * excess * excess / (2.0 * variance * sum)
        + ln_normal_cdf(z)
}

/// The number of alternatives of the conditional test: relative-risk multipliers
/// `m_j = 2^(j/2)`, `j = 1…16` (1.41 … 256), each weighted `1/16`.
const RISK_STEPS: usize = 16;

/// `ln M` of the conditional test: under the null each event falls in the treatment arm with
/// probability `θ0 = ρ·r0 / (ρ·r0 + 1 − ρ)` (`ρ` the treatment's share of the trials, `r0` the
/// null relative risk `p_T0 / p_C0`), so the treatment's events among all `E` events are
/// binomial; the likelihood ratio of relative risk `r0·m` against `r0` is
/// `m^e_T / (1 + θ0 (m − 1))^E`, mixed over the [`RISK_STEPS`] multipliers.
fn log_conditional_mixture(e_c: f64, e_t: f64, n_c: f64, n_t: f64, p_c0: f64, p_t0: f64) -> f64 {
    if p_c0 <= 0.0 {
        // The null allows the treatment every event (a tolerance above the observed rates): the
        // events cannot tell, the ratio stays 1.
        return 0.0;
    }
    let rho_r0 = n_t / (n_c + n_t) * (p_t0 / p_c0);
    let theta0 = rho_r0 / (rho_r0 + n_c / (n_c + n_t));
    let events = e_c + e_t;
    let half_ln_2 = 0.5 * std::f64::consts::LN_2;
    // A plain loop over a stack array: this runs at every look, for every guarded metric.
    let mut terms = [0.0; RISK_STEPS];
    let mut max = f64::NEG_INFINITY;
    let mut multiplier = 1.0;
    for (j, term) in (1u32..).zip(terms.iter_mut()) {
        multiplier *= std::f64::consts::SQRT_2;
        *term = e_t * (f64::from(j) * half_ln_2) - events * (theta0 * (multiplier - 1.0)).ln_1p();
        max = max.max(*term);
    }
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    max + (sum / RISK_STEPS as f64).ln()
}

/// `ln Φ(z)`, the log of the standard normal distribution function, finite for every finite `z`.
///
/// From the complementary error function `erfc` of Numerical Recipes (Press et al., 2nd ed.,
/// §6.2, `erfcc`: a Chebyshev fit with fractional error below 1.2e-7 everywhere), whose form
/// `t·exp(−x² + P(t))` gives the logarithm directly, so the far tail does not underflow.
fn ln_normal_cdf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    if x < 0.0 {
        // Φ(z) = erfc(−x)/2 with −x > 0.
        ln_erfc_positive(-x) - std::f64::consts::LN_2
    } else {
        // Φ(z) = 1 − erfc(x)/2.
        (-0.5 * ln_erfc_positive(x).exp()).ln_1p()
    }
}

/// `ln erfc(x)` for `x >= 0`.
fn ln_erfc_positive(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t.ln() - x * x + poly
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn normal_cdf_matches_known_values() {
        for (z, phi) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746_068_542_9),
            (-1.0, 0.158_655_253_931_457_05),
            (1.959_963_984_540_054, 0.975),
            (-3.0, 0.001_349_898_031_630_094_6),
        ] {
            let got = ln_normal_cdf(z).exp();
            assert!((got - phi).abs() / phi < 1e-6, "Φ({z}) = {got}, want {phi}");
        }
        // The far tail stays finite: ln Φ(−40) ≈ −804.6.
        let far = ln_normal_cdf(-40.0);
        assert!(far.is_finite() && (far + 804.608).abs() < 0.01, "{far}");
        assert!(ln_normal_cdf(40.0).abs() < 1e-12);
    }

    #[test]
    fn no_data_is_no_evidence() {
        let cfg = SequentialConfig::default();
        let e = test(Arm::default(), Arm::default(), &cfg);
        assert_eq!(e.verdict, Verdict::Insufficient);
        assert_eq!(e.statistic, 0.0);
        assert_eq!((e.control_rate, e.treatment_rate), (0.0, 0.0));
        let e = test(Arm::new(1_000, 0), Arm::new(1_000, 0), &cfg);
        assert_eq!(e.verdict, Verdict::Holds);
        assert!(e.statistic < 0.0);
    }

    #[test]
    fn better_treatment_holds() {
        let cfg = SequentialConfig::default();
        let e = test(Arm::new(50_000, 2_500), Arm::new(50_000, 500), &cfg);
        assert_eq!(e.verdict, Verdict::Holds);
        assert!(e.statistic < 0.0);
    }

    #[test]
    fn clear_regression_is_found_with_unequal_arms() {
        let cfg = SequentialConfig::default();
        // A 5 % rollout: 95 000 control requests at 1 %, 5 000 treatment requests at 3 %.
        let e = test(Arm::new(95_000, 950), Arm::new(5_000, 150), &cfg);
        assert_eq!(e.verdict, Verdict::Regression, "{e:?}");
        assert!(e.p_value() <= cfg.alpha);
        let e = test(Arm::new(95_000, 950), Arm::new(5_000, 50), &cfg);
        assert!(e.p_value() > cfg.alpha && e.p_value() <= 1.0);
    }

    #[test]
    fn rare_events_in_a_small_arm_need_the_conditional_test() {
        // A 1 % rollout of a service at 0.1 % errors: the treatment's second error in its first
        // 200 requests. Poisson(0.2) gives two or more in 1.7 % of rollouts; the normal
        // approximation alone calls it a regression.
        let (control, treatment) = (Arm::new(19_800, 20), Arm::new(200, 2));
        let cfg = SequentialConfig::default();
        let threshold = -cfg.alpha.ln();
        let p_c0 = 23.0 / 20_002.0;
        let normal = log_normal_mixture(
            0.01 - 20.0 / 19_800.0,
            19_800.0,
            200.0,
            p_c0,
            p_c0,
            cfg.mixing,
        );
        assert!(normal >= threshold, "{normal}");
        let e = test(control, treatment, &cfg);
        assert_eq!(e.verdict, Verdict::Holds, "{e:?}");
        // Ten errors in those 200 requests are a regression by both.
        assert_eq!(
            test(control, Arm::new(200, 10), &cfg).verdict,
            Verdict::Regression
        );
    }

    #[test]
    fn tolerance_absorbs_a_small_increase() {
        let control = Arm::new(20_000, 200);
        let treatment = Arm::new(20_000, 300);
        let strict = SequentialConfig::default();
        assert_eq!(
            test(control, treatment, &strict).verdict,
            Verdict::Regression
        );
        let tolerant = SequentialConfig {
            tolerance: 0.005,
            ..strict
        };
        assert_eq!(test(control, treatment, &tolerant).verdict, Verdict::Holds);
    }

    #[test]
    fn any_input_gives_finite_evidence() {
        let arms = [
            Arm::new(0, 0),
            Arm::new(1, 0),
            Arm::new(1, 1),
            Arm::new(1, 5),
            Arm::new(100, 100),
            Arm::new(u64::MAX, 0),
            Arm::new(u64::MAX, u64::MAX),
            Arm::new(u64::MAX, 1),
            Arm::new(3, u64::MAX),
        ];
        let configs = [
            SequentialConfig::default(),
            SequentialConfig {
                alpha: f64::NAN,
                tolerance: f64::INFINITY,
                mixing: -1.0,
                min_trials_per_arm: 0,
            },
            SequentialConfig {
                alpha: 2.0,
                tolerance: -0.5,
                mixing: f64::NAN,
                min_trials_per_arm: u64::MAX,
            },
            SequentialConfig {
                alpha: 0.0,
                tolerance: 0.99,
                mixing: 1e300,
                min_trials_per_arm: 1,
            },
        ];
        for cfg in &configs {
            for &c in &arms {
                for &t in &arms {
                    let e = test(c, t, cfg);
                    assert!(e.statistic.is_finite(), "{c:?} {t:?} {cfg:?}: {e:?}");
                    assert!(e.threshold.is_finite() && e.threshold > 0.0);
                    assert!((0.0..=1.0).contains(&e.control_rate));
                    assert!((0.0..=1.0).contains(&e.treatment_rate));
                    let json = serde_json::to_string(&e).unwrap();
                    // serde_json parses floats to within one ulp (without `float_roundtrip`).
                    let back: Evidence = serde_json::from_str(&json).unwrap();
                    assert_eq!(back.verdict, e.verdict);
                    assert!((back.statistic - e.statistic).abs() <= e.statistic.abs() * 1e-15);
                }
            }
        }
    }

    proptest::proptest! {
        /// No input panics or gives a non-finite statistic, and the verdict follows the numbers.
        #[test]
        fn every_input_gives_consistent_evidence(
            control in (proptest::num::u64::ANY, proptest::num::u64::ANY),
            treatment in (proptest::num::u64::ANY, proptest::num::u64::ANY),
            small in (0u64..5_000, 0u64..200, 0u64..5_000, 0u64..200),
            alpha in proptest::num::f64::ANY,
            tolerance in proptest::num::f64::ANY,
            mixing in proptest::num::f64::ANY,
            min_trials in 0u64..1_000,
        ) {
            let cfg = SequentialConfig { alpha, tolerance, mixing, min_trials_per_arm: min_trials };
            let (c_trials, c_events, t_trials, t_events) = small;
            for (c, t) in [
                (Arm::new(control.0, control.1), Arm::new(treatment.0, treatment.1)),
                (Arm::new(c_trials, c_events), Arm::new(t_trials, t_events)),
            ] {
                let e = test(c, t, &cfg);
                proptest::prop_assert!(e.statistic.is_finite() && e.threshold.is_finite());
                let enough = c.trials >= min_trials.max(1) && t.trials >= min_trials.max(1);
                let want = if !enough {
                    Verdict::Insufficient
                } else if e.statistic >= e.threshold {
                    Verdict::Regression
                } else {
                    Verdict::Holds
                };
                proptest::prop_assert_eq!(e.verdict, want);
                // A treatment no worse than the control is never a regression.
                if t.rate() <= c.rate() {
                    proptest::prop_assert_ne!(e.verdict, Verdict::Regression);
                }
            }
        }
    }

    #[test]
    fn validate_names_the_bad_field() {
        assert_eq!(SequentialConfig::default().validate(), Ok(()));
        let bad = SequentialConfig {
            alpha: 0.0,
            ..SequentialConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::Alpha(0.0)));
        assert!(bad.validate().unwrap_err().to_string().contains("alpha"));
        let bad = SequentialConfig {
            tolerance: 1.0,
            ..SequentialConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::Tolerance(1.0)));
        let bad = SequentialConfig {
            mixing: f64::NAN,
            ..SequentialConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::Mixing(_))));
    }

    #[test]
    fn config_and_evidence_are_json() {
        let cfg: SequentialConfig = serde_json::from_str(r#"{"alpha":0.01}"#).unwrap();
        assert_eq!(cfg.alpha, 0.01);
        assert_eq!(cfg.min_trials_per_arm, 100);
        let e = test(Arm::new(5_000, 50), Arm::new(5_000, 150), &cfg);
        let json = serde_json::to_value(e).unwrap();
        assert_eq!(json["verdict"], "regression");
        assert!(json["controlRate"].is_number());
        let arm: Arm = serde_json::from_str(r#"{"trials":10,"events":2}"#).unwrap();
        assert_eq!(arm, Arm::new(10, 2));
    }
}
