//! Which flags' *effective* definitions differ between two flag sets: a flag changes when its own
//! definition does, or when a prerequisite flag or a segment it uses (directly or through other
//! segments) changes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::ChangeKind;
use crate::Snapshot;
use crate::model::{Clause, FlagSet, Op};

/// The flags whose effective definitions differ between two snapshots, in key order: the
/// native dependency analysis when both are native, otherwise a comparison of each flag's JSON.
pub(super) fn changed(old: &Snapshot, new: &Snapshot) -> Vec<(String, ChangeKind)> {
    match (old.flagd_raw(), new.flagd_raw()) {
        (None, None) => changed_flags(old.flag_set(), new.flag_set()),
        (a, b) => changed_flagd(old, a, new, b),
    }
}

/// At least one side is a flagd file. A flagd flag changes when its own JSON does, or when the
/// file's `$evaluators` or flag-set `metadata` do (a `$ref` or the metadata may reach any flag);
/// a flag present on both sides of a switch between formats counts as changed.
fn changed_flagd(
    old: &Snapshot,
    old_raw: Option<&Value>,
    new: &Snapshot,
    new_raw: Option<&Value>,
) -> Vec<(String, ChangeKind)> {
    fn shared(raw: Option<&Value>) -> Option<(Option<&Value>, Option<&Value>)> {
        raw.map(|r| (r.get("$evaluators"), r.get("metadata")))
    }
    let everything = match (old_raw, new_raw) {
        (Some(_), Some(_)) => shared(old_raw) != shared(new_raw),
        _ => true,
    };
    let flag = |raw: Option<&Value>, key: &str| {
        raw.and_then(|r| r.get("flags"))
            .and_then(|f| f.get(key))
            .cloned()
    };
    let old_keys: BTreeSet<&str> = old.keys().collect();
    let new_keys: BTreeSet<&str> = new.keys().collect();
    old_keys
        .union(&new_keys)
        .filter_map(|&key| {
            let kind = match (old_keys.contains(key), new_keys.contains(key)) {
                (false, _) => ChangeKind::Added,
                (true, false) => ChangeKind::Removed,
                (true, true) if everything || flag(old_raw, key) != flag(new_raw, key) => {
                    ChangeKind::Updated
                }
                (true, true) => return None,
            };
            Some((key.to_owned(), kind))
        })
        .collect()
}

/// The segment keys named by `inSegment` clauses.
fn segment_refs<'a>(clauses: impl Iterator<Item = &'a Clause>) -> impl Iterator<Item = &'a str> {
    clauses
        .filter(|c| c.op == Op::InSegment)
        .flat_map(|c| c.values.iter().filter_map(|v| v.as_str()))
}

/// Marks, until nothing moves, every node that depends on a marked node. A fixed point rather
/// than recursion: the union of the old and the new edges may contain a cycle.
fn propagate<'a>(changed: &mut BTreeSet<&'a str>, deps: &BTreeMap<&'a str, Vec<&'a str>>) {
    loop {
        let mut grew = false;
        for (node, ds) in deps {
            if !changed.contains(node) && ds.iter().any(|d| changed.contains(d)) {
                changed.insert(node);
                grew = true;
            }
        }
        if !grew {
            return;
        }
    }
}

/// The flags whose effective definitions differ, in key order.
pub(super) fn changed_flags(old: &FlagSet, new: &FlagSet) -> Vec<(String, ChangeKind)> {
    // Segments first: their changes flow into flags, never the other way.
    let mut seg_deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut seg_changed = BTreeSet::new();
    for key in old.segments.keys().chain(new.segments.keys()) {
        let (a, b) = (old.segments.get(key), new.segments.get(key));
        if a != b {
            seg_changed.insert(key.as_str());
        }
        let clauses = a
            .into_iter()
            .chain(b)
            .flat_map(|s| s.rules.iter().flat_map(|r| &r.clauses));
        seg_deps
            .entry(key)
            .or_default()
            .extend(segment_refs(clauses));
    }
    propagate(&mut seg_changed, &seg_deps);

    let mut flag_deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut changed = BTreeSet::new();
    for key in old.flags.keys().chain(new.flags.keys()) {
        let (a, b) = (old.flags.get(key), new.flags.get(key));
        let clauses = a
            .into_iter()
            .chain(b)
            .flat_map(|f| f.rules.iter().flat_map(|r| &r.clauses));
        let mut segments = segment_refs(clauses);
        if a != b || segments.any(|s| seg_changed.contains(s)) {
            changed.insert(key.as_str());
        }
        flag_deps.entry(key).or_default().extend(
            a.into_iter()
                .chain(b)
                .flat_map(|f| f.prerequisites.iter().map(|p| p.flag.as_str())),
        );
    }
    propagate(&mut changed, &flag_deps);

    changed
        .into_iter()
        .map(|key| {
            let kind = match (old.flags.contains_key(key), new.flags.contains_key(key)) {
                (false, _) => ChangeKind::Added,
                (true, false) => ChangeKind::Removed,
                (true, true) => ChangeKind::Updated,
            };
            (key.to_owned(), kind)
        })
        .collect()
}
