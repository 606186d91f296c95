//! Regular expressions in a flag set are bounded: per pattern (source length, compiled size)
//! and per set (distinct patterns), with problems that name the path, the limit and what to do;
//! identical patterns are compiled once. The issue's 40 small patterns (`\w{90}`, 202 MB and
//! about a second of CPU to compile, on every instance) are refused, and the costliest set that
//! is accepted stays within a few tens of megabytes.
//!
//! The memory figures come from a counting global allocator: the tests that measure hold a lock
//! so nothing else in this binary allocates meanwhile.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::alloc::System;
use std::sync::Mutex;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use welcomedly_flags::validate::{MAX_REGEX_COMPILED, MAX_REGEX_LEN, MAX_REGEX_PATTERNS};
use welcomedly_flags::{Context, Snapshot, ValidationErrors};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Held by every test: the allocator counts all threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A flag with one rule per pattern, each a `matches` clause on `name`.
fn set_with(patterns: &[String]) -> String {
    let rules: Vec<serde_json::Value> = patterns
        .iter()
        .map(|p| {
            serde_json::json!({
                "clauses": [{ "attribute": "name", "op": "matches", "values": [p] }],
                "serve": { "variant": "on" }
            })
        })
        .collect();
    serde_json::json!({ "flags": { "f": {
        "variants": { "on": true, "off": false },
        "rules": rules,
        "fallthrough": { "variant": "off" }
    } } })
    .to_string()
}

/// Compiles `json`, returning the result and the bytes still allocated afterwards (the
/// snapshot's size, roughly).
fn compile_measured(json: &str) -> (Result<Snapshot, ValidationErrors>, usize) {
    let region = Region::new(GLOBAL);
    let result = Snapshot::compile_json(json, 1);
    let stats = region.change();
    // A reallocation's growth or shrinkage is counted in `bytes_allocated` or
    // `bytes_deallocated` already.
    let live = stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated);
    (result, live)
}

#[test]
fn the_issues_forty_counted_unicode_repetitions_are_refused_at_each_path() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let patterns: Vec<String> = (0..40).map(|i| format!(r"\w{{90}}|x{i}")).collect();
    let (result, live) = compile_measured(&set_with(&patterns));
    let err = result.unwrap_err();
    assert_eq!(err.problems().len(), 40, "{err}");
    for (i, p) in err.problems().iter().enumerate() {
        assert_eq!(p.path(), format!("flags.f.rules[{i}].clauses[0].values[0]"));
        let m = p.message();
        assert!(
            m.contains(&MAX_REGEX_COMPILED.to_string()) && m.contains("ASCII"),
            "the message names the limit and what to do: {m}"
        );
    }
    // Nothing of the refused patterns is kept.
    assert!(live < 1 << 20, "{live} bytes left after a refused set");
}

#[test]
fn the_costliest_accepted_set_stays_under_40_mb() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // `\w{5}` is about the largest counted Unicode class under the compiled-size limit.
    let patterns: Vec<String> = (0..MAX_REGEX_PATTERNS)
        .map(|i| format!(r"\w{{5}}|x{i}"))
        .collect();
    let (result, live) = compile_measured(&set_with(&patterns));
    let snapshot = result.unwrap();
    assert!(live < 40 << 20, "{live} bytes for the snapshot");
    let ctx = Context::new("u").with("name", "héllo");
    assert!(snapshot.bool_value("f", &ctx, false).value);
}

#[test]
fn more_distinct_patterns_than_the_cap_are_refused_once_at_the_first_one_over() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let patterns: Vec<String> = (0..=MAX_REGEX_PATTERNS + 5)
        .map(|i| format!("^user-{i}$"))
        .collect();
    let err = Snapshot::compile_json(&set_with(&patterns), 1).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    let p = &err.problems()[0];
    assert_eq!(
        p.path(),
        format!("flags.f.rules[{MAX_REGEX_PATTERNS}].clauses[0].values[0]")
    );
    assert!(
        p.message().contains(&MAX_REGEX_PATTERNS.to_string()) && p.message().contains("reuse"),
        "{}",
        p.message()
    );
}

#[test]
fn a_pattern_used_many_times_counts_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Far more uses than the cap, of a few patterns: accepted, and compiled once each.
    let patterns: Vec<String> = (0..500).map(|i| format!(r"^\w+-{}$", i % 3)).collect();
    let (one, one_live) = compile_measured(&set_with(&patterns[..3]));
    let (many, many_live) = compile_measured(&set_with(&patterns));
    one.unwrap();
    let snapshot = many.unwrap();
    // 497 more clauses cost their own few hundred bytes each, not a compiled `\w` (~200 KB).
    assert!(
        many_live < one_live + 497 * 5_000,
        "{many_live} bytes for 500 uses against {one_live} for 3: patterns are compiled per use"
    );
    let ctx = Context::new("u").with("name", "ab-2");
    assert!(snapshot.bool_value("f", &ctx, false).value);
}

#[test]
fn a_pattern_longer_than_the_limit_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let long = "a".repeat(MAX_REGEX_LEN + 1);
    let err = Snapshot::compile_json(&set_with(&[long, "a".repeat(MAX_REGEX_LEN)]), 1).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    let p = &err.problems()[0];
    assert_eq!(p.path(), "flags.f.rules[0].clauses[0].values[0]");
    assert!(
        p.message().contains(&MAX_REGEX_LEN.to_string()) && p.message().contains("shorten"),
        "{}",
        p.message()
    );
}

#[test]
fn an_update_reuses_the_regexes_of_the_snapshot_it_replaces() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let patterns: Vec<String> = (0..MAX_REGEX_PATTERNS)
        .map(|i| format!(r"\w{{5}}|x{i}"))
        .collect();
    let (first, first_live) = compile_measured(&set_with(&patterns));
    let first = first.unwrap();
    // The next version changes one pattern: only that one is compiled.
    let mut next = patterns.clone();
    next[0] = r"\w{5}|changed".to_owned();
    let region = Region::new(GLOBAL);
    let second = Snapshot::compile_json_next(&set_with(&next), 2, &first).unwrap();
    let stats = region.change();
    let live = stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated);
    assert!(
        live < first_live / 8,
        "{live} bytes for an update of one pattern against {first_live} for the whole set"
    );
    // Same answers as a fresh compile.
    let fresh = Snapshot::compile_json(&set_with(&next), 2).unwrap();
    for name in ["héllo", "x3", "changed", "ab", "x0"] {
        let ctx = Context::new("u").with("name", name);
        assert_eq!(
            second.bool_value("f", &ctx, false).value,
            fresh.bool_value("f", &ctx, false).value,
            "{name}"
        );
    }
    drop(first);
    assert!(
        second
            .bool_value("f", &Context::new("u").with("name", "x9"), false)
            .value
    );
}
