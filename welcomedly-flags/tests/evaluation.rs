//! Evaluation semantics: OpenFeature's reasons and error codes, the kill switch, targets, every
//! clause operator, negation, segments and prerequisites.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;
use welcomedly_flags::{Context, ErrorCode, Match, Reason, Snapshot};

fn snap(json: &str) -> Snapshot {
    Snapshot::compile_json(json, 1).unwrap()
}

/// A boolean flag "f" with one rule of the given clauses serving "on", fallthrough "off".
fn rule(clauses: &str) -> Snapshot {
    snap(&format!(
        r#"{{ "flags": {{ "f": {{ "variants": {{ "on": true, "off": false }},
        "rules": [{{ "clauses": [{clauses}], "serve": {{ "variant": "on" }} }}],
        "fallthrough": {{ "variant": "off" }} }} }} }}"#
    ))
}

fn hits(s: &Snapshot, ctx: &Context<'_>) -> bool {
    let e = s.bool_value("f", ctx, false);
    assert!(e.error.is_none(), "{e:?}");
    e.value
}

#[test]
fn unknown_flag_is_the_default_with_flag_not_found() {
    let s = Snapshot::empty();
    let e = s.string_value("nope", &Context::new("u"), "dflt");
    assert_eq!(e.value, "dflt");
    assert_eq!(e.variant, None);
    assert_eq!(e.reason, Reason::Error);
    assert_eq!(e.reason.as_str(), "ERROR");
    assert_eq!(e.error, Some(ErrorCode::FlagNotFound));
    assert_eq!(e.error.unwrap().as_str(), "FLAG_NOT_FOUND");
}

#[test]
fn disabled_flag_is_the_default_whatever_the_rules() {
    let s = snap(
        r#"{ "flags": { "f": { "enabled": false, "variants": { "on": true, "off": false },
        "targets": [{ "variant": "on", "values": ["u"] }],
        "rules": [{ "clauses": [], "serve": { "variant": "on" } }],
        "fallthrough": { "variant": "on" } } } }"#,
    );
    let e = s.bool_value("f", &Context::new("u"), false);
    assert_eq!(
        (e.value, e.variant, e.reason, e.error),
        (false, None, Reason::Disabled, None)
    );
    assert_eq!(e.reason.as_str(), "DISABLED");
}

#[test]
fn no_match_and_no_fallthrough_is_default_not_error() {
    let s = snap(
        r#"{ "flags": { "f": { "variants": { "on": true },
        "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }], "serve": { "variant": "on" } }] } } }"#,
    );
    let e = s.bool_value("f", &Context::new("u"), false);
    assert_eq!(
        (e.value, e.variant, e.reason, e.error),
        (false, None, Reason::Default, None)
    );
    assert_eq!(e.reason.as_str(), "DEFAULT");
}

#[test]
fn falsy_values_are_values() {
    let s = snap(
        r#"{ "flags": {
        "b": { "variants": { "no": false }, "fallthrough": { "variant": "no" } },
        "s": { "variants": { "empty": "" }, "fallthrough": { "variant": "empty" } },
        "i": { "variants": { "zero": 0 }, "fallthrough": { "variant": "zero" } },
        "x": { "variants": { "zero": 0.0, "half": 0.5 }, "fallthrough": { "variant": "zero" } },
        "o": { "variants": { "nothing": {} }, "fallthrough": { "variant": "nothing" } }
    } }"#,
    );
    let ctx = Context::new("u");
    let b = s.bool_value("b", &ctx, true);
    assert_eq!(
        (b.value, b.variant, b.reason),
        (false, Some("no"), Reason::Static)
    );
    assert_eq!(b.reason.as_str(), "STATIC");
    let st = s.string_value("s", &ctx, "dflt");
    assert_eq!((st.value, st.variant), ("", Some("empty")));
    assert_eq!(s.int_value("i", &ctx, 7).value, 0);
    assert_eq!(s.float_value("x", &ctx, 7.0).value, 0.0);
    let d = json!({"d": 1});
    let o = s.object_value("o", &ctx, &d);
    assert_eq!((o.value, o.variant), (&json!({}), Some("nothing")));
}

