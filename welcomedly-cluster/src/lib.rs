//! # welcomedly-cluster
//!
//! Session-affinity-free clustering over Redis, so any instance can serve any request.
//!
//! | module | what | state |
//! |---|---|---|
//! | [`rate_limit`] | a cluster-wide backend for welcomedly-core's rate-limit layer | works |
//! | [`session`] | shared sessions (memory or Redis): tower layer, `Session` handle, axum extractor | works |
//! | [`bus`] | typed events fanned out to every instance: ephemeral (pub/sub) and durable (streams, offsets, catch-up), SSE helper (`axum` feature) | works |
//! | [`membership`] | instance heartbeat, live-instance list, presence per instance | works |

pub mod bus;
mod error;
pub mod membership;
pub mod rate_limit;
pub mod session;

pub use error::Error;
