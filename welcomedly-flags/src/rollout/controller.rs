//! The rollout's state and the controller's step: given the state, the fleet's counts for
//! the current stage and the time, what to do. Pure (no I/O, the clock is an argument), so
//! every step is unit-tested; the [agent](super::agent) runs it on the leader every tick.
//!
//! ```
//! use std::time::Duration;
//! use welcomedly_flags::rollout::attribution::{latency_bucket, ArmCounts};
//! use welcomedly_flags::rollout::controller::{step, Action, Phase, RolloutState};
//! use welcomedly_flags::rollout::plan::Plan;
//!
//! let state = RolloutState::start("f", Plan::default(), "alice", 0);
//! // 5,000 requests, each served in 5 ms (every guard judges: errors and latency).
//! let mut healthy = ArmCounts { requests: 5_000, ..ArmCounts::default() };
//! healthy.latency[latency_bucket(Duration::from_millis(5))] = 5_000;
//! // Too early: the stage must run 60 s.
//! assert!(step(&state, &healthy, &healthy, 30_000).is_none());
//! let next = step(&state, &healthy, &healthy, 61_000).unwrap();
//! assert_eq!(next.phase, Phase::Running);
//! assert_eq!(next.stage, 1);
//! assert_eq!(next.decisions.last().unwrap().action, Action::Advance);
//! ```

use serde::{Deserialize, Serialize};

use super::attribution::ArmCounts;
use super::histogram::slow_requests;
use super::plan::Plan;
use super::sequential::{self, Arm, Evidence, SequentialConfig, Verdict};

/// The most decisions a rollout's state keeps (the oldest are dropped; every decision is also
/// in the flag's history).
pub const MAX_DECISIONS: usize = 64;

/// Where a rollout is. `frozen` is not stored: an instance that cannot reach Redis reports it
/// (see `RolloutAgent::status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// Advancing by stages under the guards.
    Running,
    /// Held at its stage by an operator: nothing is decided until it resumes.
    Paused,
    /// Every stage passed: the treatment serves everyone.
    Completed,
    /// A guard saw a regression: the plan's breach action was applied.
    RolledBack,
    /// Stopped by an operator: the control serves everyone.
    Aborted,
}

impl Phase {
    /// `"running"`, `"paused"`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
        }
    }

    /// Whether the rollout is over (completed, rolled back or aborted).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::RolledBack | Self::Aborted)
    }
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// The rollout started at its first stage.
    Start,
    /// The guards held with enough samples and time: the next stage.
    Advance,
    /// The last stage was reached.
    Complete,
    /// A guard saw a regression.
    Rollback,
    /// An operator paused it.
    Pause,
    /// An operator resumed it (the stage restarts its time and samples).
    Resume,
    /// An operator aborted it.
    Abort,
}

impl Action {
    /// `"start"`, `"advance"`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Advance => "advance",
            Self::Complete => "complete",
            Self::Rollback => "rollback",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }
}

/// One guard's verdict and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardEvidence {
    /// `"errorRatio"`, `"latency"` or `"counter"`.
    pub guard: String,
    /// The control arm's requests and events (errors, slow requests, counter hits).
    pub control: Arm,
    /// The treatment arm's.
    pub treatment: Arm,
    /// The sequential test's verdict, statistic, threshold and rates.
    pub evidence: Evidence,
    /// For the latency guard: the control's quantile both arms were counted against, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_micros: Option<u64>,
}

/// One decision, with its evidence: what the history, the bus and the status show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What was done.
    pub action: Action,
    /// The stage (index into the plan's stages) the decision was taken in.
    pub stage: usize,
    /// The treatment's share after the decision, in percent.
    pub percent: f64,
    /// Who: `"controller"` or the operator's name.
    pub actor: String,
    /// The guards' evidence (empty for an operator's decision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<GuardEvidence>,
}

