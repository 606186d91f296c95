//! The backend interface: what a store of rate-limit state implements ([`RateLimitBackend`])
//! and the types it decides with. The layer calls [`RateLimitBackend::acquire`] with one
//! [`Check`] per matching policy (its [`PolicySpec`] and the request's [`Key`]) and admits the
//! request when the [`Decisions`] say so ([`admits`]); [`Gcra`] is the algorithm both backends
//! run. [`LocalBackend`] keeps the state in this process (the default, also at
//! [`rate_limit`](super)'s root); welcomedly-cluster's Redis backend shares it between instances.
//!
//! Applications configure limits with the types at the root of [`rate_limit`](super) and need
//! this module only to write a backend of their own or to be generic over one.
//!
//! ```
//! use welcomedly_core::rate_limit::backend::{Check, LocalBackend, RateLimitBackend, admits};
//! use welcomedly_core::rate_limit::{Policy, Quota, RateLimitLayer};
//!
//! fn backend_of<B: RateLimitBackend>(layer: &RateLimitLayer<B>) -> &B {
//!     layer.backend()
//! }
//!
//! let layer = RateLimitLayer::builder()
//!     .policy(Policy::new("api", Quota::per_minute(200)))
//!     .build()
//!     .map_err(|e| e.to_string())?;
//! let _local: &LocalBackend = backend_of(&layer);
//! let no_checks: [Check<'_>; 0] = [];
//! assert!(admits(&no_checks, &[]));
//! # Ok::<(), String>(())
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use smallvec::SmallVec;

use super::clock::{Clock, MonotonicClock};
use super::store::KeyedStore;

pub use super::key::Key;
pub use super::policy::PolicySpec;
pub use super::quota::{Gcra, GcraOutcome};

/// One policy to decide for one request.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The policy.
    pub policy: &'a Arc<PolicySpec>,
    /// The request's key for it.
    pub key: &'a Key,
    /// Whether admitting the request charges it. The layer always asks for a charge — a policy
    /// that charges only some response statuses reserves at admission and is
    /// [refunded](RateLimitBackend::refund) after the others, so concurrent requests can never
    /// all slip through on one unspent quota. `false` only peeks (a backend's fallback deciding
    /// a request that another policy already rejects).
    pub charge: bool,
}

impl<'a> Check<'a> {
    /// `key` against `policy`, charged when admitted.
    pub(crate) fn new(policy: &'a Arc<PolicySpec>, key: &'a Key) -> Self {
        Self {
            policy,
            key,
            charge: true,
        }
    }
}

/// Which part of a backend decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecisionSource {
    /// The backend's own store (local memory, or Redis).
    Store,
    /// A local limiter standing in for a failed shared store.
    Fallback,
    /// Admitted because the store failed and the policy fails open.
    FailOpen,
    /// Rejected because the store failed and the policy fails closed.
    FailClosed,
    /// Admitted from this instance's own share of a cluster-wide limit, without a store call
    /// (a backend that splits each key's budget between the instances and a shared pool). A
    /// refund of such an admission goes back to that share.
    LocalShare,
}

/// The verdict for one [`Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether this policy admits the request.
    pub allowed: bool,
    /// Requests still admitted at once for this key after this one.
    pub remaining: u64,
    /// Time until the key's quota is whole again.
    pub reset: Duration,
    /// When rejected, the time until a retry would be admitted.
    pub retry_after: Duration,
    /// Who decided.
    pub source: DecisionSource,
}

impl Decision {
    /// A decision from the GCRA's outcome.
    pub fn from_outcome(o: &GcraOutcome, source: DecisionSource) -> Self {
        Self {
            allowed: o.allowed,
            remaining: o.remaining,
            reset: Duration::from_nanos(o.reset),
            retry_after: Duration::from_nanos(o.retry_after),
            source,
        }
    }
}

/// The decisions for a request's checks, in the same order. Inline up to two policies (the
/// common case), so the hot path neither allocates nor moves large values.
pub type Decisions = SmallVec<[Decision; 2]>;

