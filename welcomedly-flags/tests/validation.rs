//! Whole-set validation: each kind of problem at its path, every problem listed at once, parse
//! errors reported the same way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use welcomedly_flags::model::FlagSet;
use welcomedly_flags::{Snapshot, ValidationErrors};

fn problems(json: &str) -> ValidationErrors {
    let err = FlagSet::from_json(json).unwrap_err();
    // Snapshot::compile_json rejects exactly the same way.
    assert_eq!(Snapshot::compile_json(json, 1).unwrap_err(), err);
    err
}

fn paths(err: &ValidationErrors) -> Vec<&str> {
    err.problems().iter().map(|p| p.path()).collect()
}

#[test]
fn prerequisite_cycle_is_rejected() {
    let err = problems(
        r#"{ "flags": {
        "a": { "variants": { "on": true }, "prerequisites": [{ "flag": "b", "variants": ["on"] }] },
        "b": { "variants": { "on": true }, "prerequisites": [{ "flag": "c", "variants": ["on"] }] },
        "c": { "variants": { "on": true }, "prerequisites": [{ "flag": "a", "variants": ["on"] }] }
    } }"#,
    );
    assert_eq!(paths(&err), ["flags.c.prerequisites[0].flag"]);
    let msg = err.problems()[0].message();
    assert!(msg.contains("a → b → c → a"), "{msg}");
}

#[test]
fn self_prerequisite_is_a_cycle() {
    let err = problems(
        r#"{ "flags": { "a": { "variants": { "on": true }, "prerequisites": [{ "flag": "a", "variants": ["on"] }] } } }"#,
    );
    assert_eq!(paths(&err), ["flags.a.prerequisites[0].flag"]);
}

#[test]
fn segment_cycle_is_rejected() {
    let err = problems(
        r#"{ "flags": {}, "segments": {
        "s1": { "rules": [{ "clauses": [{ "op": "inSegment", "values": ["s2"] }] }] },
        "s2": { "rules": [{ "clauses": [{ "op": "inSegment", "values": ["s1"] }] }] }
    } }"#,
    );
    assert_eq!(paths(&err), ["segments.s2.rules[0].clauses[0].values[0]"]);
    assert!(
        err.problems()[0]
            .message()
            .contains("segment cycle s1 → s2 → s1")
    );
}

#[test]
fn too_deep_prerequisite_chain_is_rejected() {
    let mut flags = Vec::new();
    for i in 0..70 {
        let pre = if i < 69 {
            format!(
                r#", "prerequisites": [{{ "flag": "f{:02}", "variants": ["on"] }}]"#,
                i + 1
            )
        } else {
            String::new()
        };
        flags.push(format!(
            r#""f{i:02}": {{ "variants": {{ "on": true }}{pre} }}"#
        ));
    }
    let err = problems(&format!(r#"{{ "flags": {{ {} }} }}"#, flags.join(",")));
    assert_eq!(paths(&err), ["flags.f05"]);
}

#[test]
fn unknown_references_are_listed() {
    let err = problems(
        r#"{ "flags": {
        "f": {
          "variants": { "on": true, "off": false },
          "prerequisites": [{ "flag": "ghost", "variants": ["on"] }, { "flag": "g", "variants": ["maybe"] }],
          "targets": [{ "variant": "onn", "values": ["u1"] }],
          "rules": [{ "clauses": [{ "op": "inSegment", "values": ["nobody"] }], "serve": { "variant": "of" } }],
          "fallthrough": { "rollout": { "variants": [{ "variant": "on", "weight": 50000 }, { "variant": "x", "weight": 50000 }] } }
        },
        "g": { "variants": { "yes": "y" } }
    } }"#,
    );
    assert_eq!(
        paths(&err),
        [
            "flags.f.prerequisites[0].flag",
            "flags.f.prerequisites[1].variants[0]",
            "flags.f.targets[0].variant",
            "flags.f.rules[0].serve.variant",
            "flags.f.fallthrough.rollout.variants[1].variant",
            "flags.f.rules[0].clauses[0].values[0]",
        ]
    );
    let text = err.to_string();
    assert!(text.starts_with("invalid flag set (6 problems)"), "{text}");
    assert!(
        text.contains(
            "- flags.f.targets[0].variant: unknown variant \"onn\"; use one of [\"off\", \"on\"]"
        ),
        "{text}"
    );
    assert!(text.contains("unknown segment \"nobody\""), "{text}");
}

#[test]
fn weights_must_sum_to_the_total() {
    let err = problems(
        r#"{ "flags": { "f": {
        "variants": { "a": 1, "b": 2 },
        "rules": [{ "clauses": [], "serve": { "rollout": { "variants": [{ "variant": "a", "weight": 60000 }, { "variant": "b", "weight": 50000 }] } } }],
        "fallthrough": { "rollout": { "variants": [{ "variant": "a", "weight": 99999 }] } }
    } } }"#,
    );
    assert_eq!(
        paths(&err),
        [
            "flags.f.rules[0].serve.rollout.variants",
            "flags.f.fallthrough.rollout.variants"
        ]
    );
    assert!(
        err.problems()[0]
            .message()
            .contains("weights sum to 110000, not 100000")
    );
    assert!(err.problems()[1].message().contains("weights sum to 99999"));
}

#[test]
fn serve_needs_exactly_one_of_variant_or_rollout() {
    let err = problems(
        r#"{ "flags": { "f": { "variants": { "a": 1 },
        "rules": [{ "serve": {} }],
        "fallthrough": { "variant": "a", "rollout": { "variants": [{ "variant": "a", "weight": 100000 }] } } } } }"#,
    );
    assert_eq!(
        paths(&err),
        ["flags.f.rules[0].serve", "flags.f.fallthrough"]
    );
}

