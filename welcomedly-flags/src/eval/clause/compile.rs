//! Compiling a clause: operand types checked, operands parsed, every problem reported with its
//! path.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::{CompiledClause, KeySet, Num, SegmentIndex, Test};
use crate::eval::date::parse_rfc3339_millis;
use crate::eval::semver::OwnedSemver;
use crate::model::{Clause, Op};
use crate::problem::Problem;
use crate::validate::{MAX_REGEX_COMPILED, MAX_REGEX_LEN, MAX_REGEX_PATTERNS};

/// The regular expressions of one flag set, compiled once each: a pattern used by several
/// clauses shares one `Regex` (its clones share the compiled program), and the number of
/// distinct patterns is capped.
#[derive(Debug, Default)]
pub(crate) struct Regexes<'p> {
    /// Pattern → compiled, or `None` when it did not compile (reported where first seen).
    compiled: HashMap<String, Option<Regex>>,
    /// Whether the cap was reported already (once per set).
    over_cap: bool,
    /// The patterns of the snapshot this one replaces, reused rather than compiled again.
    previous: Option<&'p HashMap<String, Regex>>,
}

impl<'p> Regexes<'p> {
    /// Reusing what `previous` compiled.
    pub(crate) fn after(previous: &'p HashMap<String, Regex>) -> Regexes<'p> {
        Regexes {
            previous: Some(previous),
            ..Regexes::default()
        }
    }

    /// The patterns that compiled, for the snapshot (and the next compile to reuse).
    pub(crate) fn into_compiled(self) -> HashMap<String, Regex> {
        self.compiled
            .into_iter()
            .filter_map(|(p, re)| Some((p, re?)))
            .collect()
    }

    /// The compiled `pattern` (at `path`), or `None` after pushing the problem.
    fn get(&mut self, pattern: &str, path: &str, problems: &mut Vec<Problem>) -> Option<Regex> {
        if pattern.len() > MAX_REGEX_LEN {
            problems.push(Problem::new(
                path,
                format!(
                    "regular expression of {} bytes, over the limit of {MAX_REGEX_LEN}; shorten it, split it over several clauses, or use in/startsWith/endsWith/contains",
                    pattern.len()
                ),
            ));
            return None;
        }
        if let Some(known) = self.compiled.get(pattern) {
            return known.clone();
        }
        if self.compiled.len() >= MAX_REGEX_PATTERNS {
            if !self.over_cap {
                self.over_cap = true;
                problems.push(Problem::new(
                    path,
                    format!(
                        "more than {MAX_REGEX_PATTERNS} distinct regular expressions in the flag set (this is one too many, and later ones are not checked); reuse patterns, or use in/startsWith/endsWith/contains where they do"
                    ),
                ));
            }
            return None;
        }
        if let Some(re) = self.previous.and_then(|p| p.get(pattern)) {
            self.compiled.insert(pattern.to_owned(), Some(re.clone()));
            return Some(re.clone());
        }
        let built = RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_COMPILED)
            .dfa_size_limit(MAX_REGEX_COMPILED)
            .build();
        let compiled = match built {
            Ok(re) => Some(re),
            Err(regex::Error::CompiledTooBig(limit)) => {
                problems.push(Problem::new(
                    path,
                    format!(
                        "regular expression compiles to more than {limit} bytes (the limit); use ASCII classes ([a-z0-9_] or (?-u:\\w)) instead of Unicode ones, smaller counted repetitions ({{n}}), or fewer alternatives"
                    ),
                ));
                None
            }
            Err(err) => {
                problems.push(Problem::new(
                    path,
                    format!("regular expression does not compile ({err}); fix its syntax"),
                ));
                None
            }
        };
        match self.compiled.entry(pattern.to_owned()) {
            Entry::Vacant(slot) => slot.insert(compiled).clone(),
            Entry::Occupied(slot) => slot.get().clone(),
        }
    }
}

struct Operands<'c, 'p> {
    clause: &'c Clause,
    path: &'p str,
    problems: &'p mut Vec<Problem>,
}

impl Operands<'_, '_> {
    fn each<T>(&mut self, what: &str, parse: impl Fn(&Value) -> Option<T>) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(self.clause.values.len());
        let mut ok = true;
        for (i, v) in self.clause.values.iter().enumerate() {
            match parse(v) {
                Some(t) => out.push(t),
                None => {
                    ok = false;
                    self.problems.push(Problem::new(
                        format!("{}.values[{i}]", self.path),
                        format!(
                            "{v} is not {what}, as operator {:?} needs; fix the value or the operator",
                            self.clause.op.as_str()
                        ),
                    ));
                }
            }
        }
        ok.then_some(out)
    }

    fn strings(&mut self) -> Option<Box<[Box<str>]>> {
        self.each("a string", |v| v.as_str().map(Box::from))
            .map(Vec::into_boxed_slice)
    }
}

