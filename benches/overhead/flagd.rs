//! flagd flag files on our compiled evaluator, interleaved with the native model doing the same
//! job: an `if`/`==` rule (native: one `equals` clause), a `fractional` 10/90 split (native: a
//! rollout with flagd's MurmurHash3 bucketing), a `sem_ver` rule (native: `semverGreaterThan`),
//! a 3-deep `$ref` chain (expanded at compile time, so it costs what the rule it names costs;
//! native: the same `endsWith` clause), and `fractional` over a `cat` bucketing value.
//!
//! Targets (issue 24): ≤ 100 ns each, 0 allocations on flat contexts (held by
//! `welcomedly-flags/tests/flagd_no_alloc.rs`). flagd's Go engine re-walks the JsonLogic tree
//! per evaluation: 1.4–10 µs (the issue's figures).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use welcomedly_flags::flagd::FlagdSet;
use welcomedly_flags::{Context, Snapshot};

const FLAGD: &str = include_str!("../../welcomedly-flags/tests/flagd/bench-flags.json");

const NATIVE: &str = r#"{ "flags": {
  "if-eq": { "variants": { "on": true, "off": false },
             "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }], "serve": { "variant": "on" } }],
             "fallthrough": { "variant": "off" } },
  "fractional": { "bucketing": "flagd", "variants": { "on": true, "off": false },
             "fallthrough": { "rollout": { "variants": [{ "variant": "on", "weight": 10000 }, { "variant": "off", "weight": 90000 }] } } },
  "sem-ver": { "variants": { "new": "new", "old": "old" },
             "rules": [{ "clauses": [{ "attribute": "app", "op": "semverGreaterThan", "values": ["1.2.0"] }], "serve": { "variant": "new" } }],
             "fallthrough": { "variant": "old" } },
  "ends-with": { "variants": { "on": true, "off": false },
             "rules": [{ "clauses": [{ "attribute": "email", "op": "endsWith", "values": ["@corp.example"] }], "serve": { "variant": "on" } }],
             "fallthrough": { "variant": "off" } }
} }"#;

const KEYS: usize = 1024;

type Run<'a> = Box<dyn Fn(u64) -> Duration + 'a>;

fn timed<'a>(f: impl Fn(usize) -> usize + 'a) -> Run<'a> {
    Box::new(move |iters| {
        let start = Instant::now();
        for i in 0..iters {
            black_box(f(black_box(i as usize % KEYS)));
        }
        start.elapsed()
    })
}

pub(crate) fn bench(c: &mut Criterion) {
    let flagd = FlagdSet::parse(FLAGD).unwrap();
    assert!(flagd.problems().is_empty(), "{:?}", flagd.problems());
    let native = Snapshot::compile_json(NATIVE, 1).unwrap();
    let ids: Vec<String> = (0..KEYS).map(|i| format!("user-{i:08}")).collect();
    let contexts: Vec<Context<'_>> = ids
        .iter()
        .map(|id| {
            Context::new(id)
                .with("plan", "pro")
                .with("email", "bob.smith@corp.example")
                .with("app", "1.10.0")
                .with("country", "DE")
                .with("age", 42)
        })
        .collect();
    let (f, n, cx) = (&flagd, &native, &contexts);
    let fb =
        |key: &'static str| move |i: usize| usize::from(f.bool_value(key, &cx[i], false).value);
    let fs = |key: &'static str| move |i: usize| f.string_value(key, &cx[i], "-").value.len();
    let nb =
        |key: &'static str| move |i: usize| usize::from(n.bool_value(key, &cx[i], false).value);
    let ns = |key: &'static str| move |i: usize| n.string_value(key, &cx[i], "-").value.len();
    let variants: Vec<(&str, Run<'_>)> = vec![
        ("native: one clause (equals)", timed(nb("if-eq"))),
        ("flagd: if/== rule", timed(fb("if-eq"))),
        (
            "native: rollout 10 % (flagd murmur3)",
            timed(nb("fractional")),
        ),
        ("flagd: fractional 10/90", timed(fb("fractional"))),
        (
            "flagd: fractional over cat(flagKey, email)",
            timed(fs("fractional-cat")),
        ),
        ("native: semverGreaterThan clause", timed(ns("sem-ver"))),
        ("flagd: sem_ver >= rule", timed(fs("sem-ver"))),
        ("native: endsWith clause", timed(nb("ends-with"))),
        ("flagd: 3-deep $ref to ends_with", timed(fb("ref-3-deep"))),
        ("flagd: static (no targeting)", timed(fb("static"))),
    ];

    let mut g = c.benchmark_group("flagd");
    g.throughput(Throughput::Elements(1));
    for (name, run) in &variants {
        g.bench_function(*name, |b| b.iter_custom(run));
    }
    g.finish();

    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "flagd".contains(f.as_str()) || f.starts_with("flagd"))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let table: Vec<crate::Variant<'_>> = variants
        .iter()
        .map(|(name, run)| {
            let f: crate::Variant<'_> = (
                *name,
                Box::new(move |iters| {
                    let t = run(iters);
                    Box::pin(async move { t })
                }),
            );
            f
        })
        .collect();
    crate::interleaved("flagd (evaluation)", &rt, &table, 20_000);
}
