//! Helpers shared by integration tests (not a test target itself).

pub mod call_center;
pub mod redis_scenarios;
pub mod rollouts;
