//! The rollout [`Plan`]: arms, stages, guard metrics and the action on a breach, as JSON with
//! defaults (`{}` is a valid plan: 5 % → 25 % → 100 %), validated with every problem listed.
//!
//! ```
//! use welcomedly_flags::rollout::plan::{Breach, Plan};
//!
//! let plan = Plan::from_json("{}")?;
//! assert_eq!(plan.treatment, "on");
//! assert_eq!(plan.control, "off");
//! let shares: Vec<f64> = plan.stages.iter().map(|s| s.percent).collect();
//! assert_eq!(shares, [5.0, 25.0, 100.0]);
//! assert_eq!(plan.on_breach, Breach::Control);
//!
//! let err = Plan::from_json(r#"{"stages": [{"percent": 50}, {"percent": 20}]}"#).unwrap_err();
//! assert!(err.has_problem_at("stages[1].percent"));
//! # Ok::<(), welcomedly_flags::ValidationErrors>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::bucketing::TOTAL;
use crate::model::{Flag, FlagSet};
use crate::validate::{Problem, ValidationErrors};

/// The most stages a plan may have.
pub const MAX_STAGES: usize = 16;
/// The most HTTP statuses an error guard may list.
pub const MAX_STATUSES: usize = 64;
/// The longest name of an application counter.
pub const MAX_COUNTER_NAME: usize = 64;

/// A guarded rollout of one flag: which variant is new (`treatment`) and which is the
/// baseline (`control`), the stages of the treatment's share, what is watched and what happens
/// on a regression. Every field has a default (see each), so `{}` is a complete plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Plan {
    /// The new variant. Default `"on"`.
    #[serde(default = "default_treatment")]
    pub treatment: String,
    /// The baseline variant, served to everyone else (and to everyone after a rollback).
    /// Default `"off"`.
    #[serde(default = "default_control")]
    pub control: String,
    /// The attribute the split buckets by. Default: the targeting key (the user; see the
    /// [module docs](super) for anonymous traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_by: Option<String>,
    /// The stages, increasing; the last is 100 % and means *completed*. Default 5 % → 25 % →
    /// 100 %, each guarded stage at least 60 s and 500 requests per arm.
    #[serde(default = "default_stages")]
    pub stages: Vec<Stage>,
    /// What is compared between the arms. Default: the error ratio (5xx) and p95 latency.
    #[serde(default)]
    pub guards: Guards,
    /// What a regression does. Default [`Breach::Control`].
    #[serde(default)]
    pub on_breach: Breach,
    /// The false-rollback rate each guard's sequential test stays under, however often it is
    /// looked at, in (0, 0.5]. Default 0.05.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

/// One stage: the treatment's share and how long and how much traffic it must see before the
/// next stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Stage {
    /// The treatment's share of the split, in percent (0.001 % steps), above 0 and at most 100.
    pub percent: f64,
    /// The least time the stage runs, in seconds. Default 60.
    #[serde(default = "default_min_secs")]
    pub min_duration_secs: u64,
    /// The least requests each arm must have served in the stage (across the fleet) before it
    /// may advance. Default 500.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
}

impl Stage {
    /// A stage at `percent` with the default minimums.
    pub fn new(percent: f64) -> Self {
        Self {
            percent,
            min_duration_secs: default_min_secs(),
            min_samples: default_min_samples(),
        }
    }

    /// The stage's share as a rollout weight out of [`TOTAL`].
    pub fn weight(&self) -> u32 {
        percent_to_weight(self.percent)
    }
}

/// The guard metrics. Each present guard is tested on its own; any regression breaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Guards {
    /// The share of requests that failed. Default: on, 5xx. `null` turns it off.
    #[serde(default = "default_error_guard")]
    pub error_ratio: Option<ErrorGuard>,
    /// A latency quantile. Default: on, p95. `null` turns it off.
    #[serde(default = "default_latency_guard")]
    pub latency: Option<LatencyGuard>,
    /// A counter the application increments (`RequestFlags::count`), e.g. failed payments,
    /// compared as a share of each arm's requests. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<CounterGuard>,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            error_ratio: default_error_guard(),
            latency: default_latency_guard(),
            counter: None,
        }
    }
}

/// Which responses count as errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ErrorGuard {
    /// The statuses that count as errors; empty (the default) means every 5xx. A request whose
    /// service failed without a response always counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// The absolute increase of the error ratio still accepted (`0.002`: 0.2 percentage
    /// points). Default 0.
    #[serde(default)]
    pub tolerance: f64,
}

