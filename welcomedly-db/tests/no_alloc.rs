//! The routing decision allocates nothing: a counting global allocator around `read()` (pick the
//! least loaded replica, count it outstanding, drop the guard) and around a cookie check.
//!
//! One test function on purpose: the allocator counts every thread, so nothing else may run in
//! this binary while it measures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;
use std::hint::black_box;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use welcomedly_db::{Router, Token, TokenSigner};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[tokio::test(flavor = "current_thread")]
async fn routing_a_read_allocates_nothing() {
    let lazy = || {
        sqlx::sqlite::SqlitePoolOptions::new()
            .connect_lazy("sqlite::memory:")
            .unwrap()
    };
    let router = Router::from_pools(lazy(), [lazy(), lazy(), lazy()]);
    let signer = TokenSigner::new(b"secret");
    let cookie = signer.sign(&Token::new(1, 0x0300_0148), u64::MAX / 2);
    // Warm up (the random generator's thread-local state).
    for _ in 0..100 {
        black_box(router.read());
    }
    // The counter sees every thread of the process (the harness, the runtime's blocking pool):
    // a stray allocation elsewhere can land in one window, so the fewest of a few windows is
    // what routing itself costs.
    let mut fewest = None;
    for _ in 0..5 {
        let region = Region::new(GLOBAL);
        for _ in 0..10_000 {
            let a = black_box(router.read());
            let b = black_box(router.read());
            drop((a, b));
            black_box(signer.verify(black_box(&cookie), 1));
        }
        let stats = region.change();
        if fewest.is_none_or(|f: stats_alloc::Stats| stats.allocations < f.allocations) {
            fewest = Some(stats);
        }
    }
    let stats = fewest.unwrap();
    assert_eq!(stats.allocations, 0, "{stats:?}");
}
