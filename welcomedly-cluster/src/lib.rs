//! # welcomedly-cluster
//!
//! Session-affinity-free clustering over Redis, so any instance can serve any request.
//!
//! | module | what | state |
//! |---|---|---|
//! | [`rate_limit`] | a cluster-wide backend for welcomedly-core's rate-limit layer | works |
//! | sessions | shared sessions in Redis | coming |
//! | [`bus`] | typed events fanned out to every instance: ephemeral (pub/sub) and durable (streams, offsets, catch-up), SSE helper (`axum` feature) | works |
//! | membership | instance heartbeat and live-instance list | coming |

pub mod bus;
mod error;
pub mod rate_limit;

pub use error::Error;