impl CompiledClause {
    /// Compiles `clause` (at `path`), pushing every problem found; `None` when there was one.
    pub(crate) fn compile(
        clause: &Clause,
        segments: &SegmentIndex<'_>,
        regexes: &mut Regexes<'_>,
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<CompiledClause> {
        let before = problems.len();
        let attribute: Box<str> = clause.attribute.as_deref().unwrap_or("").into();
        match (clause.op, attribute.is_empty()) {
            (Op::InSegment, false) => problems.push(Problem::new(
                format!("{path}.attribute"),
                "inSegment tests the whole context; remove \"attribute\"",
            )),
            (Op::InSegment, true) => {}
            (_, true) => problems.push(Problem::new(
                format!("{path}.attribute"),
                "missing attribute; name the context attribute to test (targetingKey for the key)",
            )),
            (_, false) => {}
        }
        if clause.values.is_empty() {
            problems.push(Problem::new(
                format!("{path}.values"),
                "no values; give at least one operand",
            ));
        }
        if clause.op == Op::Equals && clause.values.len() > 1 {
            problems.push(Problem::new(
                format!("{path}.values"),
                "equals takes exactly one value; use \"in\" for several",
            ));
        }
        let mut ops = Operands {
            clause,
            path,
            problems,
        };
        let test = match clause.op {
            Op::Equals | Op::In => {
                let mut strs = Vec::new();
                let mut nums = Vec::new();
                let mut bools = [false; 2];
                let parsed = ops.each("a string, number or boolean", |v| match v {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(v.clone()),
                    _ => None,
                });
                for v in parsed.unwrap_or_default() {
                    match v {
                        Value::String(s) => strs.push(s),
                        Value::Bool(b) => {
                            if let Some(slot) = bools.get_mut(usize::from(b)) {
                                *slot = true;
                            }
                        }
                        other => nums.extend(Num::of(&other)),
                    }
                }
                Some(Test::OneOf {
                    strs: KeySet::new(strs.iter().map(String::as_str)),
                    nums: nums.into(),
                    bools,
                })
            }
            Op::StartsWith => ops.strings().map(Test::StartsWith),
            Op::EndsWith => ops.strings().map(Test::EndsWith),
            Op::Contains => ops.strings().map(Test::Contains),
            Op::Matches => {
                let mut compiled = Vec::new();
                for (i, v) in clause.values.iter().enumerate() {
                    let at = format!("{path}.values[{i}]");
                    match v.as_str() {
                        Some(pattern) => {
                            compiled.extend(regexes.get(pattern, &at, ops.problems));
                        }
                        None => ops.problems.push(Problem::new(
                            at,
                            format!("{v} is not a string; give the regular expression as a string"),
                        )),
                    }
                }
                Some(Test::Matches(compiled.into()))
            }
            Op::LessThan | Op::LessThanOrEqual => {
                ops.each("a number", Value::as_f64).map(|v| Test::Below {
                    bound: v.into_iter().fold(f64::NEG_INFINITY, f64::max),
                    inclusive: clause.op == Op::LessThanOrEqual,
                })
            }
            Op::GreaterThan | Op::GreaterThanOrEqual => {
                ops.each("a number", Value::as_f64).map(|v| Test::Above {
                    bound: v.into_iter().fold(f64::INFINITY, f64::min),
                    inclusive: clause.op == Op::GreaterThanOrEqual,
                })
            }
            Op::SemverEqual | Op::SemverLessThan | Op::SemverGreaterThan => {
                let versions = ops.each("a semantic version string (e.g. \"1.4.0-beta.2\")", |v| {
                    v.as_str().and_then(OwnedSemver::parse)
                });
                versions.and_then(|vs| {
                    let cmp =
                        |a: &&OwnedSemver, b: &&OwnedSemver| a.borrow().precedence(&b.borrow());
                    match clause.op {
                        Op::SemverLessThan => vs.iter().max_by(cmp).cloned().map(Test::SemverBelow),
                        Op::SemverGreaterThan => {
                            vs.iter().min_by(cmp).cloned().map(Test::SemverAbove)
                        }
                        _ => Some(Test::SemverEqual(vs.into())),
                    }
                })
            }
            Op::Before | Op::After => {
                let dates = ops.each(
                    "a date (RFC 3339 string or unix milliseconds)",
                    |v| match v {
                        Value::String(s) => parse_rfc3339_millis(s),
                        other => other.as_i64(),
                    },
                );
                dates.and_then(|ds| match clause.op {
                    Op::Before => ds.into_iter().max().map(Test::Before),
                    _ => ds.into_iter().min().map(Test::After),
                })
            }
            Op::InSegment => {
                let mut ids = Vec::new();
                for (i, v) in clause.values.iter().enumerate() {
                    match v.as_str().and_then(|name| segments.get(name)) {
                        Some(id) => ids.push(id),
                        None => ops.problems.push(Problem::new(
                            format!("{path}.values[{i}]"),
                            format!(
                                "unknown segment {v}; define it under \"segments\" or fix the name"
                            ),
                        )),
                    }
                }
                Some(Test::InSegment(ids.into()))
            }
        };
        let test = test.filter(|_| problems.len() == before)?;
        Some(CompiledClause {
            attribute,
            negate: clause.negate,
            test,
        })
    }
}
