//! # welcomedly-flags (skeleton)
//!
//! Feature flags: rules, percentage rollouts, segments, prerequisites and kill switches, evaluated
//! from a lock-free snapshot with Redis push invalidation. **Not implemented yet**: this crate is an
//! empty, documented skeleton so the workspace and the facade's `flags` feature exist.
