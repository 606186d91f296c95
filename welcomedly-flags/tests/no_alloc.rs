//! Evaluation allocates nothing: a counting global allocator around every kind of evaluation
//! (static flag, clauses, rollouts, a prerequisite chain, regex, segments, errors), including
//! building the context and loading the snapshot from the shared handle.
//!
//! One test function on purpose: the allocator counts every thread, so nothing else may run
//! in this binary while it measures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::alloc::System;
use std::hint::black_box;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use welcomedly_flags::{Context, Flags, Snapshot};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SET: &str = r#"{
  "segments": {
    "staff": { "included": ["s1", "s2", "s3", "s4", "s5", "s6"], "excluded": ["x1"],
               "rules": [{ "clauses": [{ "attribute": "email", "op": "endsWith", "values": ["@corp.example"] }] }] },
    "beta": { "rules": [{ "clauses": [{ "op": "inSegment", "values": ["staff"] }] }] }
  },
  "flags": {
    "static": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "on" } },
    "clause": { "variants": { "on": true, "off": false },
                "rules": [{ "clauses": [{ "attribute": "country", "op": "in", "values": ["DE", "FR", "IT", "ES", "NL", "BE"] }], "serve": { "variant": "on" } }],
                "fallthrough": { "variant": "off" } },
    "rollout": { "variants": { "a": "A", "b": "B" },
                 "fallthrough": { "rollout": { "variants": [{ "variant": "a", "weight": 33333 }, { "variant": "b", "weight": 66667 }] } } },
    "rollout-int": { "bucketing": "flagd", "variants": { "a": 1, "b": 2 },
                 "fallthrough": { "rollout": { "bucketBy": "org", "variants": [{ "variant": "a", "weight": 50000 }, { "variant": "b", "weight": 50000 }] } } },
    "p1": { "variants": { "on": true, "off": false }, "prerequisites": [{ "flag": "p2", "variants": ["on"] }], "fallthrough": { "variant": "on" } },
    "p2": { "variants": { "on": true, "off": false }, "prerequisites": [{ "flag": "p3", "variants": ["on"] }], "fallthrough": { "variant": "on" } },
    "p3": { "variants": { "on": true, "off": false },
            "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }], "serve": { "variant": "on" } }],
            "fallthrough": { "variant": "off" } },
    "regex": { "variants": { "on": true, "off": false },
               "rules": [{ "clauses": [{ "attribute": "email", "op": "matches", "values": ["^[a-z0-9.]+@(corp|staff)\\.example$"] }], "serve": { "variant": "on" } }],
               "fallthrough": { "variant": "off" } },
    "segment": { "variants": { "on": true, "off": false },
                 "rules": [{ "clauses": [{ "op": "inSegment", "values": ["beta"] }], "serve": { "variant": "on" } }],
                 "fallthrough": { "variant": "off" } },
    "semver-date": { "variants": { "on": "yes", "off": "no" },
                 "targets": [{ "variant": "off", "values": ["t1"] }],
                 "rules": [{ "clauses": [
                     { "attribute": "app", "op": "semverGreaterThan", "values": ["1.2.0-beta.1"] },
                     { "attribute": "signup", "op": "before", "values": ["2030-01-01T00:00:00Z"], "negate": true }
                   ], "serve": { "variant": "on" } }],
                 "fallthrough": { "variant": "off" } },
    "object": { "variants": { "cfg": { "limit": 5 } }, "fallthrough": { "variant": "cfg" } },
    "disabled": { "enabled": false, "variants": { "on": true } }
  }
}"#;

fn evaluate_everything(flags: &Flags, key: &str, default_object: &serde_json::Value) -> usize {
    let snapshot = flags.load();
    let ctx = Context::new(key)
        .with("country", "DE")
        .with("plan", "pro")
        .with("email", "bob.smith@corp.example")
        .with("org", 4242)
        .with("app", "1.10.0")
        .with("signup", "2031-05-01T10:00:00.250+02:00")
        .with("age", 42);
    let mut n = 0;
    n += usize::from(snapshot.bool_value("static", &ctx, false).value);
    n += usize::from(snapshot.bool_value("clause", &ctx, false).value);
    n += snapshot.string_value("rollout", &ctx, "-").value.len();
    n += snapshot.int_value("rollout-int", &ctx, 0).value as usize;
    n += usize::from(snapshot.bool_value("p1", &ctx, false).value);
    n += usize::from(snapshot.bool_value("regex", &ctx, false).value);
    n += usize::from(snapshot.bool_value("segment", &ctx, false).value);
    n += snapshot.string_value("semver-date", &ctx, "-").value.len();
    n += usize::from(
        snapshot
            .object_value("object", &ctx, default_object)
            .variant
            .is_some(),
    );
    n += usize::from(snapshot.bool_value("disabled", &ctx, false).value);
    n += usize::from(snapshot.bool_value("missing", &ctx, false).is_error());
    n += usize::from(snapshot.string_value("static", &ctx, "-").is_error());
    n += usize::from(snapshot.json_value("p3", &ctx).value.is_some());
    black_box(n)
}

#[test]
fn evaluation_does_not_allocate() {
    let flags = Flags::new(Snapshot::compile_json(SET, 1).unwrap());
    let default_object = serde_json::json!({});
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    // Warm up: the regex engine builds its per-thread cache and arc-swap its per-thread debt
    // slots on first use; both are reused afterwards.
    let expected = evaluate_everything(&flags, "s1", &default_object);
    for key in &keys {
        evaluate_everything(&flags, key, &default_object);
    }

    // The counter does count: a control allocation is seen.
    let control = Region::new(GLOBAL);
    black_box(String::from("control"));
    assert!(control.change().allocations > 0);

    let region = Region::new(GLOBAL);
    let mut total = 0;
    for key in &keys {
        total += evaluate_everything(&flags, key, &default_object);
    }
    total += evaluate_everything(&flags, "s1", &default_object);
    let stats = region.change();
    assert!(total > expected);
    assert_eq!(
        (
            stats.allocations,
            stats.reallocations,
            stats.bytes_allocated
        ),
        (0, 0, 0),
        "evaluation allocated: {stats:?}"
    );
}
