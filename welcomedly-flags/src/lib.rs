//! # welcomedly-flags (skeleton)
//!
//! Feature flags: rules, percentage rollouts, segments, prerequisites and kill switches, evaluated
//! from a lock-free snapshot with Redis push invalidation. **Not implemented yet**: this crate is an
//! empty, documented skeleton so the workspace and the facade's `flags` feature exist.
//!
//! | module | what |
//! |---|---|
//! | [`store`] | where the flag set lives (memory, Redis with the `redis` feature) and [`store::FlagSync`], which keeps every instance's snapshot current |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod store;
