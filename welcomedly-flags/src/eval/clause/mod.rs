//! Clauses compiled for evaluation (operands parsed once: regexes, semvers, dates, string sets)
//! and matched against a context. Compiling is in `compile.rs`.

mod compile;
mod segment;

pub(crate) use compile::Regexes;
pub(crate) use segment::{CompiledSegment, KeySet, SegmentIndex};

use regex::Regex;
use serde_json::Value;

use super::date::parse_rfc3339_millis;
use super::semver::{OwnedSemver, Semver};
use crate::context::{AttrValue, Context};

/// A number operand: exact as an integer when it is one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Num {
    int: Option<i64>,
    float: f64,
}

impl Num {
    pub(super) fn of(v: &Value) -> Option<Num> {
        Some(Num {
            int: v.as_i64(),
            float: v.as_f64()?,
        })
    }

    fn equals(&self, attr: AttrValue<'_>) -> bool {
        match (attr, self.int) {
            (AttrValue::Int(x), Some(i)) => x == i,
            (AttrValue::Int(x), None) => x as f64 == self.float,
            (AttrValue::Float(x), _) => x == self.float,
            _ => false,
        }
    }
}

fn as_number(attr: AttrValue<'_>) -> Option<f64> {
    match attr {
        AttrValue::Int(x) => Some(x as f64),
        AttrValue::Float(x) => Some(x),
        _ => None,
    }
}

fn as_millis(attr: AttrValue<'_>) -> Option<i64> {
    match attr {
        AttrValue::Int(x) => Some(x),
        AttrValue::Str(s) => parse_rfc3339_millis(s),
        _ => None,
    }
}

#[derive(Debug)]
pub(super) enum Test {
    /// `equals` / `in`: any of these strings, numbers or booleans.
    OneOf {
        strs: KeySet,
        nums: Box<[Num]>,
        bools: [bool; 2],
    },
    StartsWith(Box<[Box<str>]>),
    EndsWith(Box<[Box<str>]>),
    Contains(Box<[Box<str>]>),
    Matches(Box<[Regex]>),
    /// `attr < bound` (or `<=`): "less than any operand" is "less than the largest".
    Below {
        bound: f64,
        inclusive: bool,
    },
    Above {
        bound: f64,
        inclusive: bool,
    },
    SemverEqual(Box<[OwnedSemver]>),
    SemverBelow(OwnedSemver),
    SemverAbove(OwnedSemver),
    Before(i64),
    After(i64),
    InSegment(Box<[u32]>),
}

/// A clause ready to evaluate.
#[derive(Debug)]
pub(crate) struct CompiledClause {
    pub(super) attribute: Box<str>,
    pub(super) negate: bool,
    pub(super) test: Test,
}

impl CompiledClause {
    /// Whether `ctx` matches. A missing attribute, or one of a type the operator does not take,
    /// never matches, negated or not.
    #[inline]
    pub(crate) fn matches(
        &self,
        ctx: &Context<'_>,
        segments: &[CompiledSegment],
        depth: usize,
    ) -> bool {
        if let Test::InSegment(ids) = &self.test {
            let inside = ids.iter().any(|&id| {
                segments
                    .get(id as usize)
                    .is_some_and(|s| s.contains(ctx, segments, depth + 1))
            });
            return inside != self.negate;
        }
        let Some(attr) = ctx.get(&self.attribute) else {
            return false;
        };
        match self.test(attr) {
            Some(hit) => hit != self.negate,
            None => false,
        }
    }

    /// `None` when the attribute has a type the operator does not take.
    #[inline]
    fn test(&self, attr: AttrValue<'_>) -> Option<bool> {
        let s = || match attr {
            AttrValue::Str(s) => Some(s),
            _ => None,
        };
        Some(match &self.test {
            Test::OneOf { strs, nums, bools } => match attr {
                AttrValue::Str(s) => strs.contains(s),
                AttrValue::Bool(b) => bools.get(usize::from(b)).copied().unwrap_or(false),
                num => nums.iter().any(|n| n.equals(num)),
            },
            Test::StartsWith(ops) => {
                let s = s()?;
                ops.iter().any(|o| s.starts_with(&**o))
            }
            Test::EndsWith(ops) => {
                let s = s()?;
                ops.iter().any(|o| s.ends_with(&**o))
            }
            Test::Contains(ops) => {
                let s = s()?;
                ops.iter().any(|o| s.contains(&**o))
            }
            Test::Matches(res) => {
                let s = s()?;
                res.iter().any(|re| re.is_match(s))
            }
            Test::Below { bound, inclusive } => {
                let x = as_number(attr)?;
                if *inclusive { x <= *bound } else { x < *bound }
            }
            Test::Above { bound, inclusive } => {
                let x = as_number(attr)?;
                if *inclusive { x >= *bound } else { x > *bound }
            }
            Test::SemverEqual(vs) => {
                let v = Semver::parse(s()?)?;
                vs.iter().any(|o| v.precedence(&o.borrow()).is_eq())
            }
            Test::SemverBelow(o) => Semver::parse(s()?)?.precedence(&o.borrow()).is_lt(),
            Test::SemverAbove(o) => Semver::parse(s()?)?.precedence(&o.borrow()).is_gt(),
            Test::Before(bound) => as_millis(attr)? < *bound,
            Test::After(bound) => as_millis(attr)? > *bound,
            Test::InSegment(_) => return None,
        })
    }
}
