//! FlagSet → Snapshot. Structure is checked first; then every clause is compiled, its operand
//! problems added to the same list. Any problem rejects the whole set.

use std::collections::{BTreeMap, HashMap};

use super::{CompiledFlag, CompiledPrerequisite, CompiledRule, CompiledServe, FlagType, Snapshot};
use crate::bucketing::Bucketer;
use crate::eval::{CompiledClause, CompiledSegment, KeySet, Regexes, SegmentIndex};
use crate::model::{Clause, Flag, FlagSet, Serve, TARGETING_KEY};
use crate::problem::{Problem, ValidationErrors};
use crate::validate::check_structure;

struct Compiler<'a> {
    set: &'a FlagSet,
    flag_ids: BTreeMap<&'a str, u32>,
    segments: SegmentIndex<'a>,
    regexes: Regexes<'a>,
    problems: Vec<Problem>,
}

fn variant_ids(flag: &Flag) -> BTreeMap<&str, u32> {
    (0u32..)
        .zip(flag.variants.keys())
        .map(|(i, k)| (k.as_str(), i))
        .collect()
}

impl<'a> Compiler<'a> {
    fn clauses(&mut self, clauses: &[Clause], path: &str) -> Box<[CompiledClause]> {
        clauses
            .iter()
            .enumerate()
            .filter_map(|(j, clause)| {
                let at = format!("{path}.clauses[{j}]");
                CompiledClause::compile(
                    clause,
                    &self.segments,
                    &mut self.regexes,
                    &at,
                    &mut self.problems,
                )
            })
            .collect()
    }

    /// Unresolvable references were reported by the structure check; they compile to nothing.
    fn serve(ids: &BTreeMap<&str, u32>, serve: &Serve) -> Option<CompiledServe> {
        if let Some(v) = &serve.variant {
            return ids.get(v.as_str()).copied().map(CompiledServe::Variant);
        }
        let rollout = serve.rollout.as_ref()?;
        let mut end = 0u32;
        let mut slices = Vec::with_capacity(rollout.variants.len());
        for wv in &rollout.variants {
            end = end.saturating_add(wv.weight);
            slices.push((end, *ids.get(wv.variant.as_str())?));
        }
        Some(CompiledServe::Rollout {
            bucket_by: rollout.bucket_by.as_deref().unwrap_or(TARGETING_KEY).into(),
            slices: slices.into(),
        })
    }

    fn flag(&mut self, key: &str, flag: &Flag) -> CompiledFlag {
        let ids = variant_ids(flag);
        let kind = flag
            .variants
            .values()
            .filter_map(FlagType::of)
            .try_fold(None::<FlagType>, |acc, k| match acc {
                None => Some(Some(k)),
                Some(a) => a.join(k).map(Some),
            })
            .flatten()
            .unwrap_or(FlagType::Bool);
        let prerequisites = flag
            .prerequisites
            .iter()
            .filter_map(|p| {
                let id = *self.flag_ids.get(p.flag.as_str())?;
                let required = self.set.flags.get(&p.flag)?;
                let required_ids = variant_ids(required);
                let variants = p
                    .variants
                    .iter()
                    .filter_map(|v| required_ids.get(v.as_str()).copied())
                    .collect();
                Some(CompiledPrerequisite { flag: id, variants })
            })
            .collect::<Box<[_]>>();
        let mut targets = HashMap::default();
        for target in &flag.targets {
            if let Some(&v) = ids.get(target.variant.as_str()) {
                for k in &target.values {
                    targets.entry(Box::from(k.as_str())).or_insert(v);
                }
            }
        }
        let rules = flag
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let clauses = self.clauses(&rule.clauses, &format!("flags.{key}.rules[{i}]"));
                let serve = Self::serve(&ids, &rule.serve)?;
                Some(CompiledRule { clauses, serve })
            })
            .collect::<Box<[_]>>();
        let fallthrough = flag.fallthrough.as_ref().and_then(|s| Self::serve(&ids, s));
        let is_static = prerequisites.is_empty()
            && targets.is_empty()
            && rules.is_empty()
            && matches!(fallthrough, Some(CompiledServe::Variant(_)));
        let static_variant = match &fallthrough {
            Some(CompiledServe::Variant(v)) if is_static && flag.enabled => Some(*v),
            _ => None,
        };
        CompiledFlag {
            key: key.into(),
            enabled: flag.enabled,
            kind,
            variants: flag
                .variants
                .iter()
                .map(|(k, v)| (Box::from(k.as_str()), v.clone()))
                .collect(),
            prerequisites,
            targets,
            rules,
            fallthrough,
            bucketer: Bucketer::new(flag.bucketing, flag.salt.as_deref().unwrap_or(key)),
            is_static,
            static_variant,
        }
    }
}

/// Compiles `set`; with `previous` (the snapshot it replaces), its regular expressions are
/// reused where the patterns are the same.
pub(super) fn compile(
    set: &FlagSet,
    version: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ValidationErrors> {
    let mut problems = Vec::new();
    check_structure(set, &mut problems);
    let mut c = Compiler {
        set,
        flag_ids: (0u32..)
            .zip(set.flags.keys())
            .map(|(i, k)| (k.as_str(), i))
            .collect(),
        segments: SegmentIndex::new(set),
        regexes: previous.map_or_else(Regexes::default, |p| Regexes::after(&p.regexes)),
        problems,
    };
    let flags: Box<[CompiledFlag]> = set.flags.iter().map(|(k, f)| c.flag(k, f)).collect();
    let segments: Box<[CompiledSegment]> = set
        .segments
        .iter()
        .map(|(key, segment)| CompiledSegment {
            included: KeySet::new(segment.included.iter().map(String::as_str)),
            excluded: KeySet::new(segment.excluded.iter().map(String::as_str)),
            rules: segment
                .rules
                .iter()
                .enumerate()
                .map(|(i, rule)| c.clauses(&rule.clauses, &format!("segments.{key}.rules[{i}]")))
                .collect(),
        })
        .collect();
    if !c.problems.is_empty() {
        return Err(ValidationErrors::from(c.problems));
    }
    let regexes = c.regexes.into_compiled();
    let index = flags
        .iter()
        .zip(0u32..)
        .map(|(f, i)| (f.key.clone(), i))
        .collect();
    Ok(Snapshot {
        version,
        source: set.clone(),
        index,
        flags,
        segments,
        regexes,
        #[cfg(feature = "flagd")]
        flagd: None,
    })
}

// Validating is compiling: what validates is exactly what compiles, and operands (regexes,
// semvers, dates, segment names) are checked by the code that parses them. So these sit at the
// compiling layer, which runs on top of `model` and `validate`'s structural checks.
impl FlagSet {
    /// Parses and [validates](FlagSet::validate) a flag set. A syntax error, an unknown field or
    /// a value of the wrong shape is reported as one problem at its path; semantic problems are
    /// all listed.
    pub fn from_json(text: &str) -> Result<FlagSet, ValidationErrors> {
        let set = FlagSet::parse_json(text)?;
        set.validate()?;
        Ok(set)
    }

    /// Checks the whole set: unknown references (variants, flags, segments), prerequisite and
    /// segment cycles, rollout weights, regexes, semvers, dates and variant types. Every problem
    /// is listed, each with its path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        compile(self, 0, None).map(drop)
    }
}
