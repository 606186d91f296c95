//! Checks of the set's structure: variants and their types, references between flags, segments
//! and variants, rollout weights, duplicate keys, cycles.

use std::collections::{BTreeMap, BTreeSet};

use super::graph::{self, Edge};
use super::{MAX_DEPTH, Problem};
use crate::bucketing::TOTAL;
use crate::model::FlagType as Kind;
use crate::model::{Flag, FlagSet, Op, Serve};

pub(super) fn check(set: &FlagSet, problems: &mut Vec<Problem>) {
    for (key, flag) in &set.flags {
        check_flag(set, key, flag, problems);
    }
    for (key, segment) in &set.segments {
        let path = format!("segments.{key}");
        if key.is_empty() {
            problems.push(Problem::new(
                path.clone(),
                "empty segment key; name the segment",
            ));
        }
        let included: BTreeSet<&str> = segment.included.iter().map(String::as_str).collect();
        for (i, k) in segment.excluded.iter().enumerate() {
            if included.contains(k.as_str()) {
                problems.push(Problem::new(
                    format!("{path}.excluded[{i}]"),
                    format!("key {k:?} is both included and excluded; keep it in one list"),
                ));
            }
        }
    }
    check_cycles(set, problems);
}

fn check_flag(set: &FlagSet, key: &str, flag: &Flag, problems: &mut Vec<Problem>) {
    let path = format!("flags.{key}");
    if key.is_empty() {
        problems.push(Problem::new(path.clone(), "empty flag key; name the flag"));
    }
    check_variant_types(&path, flag, problems);
    let variant = |name: &str, at: String, problems: &mut Vec<Problem>| {
        if !flag.variants.contains_key(name) {
            problems.push(Problem::new(
                at,
                format!(
                    "unknown variant {name:?}; use one of {:?}",
                    flag.variants.keys().collect::<Vec<_>>()
                ),
            ));
        }
    };
    for (i, pre) in flag.prerequisites.iter().enumerate() {
        let at = format!("{path}.prerequisites[{i}]");
        match set.flags.get(&pre.flag) {
            None => problems.push(Problem::new(
                format!("{at}.flag"),
                format!(
                    "unknown flag {:?}; define it or remove the prerequisite",
                    pre.flag
                ),
            )),
            Some(required) => {
                if pre.variants.is_empty() {
                    problems.push(Problem::new(
                        format!("{at}.variants"),
                        "no variants; list the variants of the required flag that satisfy it",
                    ));
                }
                for (j, v) in pre.variants.iter().enumerate() {
                    if !required.variants.contains_key(v) {
                        problems.push(Problem::new(
                            format!("{at}.variants[{j}]"),
                            format!(
                                "flag {:?} has no variant {v:?}; use one of {:?}",
                                pre.flag,
                                required.variants.keys().collect::<Vec<_>>()
                            ),
                        ));
                    }
                }
            }
        }
    }
    let mut targeted: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, target) in flag.targets.iter().enumerate() {
        let at = format!("{path}.targets[{i}]");
        variant(&target.variant, format!("{at}.variant"), problems);
        for (j, k) in target.values.iter().enumerate() {
            if let Some(first) = targeted.insert(k, i) {
                problems.push(Problem::new(
                    format!("{at}.values[{j}]"),
                    format!(
                        "key {k:?} is already targeted by targets[{first}]; list each key once"
                    ),
                ));
            }
        }
    }
    for (i, rule) in flag.rules.iter().enumerate() {
        check_serve(
            flag,
            &rule.serve,
            &format!("{path}.rules[{i}].serve"),
            problems,
        );
    }
    if let Some(serve) = &flag.fallthrough {
        check_serve(flag, serve, &format!("{path}.fallthrough"), problems);
    }
}

