//! flagd flag files beyond the testbed: every error path of the file and of a flag, flagd's
//! result rules, fractional's distribution and stability, and a fuzz of the compiler.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::{Value, json};
use welcomedly_flags::Context;
use welcomedly_flags::flagd::{FlagdError, FlagdLimits, FlagdSet};

fn one_flag(flag: Value) -> FlagdSet {
    FlagdSet::parse(&json!({ "flags": { "f": flag } }).to_string()).unwrap()
}

fn problem(flag: Value) -> String {
    let set = one_flag(flag);
    let d = set.bool_value("f", &Context::anonymous(), true);
    assert_eq!(d.error.map(|e| e.as_str()), Some("PARSE_ERROR"));
    assert!(d.value, "the caller's default");
    assert_eq!(set.problems().len(), 1);
    set.problems()[0].message.clone()
}

#[test]
fn file_level_errors_refuse_the_whole_file() {
    assert!(matches!(FlagdSet::parse("{"), Err(FlagdError::Syntax(_))));
    // Nesting is bounded by the JSON reader (128 levels).
    let deep = format!("{{\"flags\": {}{}}}", "[".repeat(200), "]".repeat(200));
    assert!(matches!(FlagdSet::parse(&deep), Err(FlagdError::Syntax(_))));
    assert!(matches!(FlagdSet::parse("[]"), Err(FlagdError::Shape(_))));
    assert!(matches!(FlagdSet::parse("{}"), Err(FlagdError::Shape(_))));
    assert!(matches!(
        FlagdSet::parse(r#"{"flags": []}"#),
        Err(FlagdError::Shape(_))
    ));
    assert!(matches!(
        FlagdSet::parse(r#"{"flags": {}, "$evaluators": 3}"#),
        Err(FlagdError::Shape(_))
    ));
    assert!(matches!(
        FlagdSet::parse(r#"{"flags": {}, "metadata": {"a": [1]}}"#),
        Err(FlagdError::Shape(_))
    ));
    let mut limits = FlagdLimits::default();
    limits.max_bytes = 10;
    let err = FlagdSet::parse_with(r#"{"flags": {}}  "#, &limits).unwrap_err();
    assert_eq!(err, FlagdError::TooLarge { size: 15, max: 10 });
    assert!(err.to_string().contains("max_bytes"), "{err}");

    let mut limits = FlagdLimits::default();
    limits.max_flags = 2;
    let three = json!({ "flags": {
        "a": { "state": "ENABLED", "variants": { "on": true } },
        "b": { "state": "ENABLED", "variants": { "on": true } },
        "c": { "state": "ENABLED", "variants": { "on": true } }
    } });
    assert_eq!(
        FlagdSet::parse_with(&three.to_string(), &limits).unwrap_err(),
        FlagdError::TooManyFlags { count: 3, max: 2 }
    );

    // Many flags each within their own budget, together over the file's.
    let mut limits = FlagdLimits::default();
    limits.max_nodes = 50;
    let flags: serde_json::Map<String, Value> = (0..10)
        .map(|i| {
            (
                format!("f{i}"),
                json!({ "state": "ENABLED", "variants": { "on": true, "off": false },
                        "targeting": { "if": [{ "==": [{ "var": "a" }, 1] }, "on", "off"] } }),
            )
        })
        .collect();
    let text = json!({ "flags": flags }).to_string();
    assert_eq!(
        FlagdSet::parse_with(&text, &limits).unwrap_err(),
        FlagdError::TooManyNodes { max: 50 }
    );
    assert!(FlagdSet::parse(&text).is_ok());
}

#[test]
fn a_broken_flag_is_a_parse_error_and_the_rest_loads() {
    let set = FlagdSet::parse(
        &json!({ "flags": {
            "good": { "state": "ENABLED", "variants": { "on": true }, "defaultVariant": "on" },
            "bad": { "state": "ENABLED", "variants": { "on": true }, "defaultVariant": "on",
                     "targeting": { "regex_match": [{ "var": "a" }, "x"] } }
        } })
        .to_string(),
    )
    .unwrap();
    let ctx = Context::anonymous();
    assert!(set.bool_value("good", &ctx, false).value);
    let d = set.bool_value("bad", &ctx, false);
    assert_eq!(d.error.map(|e| e.as_str()), Some("PARSE_ERROR"));
    assert!(set.problems()[0].message.contains("regex_match"));
    assert_eq!(set.problems()[0].flag, "bad");
    assert!(set.problems()[0].to_string().starts_with("flag \"bad\""));
}

#[test]
fn schema_violations_are_per_flag_parse_errors() {
    let v = json!({ "on": true, "off": false });
    for (flag, needle) in [
        (json!({ "variants": v }), "state"),
        (json!({ "state": "ON", "variants": v }), "state"),
        (json!({ "state": "ENABLED" }), "variants"),
        (
            json!({ "state": "ENABLED", "variants": [true] }),
            "variants",
        ),
        (
            json!({ "state": "ENABLED", "variants": { "a": true, "b": "x" } }),
            "one type",
        ),
        (
            json!({ "state": "ENABLED", "variants": { "a": null } }),
            "null",
        ),
        (
            json!({ "state": "ENABLED", "variants": v, "defaultVariant": "nope" }),
            "defaultVariant",
        ),
        (
            json!({ "state": "ENABLED", "variants": v, "defaultVariant": 1 }),
            "defaultVariant",
        ),
        (
            json!({ "state": "ENABLED", "variants": v, "targeting": "on" }),
            "targeting",
        ),
        (
            json!({ "state": "ENABLED", "variants": v, "metadata": { "a": {} } }),
            "metadata",
        ),
        (
            json!({ "state": "ENABLED", "variants": v, "metadata": 3 }),
            "metadata",
        ),
        (
            json!({ "state": "ENABLED", "variants": v, "targeting": { "$ref": "x" } }),
            "$evaluators",
        ),
        (json!("flag"), "not an object"),
    ] {
        let msg = problem(flag.clone());
        assert!(msg.contains(needle), "{flag}: {msg}");
    }
    // Integers and floats mix: a number flag.
    let set = one_flag(
        json!({ "state": "ENABLED", "variants": { "a": 1, "b": 0.5 }, "defaultVariant": "a" }),
    );
    assert!(set.problems().is_empty());
    assert_eq!(set.float_value("f", &Context::anonymous(), 0.0).value, 1.0);
    assert_eq!(set.int_value("f", &Context::anonymous(), 0).value, 1);
}

#[test]
fn result_rules() {
    let flag = |targeting: Value| {
        one_flag(json!({
            "state": "ENABLED",
            "variants": { "true": "T", "false": "F", "1": "one", "dflt": "D" },
            "defaultVariant": "dflt",
            "targeting": targeting
        }))
    };
    let ctx = Context::new("u1");
    let eval = |t: Value| {
        let set = flag(t);
        let d = set.string_value("f", &ctx, "caller");
        (
            d.value.to_owned(),
            d.variant.map(str::to_owned),
            d.reason.as_str(),
            d.error.map(|e| e.as_str()),
        )
    };
    // A boolean names "true"/"false".
    assert_eq!(
        eval(json!({ "==": [1, 1] })),
        ("T".into(), Some("true".into()), "TARGETING_MATCH", None)
    );
    assert_eq!(
        eval(json!({ "==": [1, 2] })),
        ("F".into(), Some("false".into()), "TARGETING_MATCH", None)
    );
    // A number names its JSON form.
    assert_eq!(
        eval(json!({ "+": [0, 1] })),
        ("one".into(), Some("1".into()), "TARGETING_MATCH", None)
    );
    // null: the default variant, reason DEFAULT.
    assert_eq!(
        eval(json!({ "var": "nope" })),
        ("D".into(), Some("dflt".into()), "DEFAULT", None)
    );
    // Names no variant: the caller's default with GENERAL.
    for t in [
        json!({ "cat": ["no", "pe"] }),
        json!({ "merge": [1] }),
        json!({ "a": 1, "b": 2 }),
    ] {
        assert_eq!(eval(t), ("caller".into(), None, "ERROR", Some("GENERAL")));
    }
    // targeting {} is no targeting: STATIC.
    assert_eq!(
        eval(json!({})),
        ("D".into(), Some("dflt".into()), "STATIC", None)
    );
    // No default variant, no targeting: the caller's default, DEFAULT.
    let set = one_flag(json!({ "state": "ENABLED", "variants": { "a": "A" } }));
    let d = set.string_value("f", &ctx, "caller");
    assert_eq!(
        (d.value, d.variant, d.reason.as_str(), d.error),
        ("caller", None, "DEFAULT", None)
    );
    // A disabled flag: DISABLED with the caller's default, even when the type would not match.
    let set =
        one_flag(json!({ "state": "DISABLED", "variants": { "a": "A" }, "defaultVariant": "a" }));
    let d = set.bool_value("f", &ctx, true);
    assert_eq!(
        (d.value, d.reason.as_str(), d.error),
        (true, "DISABLED", None)
    );
}

#[test]
fn nested_context_and_flat_context_agree() {
    let set = one_flag(json!({
        "state": "ENABLED",
        "variants": { "pro": true, "free": false },
        "defaultVariant": "free",
        "targeting": { "if": [{ "in": [{ "var": "user.account.plan" }, ["pro", "team"]] }, "pro"] }
    }));
    let user = json!({ "account": { "plan": "team" } });
    let ctx = Context::new("u1").with("user", &user);
    assert!(set.bool_value("f", &ctx, false).value);
    let whole = json!({ "targetingKey": "u1", "user": { "account": { "plan": "free" } } });
    assert!(!set.bool_value("f", &Context::from_json(&whole), true).value);
    // A flat attribute is not a path.
    let ctx = Context::new("u1").with("user.account.plan", "pro");
    assert!(!set.bool_value("f", &ctx, true).value);
}

fn fractional_set() -> FlagdSet {
    let split = |weights: [u32; 3]| {
        json!({
            "state": "ENABLED",
            "variants": { "a": "a", "b": "b", "c": "c" },
            "defaultVariant": "a",
            "targeting": { "fractional": [
                { "var": "targetingKey" },
                ["a", weights[0]], ["b", weights[1]], ["c", weights[2]]
            ] }
        })
    };
    FlagdSet::parse(
        &json!({ "flags": {
            "split": split([50, 30, 20]),
            "split-relative": split([5, 3, 2]),
            "split-permille": split([500, 300, 200])
        } })
        .to_string(),
    )
    .unwrap()
}

#[test]
fn fractional_distribution_and_stability() {
    let set = fractional_set();
    let n = 20_000;
    let mut counts = [0usize; 3];
    let mut relative_differs = 0;
    for i in 0..n {
        let key = format!("user-{i}");
        let ctx = Context::new(&key);
        let got = set.string_value("split", &ctx, "x").value;
        counts[(got.as_bytes()[0] - b'a') as usize] += 1;
        // Stable: the same context always lands in the same bucket.
        assert_eq!(set.string_value("split", &ctx, "x").value, got);
        // Weights are relative: 500/300/200 is exactly 50/30/20 ((hash × total) >> 32 scales);
        // 5/3/2 is the same split at a coarser grain, so a few keys near a border move.
        assert_eq!(set.string_value("split-permille", &ctx, "x").value, got);
        if set.string_value("split-relative", &ctx, "x").value != got {
            relative_differs += 1;
        }
    }
    // 50/30/20 within 1.5 points (σ ≈ 0.35 points at n = 20 000).
    for (count, want) in counts.iter().zip([0.5, 0.3, 0.2]) {
        let share = *count as f64 / n as f64;
        assert!((share - want).abs() < 0.015, "{counts:?}");
    }
    assert!(relative_differs < n / 100, "{relative_differs}");
}

#[test]
fn default_bucketing_is_flag_key_then_targeting_key() {
    let text = |key: &str, explicit: bool| {
        let bucket_by = if explicit {
            json!({ "cat": [key, { "var": "targetingKey" }] })
        } else {
            json!(null)
        };
        json!({ "flags": { key: {
            "state": "ENABLED",
            "variants": { "a": "a", "b": "b" },
            "defaultVariant": "a",
            "targeting": { "fractional": [bucket_by, ["a", 1], ["b", 1]] }
        } } })
        .to_string()
    };
    let implicit = FlagdSet::parse(&text("my-flag", false)).unwrap();
    let explicit = FlagdSet::parse(&text("my-flag", true)).unwrap();
    let mut differs = false;
    for i in 0..500 {
        let key = format!("k{i}");
        let ctx = Context::new(&key);
        let a = implicit.string_value("my-flag", &ctx, "x").value;
        assert_eq!(a, explicit.string_value("my-flag", &ctx, "x").value);
        differs |= a == "b";
    }
    assert!(differs, "both buckets are used");
}

#[test]
fn timestamp_and_flag_key_are_injected() {
    let set = FlagdSet::parse(
        &json!({ "flags": {
            "launch": {
                "state": "ENABLED",
                "variants": { "live": true, "dark": false },
                "defaultVariant": "dark",
                "targeting": { "if": [{ ">": [{ "var": "$flagd.timestamp" }, 1_700_000_000] }, "live"] }
            },
            "future": {
                "state": "ENABLED",
                "variants": { "live": true, "dark": false },
                "defaultVariant": "dark",
                "targeting": { "if": [{ ">": [{ "var": "$flagd.timestamp" }, 40_000_000_000_i64] }, "live"] }
            },
            "self": {
                "state": "ENABLED",
                "variants": { "self": "me", "other": "them" },
                "defaultVariant": "other",
                "targeting": { "var": "$flagd.flagKey" }
            }
        } })
        .to_string(),
    )
    .unwrap();
    let ctx = Context::anonymous();
    assert!(set.bool_value("launch", &ctx, false).value);
    assert!(!set.bool_value("future", &ctx, true).value);
    assert_eq!(set.string_value("self", &ctx, "x").value, "me");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let ops = prop::sample::select(vec![
        "if",
        "==",
        "===",
        "!=",
        "!==",
        "!",
        "!!",
        "and",
        "or",
        "<",
        "<=",
        ">",
        ">=",
        "in",
        "var",
        "missing",
        "missing_some",
        "cat",
        "substr",
        "+",
        "-",
        "*",
        "/",
        "%",
        "min",
        "max",
        "merge",
        "fractional",
        "starts_with",
        "ends_with",
        "sem_ver",
        "$ref",
        "nope",
        "log",
        "?:",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "a",
            "on",
            "off",
            "1.0.0",
            "v2",
            "=",
            "^",
            "~",
            "<",
            "user.name",
            "$flagd.flagKey",
            "targetingKey",
            "e1",
            "0",
            "x.y.z",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            (ops.clone(), inner.clone()).prop_map(|(op, arg)| json!({ op: arg })),
            (ops.clone(), prop::collection::vec(inner.clone(), 0..4))
                .prop_map(|(op, args)| json!({ op: args })),
            prop::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary JSON as targeting (and as an evaluator) never panics: the flag compiles and
    /// evaluates to something, or is a PARSE_ERROR; the rest of the file loads.
    #[test]
    fn arbitrary_targeting_never_panics(targeting in arb_json(), evaluator in arb_json(), ctx in arb_json()) {
        let text = json!({
            "flags": {
                "f": { "state": "ENABLED", "variants": { "on": "on", "off": "off", "1": "one", "true": "t" },
                       "defaultVariant": "off", "targeting": targeting },
                "ok": { "state": "ENABLED", "variants": { "on": true }, "defaultVariant": "on" }
            },
            "$evaluators": { "e1": evaluator }
        }).to_string();
        let set = FlagdSet::parse(&text).unwrap();
        let data = json!({ "targetingKey": "u1", "user": { "name": ctx.clone() }, "a": ctx });
        let context = Context::from_json(&data);
        let d = set.string_value("f", &context, "caller");
        if let Some(code) = d.error {
            prop_assert!(matches!(code.as_str(), "PARSE_ERROR" | "GENERAL"), "{code:?}");
            prop_assert_eq!(d.value, "caller");
        }
        prop_assert_eq!(set.problems().len(), usize::from(d.error.is_some_and(|e| e.as_str() == "PARSE_ERROR")));
        prop_assert!(set.bool_value("ok", &context, false).value);
    }
}
