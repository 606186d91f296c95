//! flagd evaluation allocates nothing on flat contexts (and on nested ones read by `var`
//! paths): a counting global allocator around every kind of flag in `flagd/bench-flags.json`
//! (the bench's flags), including building the context.
//!
//! One test function on purpose: the allocator counts every thread.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::alloc::System;
use std::hint::black_box;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use welcomedly_flags::Context;
use welcomedly_flags::flagd::FlagdSet;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SET: &str = include_str!("flagd/bench-flags.json");

fn evaluate_everything(set: &FlagdSet, key: &str, user: &serde_json::Value) -> usize {
    let ctx = Context::new(key)
        .with("country", "DE")
        .with("plan", "pro")
        .with("email", "bob.smith@corp.example")
        .with("app", "1.10.0")
        .with("age", 42)
        .with("user", user);
    let mut n = 0;
    n += usize::from(set.bool_value("if-eq", &ctx, false).value);
    n += usize::from(set.bool_value("fractional", &ctx, false).value);
    n += set.string_value("fractional-cat", &ctx, "-").value.len();
    n += set.string_value("sem-ver", &ctx, "-").value.len();
    n += usize::from(set.bool_value("ref-3-deep", &ctx, false).value);
    n += set.string_value("strings-and-lists", &ctx, "-").value.len();
    n += set.int_value("nested", &ctx, 0).value as usize;
    n += usize::from(set.bool_value("static", &ctx, false).value);
    n += usize::from(set.bool_value("disabled", &ctx, false).value);
    n += usize::from(set.bool_value("missing", &ctx, false).is_error());
    n += usize::from(set.string_value("static", &ctx, "-").is_error());
    black_box(n)
}

#[test]
fn flagd_evaluation_does_not_allocate() {
    let set = FlagdSet::parse(SET).unwrap();
    assert!(set.problems().is_empty(), "{:?}", set.problems());
    let user = serde_json::json!({ "account": { "plan": "pro" } });
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let one = evaluate_everything(&set, "user-1", &user);
    // Every flag took its matching path once: on, "eu", 2, "new", … (a check that the rules
    // run, so the zero below is not the zero of rules that never ran).
    assert!(one >= 1 + 1 + 3 + 2 + 2 + 1 + 2, "{one}");

    let control = Region::new(GLOBAL);
    black_box(String::from("control"));
    assert!(control.change().allocations > 0);

    let region = Region::new(GLOBAL);
    let mut total = 0;
    for key in &keys {
        total += evaluate_everything(&set, key, &user);
    }
    let stats = region.change();
    assert!(total > one);
    assert_eq!(
        (
            stats.allocations,
            stats.reallocations,
            stats.bytes_allocated
        ),
        (0, 0, 0),
        "flagd evaluation allocated: {stats:?}"
    );
}
