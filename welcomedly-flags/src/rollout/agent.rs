//! [`RolloutAgent`]: what every instance runs for guarded rollouts, once a second.
//!
//! 1. **Flush** its per-arm counts ([`Attribution::take`]) into the current second's bucket of
//!    each flag (a count Redis did not take is put back: nothing is lost while Redis is away).
//! 2. **Follow** the active rollouts (their state), and guard their flags in the attribution.
//! 3. **Act**, on the one instance holding a flag's lease: take the lease when it is free
//!    (`INCR` fencing token + `SET PX`, in one script) and at once raise the flag store's
//!    fence to its token ([`FlagStore::raise_fence`]), renew it every tick, and step the
//!    [controller](super::controller::step) on the whole fleet's counts since the stage
//!    started (less a settle time while instances pick up the new weights). A decision is
//!    written with the token and the revision checked in one script, published on the flag's
//!    decision channel and the local [`decisions`](RolloutAgent::decisions) broadcast, then
//!    applied to the flag (the fallthrough's split, or the breach) through the flag store with
//!    its evidence in the flag's history, fenced by the same token
//!    ([`FlagStore::write_fenced`]).
//!
//! **Redis down freezes**: a tick that cannot flush, read the state or read the counts decides
//! nothing, and [`status`](RolloutAgent::status) says `"frozen"` with why, until Redis answers.
//!
//! **A paused old leader** cannot write after it lost its lease. Its state writes are refused
//! by the rollout store's script, which checks the lease holds its token. Its flag writes are
//! refused by the flag store itself: the flag document lives on another Redis slot than the
//! lease, so the flag store keeps the highest token it has seen per flag next to the document
//! and its write script refuses a lower one in the same step as the compare-and-set
//! (fencing at the resource). A new leader raises that fence as soon as it holds the lease,
//! then reconciles the flag with the state, so a stale write that landed just before is
//! undone at once and none can land after. An operator's write (start, pause, resume, abort)
//! is not fenced: it is checked by the state's revision instead.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use serde_json::json;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::attribution::{ArmCounts, Attribution};
use super::controller::{Action, Decision, Phase, RolloutState, step};
use super::plan::{Breach, Plan};
use super::store::{RolloutStore, StoreFailure, Written};
use crate::model::{Flag, FlagSet};
use crate::store::{Change, Fence, FlagStore};

/// Milliseconds since the Unix epoch: the agent's clock (injectable for tests).
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::store::now_unix_ms()
    }
}

/// The agent's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// How often counts are flushed and the controller steps. Default 1 s.
    pub tick: Duration,
    /// How long a lease lasts without renewal (another instance takes over after it). Default
    /// 5 s.
    pub lease_ttl: Duration,
    /// Counts of a stage's first seconds are left out while instances pick up the new weights.
    /// Default 2 s.
    pub settle: Duration,
    /// This instance's id, stored with the lease it holds and shown as the status' `leader`
    /// (operator-chosen text such as a host name; never a client's). Default empty.
    pub instance: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(5),
            settle: Duration::from_secs(2),
            instance: String::new(),
        }
    }
}

/// A decision as published (JSON on `{wd:rollout:<flag>}:decisions` and the local broadcast).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecisionEvent {
    /// The flag.
    pub flag: String,
    /// The phase after the decision (`"running"`, `"rolled_back"`, …).
    pub state: Phase,
    /// The decision and its evidence.
    pub decision: Decision,
}

/// Why a rollout operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RolloutError {
    /// The plan does not fit the flag (every problem listed).
    Invalid(crate::ValidationErrors),
    /// No rollout of this flag was ever started.
    NotFound,
    /// Not now: a rollout runs already, or the action does not apply in its phase.
    Conflict(String),
    /// Redis or the flag store could not be reached: try again.
    Unavailable(String),
}

impl fmt::Display for RolloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "the rollout plan does not fit: {e}"),
            Self::NotFound => f.write_str("no rollout of this flag: start one with a plan"),
            Self::Conflict(m) | Self::Unavailable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RolloutError {}

