//! # welcomedly-cluster (skeleton)
//!
//! Session-affinity-free clustering over Redis: shared sessions, a cluster-wide event bus,
//! instance membership and a cluster-wide rate-limit backend. **Not implemented yet**: this crate
//! is an empty, documented skeleton so the workspace and the facade's `cluster` feature exist.
