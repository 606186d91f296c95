//! Criterion benches: the overhead each Welcomedly layer adds to a request, side by side with a
//! bare service and the peer crates.
//!
//! Run with `cargo bench --all-features --bench overhead` (add a filter, e.g. `-- rate_limit`). The Redis group
//! starts its own `redis-server` and is skipped when none is installed.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod http_stack;
mod rate_limit;

use std::time::Duration;

use criterion::Criterion;

fn config() -> Criterion {
    // Short samples, many of them: this 2-core box is noisy, and medians of short samples are
    // steadier than long ones.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
        .configure_from_args()
}

fn main() {
    let mut c = config();
    http_stack::bench(&mut c);
    rate_limit::bench_tower(&mut c);
    rate_limit::bench(&mut c);
    c.final_summary();
}