fn check_serve(flag: &Flag, serve: &Serve, path: &str, problems: &mut Vec<Problem>) {
    let known = |name: &str| flag.variants.contains_key(name);
    let names = || flag.variants.keys().collect::<Vec<_>>();
    match (&serve.variant, &serve.rollout) {
        (Some(_), Some(_)) | (None, None) => problems.push(Problem::new(
            path,
            "give exactly one of \"variant\" or \"rollout\"",
        )),
        (Some(v), None) => {
            if !known(v) {
                problems.push(Problem::new(
                    format!("{path}.variant"),
                    format!("unknown variant {v:?}; use one of {:?}", names()),
                ));
            }
        }
        (None, Some(rollout)) => {
            let at = format!("{path}.rollout");
            if rollout.bucket_by.as_deref() == Some("") {
                problems.push(Problem::new(
                    format!("{at}.bucketBy"),
                    "empty attribute name; leave bucketBy out to bucket by the targeting key",
                ));
            }
            if rollout.variants.is_empty() {
                problems.push(Problem::new(
                    format!("{at}.variants"),
                    "no variants; list variants with weights summing to 100000",
                ));
                return;
            }
            let mut seen = BTreeSet::new();
            let mut sum: u64 = 0;
            for (i, wv) in rollout.variants.iter().enumerate() {
                sum += u64::from(wv.weight);
                if !known(&wv.variant) {
                    problems.push(Problem::new(
                        format!("{at}.variants[{i}].variant"),
                        format!("unknown variant {:?}; use one of {:?}", wv.variant, names()),
                    ));
                } else if !seen.insert(wv.variant.as_str()) {
                    problems.push(Problem::new(
                        format!("{at}.variants[{i}].variant"),
                        format!("variant {:?} appears twice; merge its weights", wv.variant),
                    ));
                }
            }
            if sum != u64::from(TOTAL) {
                problems.push(Problem::new(
                    format!("{at}.variants"),
                    format!(
                        "weights sum to {sum}, not {TOTAL}; weights are out of {TOTAL} (1 = 0.001 %)"
                    ),
                ));
            }
        }
    }
}

fn check_variant_types(path: &str, flag: &Flag, problems: &mut Vec<Problem>) {
    if flag.variants.is_empty() {
        problems.push(Problem::new(
            format!("{path}.variants"),
            "no variants; a flag needs at least one",
        ));
        return;
    }
    let mut first: Option<(&str, Kind)> = None;
    for (name, value) in &flag.variants {
        let at = format!("{path}.variants.{name}");
        let Some(kind) = Kind::of(value) else {
            problems.push(Problem::new(
                at,
                "null is not a variant value; use a boolean, string, number, object or array",
            ));
            continue;
        };
        match first {
            None => first = Some((name, kind)),
            Some((first_name, first_kind)) => {
                if !first_kind.compatible(kind) {
                    problems.push(Problem::new(
                        at,
                        format!(
                            "is {} but variant {first_name:?} is {}; give all variants of a flag one type",
                            kind.describe(),
                            first_kind.describe()
                        ),
                    ));
                }
            }
        }
    }
}

fn check_cycles(set: &FlagSet, problems: &mut Vec<Problem>) {
    let prerequisites: BTreeMap<&str, Vec<Edge<'_>>> = set
        .flags
        .iter()
        .map(|(key, flag)| {
            let edges = flag
                .prerequisites
                .iter()
                .enumerate()
                .map(|(i, p)| Edge {
                    to: p.flag.as_str(),
                    path: format!("flags.{key}.prerequisites[{i}].flag"),
                })
                .collect();
            (key.as_str(), edges)
        })
        .collect();
    graph::check("prerequisite", "flags", &prerequisites, MAX_DEPTH, problems);

    let segments: BTreeMap<&str, Vec<Edge<'_>>> = set
        .segments
        .iter()
        .map(|(key, segment)| {
            let mut edges = Vec::new();
            for (i, rule) in segment.rules.iter().enumerate() {
                for (j, clause) in rule.clauses.iter().enumerate() {
                    if clause.op != Op::InSegment {
                        continue;
                    }
                    for (k, value) in clause.values.iter().enumerate() {
                        if let Some(to) = value.as_str() {
                            edges.push(Edge {
                                to,
                                path: format!("segments.{key}.rules[{i}].clauses[{j}].values[{k}]"),
                            });
                        }
                    }
                }
            }
            (key.as_str(), edges)
        })
        .collect();
    graph::check("segment", "segments", &segments, MAX_DEPTH, problems);
}
