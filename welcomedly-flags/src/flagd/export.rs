//! Our native model written as a flagd flag file, where it maps: see [`export`].

use serde_json::{Map, Value, json};

use crate::bucketing::BucketingVersion;
use crate::model::{Clause, Flag, FlagSet, Op, Rollout, Segment, Serve, TARGETING_KEY};

/// A native flag set in flagd's format, and what did not map.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Export {
    /// The flagd flag file (`flags`, and `$evaluators` for segments).
    pub file: Value,
    /// Flags left out or exported with a difference, each with why.
    pub notes: Vec<ExportNote>,
}

/// How a flag fared in the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoteKind {
    /// The flag is not in the file.
    Skipped,
    /// The flag is in the file and behaves differently in the way the message says.
    Approximate,
}

/// One flag that did not map exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportNote {
    /// The flag key.
    pub flag: String,
    /// Skipped or approximate.
    pub kind: NoteKind,
    /// What does not map.
    pub message: String,
}

/// Writes our native model as a flagd flag file, where it maps.
///
/// | native | flagd |
/// |---|---|
/// | `enabled` | `state` |
/// | `variants` | `variants` |
/// | fixed `fallthrough` | `defaultVariant` (the targeting's `null` result) |
/// | `targets` | `{"in": [{"var": "targetingKey"}, [...]]}` rules first |
/// | `rules` in order | an `if` chain |
/// | `equals`, `in` | `in` (strict equality, as ours) |
/// | `startsWith`, `endsWith`, `contains` | `starts_with`, `ends_with`, `in`, guarded to strings |
/// | `lessThan` … `greaterThanOrEqual` | `<` … `>=`, guarded to numbers |
/// | `semverEqual`, `…LessThan`, `…GreaterThan` | `sem_ver`, guarded to strings |
/// | `inSegment` | `$evaluators` named `segment.<key>`, through `$ref` |
/// | `negate` | `!`, only for a present attribute of the right type (as ours) |
/// | rollout | `fractional` over `cat(salt, bucketBy)`, guarded to a present attribute |
/// | `description` | `metadata.description` |
///
/// What does not map, and is reported per flag in [`Export::notes`]:
///
/// - **skipped**: prerequisites (flagd has no flag dependencies), `matches` (no regular
///   expressions in JsonLogic), `before` / `after` (no date type; `$flagd.timestamp` is only
///   "now"), a segment that uses one of those.
/// - **approximate**: rollouts with bucketing `v1` (flagd hashes with MurmurHash3: the same
///   shares, different users in them; bucketing `flagd` keeps every assignment); reasons
///   (flagd says `TARGETING_MATCH` where ours says `SPLIT`, `STATIC` only without targeting);
///   `sem_ver` reads a `v` prefix and partial versions and a context value that is no version
///   makes flagd fall back to the default variant, where ours skips to the next rule.
///
/// ```
/// use welcomedly_flags::FlagSet;
/// use welcomedly_flags::flagd::{FlagdSet, export};
///
/// let native = FlagSet::from_json(r#"{ "flags": { "beta": {
///   "variants": { "on": true, "off": false },
///   "rules": [{ "clauses": [{ "attribute": "plan", "op": "in", "values": ["pro"] }], "serve": { "variant": "on" } }],
///   "fallthrough": { "variant": "off" }
/// } } }"#)?;
/// let out = export(&native);
/// assert!(out.notes.is_empty());
/// let flagd = FlagdSet::parse(&out.file.to_string()).unwrap();
/// let ctx = welcomedly_flags::Context::new("u1").with("plan", "pro");
/// assert!(flagd.bool_value("beta", &ctx, false).value);
/// # Ok::<(), welcomedly_flags::ValidationErrors>(())
/// ```
pub fn export(set: &FlagSet) -> Export {
    let mut flags = Map::new();
    let mut notes = Vec::new();
    let mut evaluators = Map::new();
    for (key, flag) in &set.flags {
        let mut used = Vec::new();
        match export_flag(key, flag, set, &mut used) {
            Ok((def, approx)) => {
                // Every segment the flag reaches is in `used`, so writing one recurses no
                // further; each compiled once already for this flag, so none fails now.
                let mut known = used.clone();
                for (name, segment) in &used {
                    if !evaluators.contains_key(name)
                        && let Ok(logic) = segment_logic(segment, set, &mut known)
                    {
                        evaluators.insert(name.clone(), logic);
                    }
                }
                flags.insert(key.clone(), def);
                notes.extend(approx.into_iter().map(|message| ExportNote {
                    flag: key.clone(),
                    kind: NoteKind::Approximate,
                    message,
                }));
            }
            Err(message) => notes.push(ExportNote {
                flag: key.clone(),
                kind: NoteKind::Skipped,
                message,
            }),
        }
    }
    let mut file = Map::new();
    file.insert("flags".into(), Value::Object(flags));
    if !evaluators.is_empty() {
        file.insert("$evaluators".into(), Value::Object(evaluators));
    }
    Export {
        file: Value::Object(file),
        notes,
    }
}

