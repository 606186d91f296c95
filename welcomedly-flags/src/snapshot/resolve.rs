//! Resolution: which variant a flag serves a context, and why. Reads only; allocates nothing.

use super::{CompiledFlag, CompiledServe, Snapshot};
use crate::context::{AttrValue, Context};
use crate::eval::{Match, Reason};
use crate::validate::MAX_DEPTH;

impl CompiledServe {
    /// The variant served, or `None` for a rollout whose bucket-by attribute is missing (or is
    /// neither a string nor an integer).
    #[inline]
    fn pick(&self, flag: &CompiledFlag, ctx: &Context<'_>) -> Option<u32> {
        match self {
            CompiledServe::Variant(v) => Some(*v),
            CompiledServe::Rollout { bucket_by, slices } => {
                let mut digits = itoa::Buffer::new();
                let value = match ctx.get(bucket_by)? {
                    AttrValue::Str(s) => s,
                    // Integers bucket like their decimal string, so an id bucketed as a number
                    // or as text lands in the same place.
                    AttrValue::Int(i) => digits.format(i),
                    _ => return None,
                };
                let bucket = flag.bucketer.bucket(value);
                slices
                    .iter()
                    .find(|(end, _)| bucket < *end)
                    .map(|(_, v)| *v)
            }
        }
    }
}

impl Snapshot {
    /// The variant flag `id` serves `ctx` (`None`: the caller's default) and why.
    pub(crate) fn resolve(
        &self,
        id: u32,
        ctx: &Context<'_>,
        depth: usize,
    ) -> (Option<u32>, Reason<'_>) {
        let Some(flag) = self.flags.get(id as usize) else {
            return (None, Reason::Error);
        };
        if !flag.enabled {
            return (None, Reason::Disabled);
        }
        if depth > MAX_DEPTH {
            return (None, Reason::Error);
        }
        for pre in &flag.prerequisites {
            let (served, _) = self.resolve(pre.flag, ctx, depth + 1);
            if !served.is_some_and(|v| pre.variants.contains(&v)) {
                let key = self.flags.get(pre.flag as usize).map_or("", |f| &*f.key);
                return (None, Reason::PrerequisiteFailed(key));
            }
        }
        if !flag.targets.is_empty()
            && let Some(&v) = ctx.key().and_then(|k| flag.targets.get(k))
        {
            return (Some(v), Reason::TargetingMatch(Match::Target));
        }
        for (i, rule) in flag.rules.iter().enumerate() {
            if !rule
                .clauses
                .iter()
                .all(|c| c.matches(ctx, &self.segments, depth))
            {
                continue;
            }
            if let Some(v) = rule.serve.pick(flag, ctx) {
                let reason = match rule.serve {
                    CompiledServe::Variant(_) => Reason::TargetingMatch(Match::Rule(i)),
                    CompiledServe::Rollout { .. } => Reason::Split(Match::Rule(i)),
                };
                return (Some(v), reason);
            }
        }
        match &flag.fallthrough {
            None => (None, Reason::Default),
            Some(serve) => match (serve.pick(flag, ctx), serve) {
                (None, _) => (None, Reason::Default),
                (Some(v), CompiledServe::Rollout { .. }) => {
                    (Some(v), Reason::Split(Match::Fallthrough))
                }
                (Some(v), CompiledServe::Variant(_)) if flag.is_static => (Some(v), Reason::Static),
                (Some(v), CompiledServe::Variant(_)) => (Some(v), Reason::Fallthrough),
            },
        }
    }
}
