//! flagd-testbed's evaluator scenarios (`evaluator/gherkin/*.feature`), ported: the flag file is
//! the testbed's `evaluator/flags/testkit-flags.json` (copied to `tests/flagd/`, see its
//! README for source and licence), each table row an assertion.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{Value, json};
use welcomedly_flags::Context;
use welcomedly_flags::flagd::FlagdSet;

const TESTKIT: &str = include_str!("flagd/testkit-flags.json");
const EXTRA: &str = include_str!("flagd/extra-flags.json");

fn testkit() -> FlagdSet {
    FlagdSet::parse(TESTKIT).expect("the testbed file loads")
}

/// A string flag evaluated with `ctx` (a JSON object); `(value, reason, error)`.
fn string(
    set: &FlagdSet,
    key: &str,
    ctx: &Value,
    fallback: &str,
) -> (String, String, Option<String>) {
    let ctx = Context::from_json(ctx);
    let d = set.string_value(key, &ctx, fallback);
    (
        d.value.to_owned(),
        d.reason.as_str().to_owned(),
        d.error.map(|e| e.as_str().to_owned()),
    )
}

fn value(set: &FlagdSet, key: &str, ctx: Value, fallback: &str) -> String {
    string(set, key, &ctx, fallback).0
}

#[test]
fn loads_with_one_problem() {
    let set = testkit();
    assert_eq!(set.len(), 54);
    // Only the flag whose $ref names no evaluator fails; the file loads.
    let problems: Vec<&str> = set.problems().iter().map(|p| p.flag.as_str()).collect();
    assert_eq!(problems, ["ref-to-nonexistent-evaluator-flag"]);
    assert!(set.problems()[0].message.contains("nonexistent_evaluator"));
}

/// evaluation.feature: resolve basic values.
#[test]
fn evaluation_basic_values() {
    let set = testkit();
    let ctx = Context::anonymous();
    let b = set.bool_value("boolean-flag", &ctx, false);
    assert!(b.value);
    assert_eq!((b.variant, b.reason.as_str()), (Some("on"), "STATIC"));
    assert_eq!(set.string_value("string-flag", &ctx, "bye").value, "hi");
    assert_eq!(set.int_value("integer-flag", &ctx, 1).value, 10);
    assert_eq!(set.float_value("float-flag", &ctx, 0.1).value, 0.5);
    let empty = json!({});
    assert_eq!(
        *set.object_value("object-flag", &ctx, &empty).value,
        json!({ "showImages": true, "title": "Check out these pics!", "imagesPerPage": 100 })
    );
}

/// evaluation.feature (zero values): `false`, `""`, `0`, `0.0`, `{}` are values.
#[test]
fn zero_values_are_values() {
    let set = testkit();
    let ctx = Context::anonymous();
    let b = set.bool_value("boolean-zero-flag", &ctx, true);
    assert_eq!(
        (b.value, b.variant, b.reason.as_str()),
        (false, Some("zero"), "STATIC")
    );
    assert_eq!(set.string_value("string-zero-flag", &ctx, "x").value, "");
    assert_eq!(set.int_value("integer-zero-flag", &ctx, 9).value, 0);
    assert_eq!(set.float_value("float-zero-flag", &ctx, 9.0).value, 0.0);
    let dflt = json!({ "x": 1 });
    assert_eq!(
        *set.object_value("object-zero-flag", &ctx, &dflt).value,
        json!({})
    );
    // Targeted zero values: matched, and the default variant when the rule gives null.
    let ballmer = json!({ "email": "ballmer@macrosoft.com" });
    let ballmer = Context::from_json(&ballmer);
    for ctx in [&ballmer, &Context::anonymous()] {
        let want_reason = if ctx.get("email").is_some() {
            "TARGETING_MATCH"
        } else {
            "DEFAULT"
        };
        let b = set.bool_value("boolean-targeted-zero-flag", ctx, true);
        assert_eq!(
            (b.value, b.variant, b.reason.as_str()),
            (false, Some("zero"), want_reason)
        );
        let s = set.string_value("string-targeted-zero-flag", ctx, "x");
        assert_eq!((s.value, s.reason.as_str()), ("", want_reason));
        let i = set.int_value("integer-targeted-zero-flag", ctx, 9);
        assert_eq!((i.value, i.reason.as_str()), (0, want_reason));
        let f = set.float_value("float-targeted-zero-flag", ctx, 9.0);
        assert_eq!((f.value, f.reason.as_str()), (0.0, want_reason));
        assert!(!b.is_error() && !s.is_error() && !i.is_error() && !f.is_error());
    }
}

