//! The export of our native model to flagd's format, checked by evaluating both sides: every
//! exported flag serves the same value and variant as the native flag over a grid of contexts
//! (missing attributes, wrong types, targets, segments, rollouts with flagd bucketing).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{Value, json};
use welcomedly_flags::flagd::{FlagdSet, NoteKind, export};
use welcomedly_flags::{Context, FlagSet, Snapshot};

const NATIVE: &str = r#"{
  "segments": {
    "staff": { "included": ["s1"], "excluded": ["x1"],
               "rules": [{ "clauses": [{ "attribute": "email", "op": "endsWith", "values": ["@corp.example"] }] }] },
    "beta": { "rules": [{ "clauses": [{ "op": "inSegment", "values": ["staff"] }] },
                        { "clauses": [{ "attribute": "plan", "op": "equals", "values": ["beta"] }] }] },
    "regex": { "rules": [{ "clauses": [{ "attribute": "email", "op": "matches", "values": ["^a"] }] }] }
  },
  "flags": {
    "static": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "on" } },
    "no-fallthrough": { "variants": { "on": true, "off": false },
                        "rules": [{ "clauses": [{ "attribute": "plan", "op": "in", "values": ["pro", "team"] }], "serve": { "variant": "on" } }] },
    "disabled": { "enabled": false, "variants": { "on": true }, "fallthrough": { "variant": "on" } },
    "rules": {
      "description": "many operators",
      "variants": { "a": "A", "b": "B", "c": "C", "d": "D", "e": "E", "f": "F", "z": "Z" },
      "targets": [{ "variant": "f", "values": ["t1", "t2"] }],
      "rules": [
        { "clauses": [{ "attribute": "email", "op": "startsWith", "values": ["admin@", "root@"] }], "serve": { "variant": "a" } },
        { "clauses": [{ "attribute": "country", "op": "in", "values": ["DE", "FR"] },
                      { "attribute": "age", "op": "greaterThanOrEqual", "values": [18] }], "serve": { "variant": "b" } },
        { "clauses": [{ "attribute": "email", "op": "contains", "values": ["+test"] }], "serve": { "variant": "c" } },
        { "clauses": [{ "attribute": "age", "op": "lessThan", "values": [13] }], "serve": { "variant": "d" } },
        { "clauses": [{ "attribute": "country", "op": "equals", "values": ["US"], "negate": true },
                      { "attribute": "plan", "op": "equals", "values": ["pro"] }], "serve": { "variant": "e" } },
        { "clauses": [{ "attribute": "n", "op": "equals", "values": [2] }], "serve": { "variant": "c" } },
        { "clauses": [{ "attribute": "flag", "op": "equals", "values": [true] }], "serve": { "variant": "d" } }
      ],
      "fallthrough": { "variant": "z" }
    },
    "segments": { "variants": { "on": true, "off": false },
                  "rules": [{ "clauses": [{ "op": "inSegment", "values": ["beta"] }], "serve": { "variant": "on" } }],
                  "fallthrough": { "variant": "off" } },
    "not-in-segment": { "variants": { "on": true, "off": false },
                  "rules": [{ "clauses": [{ "op": "inSegment", "values": ["staff"], "negate": true }], "serve": { "variant": "on" } }],
                  "fallthrough": { "variant": "off" } },
    "rollout": { "bucketing": "flagd", "variants": { "a": 1, "b": 2, "c": 3 },
                 "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }],
                             "serve": { "rollout": { "bucketBy": "org", "variants": [{ "variant": "a", "weight": 20000 }, { "variant": "b", "weight": 80000 }] } } }],
                 "fallthrough": { "rollout": { "variants": [{ "variant": "a", "weight": 33333 }, { "variant": "b", "weight": 33333 }, { "variant": "c", "weight": 33334 }] } } },
    "salted": { "bucketing": "flagd", "salt": "shared", "variants": { "on": true, "off": false },
                "fallthrough": { "rollout": { "variants": [{ "variant": "on", "weight": 50000 }, { "variant": "off", "weight": 50000 }] } } },
    "semver": { "variants": { "new": "new", "old": "old" },
                "rules": [{ "clauses": [{ "attribute": "app", "op": "semverGreaterThan", "values": ["1.2.0"] }], "serve": { "variant": "new" } }],
                "fallthrough": { "variant": "old" } },
    "v1-rollout": { "variants": { "on": true, "off": false },
                "fallthrough": { "rollout": { "variants": [{ "variant": "on", "weight": 50000 }, { "variant": "off", "weight": 50000 }] } } },
    "prereq": { "variants": { "on": true }, "prerequisites": [{ "flag": "static", "variants": ["on"] }], "fallthrough": { "variant": "on" } },
    "regex": { "variants": { "on": true, "off": false },
               "rules": [{ "clauses": [{ "op": "inSegment", "values": ["regex"] }], "serve": { "variant": "on" } }],
               "fallthrough": { "variant": "off" } },
    "date": { "variants": { "on": true, "off": false },
              "rules": [{ "clauses": [{ "attribute": "signup", "op": "before", "values": ["2030-01-01T00:00:00Z"] }], "serve": { "variant": "on" } }] }
  }
}"#;

