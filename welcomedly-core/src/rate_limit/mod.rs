//! rate_limit (in progress)
