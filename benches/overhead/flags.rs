//! Feature-flag evaluation against a compiled snapshot: a static flag, one clause, a rollout,
//! a 3-deep prerequisite chain, a regex clause and a nested segment, beside the floor of any
//! flag system (a plain foldhash map from flag name to bool) and the per-request snapshot load
//! from the shared `Flags` handle.
//!
//! Targets (issue 13): static ≤ 15 ns, one clause ≤ 30 ns, rollout ≤ 50 ns.
//!
//! No peer crate runs here: `unleash-yggdrasil` (the Unleash engine) brings pest + pest_derive,
//! chrono, dashmap, ahash, rand, ipnetwork and unleash-types into the bench build, minutes of
//! release compile on this 2-core box that every `cargo bench --no-run` in CI would pay.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use welcomedly_flags::{Context, Flags, Snapshot};

const SET: &str = r#"{
  "segments": {
    "staff": { "included": ["s1", "s2", "s3", "s4", "s5", "s6"],
               "rules": [{ "clauses": [{ "attribute": "email", "op": "endsWith", "values": ["@corp.example"] }] }] },
    "beta": { "rules": [{ "clauses": [{ "op": "inSegment", "values": ["staff"] }] }] }
  },
  "flags": {
    "static": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "on" } },
    "clause": { "variants": { "on": true, "off": false },
                "rules": [{ "clauses": [{ "attribute": "country", "op": "in", "values": ["DE", "AT", "CH"] }], "serve": { "variant": "on" } }],
                "fallthrough": { "variant": "off" } },
    "rollout": { "variants": { "on": true, "off": false },
                 "fallthrough": { "rollout": { "variants": [{ "variant": "on", "weight": 10000 }, { "variant": "off", "weight": 90000 }] } } },
    "rollout-flagd": { "bucketing": "flagd", "variants": { "on": true, "off": false },
                 "fallthrough": { "rollout": { "variants": [{ "variant": "on", "weight": 10000 }, { "variant": "off", "weight": 90000 }] } } },
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
                 "fallthrough": { "variant": "off" } }
  }
}"#;

/// 20 more flags so the lookup map is not trivially small.
fn flag_set() -> String {
    let extra: Vec<String> = (0..20)
        .map(|i| format!(r#""filler-{i}": {{ "variants": {{ "on": true }}, "fallthrough": {{ "variant": "on" }} }}"#))
        .collect();
    SET.replacen(
        r#""flags": {"#,
        &format!(r#""flags": {{ {},"#, extra.join(",")),
        1,
    )
}

const KEYS: usize = 1024;

type Run<'a> = Box<dyn Fn(u64) -> Duration + 'a>;

/// A timed loop over `f`, monomorphised so the only indirect call is once per batch.
fn timed<'a>(f: impl Fn(usize) -> bool + 'a) -> Run<'a> {
    Box::new(move |iters| {
        let start = Instant::now();
        for i in 0..iters {
            black_box(f(black_box(i as usize % KEYS)));
        }
        start.elapsed()
    })
}

pub(crate) fn bench(c: &mut Criterion) {
    let flags = Flags::new(Snapshot::compile_json(&flag_set(), 1).unwrap());
    let snapshot = flags.snapshot();
    let ids: Vec<String> = (0..KEYS).map(|i| format!("user-{i:08}")).collect();
    let contexts: Vec<Context<'_>> = ids
        .iter()
        .map(|id| {
            Context::new(id)
                .with("country", "DE")
                .with("plan", "pro")
                .with("email", "bob.smith@corp.example")
        })
        .collect();
    // The floor: a plain map from flag name to value, hashed with the same hasher.
    let mut plain: HashMap<&str, bool, foldhash::fast::RandomState> = HashMap::default();
    for k in snapshot.keys() {
        plain.insert(k, true);
    }

    let s = &*snapshot;
    let cx = &contexts;
    let eval = |key: &'static str| move |i: usize| s.bool_value(key, &cx[i], false).value;
    let variants: Vec<(&str, Run<'_>)> = vec![
        (
            "bare: foldhash map lookup",
            timed(|_| *plain.get(black_box("static")).unwrap()),
        ),
        ("static flag", timed(eval("static"))),
        ("one clause (in)", timed(eval("clause"))),
        ("rollout 10 % (v1)", timed(eval("rollout"))),
        ("rollout 10 % (flagd murmur3)", timed(eval("rollout-flagd"))),
        ("prerequisite chain, 3 deep", timed(eval("p1"))),
        ("regex clause", timed(eval("regex"))),
        ("nested segment (rule)", timed(eval("segment"))),
        (
            "Flags::load + static flag",
            timed(|i| flags.load().bool_value("static", &cx[i], false).value),
        ),
    ];

    let mut g = c.benchmark_group("flags");
    g.throughput(Throughput::Elements(1));
    for (name, run) in &variants {
        g.bench_function(*name, |b| b.iter_custom(run));
    }
    g.finish();

    // Interleaved slices, steadier than criterion's separate runs on this box; skipped when a
    // criterion filter names another group.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "flags".contains(f.as_str()) || f.starts_with("flags"))
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
    crate::interleaved("flags (evaluation)", &rt, &table, 20_000);
    layer(c);
}

/// The flags layer per request (pin a snapshot, build the context, one evaluation of a 10 %
/// rollout in the handler): without attribution, with attribution while nothing is guarded,
/// and with the flag guarded (the request's arm noted, its status and latency counted).
fn layer(c: &mut Criterion) {
    use futures_util::FutureExt;
    // `call` without `poll_ready`: `service_fn` and the flags layer are always ready.
    use tower::{Layer, Service};
    use welcomedly_flags::layer::{FlagsLayer, RequestFlags};
    use welcomedly_flags::rollout::attribution::Attribution;
    use welcomedly_flags::rollout::plan::Plan;

    let flags = Flags::new(Snapshot::compile_json(&flag_set(), 1).unwrap());
    let handler = tower::service_fn(|req: http::Request<()>| async move {
        let on = req
            .extensions()
            .get::<RequestFlags>()
            .is_some_and(|f| f.is_enabled("rollout"));
        Ok::<_, std::convert::Infallible>(http::Response::new(on))
    });
    let header = http::HeaderName::from_static("x-user");
    let plain = FlagsLayer::new(flags.clone()).key_header(header.clone());
    let idle = Attribution::new();
    let guarded = Attribution::new();
    let plan = Plan::from_json(r#"{"treatment": "on", "control": "off"}"#).unwrap();
    guarded.guard([("rollout", &plan)]);
    let services = [
        ("layer: flags", plain.clone().layer(handler)),
        (
            "layer: flags + attribution, nothing guarded",
            plain.clone().attribution(idle).layer(handler),
        ),
        (
            "layer: flags + attribution, flag guarded",
            plain.attribution(guarded.clone()).layer(handler),
        ),
    ];
    let ids: Vec<http::HeaderValue> = (0..KEYS)
        .map(|i| http::HeaderValue::from_str(&format!("user-{i:08}")).unwrap())
        .collect();
    let mut g = c.benchmark_group("flags_layer");
    g.throughput(Throughput::Elements(1));
    for (name, svc) in &services {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut svc = svc.clone();
                let start = Instant::now();
                for i in 0..iters {
                    let mut req = http::Request::new(());
                    req.headers_mut()
                        .insert(header.clone(), ids[i as usize % KEYS].clone());
                    let res = svc.call(req).now_or_never();
                    black_box(res);
                }
                let t = start.elapsed();
                // Keep the guarded counters from growing across samples (not timed).
                black_box(guarded.take());
                t
            })
        });
    }
    g.finish();
}