fn contexts() -> Vec<Value> {
    let keys = [
        json!("t1"),
        json!("s1"),
        json!("x1"),
        json!("u1"),
        json!("u2"),
        Value::Null,
    ];
    let emails = [
        json!("admin@x.io"),
        json!("bob@corp.example"),
        json!("a+test@x.io"),
        json!(5),
        Value::Null,
    ];
    let countries = [json!("DE"), json!("US"), json!("IT"), Value::Null];
    let ages = [json!(10), json!(30), json!("30"), Value::Null];
    let plans = [json!("pro"), json!("beta"), Value::Null];
    let apps = [
        json!("1.2.0"),
        json!("1.10.0"),
        json!("1.2.1-rc.1"),
        json!(7),
        Value::Null,
    ];
    let mut out = Vec::new();
    let mut i = 0usize;
    for k in &keys {
        for e in &emails {
            for c in &countries {
                for a in &ages {
                    for p in &plans {
                        i += 1;
                        let mut m = serde_json::Map::new();
                        let mut put = |name: &str, v: &Value| {
                            if !v.is_null() {
                                m.insert(name.into(), v.clone());
                            }
                        };
                        put("targetingKey", k);
                        put("email", e);
                        put("country", c);
                        put("age", a);
                        put("plan", p);
                        put("app", &apps[i % apps.len()]);
                        put("org", &json!(format!("org-{}", i % 37)));
                        put("n", &json!(i % 3));
                        put("flag", &json!(i.is_multiple_of(2)));
                        out.push(Value::Object(m));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn exported_flags_serve_what_the_native_ones_serve() {
    let native_set = FlagSet::from_json(NATIVE).unwrap();
    let native = Snapshot::compile(&native_set, 1).unwrap();
    let out = export(&native_set);
    let flagd = FlagdSet::parse(&out.file.to_string()).unwrap();
    assert!(flagd.problems().is_empty(), "{:?}", flagd.problems());

    let skipped: Vec<&str> = out
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::Skipped)
        .map(|n| n.flag.as_str())
        .collect();
    assert_eq!(skipped, ["date", "prereq", "regex"]);
    let approximate: Vec<&str> = out
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::Approximate)
        .map(|n| n.flag.as_str())
        .collect();
    assert_eq!(approximate, ["semver", "v1-rollout"]);
    assert_eq!(
        out.file["flags"]["rules"]["metadata"]["description"],
        "many operators"
    );

    let exact: Vec<&str> = flagd.keys().filter(|k| *k != "v1-rollout").collect();
    assert_eq!(exact.len(), 9);
    let mut compared = 0;
    let mut served = std::collections::BTreeMap::<(&str, String), usize>::new();
    for data in contexts() {
        let ctx = Context::from_json(&data);
        for key in &exact {
            let n = native.json_value(key, &ctx);
            let f = flagd.json_value(key, &ctx);
            assert_eq!(
                (n.value, n.variant, n.error),
                (f.value, f.variant, f.error),
                "flag {key}, context {data}"
            );
            *served.entry((key, format!("{:?}", n.variant))).or_default() += 1;
            compared += 1;
        }
    }
    assert!(compared > 10_000);
    // The grid reaches every variant of the rule-heavy flags (so the comparison is not of
    // defaults only).
    for v in ["a", "b", "c", "d", "e", "f", "z"] {
        assert!(
            served.contains_key(&("rules", format!("{:?}", Some(v)))),
            "rules never served {v}: {served:?}"
        );
    }
    for v in ["a", "b", "c"] {
        assert!(
            served.contains_key(&("rollout", format!("{:?}", Some(v)))),
            "{served:?}"
        );
    }
    assert!(served.contains_key(&("segments", "Some(\"on\")".into())));
    assert!(served.contains_key(&("not-in-segment", "Some(\"on\")".into())));
    assert!(served.contains_key(&("no-fallthrough", "None".into())));
}