/// errors.feature.
#[test]
fn errors_not_found_and_type_mismatch() {
    let set = testkit();
    let ctx = Context::anonymous();
    let d = set.string_value("missing-flag", &ctx, "uh-oh");
    assert_eq!(
        (d.value, d.error.map(|e| e.as_str())),
        ("uh-oh", Some("FLAG_NOT_FOUND"))
    );
    let d = set.int_value("wrong-flag", &ctx, 13);
    assert_eq!(
        (d.value, d.error.map(|e| e.as_str())),
        (13, Some("TYPE_MISMATCH"))
    );
    let mismatch = |e: Option<welcomedly_flags::ErrorCode>| {
        assert_eq!(e.map(|e| e.as_str()), Some("TYPE_MISMATCH"));
    };
    let d = set.string_value("boolean-flag", &ctx, "fallback");
    assert_eq!(d.value, "fallback");
    mismatch(d.error);
    mismatch(set.int_value("boolean-flag", &ctx, 1).error);
    mismatch(set.float_value("boolean-flag", &ctx, 0.1).error);
    mismatch(set.bool_value("string-flag", &ctx, false).error);
    mismatch(set.int_value("string-flag", &ctx, 1).error);
    mismatch(set.float_value("string-flag", &ctx, 0.1).error);
    mismatch(set.bool_value("integer-flag", &ctx, false).error);
    mismatch(set.string_value("integer-flag", &ctx, "fallback").error);
    mismatch(set.bool_value("float-flag", &ctx, false).error);
    mismatch(set.string_value("float-flag", &ctx, "fallback").error);
    // A float served where an integer is asked: no lossy narrowing.
    let d = set.int_value("float-flag", &ctx, 7);
    assert_eq!(d.value, 7);
    mismatch(d.error);
}

/// no-default-variant.feature.
#[test]
fn no_default_variant() {
    let set = testkit();
    let anon = Context::anonymous();
    for code_default in [true, false] {
        let d = set.bool_value("null-default-flag", &anon, code_default);
        assert_eq!(
            (d.value, d.variant, d.reason.as_str()),
            (code_default, None, "DEFAULT")
        );
        assert!(!d.is_error());
    }
    let d = set.int_value("undefined-default-flag", &anon, 100);
    assert_eq!((d.value, d.reason.as_str()), (100, "DEFAULT"));
    let rows = [
        (
            "no-default-flag-null-targeting-variant",
            "wozniak@orange.com",
            "Inventor",
            "Inventor",
            "DEFAULT",
        ),
        (
            "no-default-flag-null-targeting-variant",
            "jobs@orange.com",
            "CEO",
            "CEO",
            "TARGETING_MATCH",
        ),
        (
            "no-default-flag-undefined-targeting-variant",
            "wozniak@orange.com",
            "Retired",
            "Retired",
            "DEFAULT",
        ),
    ];
    for (key, email, code_default, want, reason) in rows {
        let got = string(&set, key, &json!({ "email": email }), code_default);
        assert_eq!(
            got,
            (want.to_owned(), reason.to_owned(), None),
            "{key} {email}"
        );
    }
}