/// A rollout as stored (JSON in Redis, on the flag's slot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// The flag.
    pub flag: String,
    /// The plan.
    pub plan: Plan,
    /// Where it is.
    pub phase: Phase,
    /// The current stage (index into the plan's stages).
    pub stage: usize,
    /// When the current stage started (ms since the Unix epoch); counts before it are not
    /// this stage's.
    pub stage_started_ms: u64,
    /// The decisions, oldest first (at most [`MAX_DECISIONS`]).
    pub decisions: Vec<Decision>,
}

impl RolloutState {
    /// A rollout of `flag` started by `actor` at `now_ms`, at its first stage.
    pub fn start(flag: &str, plan: Plan, actor: &str, now_ms: u64) -> Self {
        let mut s = Self {
            flag: flag.to_owned(),
            plan,
            phase: Phase::Running,
            stage: 0,
            stage_started_ms: now_ms,
            decisions: Vec::new(),
        };
        s.decide(Action::Start, actor, now_ms, Vec::new());
        s
    }

    /// The treatment's share now, in percent (0 after a rollback or an abort).
    pub fn percent(&self) -> f64 {
        match self.phase {
            Phase::RolledBack | Phase::Aborted => 0.0,
            Phase::Completed => 100.0,
            Phase::Running | Phase::Paused => self
                .plan
                .stages
                .get(self.stage)
                .map_or(100.0, |s| s.percent),
        }
    }

    fn decide(&mut self, action: Action, actor: &str, now_ms: u64, evidence: Vec<GuardEvidence>) {
        let stage = self.stage;
        match action {
            Action::Start | Action::Resume => {
                self.phase = Phase::Running;
                self.stage_started_ms = now_ms;
            }
            Action::Advance => {
                self.stage += 1;
                self.stage_started_ms = now_ms;
            }
            Action::Complete => {
                self.stage = self.plan.stages.len().saturating_sub(1);
                self.phase = Phase::Completed;
                self.stage_started_ms = now_ms;
            }
            Action::Rollback => self.phase = Phase::RolledBack,
            Action::Pause => self.phase = Phase::Paused,
            Action::Abort => self.phase = Phase::Aborted,
        }
        self.decisions.push(Decision {
            at_ms: now_ms,
            action,
            stage,
            percent: self.percent(),
            actor: actor.to_owned(),
            evidence,
        });
        if self.decisions.len() > MAX_DECISIONS {
            let extra = self.decisions.len() - MAX_DECISIONS;
            self.decisions.drain(..extra);
        }
    }

    /// An operator's action (`pause`, `resume`, `abort`): the new state, or why it does not
    /// apply (what to do instead).
    ///
    /// # Errors
    ///
    /// The action does not apply in the current phase.
    pub fn operate(&self, action: Action, actor: &str, now_ms: u64) -> Result<Self, String> {
        let ok = match action {
            Action::Pause => self.phase == Phase::Running,
            Action::Resume => self.phase == Phase::Paused,
            Action::Abort => !self.phase.is_final(),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "the rollout is {}: cannot {} it{}",
                self.phase.as_str(),
                action.as_str(),
                if self.phase.is_final() {
                    " (start a new rollout with POST)"
                } else {
                    ""
                }
            ));
        }
        let mut next = self.clone();
        next.decide(action, actor, now_ms, Vec::new());
        Ok(next)
    }
}

