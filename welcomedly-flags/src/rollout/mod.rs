//! Statistics for guarded rollouts: is the new variant worse than the old one?
//!
//! A guarded rollout serves a change to a share of the traffic (the *treatment* arm) while the
//! rest keeps the current behaviour (the *control* arm), watches both, and rolls back as soon as
//! the treatment is shown to be worse. "As soon as" means the comparison is looked at after every
//! batch of requests, so an ordinary fixed-sample test (which is only valid when looked at once)
//! would raise false alarms far above its nominal rate. [`sequential`] holds a test that stays
//! valid however often it is looked at; [`histogram`] holds the bounded latency histogram the
//! latency guard is computed from.
//!
//! | module | what |
//! |---|---|
//! | [`sequential`] | [`test()`](sequential::test()): an always-valid one-sided comparison of two Bernoulli arms (error ratio, share of slow requests, an app counter per request) |
//! | [`plan`] | [`Plan`](plan::Plan): arms, stages, guards, the action on a breach; JSON with defaults (`{}`: 5 % → 25 % → 100 %), validated |
//! | [`attribution`] | [`Attribution`](attribution::Attribution): per-arm requests, errors, counter and latency buckets of the guarded flags, counted by the [`FlagsLayer`](crate::layer::FlagsLayer) |
//! | [`controller`] | the stored [`RolloutState`](controller::RolloutState) and the pure controller [`step`](controller::step) |
//! | `store` (feature `redis`) | `RolloutStore`: state, lease and time-bucketed counts in Redis on the flag's slot |
//! | `agent` (feature `redis`) | `RolloutAgent`: flush, follow, and act on the instance holding the lease |
//! | `admin` (features `axum` + `redis`) | the rollout admin routes: start, status, pause, resume, abort |
//! | [`histogram`] | [`LatencyHistogram`](histogram::LatencyHistogram): 64 log-spaced buckets, 1 ms … 60 s, mergeable, stored as 64 integers |
//!
//! ```
//! use welcomedly_flags::rollout::sequential::{test, Arm, SequentialConfig, Verdict};
//!
//! let cfg = SequentialConfig::default();
//! // 1 % errors on the old variant, 4 % on the new one.
//! let control = Arm::new(4_000, 40);
//! let treatment = Arm::new(4_000, 160);
//! assert_eq!(test(control, treatment, &cfg).verdict, Verdict::Regression);
//! ```

#[cfg(all(feature = "axum", feature = "redis"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "axum", feature = "redis"))))]
pub mod admin;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod agent;
pub mod attribution;
pub mod controller;
pub mod histogram;
pub mod plan;
pub mod sequential;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod store;