/// evaluator-refs.feature.
#[test]
fn evaluator_refs() {
    let set = testkit();
    let ballmer = json!({ "email": "ballmer@macrosoft.com" });
    assert_eq!(
        value(
            &set,
            "some-email-targeted-flag",
            ballmer.clone(),
            "fallback"
        ),
        "hi"
    );
    assert_eq!(
        value(
            &set,
            "some-other-email-targeted-flag",
            ballmer.clone(),
            "fallback"
        ),
        "yes"
    );
    for key in [
        "ref-whitespace-compact-flag",
        "ref-whitespace-space-after-colon-flag",
        "ref-whitespace-space-around-colon-flag",
    ] {
        for (email, want) in [("ballmer@macrosoft.com", "hi"), ("user@example.com", "bye")] {
            let got = string(&set, key, &json!({ "email": email }), "fallback");
            assert_eq!(
                got,
                (want.to_owned(), "TARGETING_MATCH".to_owned(), None),
                "{key}"
            );
        }
    }
    let got = string(
        &set,
        "ref-to-nonexistent-evaluator-flag",
        &json!({}),
        "fallback",
    );
    assert_eq!(
        got,
        (
            "fallback".into(),
            "ERROR".into(),
            Some("PARSE_ERROR".into())
        )
    );
}

/// fractional.feature, @fractional-v2 (the current algorithm): golden vectors of flagd's
/// implementation.
#[test]
fn fractional_v2_golden_vectors() {
    let set = testkit();
    let user = |name: &str| json!({ "user": { "name": name } });
    for (name, want) in [
        ("jack", "hearts"),
        ("queen", "spades"),
        ("ten", "clubs"),
        ("nine", "diamonds"),
        ("3", "clubs"),
    ] {
        assert_eq!(
            value(&set, "fractional-flag", user(name), "fallback"),
            want,
            "{name}"
        );
    }
    for (key, want) in [("jon@company.com", "heads"), ("jane@company.com", "tails")] {
        let ctx = json!({ "targetingKey": key });
        assert_eq!(
            value(&set, "fractional-flag-shorthand", ctx, "fallback"),
            want,
            "{key}"
        );
    }
    for (name, a, b) in [
        ("seven", "hearts", "ace-of-hearts"),
        ("eight", "diamonds", "ace-of-diamonds"),
        ("nine", "clubs", "ace-of-clubs"),
        ("two", "spades", "ace-of-spades"),
    ] {
        assert_eq!(
            value(
                &set,
                "fractional-flag-A-shared-seed",
                user(name),
                "fallback"
            ),
            a
        );
        assert_eq!(
            value(
                &set,
                "fractional-flag-B-shared-seed",
                user(name),
                "fallback"
            ),
            b
        );
    }
    // Keys whose hashes sit on the bucket boundaries.
    for (key, want) in [
        ("ejOoVL", "lower"),
        ("bY9fO-", "lower"),
        ("SI7p-", "lower"),
        ("6LvT0", "upper"),
        ("ceQdGm", "upper"),
    ] {
        let ctx = json!({ "targetingKey": key });
        assert_eq!(
            value(&set, "fractional-hash-edge-flag", ctx, "fallback"),
            want,
            "{key}"
        );
    }
    let d = string(&set, "fractional-flag", &user("jack"), "fallback");
    assert_eq!(d.1, "TARGETING_MATCH");
}

/// fractional.feature, @fractional-nested.
#[test]
fn fractional_nested_expressions() {
    let set = testkit();
    let ctx = |tk: &str, k: &str, v: &str| json!({ "targetingKey": tk, k: v });
    for (tk, tier, want) in [
        ("jon@company.com", "premium", "premium"),
        ("jon@company.com", "basic", "standard"),
        ("user1", "premium", "standard"),
        ("user1", "basic", "standard"),
    ] {
        assert_eq!(
            value(
                &set,
                "fractional-nested-if-flag",
                ctx(tk, "tier", tier),
                "fallback"
            ),
            want
        );
    }
    for (tk, color, want) in [
        ("jon@company.com", "red", "red"),
        ("jon@company.com", "green", "green"),
        ("user1", "red", "blue"),
        ("jon@company.com", "yellow", "fallback"),
        ("jon@company.com", "", "fallback"),
    ] {
        let got = string(
            &set,
            "fractional-nested-var-flag",
            &ctx(tk, "color", color),
            "fallback",
        );
        assert_eq!(got.0, want, "{tk} {color}");
        if want == "fallback" {
            // A bucket that names no variant: flagd's GENERAL error, the caller's default.
            assert_eq!(got.2.as_deref(), Some("GENERAL"));
        }
    }
    for (tk, tier, want) in [
        ("jon@company.com", "premium", "red"),
        ("jon@company.com", "basic", "blue"),
        ("user1", "premium", "red"),
        ("user1", "basic", "blue"),
    ] {
        assert_eq!(
            value(
                &set,
                "fractional-nested-weight-flag",
                ctx(tk, "tier", tier),
                "fallback"
            ),
            want
        );
    }
    let some = json!({ "targetingKey": "some-targeting-key" });
    assert_eq!(
        value(&set, "fractional-as-condition-flag", some.clone(), "zero"),
        "hundreds"
    );
    assert_eq!(
        value(
            &set,
            "fractional-as-condition-false-flag",
            some.clone(),
            "zero"
        ),
        "ones"
    );
    assert_eq!(
        value(&set, "fractional-single-entry-flag", some, "x"),
        "single"
    );
}

