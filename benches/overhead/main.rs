//! Criterion benches: the overhead each Welcomedly layer adds to a request, side by side with a
//! bare service and the peer crates.
//!
//! Run with `cargo bench --all-features --bench overhead` (add a filter, e.g. `-- rate_limit`,
//! `-- flags`, `-- flagd`, `-- sessions`, `-- redis_link`, `-- bus` or `-- db`). The Redis group
//! starts its own `redis-server` and is skipped when none is installed.
//!
//! Each group ends with an *interleaved* table on stderr (variants alternating in short slices
//! within one process): read those, not criterion's medians of separate runs, on a noisy box.
//! On this kind of 2-core VM a loopback round trip takes ~9 µs while a core is busy and ~70 µs
//! when both are idle (wake-up latency): compare the Redis variants with each other, in one run.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod bus;
mod db;
mod flagd;
mod flags;
mod http_stack;
mod link;
mod rate_limit;
mod sessions;

use std::future::Future;
use std::pin::Pin;
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

/// One variant for [`interleaved`]: runs `iters` requests and returns how long they took.
pub(crate) type Variant<'a> = (
    &'a str,
    Box<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Duration>>> + 'a>,
);

/// Criterion's medians from separate runs drift with this box's load. Here every variant runs in
/// short slices, alternating, within one process; each slice gives a per-request time, and the
/// table shows the 10th and 50th percentiles of those and the p50 overhead over the first
/// (baseline) variant.
pub(crate) fn interleaved(
    title: &str,
    rt: &tokio::runtime::Runtime,
    variants: &[Variant<'_>],
    per_slice: u64,
) {
    let slices = 300;
    let mut per_call: Vec<Vec<f64>> = vec![Vec::with_capacity(slices); variants.len()];
    rt.block_on(async {
        for _ in 0..slices {
            for (i, (_, run)) in variants.iter().enumerate() {
                let t = run(per_slice).await;
                per_call[i].push(t.as_nanos() as f64 / per_slice as f64);
            }
        }
    });
    eprintln!("\n{title}, interleaved ({slices} slices of {per_slice} requests): ns per request");
    eprintln!(
        "  {:<58} {:>8} {:>8} {:>10}",
        "variant", "p10", "p50", "p50 - base"
    );
    let mut base = None;
    for ((name, _), samples) in variants.iter().zip(&mut per_call) {
        samples.sort_by(f64::total_cmp);
        let p = |q: usize| samples[samples.len() * q / 100];
        let p50 = p(50);
        let base = *base.get_or_insert(p50);
        eprintln!(
            "  {name:<58} {:>8.0} {:>8.0} {:>+10.0}",
            p(10),
            p50,
            p50 - base
        );
    }
}

fn main() {
    rate_limit::callgrind_mode();
    let mut c = config();
    http_stack::bench(&mut c);
    rate_limit::bench_tower(&mut c);
    rate_limit::bench(&mut c);
    flags::bench(&mut c);
    flagd::bench(&mut c);
    sessions::bench(&mut c);
    link::bench(&mut c);
    bus::bench(&mut c);
    db::bench(&mut c);
    c.final_summary();
}
