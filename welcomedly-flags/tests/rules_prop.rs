//! Property tests of rule evaluation: each operator agrees with a plain-Rust model of it,
//! negation inverts it for present attributes, and the first matching rule wins.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::json;
use welcomedly_flags::{Context, Match, Reason, Snapshot};

fn one_rule(attribute: &str, op: &str, values: serde_json::Value, negate: bool) -> Snapshot {
    let set = json!({ "flags": { "f": {
        "variants": { "on": true, "off": false },
        "rules": [{ "clauses": [{ "attribute": attribute, "op": op, "values": values, "negate": negate }],
                    "serve": { "variant": "on" } }],
        "fallthrough": { "variant": "off" }
    } } });
    Snapshot::compile_json(&set.to_string(), 1).unwrap()
}

fn on(s: &Snapshot, ctx: &Context<'_>) -> bool {
    s.bool_value("f", ctx, false).value
}

proptest! {
    #[test]
    fn in_matches_exactly_the_listed_strings(
        values in proptest::collection::vec("[a-c]{0,3}", 1..10),
        attr in "[a-c]{0,3}",
        negate in any::<bool>(),
    ) {
        let s = one_rule("x", "in", json!(values), negate);
        let listed = values.contains(&attr);
        prop_assert_eq!(on(&s, &Context::new("u").with("x", attr.as_str())), listed != negate);
        // Absent attribute: never, negated or not.
        prop_assert!(!on(&s, &Context::new("u")));
    }

    #[test]
    fn string_affix_operators_agree_with_str(
        values in proptest::collection::vec("[ab]{0,3}", 1..4),
        attr in "[ab]{0,6}",
    ) {
        for (op, model) in [
            ("startsWith", attr_starts(&attr, &values)),
            ("endsWith", values.iter().any(|v| attr.ends_with(v.as_str()))),
            ("contains", values.iter().any(|v| attr.contains(v.as_str()))),
        ] {
            let s = one_rule("x", op, json!(values), false);
            prop_assert_eq!(on(&s, &Context::new("u").with("x", attr.as_str())), model, "{}", op);
        }
    }

    #[test]
    fn numeric_operators_agree_with_rust(
        values in proptest::collection::vec(-50i64..50, 1..4),
        attr in -60i64..60,
        as_float in any::<bool>(),
    ) {
        let ctx = if as_float { Context::new("u").with("n", attr as f64 + 0.5) } else { Context::new("u").with("n", attr) };
        let x = if as_float { attr as f64 + 0.5 } else { attr as f64 };
        let vs: Vec<f64> = values.iter().map(|v| *v as f64).collect();
        for (op, model) in [
            ("lessThan", vs.iter().any(|v| x < *v)),
            ("lessThanOrEqual", vs.iter().any(|v| x <= *v)),
            ("greaterThan", vs.iter().any(|v| x > *v)),
            ("greaterThanOrEqual", vs.iter().any(|v| x >= *v)),
        ] {
            let s = one_rule("n", op, json!(values), false);
            prop_assert_eq!(on(&s, &ctx), model, "{}", op);
        }
    }

    #[test]
    fn semver_operators_agree_with_tuple_order(
        a in (0u64..3, 0u64..3, 0u64..3),
        b in (0u64..3, 0u64..3, 0u64..3),
        negate in any::<bool>(),
    ) {
        let (va, vb) = (format!("{}.{}.{}", a.0, a.1, a.2), format!("{}.{}.{}", b.0, b.1, b.2));
        let ctx = Context::new("u").with("v", va.as_str());
        for (op, model) in [("semverLessThan", a < b), ("semverEqual", a == b), ("semverGreaterThan", a > b)] {
            let s = one_rule("v", op, json!([vb]), negate);
            prop_assert_eq!(on(&s, &ctx), model != negate, "{}", op);
        }
    }

    #[test]
    fn date_operators_agree_with_millis(attr in -10_000i64..10_000, bound in -10_000i64..10_000) {
        let ctx = Context::new("u").with("d", attr);
        prop_assert_eq!(on(&one_rule("d", "before", json!([bound]), false), &ctx), attr < bound);
        prop_assert_eq!(on(&one_rule("d", "after", json!([bound]), false), &ctx), attr > bound);
    }

    #[test]
    fn the_first_matching_rule_wins(rule_values in proptest::collection::vec(0i64..5, 1..8), attr in 0i64..6) {
        let rules: Vec<_> = rule_values
            .iter()
            .map(|v| json!({ "clauses": [{ "attribute": "n", "op": "equals", "values": [v] }], "serve": { "variant": "on" } }))
            .collect();
        let set = json!({ "flags": { "f": { "variants": { "on": true, "off": false }, "rules": rules } } });
        let s = Snapshot::compile_json(&set.to_string(), 1).unwrap();
        let e = s.bool_value("f", &Context::new("u").with("n", attr), false);
        match rule_values.iter().position(|v| *v == attr) {
            Some(i) => prop_assert_eq!(e.reason, Reason::TargetingMatch(Match::Rule(i))),
            None => prop_assert_eq!(e.reason, Reason::Default),
        }
    }
}

fn attr_starts(attr: &str, values: &[String]) -> bool {
    values.iter().any(|v| attr.starts_with(v.as_str()))
}