type Used<'s> = Vec<(String, &'s Segment)>;

fn export_flag<'s>(
    key: &str,
    flag: &'s Flag,
    set: &'s FlagSet,
    used: &mut Used<'s>,
) -> Result<(Value, Vec<String>), String> {
    if !flag.prerequisites.is_empty() {
        return Err("prerequisites: flagd has no flag dependencies".into());
    }
    let mut approx = Vec::new();
    let salt = flag.salt.as_deref().unwrap_or(key);
    let mut chain: Vec<Value> = Vec::new();
    for target in &flag.targets {
        chain.push(json!({ "in": [{ "var": TARGETING_KEY }, target.values] }));
        chain.push(json!(target.variant));
    }
    for rule in &flag.rules {
        let mut tests = rule
            .clauses
            .iter()
            .map(|c| clause(c, set, used))
            .collect::<Result<Vec<_>, _>>()?;
        let served = match (&rule.serve.variant, &rule.serve.rollout) {
            (Some(v), _) => json!(v),
            (None, Some(r)) => {
                tests.push(present(&bucket_by(r)));
                rollout(r, salt)
            }
            (None, None) => Value::Null,
        };
        chain.push(all(tests));
        chain.push(served);
    }
    let (default_variant, otherwise) = match flag.fallthrough.as_ref() {
        Some(Serve {
            variant: Some(v), ..
        }) => (json!(v), Value::Null),
        Some(Serve {
            rollout: Some(r), ..
        }) => (
            Value::Null,
            json!({ "if": [present(&bucket_by(r)), rollout(r, salt), null] }),
        ),
        _ => (Value::Null, Value::Null),
    };
    let has_rollout = flag.rules.iter().any(|r| r.serve.rollout.is_some())
        || flag
            .fallthrough
            .as_ref()
            .is_some_and(|f| f.rollout.is_some());
    if has_rollout && flag.bucketing == BucketingVersion::V1 {
        approx.push(
            "rollout with bucketing v1: flagd's MurmurHash3 gives the same shares to other users (set bucketing \"flagd\" to keep assignments)".into(),
        );
    }
    if flag.rules.iter().flat_map(|r| &r.clauses).any(|c| {
        matches!(
            c.op,
            Op::SemverEqual | Op::SemverLessThan | Op::SemverGreaterThan
        )
    }) {
        approx.push(
            "sem_ver: a context value that is not a version gives the default variant in flagd, not the next rule".into(),
        );
    }
    let mut def = Map::new();
    def.insert(
        "state".into(),
        json!(if flag.enabled { "ENABLED" } else { "DISABLED" }),
    );
    def.insert("variants".into(), json!(flag.variants));
    def.insert("defaultVariant".into(), default_variant);
    if !chain.is_empty() || !otherwise.is_null() {
        chain.push(otherwise);
        def.insert("targeting".into(), json!({ "if": chain }));
    }
    if let Some(d) = &flag.description {
        def.insert("metadata".into(), json!({ "description": d }));
    }
    Ok((Value::Object(def), approx))
}

fn bucket_by(r: &Rollout) -> Value {
    json!({ "var": r.bucket_by.as_deref().unwrap_or(TARGETING_KEY) })
}

/// `fractional` over `salt ‖ bucketBy`, the weights as they are (out of 100 000, so flagd's
/// `(hash × total) >> 32` is our flagd bucketing exactly).
fn rollout(r: &Rollout, salt: &str) -> Value {
    let mut args = vec![json!({ "cat": [salt, bucket_by(r)] })];
    args.extend(r.variants.iter().map(|w| json!([w.variant, w.weight])));
    json!({ "fractional": args })
}

fn present(x: &Value) -> Value {
    json!({ "!==": [x, null] })
}

fn is_string(x: &Value) -> Value {
    // `cat` of a string is itself; of anything else, a string that is not strictly equal.
    json!({ "===": [{ "cat": [x] }, x] })
}