/// Fractional input errors give null: the default variant with reason DEFAULT.
#[test]
fn fractional_errors_fall_back_to_the_default_variant() {
    let set = testkit();
    for (key, ctx) in [
        // No bucketing value and no targeting key.
        ("fractional-null-bucket-key-flag", json!({})),
        (
            "fractional-zero-weights-flag",
            json!({ "targetingKey": "u1" }),
        ),
        (
            "fractional-negative-weight-flag",
            json!({ "targetingKey": "u1" }),
        ),
    ] {
        let got = string(&set, key, &ctx, "wrong");
        assert_eq!(got, ("fallback".into(), "DEFAULT".into(), None), "{key}");
    }
    // With a targeting key the missing bucketing value falls back to flag key + targeting key.
    let got = string(
        &set,
        "fractional-null-bucket-key-flag",
        &json!({ "targetingKey": "u1" }),
        "wrong",
    );
    assert_eq!(got.0, "true");
}

/// semver.feature.
#[test]
fn semver() {
    let set = testkit();
    let v = |version: &str| json!({ "version": version });
    for (version, want) in [
        ("2.0.0", "equal"),
        ("2.1.0", "greater"),
        ("1.9.0", "lesser"),
        ("2.0.0-alpha", "lesser"),
        ("2.0.0.0", "none"),
    ] {
        assert_eq!(
            value(
                &set,
                "equal-greater-lesser-version-flag",
                v(version),
                "fallback"
            ),
            want,
            "{version}"
        );
    }
    for (version, want) in [("3.0.1", "minor"), ("3.1.0", "major"), ("4.0.0", "none")] {
        assert_eq!(
            value(&set, "major-minor-version-flag", v(version), "fallback"),
            want
        );
    }
    for (version, want) in [
        ("1.0.0", "match"),
        ("v1.0.0", "match"),
        ("2.0.0", "no-match"),
    ] {
        assert_eq!(
            value(&set, "semver-v-prefix-flag", v(version), "fallback"),
            want
        );
    }
    for (version, want) in [
        ("1.5.0", "match"),
        ("1.0.0", "match"),
        ("2.0.0", "no-match"),
    ] {
        assert_eq!(
            value(&set, "semver-partial-version-flag", v(version), "fallback"),
            want
        );
    }
    for (version, want) in [
        ("1.0.0", "match"),
        ("1.0.0+other", "match"),
        ("2.0.0", "no-match"),
    ] {
        assert_eq!(
            value(&set, "semver-build-metadata-flag", v(version), "fallback"),
            want
        );
    }
    // @operator-errors: null, so the default variant.
    for (key, version) in [
        ("semver-invalid-version-flag", "not-a-version"),
        ("semver-invalid-operator-flag", "1.0.0"),
        ("semver-wrong-args-flag", "1.0.0"),
    ] {
        let got = string(&set, key, &v(version), "wrong");
        assert_eq!(got, ("fallback".into(), "DEFAULT".into(), None), "{key}");
    }
}