impl From<StoreFailure> for RolloutError {
    fn from(e: StoreFailure) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// What one instance last knew of a rollout.
#[derive(Clone)]
struct Known {
    state: RolloutState,
    arms: Option<(ArmCounts, ArmCounts)>,
    frozen: Option<String>,
}

/// Summed counts of one stage: sealed buckets read once, the recent ones every tick.
struct CountCache {
    stage_started_ms: u64,
    sealed_until: u64,
    control: ArmCounts,
    treatment: ArmCounts,
}

struct Lease {
    token: u64,
    renewed: Instant,
}

struct Shared {
    store: RolloutStore,
    flags: Arc<dyn FlagStore>,
    attribution: Attribution,
    config: AgentConfig,
    clock: Arc<dyn Clock>,
    known: Mutex<HashMap<String, Known>>,
    leases: Mutex<HashMap<String, Lease>>,
    caches: Mutex<HashMap<String, CountCache>>,
    decided: Mutex<HashMap<(String, &'static str), u64>>,
    events: broadcast::Sender<DecisionEvent>,
}

/// The per-instance rollout agent (see the [module docs](self)). Stops when dropped.
pub struct RolloutAgent {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for RolloutAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RolloutAgent")
            .field("attribution", &self.shared.attribution)
            .finish_non_exhaustive()
    }
}

impl Drop for RolloutAgent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Locks a mutex, recovering the data of a panicked holder (plain maps: still consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RolloutAgent {
    /// Starts the agent: rollouts in `store`, flags written through `flags` (the same store
    /// every instance's [`FlagSync`](crate::store::FlagSync) follows), requests counted by
    /// `attribution` (give it to the [`FlagsLayer`](crate::layer::FlagsLayer) too).
    pub fn start(
        store: RolloutStore,
        flags: Arc<dyn FlagStore>,
        attribution: Attribution,
        config: AgentConfig,
    ) -> Self {
        Self::start_with_clock(store, flags, attribution, config, Arc::new(SystemClock))
    }

    /// [`start`](Self::start) with another clock (tests).
    pub fn start_with_clock(
        store: RolloutStore,
        flags: Arc<dyn FlagStore>,
        attribution: Attribution,
        config: AgentConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (events, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            store,
            flags,
            attribution,
            config,
            clock,
            known: Mutex::default(),
            leases: Mutex::default(),
            caches: Mutex::default(),
            decided: Mutex::default(),
            events,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(s.config.tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                s.tick().await;
            }
        });
        Self {
            shared,
            task: Some(task),
        }
    }

    /// The attribution this agent flushes and guards.
    pub fn attribution(&self) -> &Attribution {
        &self.shared.attribution
    }

    /// Every decision this instance takes (as the acting instance) or an operator takes
    /// through it: forward them to the application's event bus.
    pub fn decisions(&self) -> broadcast::Receiver<DecisionEvent> {
        self.shared.events.subscribe()
    }

    /// Whether this instance acts for `flag` now.
    pub fn is_leader(&self, flag: &str) -> bool {
        self.shared.holds(flag)
    }

    /// The flags whose rollouts this instance follows now (the active ones as of its last
    /// tick, at most [`MAX_GUARDED`](super::attribution::MAX_GUARDED)), without a Redis call:
    /// what a dashboard asks [`status`](Self::status) about.
    pub fn followed(&self) -> Vec<String> {
        let mut flags: Vec<String> = lock(&self.shared.known).keys().cloned().collect();
        flags.sort_unstable();
        flags
    }

    /// Starts a guarded rollout of `flag` with `plan`, by `actor`: the first stage's split is
    /// written to the flag at once.
    ///
    /// # Errors
    ///
    /// The plan does not fit the flag, a rollout of it is running or paused, too many run, or
    /// Redis / the flag store failed.
    pub async fn start_rollout(
        &self,
        flag: &str,
        plan: Plan,
        actor: &str,
    ) -> Result<RolloutState, RolloutError> {
        let s = &self.shared;
        let doc = s
            .flags
            .load()
            .await
            .map_err(|e| RolloutError::Unavailable(e.to_string()))?;
        let set = if doc.body.is_empty() {
            FlagSet::new()
        } else {
            FlagSet::parse_json(&doc.body).map_err(RolloutError::Invalid)?
        };
        plan.validate_for(&set, flag)
            .map_err(RolloutError::Invalid)?;
        let current = s.store.load(flag).await?;
        let rev = match &current {
            Some((state, _)) if !state.phase.is_final() => {
                return Err(RolloutError::Conflict(format!(
                    "a rollout of {flag:?} is {}: abort it before starting another",
                    state.phase.as_str()
                )));
            }
            Some((_, rev)) => *rev,
            None => 0,
        };
        if !s.store.set_active(flag, true).await? {
            return Err(RolloutError::Conflict(format!(
                "{} rollouts run already: let one finish or abort it",
                super::attribution::MAX_GUARDED
            )));
        }
        let state = RolloutState::start(flag, plan, actor, s.clock.now_ms());
        s.write_operator(&state, rev).await?;
        Ok(state)
    }

    /// An operator's `pause`, `resume` or `abort` of `flag`'s rollout.
    ///
    /// # Errors
    ///
    /// No rollout, the action does not apply now, or Redis / the flag store failed.
    pub async fn operate(
        &self,
        flag: &str,
        action: Action,
        actor: &str,
    ) -> Result<RolloutState, RolloutError> {
        let s = &self.shared;
        for _ in 0..5 {
            let (state, rev) = s.store.load(flag).await?.ok_or(RolloutError::NotFound)?;
            let next = state
                .operate(action, actor, s.clock.now_ms())
                .map_err(RolloutError::Conflict)?;
            match s.write_operator(&next, rev).await {
                Err(RolloutError::Conflict(_)) => continue,
                other => return other.map(|()| next),
            }
        }
        Err(RolloutError::Conflict(
            "the rollout changed under every attempt: try again".into(),
        ))
    }

    /// The status of `flag`'s rollout as the admin API shows it: `{"state", "stage",
    /// "percent", "arms", "decisions", "plan", "leader", "acting"}`, with `"state": "frozen"`
    /// and `"frozenBecause"` when Redis cannot be read (the last known numbers are shown).
    /// `leader` is the lease's `{"instance", "token"}` (`null` when no instance holds it or
    /// Redis cannot be read), `acting` whether this instance holds it.
    ///
    /// # Errors
    ///
    /// [`RolloutError::NotFound`] when no rollout of `flag` is known;
    /// [`RolloutError::Unavailable`] when Redis cannot be read and this instance has not followed
    /// the rollout yet.
    pub async fn status(&self, flag: &str) -> Result<serde_json::Value, RolloutError> {
        let s = &self.shared;
        let mut known = match s.store.load(flag).await {
            Ok(Some((state, _))) => {
                let arms = if state.phase.is_final() {
                    None
                } else {
                    s.stage_counts(&state).await.ok()
                };
                Known {
                    state,
                    arms,
                    frozen: None,
                }
            }
            Ok(None) => return Err(RolloutError::NotFound),
            Err(e) => {
                // Nothing known here (this instance never followed the rollout): Redis is
                // the only one who could tell, and it cannot now; not a "no rollout".
                let Some(mut k) = lock(&s.known).get(flag).cloned() else {
                    return Err(RolloutError::Unavailable(format!(
                        "{e}; this instance has not followed a rollout of {flag:?} yet, so it cannot tell its state meanwhile"
                    )));
                };
                k.frozen = Some(e.to_string());
                k
            }
        };
        if known.frozen.is_none()
            && let Some(k) = lock(&s.known).get(flag)
            && k.frozen.is_some()
            && !known.state.phase.is_final()
        {
            known.frozen.clone_from(&k.frozen);
        }
        let leader = if known.frozen.is_some() {
            None
        } else {
            s.store.lease(flag).await.ok().flatten()
        };
        let mut out = render(&known);
        if let Some(o) = out.as_object_mut() {
            o.insert(
                "leader".into(),
                leader.map_or(
                    serde_json::Value::Null,
                    |(token, instance)| json!({"instance": instance, "token": token}),
                ),
            );
            o.insert("acting".into(), json!(s.holds(flag)));
        }
        Ok(out)
    }

    /// Registers observable instruments: `welcomedly.rollout.stage` and
    /// `welcomedly.rollout.percent` per flag, `welcomedly.rollout.state` (1 for the flag's
    /// current state, `frozen` included), `welcomedly.rollout.arm_requests` and
    /// `welcomedly.rollout.arm_error_ratio` per flag and arm (the current stage, fleet-wide),
    /// the counter `welcomedly.rollout.decisions` per flag and action (taken by this
    /// instance), and `welcomedly.rollout.rollbacks` without labels (always exported, 0 until a
    /// rollback: what the alert rule watches). Labels are bounded: at most 16 guarded flags,
    /// fixed arms, states and actions.
    pub fn register_metrics(&self, meter: &Meter) {
        let s = self.shared.clone();
        let _stage = meter
            .u64_observable_gauge("welcomedly.rollout.stage")
            .with_description("Current stage (index into the plan) of each guarded rollout")
            .with_callback(move |o| {
                for (flag, k) in lock(&s.known).iter() {
                    o.observe(k.state.stage as u64, &[KeyValue::new("flag", flag.clone())]);
                }
            })
            .build();
        let s = self.shared.clone();
        let _percent = meter
            .f64_observable_gauge("welcomedly.rollout.percent")
            .with_description("Treatment share of each guarded rollout, in percent")
            .with_callback(move |o| {
                for (flag, k) in lock(&s.known).iter() {
                    o.observe(k.state.percent(), &[KeyValue::new("flag", flag.clone())]);
                }
            })
            .build();
        let s = self.shared.clone();
        let _state = meter
            .u64_observable_gauge("welcomedly.rollout.state")
            .with_description(
                "1 for the current state of each guarded rollout (frozen: Redis unreachable)",
            )
            .with_callback(move |o| {
                for (flag, k) in lock(&s.known).iter() {
                    let state = if k.frozen.is_some() && !k.state.phase.is_final() {
                        "frozen"
                    } else {
                        k.state.phase.as_str()
                    };
                    o.observe(
                        1,
                        &[
                            KeyValue::new("flag", flag.clone()),
                            KeyValue::new("state", state),
                        ],
                    );
                }
            })
            .build();
        let s = self.shared.clone();
        let _requests = meter
            .u64_observable_gauge("welcomedly.rollout.arm_requests")
            .with_description("Requests each arm served in the current stage, fleet-wide")
            .with_callback(move |o| {
                for (flag, k) in lock(&s.known).iter() {
                    if let Some((c, t)) = &k.arms {
                        for (arm, n) in [("control", c), ("treatment", t)] {
                            o.observe(
                                n.requests,
                                &[
                                    KeyValue::new("flag", flag.clone()),
                                    KeyValue::new("arm", arm),
                                ],
                            );
                        }
                    }
                }
            })
            .build();
        let s = self.shared.clone();
        let _ratio = meter
            .f64_observable_gauge("welcomedly.rollout.arm_error_ratio")
            .with_description("Error ratio of each arm in the current stage, fleet-wide")
            .with_callback(move |o| {
                for (flag, k) in lock(&s.known).iter() {
                    if let Some((c, t)) = &k.arms {
                        for (arm, n) in [("control", c), ("treatment", t)] {
                            o.observe(
                                ratio(n.errors, n.requests),
                                &[
                                    KeyValue::new("flag", flag.clone()),
                                    KeyValue::new("arm", arm),
                                ],
                            );
                        }
                    }
                }
            })
            .build();
        let s = self.shared.clone();
        let _decisions = meter
            .u64_observable_counter("welcomedly.rollout.decisions")
            .with_description("Rollout decisions taken by this instance, per flag and action")
            .with_callback(move |o| {
                for ((flag, action), n) in lock(&s.decided).iter() {
                    o.observe(
                        *n,
                        &[
                            KeyValue::new("flag", flag.clone()),
                            KeyValue::new("action", *action),
                        ],
                    );
                }
            })
            .build();
        let s = self.shared.clone();
        let _rollbacks = meter
            .u64_observable_counter("welcomedly.rollout.rollbacks")
            .with_description(
                "Guarded rollouts this instance rolled back (a guard saw a regression)",
            )
            .with_callback(move |o| {
                let n = lock(&s.decided)
                    .iter()
                    .filter(|((_, action), _)| *action == Action::Rollback.as_str())
                    .map(|(_, n)| *n)
                    .sum::<u64>();
                o.observe(n, &[]);
            })
            .build();
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn arm_json(c: &ArmCounts, q: f64) -> serde_json::Value {
    let h = c.histogram();
    json!({
        "requests": c.requests,
        "errors": c.errors,
        "errorRatio": ratio(c.errors, c.requests),
        "counter": c.counter,
        "latencyQuantile": q,
        "latencyMs": h.quantile(q).map(|d| d.as_secs_f64() * 1000.0),
    })
}

fn render(k: &Known) -> serde_json::Value {
    let s = &k.state;
    let state = match &k.frozen {
        Some(_) if !s.phase.is_final() => "frozen",
        _ => s.phase.as_str(),
    };
    let q = s.plan.guards.latency.as_ref().map_or(0.95, |l| l.quantile);
    let arms = k.arms.as_ref().map_or(
        serde_json::Value::Null,
        |(c, t)| json!({"control": arm_json(c, q), "treatment": arm_json(t, q)}),
    );
    json!({
        "flag": s.flag,
        "state": state,
        "paused": s.phase == Phase::Paused,
        "frozenBecause": k.frozen,
        "stage": s.stage,
        "stages": s.plan.stages.len(),
        "percent": s.percent(),
        "stageStartedMs": s.stage_started_ms,
        "arms": arms,
        "decisions": s.decisions,
        "plan": s.plan,
    })
}

/// The flag as `state` wants it.
fn desired(state: &RolloutState, flag: &mut Flag) {
    let plan = &state.plan;
    match state.phase {
        Phase::Running | Phase::Paused => plan.apply_stage(flag, state.stage),
        Phase::Completed => plan.apply_stage(flag, plan.stages.len()),
        Phase::RolledBack => plan.apply_breach(flag, plan.on_breach),
        Phase::Aborted => plan.apply_breach(flag, Breach::Control),
    }
}

impl Shared {
    fn holds(&self, flag: &str) -> bool {
        lock(&self.leases)
            .get(flag)
            .is_some_and(|l| l.renewed.elapsed() < self.config.lease_ttl / 2)
    }

    fn freeze(&self, flag: Option<&str>, why: &str) {
        let mut known = lock(&self.known);
        for (f, k) in known.iter_mut() {
            if flag.is_none_or(|x| x == f) {
                k.frozen = Some(why.to_owned());
            }
        }
    }

    async fn write_operator(&self, state: &RolloutState, rev: u64) -> Result<(), RolloutError> {
        let decision = state.decisions.last();
        let event = decision.map(|d| DecisionEvent {
            flag: state.flag.clone(),
            state: state.phase,
            decision: d.clone(),
        });
        let text = event.as_ref().and_then(|e| serde_json::to_string(e).ok());
        match self.store.write(state, rev, None, text.as_deref()).await? {
            Written::Ok(_) => {}
            Written::Conflict(_) | Written::Fenced => {
                return Err(RolloutError::Conflict(
                    "the rollout changed meanwhile: read its status and try again".into(),
                ));
            }
        }
        if let Some(e) = event {
            self.note_decision(e);
        }
        if state.phase.is_final() {
            self.store.set_active(&state.flag, false).await?;
        }
        // An operator's write: checked by the state's revision, not by a lease.
        self.apply_to_flag(state, None)
            .await
            .map_err(|e| RolloutError::Unavailable(e.to_string()))
    }

    fn note_decision(&self, e: DecisionEvent) {
        *lock(&self.decided)
            .entry((e.flag.clone(), e.decision.action.as_str()))
            .or_default() += 1;
        let _ = self.events.send(e);
    }

    /// Writes the flag as `state` wants it (when it differs), with the last decision in the
    /// flag's history; fenced by the lease's `token` when the controller writes.
    async fn apply_to_flag(
        &self,
        state: &RolloutState,
        token: Option<u64>,
    ) -> Result<(), ApplyError> {
        for _ in 0..5 {
            let doc = self.flags.load().await?;
            let mut set =
                FlagSet::parse_json(&doc.body).map_err(|e| ApplyError::Other(e.to_string()))?;
            let Some(flag) = set.flags.get_mut(&state.flag) else {
                return Err(ApplyError::Other(format!(
                    "flag {:?} is gone: the rollout cannot apply its stage",
                    state.flag
                )));
            };
            let before = flag.clone();
            desired(state, flag);
            if *flag == before {
                return Ok(());
            }
            set.validate()
                .map_err(|e| ApplyError::Other(e.to_string()))?;
            let d = state.decisions.last();
            let summary = format!(
                "rollout of {}: {} at stage {} ({} %)",
                state.flag,
                d.map_or("apply", |d| d.action.as_str()),
                state.stage,
                state.percent()
            );
            let change = Change::new(d.map_or("rollout", |d| d.actor.as_str()), summary)
                .with_diff(json!({"key": state.flag, "rollout": d}));
            let written = match token {
                Some(t) => {
                    self.flags
                        .write_fenced(
                            doc.version,
                            set.to_json(),
                            change,
                            Fence::new(&state.flag, t),
                        )
                        .await
                }
                None => self.flags.write(doc.version, set.to_json(), change).await,
            };
            match written {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApplyError::Other(
            "the flag set changed under every attempt: the next tick tries again".into(),
        ))
    }

    /// The fleet's counts of the current stage (since it started, less the settle time).
    async fn stage_counts(
        &self,
        state: &RolloutState,
    ) -> Result<(ArmCounts, ArmCounts), StoreFailure> {
        let from = (state.stage_started_ms + duration_ms(self.config.settle)).div_ceil(1000);
        let now = self.clock.now_ms() / 1000;
        // Buckets older than this are complete: every instance flushed them.
        let sealed = now.saturating_sub(5);
        let cached = lock(&self.caches)
            .remove(&state.flag)
            .filter(|c| c.stage_started_ms == state.stage_started_ms);
        let mut cache = cached.unwrap_or(CountCache {
            stage_started_ms: state.stage_started_ms,
            sealed_until: from,
            control: ArmCounts::default(),
            treatment: ArmCounts::default(),
        });
        if sealed > cache.sealed_until {
            let (c, t) = self
                .store
                .counts(&state.flag, cache.sealed_until, sealed - 1)
                .await?;
            cache.control.add(&c);
            cache.treatment.add(&t);
            cache.sealed_until = sealed;
        }
        let (mut c, mut t) = (cache.control.clone(), cache.treatment.clone());
        if now + 1 >= cache.sealed_until {
            let (rc, rt) = self
                .store
                .counts(&state.flag, cache.sealed_until, now + 1)
                .await?;
            c.add(&rc);
            t.add(&rt);
        }
        lock(&self.caches).insert(state.flag.clone(), cache);
        Ok((c, t))
    }

    async fn tick(&self) {
        let now_ms = self.clock.now_ms();
        // 1. Flush.
        for (flag, c, t) in self.attribution.take() {
            if let Err(e) = self.store.flush(&flag, now_ms / 1000, &c, &t).await {
                if e.did_not_run() {
                    self.attribution.put_back(&flag, &c, &t);
                }
                self.freeze(None, &e.to_string());
                return;
            }
        }
        // 2. Follow.
        let active = match self.store.active().await {
            Ok(a) => a,
            Err(e) => {
                self.freeze(None, &e.to_string());
                return;
            }
        };
        let mut states = Vec::new();
        for flag in &active {
            match self.store.load(flag).await {
                Ok(Some(s)) => states.push(s),
                Ok(None) => {}
                Err(e) => {
                    self.freeze(Some(flag), &e.to_string());
                    return;
                }
            }
        }
        self.attribution.guard(
            states
                .iter()
                .filter(|(s, _)| !s.phase.is_final())
                .map(|(s, _)| (s.flag.as_str(), &s.plan)),
        );
        {
            let mut known = lock(&self.known);
            known.retain(|f, _| active.contains(f));
            for (s, _) in &states {
                let arms = known.get(&s.flag).and_then(|k| k.arms.clone());
                known.insert(
                    s.flag.clone(),
                    Known {
                        state: s.clone(),
                        arms,
                        frozen: None,
                    },
                );
            }
        }
        // 3. Act.
        for (state, rev) in states {
            if let Err(e) = self.act(state, rev).await {
                self.freeze(Some(&e.0), &e.1);
            }
        }
    }

    async fn act(&self, state: RolloutState, rev: u64) -> Result<(), (String, String)> {
        let flag = state.flag.clone();
        let fail = |e: StoreFailure| (flag.clone(), e.to_string());
        let ttl = self.config.lease_ttl;
        let held = lock(&self.leases).get(&flag).map(|l| l.token);
        let token = match held {
            Some(token) => {
                if self.store.renew(&flag, token, ttl).await.map_err(fail)? {
                    Some(token)
                } else {
                    None
                }
            }
            None => {
                let token = self
                    .store
                    .acquire_as(&flag, ttl, &self.config.instance)
                    .await
                    .map_err(fail)?;
                // From now on the flag store refuses the previous leader's flag writes.
                if let Some(t) = token
                    && let Err(e) = self.flags.raise_fence(Fence::new(&flag, t)).await
                {
                    tracing::warn!(flag = %flag, error = %e, "the rollout's new lease could not fence the flag store: not acting");
                    return Ok(());
                }
                token
            }
        };
        let Some(token) = token else {
            lock(&self.leases).remove(&flag);
            return Ok(());
        };
        lock(&self.leases).insert(
            flag.clone(),
            Lease {
                token,
                renewed: Instant::now(),
            },
        );
        // Reconcile the flag with the state (a crash between the two writes, a stale write).
        match self.apply_to_flag(&state, Some(token)).await {
            Ok(()) => {}
            Err(ApplyError::Store(e)) if e.is_fenced() => {
                tracing::warn!(flag = %flag, error = %e, "the rollout's flag write was fenced: another instance acts now");
                lock(&self.leases).remove(&flag);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(flag = %flag, error = %e, "the rollout could not apply its state to the flag");
            }
        }
        if state.phase.is_final() {
            self.store.set_active(&flag, false).await.map_err(fail)?;
            return Ok(());
        }
        if state.phase != Phase::Running {
            return Ok(());
        }
        let (c, t) = self.stage_counts(&state).await.map_err(fail)?;
        if let Some(k) = lock(&self.known).get_mut(&flag) {
            k.arms = Some((c.clone(), t.clone()));
        }
        let Some(next) = step(&state, &c, &t, self.clock.now_ms()) else {
            return Ok(());
        };
        if !self.holds(&flag) {
            return Ok(());
        }
        let event = next.decisions.last().map(|d| DecisionEvent {
            flag: flag.clone(),
            state: next.phase,
            decision: d.clone(),
        });
        let text = event.as_ref().and_then(|e| serde_json::to_string(e).ok());
        match self
            .store
            .write(&next, rev, Some(token), text.as_deref())
            .await
            .map_err(fail)?
        {
            Written::Ok(_) => {}
            Written::Fenced => {
                lock(&self.leases).remove(&flag);
                return Ok(());
            }
            Written::Conflict(_) => return Ok(()),
        }
        if let Some(e) = event {
            tracing::info!(
                flag = %flag,
                action = e.decision.action.as_str(),
                stage = e.decision.stage,
                percent = e.decision.percent,
                "rollout decision"
            );
            self.note_decision(e);
        }
        match self.apply_to_flag(&next, Some(token)).await {
            Ok(()) => {}
            Err(ApplyError::Store(e)) if e.is_fenced() => {
                tracing::warn!(flag = %flag, error = %e, "the rollout's flag write was fenced: another instance acts now");
                lock(&self.leases).remove(&flag);
            }
            Err(e) => {
                tracing::warn!(flag = %flag, error = %e, "the rollout could not apply its decision to the flag (the next tick retries)");
            }
        }
        if next.phase.is_final() {
            self.store.set_active(&flag, false).await.map_err(fail)?;
        }
        if let Some(k) = lock(&self.known).get_mut(&flag) {
            k.state = next;
        }
        Ok(())
    }
}

/// Why the flag could not be written as the rollout wants it.
#[derive(Debug)]
enum ApplyError {
    /// The flag store refused or failed (fenced: another instance acts).
    Store(crate::store::StoreError),
    /// The flag set does not take the rollout (the flag is gone, it does not validate, …).
    Other(String),
}

impl From<crate::store::StoreError> for ApplyError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e)
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => e.fmt(f),
            Self::Other(m) => f.write_str(m),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