impl ErrorGuard {
    /// Whether `status` is an error for this guard.
    pub fn is_error(&self, status: u16) -> bool {
        if self.statuses.is_empty() {
            (500..600).contains(&status)
        } else {
            self.statuses.contains(&status)
        }
    }
}

/// A latency quantile, compared as the share of each arm's requests slower than the control's
/// quantile: when the treatment's quantile is higher, more than `1 - quantile` of its requests
/// exceed the control's, which the sequential test sees as a higher rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct LatencyGuard {
    /// The quantile, in (0, 1). Default 0.95.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// How much slower than the control's quantile still counts as fast (`0.1`: 10 %).
    /// Default 0.
    #[serde(default)]
    pub tolerance: f64,
}

/// An application counter compared between the arms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct CounterGuard {
    /// The counter's name (letters, digits, `-`, `_`, `.`; at most 64 bytes).
    pub name: String,
    /// The absolute increase of the counter's rate per request still accepted. Default 0.
    #[serde(default)]
    pub tolerance: f64,
}

/// What a regression does to the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Breach {
    /// Serve the control variant to everyone (the split is replaced by the control).
    #[default]
    Control,
    /// Turn the flag's kill switch off (`enabled: false`): every caller gets its default.
    KillSwitch,
}

fn default_treatment() -> String {
    "on".into()
}
fn default_control() -> String {
    "off".into()
}
fn default_min_secs() -> u64 {
    60
}
fn default_min_samples() -> u64 {
    500
}
fn default_quantile() -> f64 {
    0.95
}
fn default_alpha() -> f64 {
    0.05
}
fn default_stages() -> Vec<Stage> {
    vec![Stage::new(5.0), Stage::new(25.0), Stage::new(100.0)]
}
#[allow(clippy::unnecessary_wraps)] // serde's `default` for an `Option` field
fn default_error_guard() -> Option<ErrorGuard> {
    Some(ErrorGuard {
        statuses: Vec::new(),
        tolerance: 0.0,
    })
}
#[allow(clippy::unnecessary_wraps)]
fn default_latency_guard() -> Option<LatencyGuard> {
    Some(LatencyGuard {
        quantile: default_quantile(),
        tolerance: 0.0,
    })
}

/// A percentage as a rollout weight out of [`TOTAL`] (rounded to
/// 0.001 %, clamped to 0..=100 %).
pub fn percent_to_weight(percent: f64) -> u32 {
    let w = (percent * f64::from(TOTAL) / 100.0).round();
    if w.is_nan() || w <= 0.0 {
        0
    } else if w >= f64::from(TOTAL) {
        TOTAL
    } else {
        // In range: 0 < w < TOTAL, an integer.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let w = w as u32;
        w
    }
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            treatment: default_treatment(),
            control: default_control(),
            bucket_by: None,
            stages: default_stages(),
            guards: Guards::default(),
            on_breach: Breach::default(),
            alpha: default_alpha(),
        }
    }
}