fn is_number(x: &Value) -> Value {
    // `+` of a number is itself; of a string or boolean, a number or NaN that is not.
    json!({ "===": [{ "+": [x] }, x] })
}

fn any(mut tests: Vec<Value>) -> Value {
    match tests.len() {
        1 => tests.pop().unwrap_or(Value::Null),
        _ => json!({ "or": tests }),
    }
}

fn all(mut tests: Vec<Value>) -> Value {
    match tests.len() {
        0 => json!(true),
        1 => tests.pop().unwrap_or(Value::Null),
        _ => json!({ "and": tests }),
    }
}

fn clause<'s>(c: &Clause, set: &'s FlagSet, used: &mut Used<'s>) -> Result<Value, String> {
    let x = json!({ "var": c.attribute.as_deref().unwrap_or(TARGETING_KEY) });
    let each = |f: &dyn Fn(&Value) -> Value| any(c.values.iter().map(f).collect());
    let (guard, test) = match c.op {
        Op::Equals | Op::In => (Some(present(&x)), json!({ "in": [x, c.values] })),
        Op::StartsWith => (
            Some(is_string(&x)),
            each(&|v| json!({ "starts_with": [x, v] })),
        ),
        Op::EndsWith => (
            Some(is_string(&x)),
            each(&|v| json!({ "ends_with": [x, v] })),
        ),
        Op::Contains => (Some(is_string(&x)), each(&|v| json!({ "in": [v, x] }))),
        Op::LessThan => (Some(is_number(&x)), each(&|v| json!({ "<": [x, v] }))),
        Op::LessThanOrEqual => (Some(is_number(&x)), each(&|v| json!({ "<=": [x, v] }))),
        Op::GreaterThan => (Some(is_number(&x)), each(&|v| json!({ ">": [x, v] }))),
        Op::GreaterThanOrEqual => (Some(is_number(&x)), each(&|v| json!({ ">=": [x, v] }))),
        Op::SemverEqual => (
            Some(is_string(&x)),
            each(&|v| json!({ "sem_ver": [x, "=", v] })),
        ),
        Op::SemverLessThan => (
            Some(is_string(&x)),
            each(&|v| json!({ "sem_ver": [x, "<", v] })),
        ),
        Op::SemverGreaterThan => (
            Some(is_string(&x)),
            each(&|v| json!({ "sem_ver": [x, ">", v] })),
        ),
        Op::Matches => {
            return Err("matches: JsonLogic has no regular expressions".into());
        }
        Op::Before | Op::After => {
            return Err("before/after: flagd has no date comparison of attributes".into());
        }
        Op::InSegment => {
            let mut refs = Vec::new();
            for v in &c.values {
                let key = v.as_str().unwrap_or_default();
                let segment = set
                    .segments
                    .get(key)
                    .ok_or_else(|| format!("unknown segment {key:?}"))?;
                let name = format!("segment.{key}");
                if !used.iter().any(|(n, _)| *n == name) {
                    // Listed before it is written, so a cycle (in a set that was never
                    // validated) ends here; written now so one that cannot map skips the flag.
                    used.push((name.clone(), segment));
                    segment_logic(segment, set, used)?;
                }
                refs.push(json!({ "$ref": name }));
            }
            (None, any(refs))
        }
    };
    Ok(match (guard, c.negate) {
        (None, false) => test,
        (None, true) => json!({ "!": [test] }),
        // `in` needs no guard: a missing or mistyped attribute is in no list.
        (Some(_), false) if matches!(c.op, Op::Equals | Op::In) => test,
        (Some(g), false) => json!({ "and": [g, test] }),
        (Some(g), true) => json!({ "and": [g, { "!": [test] }] }),
    })
}

/// A segment as JsonLogic: its included keys, or not excluded and one of its rules.
fn segment_logic<'s>(
    segment: &'s Segment,
    set: &'s FlagSet,
    used: &mut Used<'s>,
) -> Result<Value, String> {
    let key = json!({ "var": TARGETING_KEY });
    let rules = segment
        .rules
        .iter()
        .map(|r| {
            r.clauses
                .iter()
                .map(|c| clause(c, set, used))
                .collect::<Result<Vec<_>, _>>()
                .map(all)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut matched = if rules.is_empty() {
        json!(false)
    } else {
        any(rules)
    };
    if !segment.excluded.is_empty() {
        matched = json!({ "and": [{ "!": [{ "in": [key, segment.excluded] }] }, matched] });
    }
    if !segment.included.is_empty() {
        matched = json!({ "or": [{ "in": [key, segment.included] }, matched] });
    }
    Ok(matched)
}