#[test]
fn wrong_type_is_the_default_with_type_mismatch() {
    let s = snap(
        r#"{ "flags": {
        "b": { "variants": { "on": true }, "fallthrough": { "variant": "on" } },
        "x": { "variants": { "half": 0.5 }, "fallthrough": { "variant": "half" } },
        "i": { "variants": { "one": 1 }, "fallthrough": { "variant": "one" } }
    } }"#,
    );
    let ctx = Context::new("u");
    let e = s.string_value("b", &ctx, "dflt");
    assert_eq!(
        (e.value, e.reason, e.error),
        ("dflt", Reason::Error, Some(ErrorCode::TypeMismatch))
    );
    assert_eq!(e.error.unwrap().as_str(), "TYPE_MISMATCH");
    assert_eq!(
        s.int_value("x", &ctx, 3).error,
        Some(ErrorCode::TypeMismatch)
    );
    assert_eq!(
        s.bool_value("i", &ctx, true).error,
        Some(ErrorCode::TypeMismatch)
    );
    let d = json!(null);
    assert_eq!(
        s.object_value("b", &ctx, &d).error,
        Some(ErrorCode::TypeMismatch)
    );
    // Integers read as floats; any flag reads as JSON.
    assert_eq!(s.float_value("i", &ctx, 0.0).value, 1.0);
    assert_eq!(s.json_value("x", &ctx).value, Some(&json!(0.5)));
}

#[test]
fn targets_come_before_rules_and_rules_in_order() {
    let s = snap(
        r#"{ "flags": { "f": { "variants": { "a": "A", "b": "B", "c": "C" },
        "targets": [{ "variant": "c", "values": ["vip"] }],
        "rules": [
          { "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }], "serve": { "variant": "a" } },
          { "clauses": [{ "attribute": "plan", "op": "startsWith", "values": ["p"] }], "serve": { "variant": "b" } }
        ],
        "fallthrough": { "variant": "c" } } } }"#,
    );
    let ev = |ctx: Context<'_>| {
        let e = s.string_value("f", &ctx, "-");
        (e.value, e.reason)
    };
    assert_eq!(
        ev(Context::new("vip").with("plan", "pro")),
        ("C", Reason::TargetingMatch(Match::Target))
    );
    assert_eq!(
        ev(Context::new("u").with("plan", "pro")),
        ("A", Reason::TargetingMatch(Match::Rule(0)))
    );
    assert_eq!(
        ev(Context::new("u").with("plan", "plus")),
        ("B", Reason::TargetingMatch(Match::Rule(1)))
    );
    assert_eq!(
        ev(Context::new("u").with("plan", "free")),
        ("C", Reason::Fallthrough)
    );
    assert_eq!(ev(Context::anonymous()), ("C", Reason::Fallthrough));
}

