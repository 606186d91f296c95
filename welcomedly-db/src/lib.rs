//! # welcomedly-db (skeleton)
//!
//! A replica-aware sqlx router: writes to the primary, reads over healthy replicas, lag-aware,
//! read-your-writes, fall-back to the primary. **Not implemented yet**: this crate is an empty,
//! documented skeleton so the workspace and the facade's `db` feature exist.