/// Whether a request is admitted: every check allows it or belongs to a shadow policy.
pub fn admits(checks: &[Check<'_>], decisions: &[Decision]) -> bool {
    checks
        .iter()
        .zip(decisions)
        .all(|(c, d)| d.allowed || c.policy.is_shadow())
}

/// A backend failed and could not decide.
#[derive(Debug)]
pub struct BackendError {
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl BackendError {
    /// An error saying what went wrong and what to do, caused by `source`.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An error without an underlying cause.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for BackendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Decides and charges rate limits. [`LocalBackend`] keeps state in this process;
/// welcomedly-cluster's Redis backend shares it between instances.
///
/// Contract of [`acquire`](Self::acquire): decide every check as of now, atomically per key; if
/// every check allows the request or belongs to a shadow policy ([`admits`]), charge each allowed
/// check whose `charge` is true; otherwise charge nothing — a rejected request consumes nothing.
/// Deciding and charging must not be separable by a concurrent request (no peek, then charge
/// later): N concurrent requests on a burst of B admit at most B. A backend that can fail should
/// handle the failure itself per [`PolicySpec::failure_mode`] and report it through
/// [`DecisionSource`]; an `Err` makes the layer admit the request and count a store error.
pub trait RateLimitBackend: Send + Sync + 'static {
    /// The future of one decision. The layer polls it once at once: a backend that can answer
    /// synchronously returns a ready future and the request goes straight to the service.
    type Future: Future<Output = Result<Decisions, BackendError>> + Send + Unpin + 'static;

    /// Called once when the layer is built, with every policy, before any request.
    fn prepare(&self, policies: &[Arc<PolicySpec>]) -> Result<(), BackendError> {
        let _ = policies;
        Ok(())
    }

    /// Decides (and charges) the checks of one request.
    fn acquire(&self, checks: &[Check<'_>]) -> Self::Future;

    /// Gives back the charge of one request that `policy` admitted for `key` (a policy that
    /// charges only some response statuses, after a response it does not charge).
    /// `charged_by` is the [`Decision::source`] of the admission: the refund goes to the store
    /// that made the charge — a charge made by a local fallback while the shared store was down
    /// is given back to that fallback even if the store answers again meanwhile, and a charge
    /// made in the store is never "refunded" into the fallback. Must not block: a remote
    /// backend sends it in the background; a refund that fails is dropped (the charge stands,
    /// erring on the side of the limit).
    fn refund(&self, policy: &Arc<PolicySpec>, key: &Key, charged_by: DecisionSource);

    /// Keys held for `policy`, when the backend knows.
    fn key_count(&self, policy: &PolicySpec) -> Option<u64> {
        let _ = policy;
        None
    }

    /// Live keys dropped to bound memory for `policy`, when the backend knows.
    fn evicted_keys(&self, policy: &PolicySpec) -> Option<u64> {
        let _ = policy;
        None
    }
}

/// Rate-limit state in this process's memory: GCRA over a bounded, sharded map per policy.
/// Decisions are synchronous (the future is always ready).
pub struct LocalBackend<C = MonotonicClock> {
    clock: C,
    stores: OnceLock<Box<[KeyedStore]>>,
}

impl LocalBackend {
    /// A local backend on the monotonic clock.
    pub fn new() -> Self {
        Self::with_clock(MonotonicClock::new())
    }
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> LocalBackend<C> {
    /// A local backend on `clock` (tests pass a [`ManualClock`](super::ManualClock)).
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            stores: OnceLock::new(),
        }
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Prepares stores for `policies` (done by the layer; also usable when the backend is used
    /// directly, for instance as the fallback of a remote backend).
    pub fn prepare_policies(&self, policies: &[Arc<PolicySpec>]) {
        let _ = self.stores.get_or_init(|| {
            policies
                .iter()
                .map(|p| KeyedStore::new(p.max_keys()))
                .collect()
        });
    }

    fn store(&self, policy: &PolicySpec) -> Option<&KeyedStore> {
        self.stores.get()?.get(policy.index())
    }

    /// Decides `checks` now with the policies' own quotas, or with quotas divided by `share`
    /// (a fallback that stands in for a cluster of `share` instances).
    pub fn decide(&self, checks: &[Check<'_>], share: u32) -> Decisions {
        let now = self.clock.now_nanos();
        let source = if share > 1 {
            DecisionSource::Fallback
        } else {
            DecisionSource::Store
        };
        let gcra = |c: &Check<'_>| {
            let g = c.policy.gcra();
            if share > 1 { g.divided(share) } else { g }
        };
        // The common case, one policy: decide and charge under one lock.
        if let [check] = checks {
            let mut one = Decisions::new();
            let Some(store) = self.store(check.policy) else {
                one.push(unprepared());
                return one;
            };
            let fp = store.fingerprint(check.key);
            let g = gcra(check);
            let outcome = if check.charge {
                store.check_and_charge(fp, &g, || self.clock.now_nanos())
            } else {
                store.peek(fp, &g, || self.clock.now_nanos())
            };
            one.push(Decision::from_outcome(&outcome, source));
            return one;
        }
        // Several: reserve each (decide and charge under its key's lock), then give the
        // reservations back if the request is rejected. Never peek-then-charge: two racing
        // requests could both pass the peek and overshoot. A rejected request consumes nothing
        // once its refunds are in; until then a concurrent request may see less capacity,
        // which errs towards the limit, never past it.
        let mut decisions = Decisions::new();
        let mut reserved: SmallVec<[Option<u64>; 2]> = SmallVec::new();
        for check in checks {
            match self.store(check.policy) {
                Some(store) => {
                    let fp = store.fingerprint(check.key);
                    let g = gcra(check);
                    let outcome = if check.charge {
                        store.check_and_charge(fp, &g, || self.clock.now_nanos())
                    } else {
                        store.peek(fp, &g, || self.clock.now_nanos())
                    };
                    reserved.push((check.charge && outcome.allowed).then_some(fp));
                    decisions.push(Decision::from_outcome(&outcome, source));
                }
                None => {
                    decisions.push(unprepared());
                    reserved.push(None);
                }
            }
        }
        if !admits(checks, &decisions) {
            for (check, fp) in checks.iter().zip(&reserved) {
                if let (Some(fp), Some(store)) = (fp, self.store(check.policy)) {
                    store.refund(*fp, &gcra(check), now);
                }
            }
        }
        decisions
    }

    /// Gives back one admitted request's charge, with the quota divided by `share` (see
    /// [`decide`](Self::decide)).
    pub fn refund_shared(&self, policy: &PolicySpec, key: &Key, share: u32) {
        if let Some(store) = self.store(policy) {
            let g = if share > 1 {
                policy.gcra().divided(share)
            } else {
                policy.gcra()
            };
            store.refund(store.fingerprint(key), &g, self.clock.now_nanos());
        }
    }
}

/// A policy the backend was not prepared for is admitted: it can only come from a backend used
/// by two layers, a programming error that must not turn into an outage.
fn unprepared() -> Decision {
    Decision {
        allowed: true,
        remaining: 0,
        reset: Duration::ZERO,
        retry_after: Duration::ZERO,
        source: DecisionSource::FailOpen,
    }
}

impl<C: Clock> RateLimitBackend for LocalBackend<C> {
    type Future = Ready<Result<Decisions, BackendError>>;

    fn prepare(&self, policies: &[Arc<PolicySpec>]) -> Result<(), BackendError> {
        if self.stores.get().is_some() {
            return Err(BackendError::msg(
                "this LocalBackend already serves another rate-limit layer: give each layer its own backend",
            ));
        }
        self.prepare_policies(policies);
        Ok(())
    }

    fn acquire(&self, checks: &[Check<'_>]) -> Self::Future {
        ready(Ok(self.decide(checks, 1)))
    }

    fn refund(&self, policy: &Arc<PolicySpec>, key: &Key, charged_by: DecisionSource) {
        // Only this backend's own store charges (it never falls back or fails open).
        if charged_by == DecisionSource::Store {
            self.refund_shared(policy, key, 1);
        }
    }

    fn key_count(&self, policy: &PolicySpec) -> Option<u64> {
        self.store(policy).map(|s| s.len() as u64)
    }

    fn evicted_keys(&self, policy: &PolicySpec) -> Option<u64> {
        self.store(policy).map(KeyedStore::evicted)
    }
}

impl<C: fmt::Debug> fmt::Debug for LocalBackend<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBackend")
            .field("clock", &self.clock)
            .field("policies", &self.stores.get().map(|s| s.len()))
            .finish()
    }
}
