//! Segments compiled for evaluation, and the key sets they (and `in` clauses) look keys up in.

use std::collections::{BTreeMap, HashSet};

use foldhash::fast::RandomState;

use super::CompiledClause;
use crate::context::Context;
use crate::model::FlagSet;
use crate::validate::MAX_DEPTH;

/// Keys to look up: a short list compares directly (faster than hashing for a few keys), a long
/// one hashes.
#[derive(Debug)]
pub(crate) enum KeySet {
    Few(Box<[Box<str>]>),
    Many(HashSet<Box<str>, RandomState>),
}

impl KeySet {
    pub(crate) fn new<'s>(keys: impl Iterator<Item = &'s str>) -> KeySet {
        let keys: Vec<Box<str>> = keys.map(Box::from).collect();
        if keys.len() <= 4 {
            KeySet::Few(keys.into())
        } else {
            KeySet::Many(keys.into_iter().collect())
        }
    }

    #[inline]
    pub(crate) fn contains(&self, key: &str) -> bool {
        match self {
            KeySet::Few(keys) => keys.iter().any(|k| **k == *key),
            KeySet::Many(keys) => keys.contains(key),
        }
    }
}

/// Segment key → position in the compiled snapshot (key order).
#[derive(Debug)]
pub(crate) struct SegmentIndex<'a>(BTreeMap<&'a str, u32>);

impl<'a> SegmentIndex<'a> {
    pub(crate) fn new(set: &'a FlagSet) -> SegmentIndex<'a> {
        SegmentIndex(
            (0u32..)
                .zip(set.segments.keys())
                .map(|(i, k)| (k.as_str(), i))
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<u32> {
        self.0.get(key).copied()
    }
}

#[derive(Debug)]
pub(crate) struct CompiledSegment {
    pub(crate) included: KeySet,
    pub(crate) excluded: KeySet,
    pub(crate) rules: Box<[Box<[CompiledClause]>]>,
}

impl CompiledSegment {
    pub(crate) fn contains(
        &self,
        ctx: &Context<'_>,
        segments: &[CompiledSegment],
        depth: usize,
    ) -> bool {
        if depth > MAX_DEPTH {
            // Unreachable for a validated set; a bound rather than unbounded recursion.
            return false;
        }
        if let Some(key) = ctx.key() {
            if self.included.contains(key) {
                return true;
            }
            if self.excluded.contains(key) {
                return false;
            }
        }
        self.rules
            .iter()
            .any(|rule| rule.iter().all(|c| c.matches(ctx, segments, depth)))
    }
}