/// string.feature.
#[test]
fn starts_with_and_ends_with() {
    let set = testkit();
    for (id, want) in [
        ("abcdef", "prefix"),
        ("uvwxyz", "postfix"),
        ("abcxyz", "prefix"),
        ("lmnopq", "none"),
    ] {
        assert_eq!(
            value(&set, "starts-ends-flag", json!({ "id": id }), "fallback"),
            want
        );
    }
    for key in [
        "starts-with-non-string-flag",
        "ends-with-non-string-flag",
        "starts-with-wrong-args-flag",
        "ends-with-wrong-args-flag",
    ] {
        let got = string(&set, key, &json!({ "num": 123 }), "wrong");
        assert_eq!(got, ("fallback".into(), "DEFAULT".into(), None), "{key}");
    }
}

/// targeting.feature.
#[test]
fn targeting_key() {
    let set = testkit();
    for (key, want, reason) in [
        (
            "5c3d8535-f81a-4478-a6d3-afaa4d51199e",
            "hit",
            "TARGETING_MATCH",
        ),
        ("f20bd32d-703b-48b6-bc8e-79d53c85134a", "miss", "DEFAULT"),
    ] {
        // The key set on the context, not as an attribute.
        let ctx = Context::new(key);
        let d = set.string_value("targeting-key-flag", &ctx, "fallback");
        assert_eq!((d.value, d.reason.as_str()), (want, reason));
    }
}

/// disabled.feature (flags in extra-flags.json).
#[test]
fn disabled_flags() {
    let set = FlagdSet::parse(EXTRA).unwrap();
    let ctx = Context::anonymous();
    let b = set.bool_value("disabled-boolean-flag", &ctx, false);
    assert_eq!(
        (b.value, b.variant, b.reason.as_str(), b.error),
        (false, None, "DISABLED", None)
    );
    let s = set.string_value("disabled-string-flag", &ctx, "bye");
    assert_eq!((s.value, s.reason.as_str()), ("bye", "DISABLED"));
    let i = set.int_value("disabled-integer-flag", &ctx, 1);
    assert_eq!((i.value, i.reason.as_str()), (1, "DISABLED"));
    let f = set.float_value("disabled-float-flag", &ctx, 0.1);
    assert_eq!((f.value, f.reason.as_str()), (0.1, "DISABLED"));
    let dflt = json!({});
    let o = set.object_value("disabled-object-flag", &ctx, &dflt);
    assert_eq!((o.value, o.reason.as_str()), (&dflt, "DISABLED"));
}

/// precision.feature (flags in extra-flags.json).
#[test]
fn numeric_precision() {
    let set = FlagdSet::parse(EXTRA).unwrap();
    let ctx = Context::anonymous();
    let d = set.int_value("large-integer-flag", &ctx, 1);
    assert_eq!((d.value, d.reason.as_str()), (2_147_483_647, "STATIC"));
    assert_eq!(
        set.int_value("huge-integer-flag", &ctx, 1).value,
        9_007_199_254_740_991
    );
    let d = set.float_value("integral-float-flag", &ctx, 0.1);
    assert_eq!((d.value, d.reason.as_str()), (10.0, "STATIC"));
    assert!(
        set.json_value("integral-float-flag", &ctx)
            .value
            .unwrap()
            .is_f64()
    );
}

/// metadata.feature: flag metadata, and flag-set metadata under it.
#[test]
fn metadata() {
    let set = testkit();
    let d = set.bool_value("metadata-flag", &Context::anonymous(), false);
    assert_eq!(
        Value::Object(d.metadata.clone()),
        json!({ "string": "1.0.2", "integer": 2, "boolean": true, "float": 0.1 })
    );
    let extra = FlagdSet::parse(EXTRA).unwrap();
    let d = extra.bool_value("metadata-flag", &Context::anonymous(), false);
    assert_eq!(
        Value::Object(d.metadata.clone()),
        json!({ "flagSetId": "extra", "version": "7", "team": "flag-level", "integer": 2 })
    );
    // Errors carry metadata too: the flag's on a type mismatch, the set's for an unknown flag.
    let d = extra.string_value("metadata-flag", &Context::anonymous(), "x");
    assert_eq!(d.metadata["team"], "flag-level");
    let d = extra.string_value("nope", &Context::anonymous(), "x");
    assert_eq!(d.metadata["team"], "set-level");
}