/// The guards' evidence for these counts.
pub fn judge(plan: &Plan, control: &ArmCounts, treatment: &ArmCounts) -> Vec<GuardEvidence> {
    let base = SequentialConfig {
        alpha: plan.alpha,
        ..SequentialConfig::default()
    };
    let mut out = Vec::new();
    if let Some(g) = &plan.guards.error_ratio {
        let (c, t) = (
            Arm::new(control.requests, control.errors),
            Arm::new(treatment.requests, treatment.errors),
        );
        let cfg = SequentialConfig {
            tolerance: g.tolerance,
            ..base
        };
        out.push(GuardEvidence {
            guard: "errorRatio".into(),
            control: c,
            treatment: t,
            evidence: sequential::test(c, t, &cfg),
            threshold_micros: None,
        });
    }
    if let Some(g) = &plan.guards.latency {
        let slow = slow_requests(
            &control.histogram(),
            &treatment.histogram(),
            g.quantile,
            g.tolerance,
        );
        out.push(GuardEvidence {
            guard: "latency".into(),
            control: slow.control,
            treatment: slow.treatment,
            evidence: sequential::test(slow.control, slow.treatment, &base),
            threshold_micros: slow.threshold_micros,
        });
    }
    if let Some(g) = &plan.guards.counter {
        let (c, t) = (
            Arm::new(control.requests, control.counter),
            Arm::new(treatment.requests, treatment.counter),
        );
        let cfg = SequentialConfig {
            tolerance: g.tolerance,
            ..base
        };
        out.push(GuardEvidence {
            guard: "counter".into(),
            control: c,
            treatment: t,
            evidence: sequential::test(c, t, &cfg),
            threshold_micros: None,
        });
    }
    out
}