impl Plan {
    /// Parses and validates a plan on its own (the variants are checked against the flag by
    /// [`validate_for`](Self::validate_for)).
    ///
    /// # Errors
    ///
    /// Every problem, each with its path (`stages[1].percent`) and what to do.
    pub fn from_json(text: &str) -> Result<Self, ValidationErrors> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        let mut de = serde_json::Deserializer::from_str(text);
        let plan: Plan = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ValidationErrors::from(vec![Problem::new(
                path,
                format!(
                    "{}; fix the JSON (see the rollout plan format in the rollout module docs)",
                    err.inner()
                ),
            )])
        })?;
        plan.validate()?;
        Ok(plan)
    }

    /// Checks the plan on its own: stages increasing within (0, 100] and ending at 100,
    /// distinct arms, a quantile in (0, 1), at least one guard, bounded lists and names.
    ///
    /// # Errors
    ///
    /// Every problem, with its path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Vec::new();
        if self.treatment.is_empty() {
            p.push(Problem::new("treatment", "name the new variant"));
        }
        if self.control.is_empty() {
            p.push(Problem::new("control", "name the baseline variant"));
        }
        if self.treatment == self.control {
            p.push(Problem::new(
                "control",
                "the control must be another variant than the treatment",
            ));
        }
        if self.stages.is_empty() || self.stages.len() > MAX_STAGES {
            p.push(Problem::new(
                "stages",
                format!("give 1 to {MAX_STAGES} stages, the last at 100 percent"),
            ));
        }
        let mut last = 0u32;
        let n = self.stages.len();
        for (i, stage) in self.stages.iter().enumerate() {
            let w = stage.weight();
            if !(stage.percent > 0.0 && stage.percent <= 100.0) || w == 0 {
                p.push(Problem::new(
                    format!("stages[{i}].percent"),
                    "a stage's share must be above 0 and at most 100 (percent, 0.001 steps)",
                ));
            } else if w <= last {
                p.push(Problem::new(
                    format!("stages[{i}].percent"),
                    "stages must increase: give each a larger share than the one before",
                ));
            }
            if w == TOTAL && i + 1 != n {
                p.push(Problem::new(
                    format!("stages[{i}].percent"),
                    "100 percent completes the rollout: it must be the last stage",
                ));
            }
            if i + 1 != n && stage.min_samples == 0 {
                p.push(Problem::new(
                    format!("stages[{i}].minSamples"),
                    "a guarded stage needs at least one request per arm; give minSamples ≥ 1 (default 500)",
                ));
            }
            last = last.max(w);
        }
        if let Some(stage) = self.stages.last()
            && stage.weight() != TOTAL
        {
            p.push(Problem::new(
                format!("stages[{}].percent", n.saturating_sub(1)),
                "the last stage must be 100 percent (it completes the rollout)",
            ));
        }
        if !(self.alpha > 0.0 && self.alpha <= 0.5) {
            p.push(Problem::new(
                "alpha",
                "the false-rollback rate is in (0, 0.5]: use e.g. 0.05",
            ));
        }
        let g = &self.guards;
        let tolerances = [
            (
                "guards.errorRatio.tolerance",
                g.error_ratio.as_ref().map(|e| e.tolerance),
            ),
            (
                "guards.latency.tolerance",
                g.latency.as_ref().map(|l| l.tolerance),
            ),
            (
                "guards.counter.tolerance",
                g.counter.as_ref().map(|c| c.tolerance),
            ),
        ];
        for (path, t) in tolerances {
            if let Some(t) = t
                && !(0.0..1.0).contains(&t)
            {
                p.push(Problem::new(path, "a tolerance is in [0, 1): 0.002 is 0.2 points (errors, counter) or 0.2 % slower (latency)"));
            }
        }
        if g.error_ratio.is_none() && g.latency.is_none() && g.counter.is_none() {
            p.push(Problem::new(
                "guards",
                "a guarded rollout needs at least one guard: errorRatio, latency or counter",
            ));
        }
        if let Some(e) = &g.error_ratio {
            if e.statuses.len() > MAX_STATUSES {
                p.push(Problem::new(
                    "guards.errorRatio.statuses",
                    format!("list at most {MAX_STATUSES} statuses"),
                ));
            }
            for (i, s) in e.statuses.iter().enumerate() {
                if !(100..=599).contains(s) {
                    p.push(Problem::new(
                        format!("guards.errorRatio.statuses[{i}]"),
                        "an HTTP status is between 100 and 599",
                    ));
                }
            }
        }
        if let Some(l) = &g.latency
            && !(l.quantile > 0.0 && l.quantile < 1.0)
        {
            p.push(Problem::new(
                "guards.latency.quantile",
                "a quantile is between 0 and 1, exclusive (0.95 for p95)",
            ));
        }
        if let Some(c) = &g.counter
            && (c.name.is_empty()
                || c.name.len() > MAX_COUNTER_NAME
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        {
            p.push(Problem::new(
                "guards.counter.name",
                format!(
                    "a counter name is 1 to {MAX_COUNTER_NAME} letters, digits, '-', '_' or '.'"
                ),
            ));
        }
        if p.is_empty() { Ok(()) } else { Err(p.into()) }
    }

    /// Checks the plan against flag `key` of `set`: the flag exists and has both variants.
    ///
    /// # Errors
    ///
    /// Every problem, with its path.
    pub fn validate_for(&self, set: &FlagSet, key: &str) -> Result<(), ValidationErrors> {
        let mut p = match self.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        };
        match set.flags.get(key) {
            None => p.push(Problem::new(
                "",
                format!("there is no flag {key:?}: create it (with both variants) first"),
            )),
            Some(flag) => {
                for (field, variant) in [("treatment", &self.treatment), ("control", &self.control)]
                {
                    if !flag.variants.contains_key(variant) {
                        p.push(Problem::new(
                            field,
                            format!(
                                "flag {key:?} has no variant {variant:?}: add it or name one it has"
                            ),
                        ));
                    }
                }
            }
        }
        if p.is_empty() { Ok(()) } else { Err(p.into()) }
    }

    /// The treatment's weight at `stage` (out of [`TOTAL`]); past the
    /// last stage, everything.
    pub fn weight_at(&self, stage: usize) -> u32 {
        self.stages.get(stage).map_or(TOTAL, Stage::weight)
    }

    /// `flag` as it must be at `stage`: its fallthrough splits between control and treatment
    /// with the stage's share (bucketed by [`bucket_by`](Self::bucket_by)). Targets and rules
    /// are kept: they decide before the fallthrough, and only the split is attributed.
    pub fn apply_stage(&self, flag: &mut Flag, stage: usize) {
        let w = self.weight_at(stage);
        flag.enabled = true;
        flag.fallthrough = Some(if w >= TOTAL {
            crate::model::Serve::variant(self.treatment.clone())
        } else {
            let mut rollout = crate::model::Rollout::default();
            rollout.bucket_by.clone_from(&self.bucket_by);
            rollout.variants = vec![
                crate::model::WeightedVariant::new(self.treatment.clone(), w),
                crate::model::WeightedVariant::new(self.control.clone(), TOTAL - w),
            ];
            crate::model::Serve::rollout(rollout)
        });
    }

    /// `flag` after a breach or an abort: the control for everyone, or the kill switch.
    pub fn apply_breach(&self, flag: &mut Flag, breach: Breach) {
        match breach {
            Breach::Control => {
                flag.fallthrough = Some(crate::model::Serve::variant(self.control.clone()));
            }
            Breach::KillSwitch => flag.enabled = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_default_plan() {
        assert_eq!(Plan::from_json("{}").unwrap(), Plan::default());
        assert_eq!(Plan::from_json("").unwrap(), Plan::default());
        let p = Plan::default();
        assert_eq!(p.weight_at(0), 5_000);
        assert_eq!(p.weight_at(1), 25_000);
        assert_eq!(p.weight_at(2), TOTAL);
        assert_eq!(p.weight_at(9), TOTAL);
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let err = Plan::from_json(
            r#"{"treatment": "a", "control": "a",
                "stages": [{"percent": 0}, {"percent": 50, "minSamples": 0}, {"percent": 30}],
                "guards": {"errorRatio": {"statuses": [42]}, "latency": {"quantile": 1.5},
                           "counter": {"name": "bad name"}}}"#,
        )
        .unwrap_err();
        for path in [
            "control",
            "stages[0].percent",
            "stages[1].minSamples",
            "stages[2].percent",
            "guards.errorRatio.statuses[0]",
            "guards.latency.quantile",
            "guards.counter.name",
        ] {
            assert!(err.has_problem_at(path), "{path}: {err}");
        }
        let err =
            Plan::from_json(r#"{"guards": {"errorRatio": null, "latency": null}}"#).unwrap_err();
        assert!(err.has_problem_at("guards"), "{err}");
        let err =
            Plan::from_json(r#"{"stages": [{"percent": 100}, {"percent": 100}]}"#).unwrap_err();
        assert!(err.has_problem_at("stages[0].percent"), "{err}");
        let err = Plan::from_json(r#"{"stagez": []}"#).unwrap_err();
        assert!(
            err.problems()[0].message().contains("unknown field"),
            "{err}"
        );
    }

    #[test]
    fn the_plan_is_checked_against_the_flag() {
        let set =
            FlagSet::from_json(r#"{"flags": {"f": {"variants": {"on": true, "off": false}}}}"#)
                .unwrap();
        Plan::default().validate_for(&set, "f").unwrap();
        let err = Plan::default().validate_for(&set, "g").unwrap_err();
        assert!(err.has_problem_at(""));
        let plan = Plan::from_json(r#"{"treatment": "new"}"#).unwrap();
        assert!(
            plan.validate_for(&set, "f")
                .unwrap_err()
                .has_problem_at("treatment")
        );
    }

    #[test]
    fn stages_and_breaches_rewrite_the_fallthrough() {
        let set = FlagSet::from_json(
            r#"{"flags": {"f": {"variants": {"on": true, "off": false},
                "fallthrough": {"variant": "off"}}}}"#,
        )
        .unwrap();
        let plan = Plan::default();
        let mut flag = set.flags["f"].clone();
        plan.apply_stage(&mut flag, 1);
        let r = flag.fallthrough.as_ref().unwrap().rollout.as_ref().unwrap();
        assert_eq!(r.variants[0].weight, 25_000);
        assert_eq!(r.variants[1].weight, 75_000);
        plan.apply_stage(&mut flag, 2);
        assert_eq!(
            flag.fallthrough.as_ref().unwrap().variant.as_deref(),
            Some("on")
        );
        plan.apply_breach(&mut flag, Breach::Control);
        assert_eq!(
            flag.fallthrough.as_ref().unwrap().variant.as_deref(),
            Some("off")
        );
        plan.apply_breach(&mut flag, Breach::KillSwitch);
        assert!(!flag.enabled);
    }
}
