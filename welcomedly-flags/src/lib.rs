//! # welcomedly-flags
//!
//! Feature flags for a service running as many identical instances: boolean and multivariate
//! flags, targets, ordered rules of clauses, reusable segments, percentage rollouts with a
//! stable, versioned bucketing, prerequisites and a kill switch that outranks every rule.
//!
//! A [`FlagSet`] (the JSON wire format, see [`model`]) is validated as a whole and compiled into
//! an immutable [`Snapshot`]; evaluation against a snapshot is lock-free and allocation-free and
//! returns value, variant and reason in OpenFeature's vocabulary ([`eval`]). [`Flags`] is the
//! shared handle: one atomic load per request, an atomic swap per update, and change
//! subscriptions that fire when a flag's *effective* definition changes, including through a
//! prerequisite or a segment.
//!
//! | module | what |
//! |---|---|
//! | [`model`] | the JSON format: [`FlagSet`], flags, rules, clauses, segments, rollouts |
//! | [`validate`] | whole-set validation; [`ValidationErrors`] lists every problem with its path |
//! | [`snapshot`] | the compiled [`Snapshot`] and its typed evaluation calls |
//! | [`eval`] | [`Evaluation`], [`Reason`], [`ErrorCode`] |
//! | [`context`] | the borrowed evaluation [`Context`] |
//! | [`bucketing`] | rollout bucketing algorithms (v1, flagd's MurmurHash3) |
//! | [`flags`] | the [`Flags`] handle and [`FlagChange`] subscriptions |
//! | `flagd` (feature `flagd`) | flagd flag files: JsonLogic targeting compiled once, flagd's results; a [`Snapshot`] compiled from one ([`Snapshot::compile_document`], [`DocumentFormat`]) evaluates through [`Flags`], OFREP and the provider, and the stores and the admin API keep one like a native set |
//! | [`store`] | where the flag set lives (memory, Redis with the `redis` feature) and [`store::FlagSync`], which keeps every instance's snapshot current |
//! | `admin` (feature `axum`) | the flags admin API: list, get, put with `If-Match`, delete, history |
//! | `ofrep` (feature `axum`) | the OpenFeature Remote Evaluation Protocol endpoint: single and bulk evaluation, `ETag`/`304` |
//! | `openfeature` (feature `openfeature`) | `FlagsProvider`, an OpenFeature provider (the `open-feature` crate 0.3) over [`Flags`] |
//! | [`rollout`] | guarded rollouts: a plan of stages and guards, attribution of requests to arms, the fleet's counts in Redis and one acting controller |
//! | [`layer`] | [`FlagsLayer`](layer::FlagsLayer) (one snapshot and context per request), [`FlagGateLayer`](layer::FlagGateLayer) (a route behind a flag) |
//!
//! ```
//! use welcomedly_flags::{Context, Flags, Snapshot};
//!
//! let flags = Flags::new(Snapshot::compile_json(r#"{
//!   "flags": {
//!     "new-ui": {
//!       "variants": { "on": true, "off": false },
//!       "targets": [{ "variant": "on", "values": ["alice"] }],
//!       "rules": [{ "clauses": [{ "attribute": "email", "op": "endsWith", "values": ["@example.com"] }],
//!                   "serve": { "variant": "on" } }],
//!       "fallthrough": { "rollout": { "variants": [
//!         { "variant": "on", "weight": 25000 }, { "variant": "off", "weight": 75000 }
//!       ] } }
//!     }
//!   }
//! }"#, 1)?);
//!
//! // Per request: one load, then any number of evaluations.
//! let snapshot = flags.snapshot();
//! let ctx = Context::new("bob").with("email", "bob@example.com");
//! let eval = snapshot.bool_value("new-ui", &ctx, false);
//! assert!(eval.value);
//! assert_eq!(eval.reason.as_str(), "TARGETING_MATCH");
//!
//! // Unknown flags give the caller's default, flagged as an error.
//! let eval = snapshot.bool_value("no-such-flag", &ctx, true);
//! assert!(eval.value);
//! assert_eq!(eval.error.map(|e| e.as_str()), Some("FLAG_NOT_FOUND"));
//! # Ok::<(), welcomedly_flags::ValidationErrors>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod admin;
pub mod bucketing;
pub mod context;
pub mod eval;
#[cfg(feature = "flagd")]
#[cfg_attr(docsrs, doc(cfg(feature = "flagd")))]
pub mod flagd;
pub mod flags;
pub mod layer;
pub mod model;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod ofrep;
#[cfg(feature = "openfeature")]
#[cfg_attr(docsrs, doc(cfg(feature = "openfeature")))]
pub mod openfeature;
mod problem;
pub mod rollout;
pub mod snapshot;
pub mod store;
pub mod validate;

pub use context::{AttrValue, Context};
pub use eval::{ErrorCode, Evaluation, Match, Reason};
pub use flags::{ChangeKind, FlagChange, FlagWatch, Flags};
pub use model::FlagSet;
pub use snapshot::{DocumentFormat, FlagType, Snapshot};
pub use validate::{Problem, ValidationErrors};