#[test]
fn string_operators() {
    let s = rule(
        r#"{ "attribute": "email", "op": "endsWith", "values": ["@a.example", "@b.example"] }"#,
    );
    assert!(hits(&s, &Context::new("u").with("email", "x@b.example")));
    assert!(!hits(&s, &Context::new("u").with("email", "x@c.example")));
    let s = rule(r#"{ "attribute": "path", "op": "contains", "values": ["/admin/"] }"#);
    assert!(hits(&s, &Context::new("u").with("path", "/x/admin/y")));
    let s =
        rule(r#"{ "attribute": "email", "op": "matches", "values": ["^[a-z]+@corp\\.example$"] }"#);
    assert!(hits(
        &s,
        &Context::new("u").with("email", "bob@corp.example")
    ));
    assert!(!hits(
        &s,
        &Context::new("u").with("email", "Bob@corp.example")
    ));
    let s = rule(
        r#"{ "attribute": "targetingKey", "op": "in", "values": ["k1", "k2", "k3", "k4", "k5", "k6"] }"#,
    );
    assert!(hits(&s, &Context::new("k6")));
    assert!(!hits(&s, &Context::new("k7")));
}

#[test]
fn equality_across_types() {
    let s = rule(r#"{ "attribute": "v", "op": "in", "values": ["1", 2, true, 2.5] }"#);
    assert!(hits(&s, &Context::new("u").with("v", "1")));
    assert!(!hits(&s, &Context::new("u").with("v", 1)));
    assert!(hits(&s, &Context::new("u").with("v", 2)));
    assert!(hits(&s, &Context::new("u").with("v", 2.0)));
    assert!(hits(&s, &Context::new("u").with("v", 2.5)));
    assert!(hits(&s, &Context::new("u").with("v", true)));
    assert!(!hits(&s, &Context::new("u").with("v", false)));
}

#[test]
fn numeric_semver_and_date_operators() {
    let s = rule(r#"{ "attribute": "age", "op": "greaterThanOrEqual", "values": [18] }"#);
    assert!(hits(&s, &Context::new("u").with("age", 18)));
    assert!(!hits(&s, &Context::new("u").with("age", 17.9)));
    assert!(!hits(&s, &Context::new("u").with("age", "20")));
    let s = rule(r#"{ "attribute": "age", "op": "lessThan", "values": [10, 20] }"#);
    assert!(hits(&s, &Context::new("u").with("age", 19)));
    assert!(!hits(&s, &Context::new("u").with("age", 20)));

    let s = rule(r#"{ "attribute": "app", "op": "semverLessThan", "values": ["2.0.0"] }"#);
    assert!(hits(&s, &Context::new("u").with("app", "2.0.0-rc.1")));
    assert!(hits(&s, &Context::new("u").with("app", "1.99.99")));
    assert!(!hits(&s, &Context::new("u").with("app", "2.0.0")));
    assert!(!hits(&s, &Context::new("u").with("app", "not-a-version")));
    let s = rule(r#"{ "attribute": "app", "op": "semverEqual", "values": ["1.2.3"] }"#);
    assert!(hits(&s, &Context::new("u").with("app", "1.2.3+build.7")));
    let s = rule(r#"{ "attribute": "app", "op": "semverGreaterThan", "values": ["1.2.3"] }"#);
    assert!(hits(&s, &Context::new("u").with("app", "1.10.0")));

    let s =
        rule(r#"{ "attribute": "signup", "op": "before", "values": ["2024-01-01T00:00:00Z"] }"#);
    assert!(hits(
        &s,
        &Context::new("u").with("signup", "2023-12-31T23:59:59.999Z")
    ));
    assert!(hits(
        &s,
        &Context::new("u").with("signup", 1_704_067_199_999_i64)
    ));
    assert!(!hits(
        &s,
        &Context::new("u").with("signup", "2024-01-01T01:00:00+01:00")
    ));
    assert!(!hits(&s, &Context::new("u").with("signup", "yesterday")));
    let s = rule(r#"{ "attribute": "signup", "op": "after", "values": [1704067200000] }"#);
    assert!(hits(
        &s,
        &Context::new("u").with("signup", "2024-01-01T00:00:00.001Z")
    ));
}

#[test]
fn negation_and_missing_attributes() {
    let s = rule(r#"{ "attribute": "country", "op": "in", "values": ["DE"], "negate": true }"#);
    assert!(hits(&s, &Context::new("u").with("country", "FR")));
    assert!(!hits(&s, &Context::new("u").with("country", "DE")));
    // A missing attribute never matches, negated or not.
    assert!(!hits(&s, &Context::new("u")));
    // Clauses of a rule are ANDed.
    let s = rule(
        r#"{ "attribute": "country", "op": "equals", "values": ["DE"] },
           { "attribute": "age", "op": "greaterThan", "values": [17] }"#,
    );
    assert!(hits(
        &s,
        &Context::new("u").with("country", "DE").with("age", 18)
    ));
    assert!(!hits(
        &s,
        &Context::new("u").with("country", "DE").with("age", 17)
    ));
}

#[test]
fn segments_with_keys_rules_and_nesting() {
    let s = snap(
        r#"{ "segments": {
          "staff": { "included": ["contractor-1"], "excluded": ["intern-1"],
                     "rules": [{ "clauses": [{ "attribute": "email", "op": "endsWith", "values": ["@corp.example"] }] }] },
          "beta": { "rules": [{ "clauses": [{ "op": "inSegment", "values": ["staff"] }] },
                              { "clauses": [{ "attribute": "beta", "op": "equals", "values": [true] }] }] }
        },
        "flags": { "f": { "variants": { "on": true, "off": false },
          "rules": [{ "clauses": [{ "op": "inSegment", "values": ["beta"] }], "serve": { "variant": "on" } }],
          "fallthrough": { "variant": "off" } },
          "g": { "variants": { "on": true, "off": false },
          "rules": [{ "clauses": [{ "op": "inSegment", "values": ["staff"], "negate": true }], "serve": { "variant": "on" } }],
          "fallthrough": { "variant": "off" } } } }"#,
    );
    assert!(hits(&s, &Context::new("contractor-1")));
    assert!(hits(
        &s,
        &Context::new("bob").with("email", "bob@corp.example")
    ));
    assert!(!hits(
        &s,
        &Context::new("intern-1").with("email", "intern@corp.example")
    ));
    assert!(hits(&s, &Context::new("x").with("beta", true)));
    assert!(!hits(&s, &Context::new("x")));
    let g = |ctx: Context<'_>| s.bool_value("g", &ctx, false).value;
    assert!(g(Context::new("x")));
    assert!(!g(Context::new("contractor-1")));
}

#[test]
fn prerequisites_chain_and_fail_to_default() {
    let s = snap(
        r#"{ "flags": {
        "a": { "variants": { "on": true, "off": false }, "prerequisites": [{ "flag": "b", "variants": ["on"] }], "fallthrough": { "variant": "on" } },
        "b": { "variants": { "on": true, "off": false }, "prerequisites": [{ "flag": "c", "variants": ["green", "blue"] }], "fallthrough": { "variant": "on" } },
        "c": { "variants": { "green": "g", "blue": "b", "red": "r" },
               "rules": [{ "clauses": [{ "attribute": "color", "op": "in", "values": ["red"] }], "serve": { "variant": "red" } }],
               "fallthrough": { "variant": "green" } },
        "d": { "variants": { "on": true }, "prerequisites": [{ "flag": "off-flag", "variants": ["on"] }], "fallthrough": { "variant": "on" } },
        "off-flag": { "enabled": false, "variants": { "on": true }, "fallthrough": { "variant": "on" } }
    } }"#,
    );
    let e = s.bool_value("a", &Context::new("u"), false);
    assert_eq!(
        (e.value, e.variant, e.reason),
        (true, Some("on"), Reason::Fallthrough)
    );
    let e = s.bool_value("a", &Context::new("u").with("color", "red"), false);
    assert_eq!(
        (e.value, e.variant, e.reason),
        (false, None, Reason::PrerequisiteFailed("b"))
    );
    assert_eq!(e.reason.as_str(), "DEFAULT");
    let e = s.bool_value("b", &Context::new("u").with("color", "red"), false);
    assert_eq!(e.reason, Reason::PrerequisiteFailed("c"));
    // A disabled prerequisite fails.
    assert_eq!(
        s.bool_value("d", &Context::new("u"), false).reason,
        Reason::PrerequisiteFailed("off-flag")
    );
}

#[test]
fn rollouts_split_and_need_their_attribute() {
    let s = snap(
        r#"{ "flags": { "f": { "variants": { "on": true, "off": false },
        "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }],
                    "serve": { "rollout": { "bucketBy": "org", "variants": [{ "variant": "on", "weight": 100000 }, { "variant": "off", "weight": 0 }] } } }],
        "fallthrough": { "rollout": { "variants": [{ "variant": "off", "weight": 0 }, { "variant": "on", "weight": 100000 }] } } } } }"#,
    );
    let e = s.bool_value(
        "f",
        &Context::new("u").with("plan", "pro").with("org", 42),
        false,
    );
    assert_eq!((e.value, e.reason), (true, Reason::Split(Match::Rule(0))));
    assert_eq!(e.reason.as_str(), "SPLIT");
    // Without its bucket-by attribute the rule's rollout does not apply: on to the fallthrough.
    let e = s.bool_value("f", &Context::new("u").with("plan", "pro"), false);
    assert_eq!(
        (e.value, e.reason),
        (true, Reason::Split(Match::Fallthrough))
    );
    // The fallthrough buckets by the key; without one it is the caller's default.
    let e = s.bool_value("f", &Context::anonymous(), false);
    assert_eq!(
        (e.value, e.variant, e.reason),
        (false, None, Reason::Default)
    );
}

#[test]
fn integer_and_string_bucket_by_values_agree() {
    let s = snap(
        r#"{ "flags": { "f": { "variants": { "a": "a", "b": "b" },
        "fallthrough": { "rollout": { "bucketBy": "org", "variants": [{ "variant": "a", "weight": 50000 }, { "variant": "b", "weight": 50000 }] } } } } }"#,
    );
    for org in 0..200_i64 {
        let text = org.to_string();
        assert_eq!(
            s.string_value("f", &Context::new("u").with("org", org), "-")
                .value,
            s.string_value("f", &Context::new("u").with("org", text.as_str()), "-")
                .value
        );
    }
}

#[test]
fn snapshot_accessors() {
    let s = Snapshot::compile_json(r#"{ "flags": { "x": { "variants": { "on": true } }, "a": { "variants": { "v": [1] } } } }"#, 9).unwrap();
    assert_eq!(s.version(), 9);
    assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "x"]);
    assert_eq!(s.flag_type("a"), Some(welcomedly_flags::FlagType::Object));
    assert_eq!(s.flag_set().flags.len(), 2);
    assert_eq!(Snapshot::empty().version(), 0);
    assert!(Snapshot::empty().is_empty());
}