/// One controller step at `now_ms` with the fleet's counts since the stage started: the new
/// state when something is decided, `None` otherwise.
///
/// - not running: nothing;
/// - any guard answers [`Verdict::Regression`]: roll back, at once (the sequential test stays
///   valid however often it is asked);
/// - the stage has run its minimum time and each arm has its minimum samples, and no guard
///   regressed: the next stage, or completed when the next is the last (100 %).
pub fn step(
    state: &RolloutState,
    control: &ArmCounts,
    treatment: &ArmCounts,
    now_ms: u64,
) -> Option<RolloutState> {
    if state.phase != Phase::Running {
        return None;
    }
    let last = state.plan.stages.len().saturating_sub(1);
    let Some(stage) = state
        .plan
        .stages
        .get(state.stage)
        .filter(|_| state.stage < last)
    else {
        // At (or past) the last stage: 100 % has no control arm to compare with.
        let mut next = state.clone();
        next.decide(Action::Complete, "controller", now_ms, Vec::new());
        return Some(next);
    };
    let evidence = judge(&state.plan, control, treatment);
    if evidence
        .iter()
        .any(|e| e.evidence.verdict == Verdict::Regression)
    {
        let mut next = state.clone();
        next.decide(Action::Rollback, "controller", now_ms, evidence);
        return Some(next);
    }
    let ran = now_ms.saturating_sub(state.stage_started_ms);
    let enough_time = ran >= stage.min_duration_secs.saturating_mul(1000);
    let enough_samples =
        control.requests >= stage.min_samples && treatment.requests >= stage.min_samples;
    // A stage whose `minSamples` is below the test's minimum trials per arm would otherwise
    // advance on a handful of requests that no guard judged ("insufficient" is no verdict).
    let judged = evidence
        .iter()
        .all(|e| e.evidence.verdict != Verdict::Insufficient);
    if !(enough_time && enough_samples && judged) {
        return None;
    }
    let mut next = state.clone();
    let action = if state.stage + 1 >= last {
        Action::Complete
    } else {
        Action::Advance
    };
    next.decide(action, "controller", now_ms, evidence);
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::attribution::latency_bucket;
    use std::time::Duration;

    fn counts(requests: u64, errors: u64, ms: u64) -> ArmCounts {
        let mut c = ArmCounts {
            requests,
            errors,
            ..ArmCounts::default()
        };
        c.latency[latency_bucket(Duration::from_millis(ms))] = requests;
        c
    }

    #[test]
    fn a_healthy_rollout_goes_through_every_stage() {
        let mut s = RolloutState::start("f", Plan::default(), "alice", 1_000);
        let healthy = counts(2_000, 20, 5);
        assert!(step(&s, &healthy, &healthy, 30_000).is_none(), "min time");
        assert!(
            step(&s, &counts(10, 0, 5), &healthy, 70_000).is_none(),
            "min samples"
        );
        s = step(&s, &healthy, &healthy, 70_000).unwrap();
        assert_eq!((s.phase, s.stage, s.percent()), (Phase::Running, 1, 25.0));
        assert!(
            step(&s, &healthy, &healthy, 100_000).is_none(),
            "the stage restarts its clock"
        );
        s = step(&s, &healthy, &healthy, 140_000).unwrap();
        assert_eq!((s.phase, s.percent()), (Phase::Completed, 100.0));
        assert!(step(&s, &healthy, &healthy, 999_000).is_none());
        let actions: Vec<_> = s.decisions.iter().map(|d| d.action).collect();
        assert_eq!(actions, [Action::Start, Action::Advance, Action::Complete]);
        assert_eq!(s.decisions[1].evidence.len(), 2, "error ratio and latency");
    }

    #[test]
    fn no_stage_advances_before_every_guard_could_judge() {
        let plan = Plan::from_json(
            r#"{"stages": [{"percent": 5, "minDurationSecs": 1, "minSamples": 10}, {"percent": 100}]}"#,
        )
        .unwrap();
        let s = RolloutState::start("f", plan, "alice", 0);
        // 30 treatment requests, 6 failed: enough by the plan, too few for the test.
        let few = step(&s, &counts(600, 0, 5), &counts(30, 6, 5), 5_000);
        assert!(few.is_none(), "advanced unjudged: {few:?}");
        let next = step(&s, &counts(2_000, 20, 5), &counts(200, 2, 5), 5_000).unwrap();
        assert_eq!(next.phase, Phase::Completed);
    }

    #[test]
    fn more_errors_roll_back_before_the_minimum_time() {
        let s = RolloutState::start("f", Plan::default(), "alice", 0);
        let next = step(&s, &counts(3_000, 30, 5), &counts(3_000, 150, 5), 5_000).unwrap();
        assert_eq!(next.phase, Phase::RolledBack);
        assert_eq!(next.percent(), 0.0);
        let d = next.decisions.last().unwrap();
        assert_eq!(d.action, Action::Rollback);
        let e = &d.evidence[0];
        assert_eq!(e.guard, "errorRatio");
        assert_eq!(e.evidence.verdict, Verdict::Regression);
        assert_eq!(e.treatment, Arm::new(3_000, 150));
    }

    #[test]
    fn a_slower_treatment_rolls_back() {
        let s = RolloutState::start("f", Plan::default(), "alice", 0);
        let next = step(&s, &counts(3_000, 0, 5), &counts(3_000, 0, 60), 5_000).unwrap();
        assert_eq!(next.phase, Phase::RolledBack);
        let e = &next.decisions.last().unwrap().evidence[1];
        assert_eq!(
            (e.guard.as_str(), e.evidence.verdict),
            ("latency", Verdict::Regression)
        );
    }

    #[test]
    fn operators_pause_resume_and_abort() {
        let s = RolloutState::start("f", Plan::default(), "alice", 0);
        let p = s.operate(Action::Pause, "bob", 10).unwrap();
        assert_eq!(p.phase, Phase::Paused);
        let healthy = counts(9_000, 0, 5);
        assert!(
            step(&p, &healthy, &healthy, 999_000).is_none(),
            "paused: no step"
        );
        assert!(p.operate(Action::Pause, "bob", 11).is_err());
        let r = p.operate(Action::Resume, "bob", 20).unwrap();
        assert_eq!((r.phase, r.stage_started_ms), (Phase::Running, 20));
        let a = r.operate(Action::Abort, "bob", 30).unwrap();
        assert_eq!((a.phase, a.percent()), (Phase::Aborted, 0.0));
        let err = a.operate(Action::Resume, "bob", 40).unwrap_err();
        assert!(err.contains("aborted"), "{err}");
    }

    #[test]
    fn decisions_are_bounded() {
        let mut s = RolloutState::start("f", Plan::default(), "alice", 0);
        for i in 0..200 {
            s = s.operate(Action::Pause, "bob", i).unwrap();
            s = s.operate(Action::Resume, "bob", i).unwrap();
        }
        assert_eq!(s.decisions.len(), MAX_DECISIONS);
    }
}