#[test]
fn bad_regex_and_bad_operands_are_listed() {
    let err = problems(
        r#"{ "flags": { "f": { "variants": { "on": true },
        "rules": [{ "clauses": [
          { "attribute": "email", "op": "matches", "values": ["^(unclosed", ".*ok"] },
          { "attribute": "age", "op": "greaterThan", "values": ["eighteen"] },
          { "attribute": "app", "op": "semverLessThan", "values": ["1.2"] },
          { "attribute": "since", "op": "after", "values": ["2024-02-30T00:00:00Z", 1700000000000] },
          { "attribute": "plan", "op": "equals", "values": ["a", "b"] },
          { "attribute": "plan", "op": "in", "values": [] },
          { "op": "startsWith", "values": ["x"] },
          { "attribute": "x", "op": "inSegment", "values": ["s"] }
        ], "serve": { "variant": "on" } }] } },
        "segments": { "s": { "included": ["u1"], "excluded": ["u1"] } } }"#,
    );
    assert_eq!(
        paths(&err),
        [
            "segments.s.excluded[0]",
            "flags.f.rules[0].clauses[0].values[0]",
            "flags.f.rules[0].clauses[1].values[0]",
            "flags.f.rules[0].clauses[2].values[0]",
            "flags.f.rules[0].clauses[3].values[0]",
            "flags.f.rules[0].clauses[4].values",
            "flags.f.rules[0].clauses[5].values",
            "flags.f.rules[0].clauses[6].attribute",
            "flags.f.rules[0].clauses[7].attribute",
        ]
    );
    assert!(
        err.problems()[1]
            .message()
            .starts_with("regular expression does not compile")
    );
}

#[test]
fn inconsistent_variant_types_are_rejected() {
    let err = problems(
        r#"{ "flags": {
        "mixed": { "variants": { "a": true, "b": "yes", "c": 1 } },
        "numbers": { "variants": { "a": 1, "b": 2.5 } },
        "nulls": { "variants": { "a": null } },
        "empty": { "variants": {} }
    } }"#,
    );
    assert_eq!(
        paths(&err),
        [
            "flags.empty.variants",
            "flags.mixed.variants.b",
            "flags.mixed.variants.c",
            "flags.nulls.variants.a"
        ]
    );
    assert!(
        err.problems()[1]
            .message()
            .contains("is a string but variant \"a\" is a boolean")
    );
}

#[test]
fn duplicate_targets_are_rejected() {
    let err = problems(
        r#"{ "flags": { "f": { "variants": { "a": 1, "b": 2 },
        "targets": [{ "variant": "a", "values": ["u1", "u2"] }, { "variant": "b", "values": ["u2"] }] } } }"#,
    );
    assert_eq!(paths(&err), ["flags.f.targets[1].values[0]"]);
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let err = problems(
        r#"{ "flags": { "f": { "variants": { "a": 1 }, "rules": [{ "clauses": [{ "attribute": "x", "op": "in", "values": [1], "negated": true }], "serve": { "variant": "a" } }] } } }"#,
    );
    assert_eq!(paths(&err), ["flags.f.rules[0].clauses[0].negated"]);
    assert!(
        err.problems()[0]
            .message()
            .contains("unknown field `negated`")
    );

    let err = problems(r#"{ "flags": {}, "segmnts": {} }"#);
    assert_eq!(paths(&err), ["segmnts"]);

    let err = problems(
        r#"{ "flags": { "f": { "variants": { "a": 1 }, "rules": [{ "clauses": [{ "attribute": "x", "op": "isIn", "values": [1] }], "serve": { "variant": "a" } }] } } }"#,
    );
    assert_eq!(paths(&err), ["flags.f.rules[0].clauses[0].op"]);
}

#[test]
fn syntax_errors_are_problems_too() {
    let err = problems(r#"{ "flags": { "f": "#);
    assert_eq!(err.problems().len(), 1);
    assert!(err.problems()[0].message().contains("EOF"), "{err}");
}

#[test]
fn errors_serialize_for_the_admin_api() {
    let err = problems(r#"{ "flags": { "f": { "variants": {} } } }"#);
    let body = serde_json::to_value(&err).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "problems": [
            { "path": "flags.f.variants", "message": "no variants; a flag needs at least one" }
        ] })
    );
}

#[test]
fn a_valid_set_round_trips_through_canonical_json() {
    let json = r#"{ "segments": { "staff": { "included": ["alice"], "rules": [{ "clauses": [{ "attribute": "email", "op": "endsWith", "values": ["@corp.example"] }] }] } },
      "flags": { "f": { "enabled": false, "description": "d", "salt": "s1", "bucketing": "flagd",
        "variants": { "a": { "x": 1 }, "b": [] },
        "rules": [{ "description": "staff", "clauses": [{ "op": "inSegment", "values": ["staff"], "negate": true }], "serve": { "variant": "a" } }],
        "fallthrough": { "rollout": { "bucketBy": "org", "variants": [{ "variant": "a", "weight": 1 }, { "variant": "b", "weight": 99999 }] } } } } }"#;
    let set = FlagSet::from_json(json).unwrap();
    let canonical = set.to_json();
    let again = FlagSet::from_json(&canonical).unwrap();
    assert_eq!(again, set);
    assert_eq!(again.to_json(), canonical);
    // Defaults are left out of the canonical form.
    let minimal =
        FlagSet::from_json(r#"{ "flags": { "g": { "variants": { "on": true } } } }"#).unwrap();
    assert!(!minimal.to_json().contains("bucketing"));
    assert!(minimal.to_json().contains("\"enabled\": true"));
}
