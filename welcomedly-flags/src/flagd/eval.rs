//! Running a compiled expression against a context.
//!
//! flagd's custom operators report bad input by making the whole targeting result `null` (the
//! flag's default variant, reason `DEFAULT`; flagd-testbed's `@operator-errors` cases):
//! evaluation returns [`Abort`] for those and the caller maps it to `null`. JsonLogic's own
//! operators never fail; they coerce.
//!
//! `map`, `filter`, `reduce`, `all`, `some` and `none` evaluate their second argument once per
//! element with the element as the data (`{"var": ""}` is the element, `{"var": "a.b"}` reads
//! into it; `reduce` gives `current` and `accumulator`). Nested, they multiply: every
//! evaluation may take at most [`MAX_ITERATIONS`] element steps in all, past which it aborts
//! (the `null` result) rather than run on. `all`, `some` and `none` and a `reduce` to a number
//! allocate nothing.

use std::cell::Cell;
use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use smallvec::SmallVec;

use super::compile::{Bucketing, Fractional, IterOp, Node, Op, SemOp, SemVerNode, weight_of};
use super::value::Val;
use crate::bucketing::Murmur3;
use crate::context::{AttrValue, Context};
use crate::eval::Semver;

/// A custom operator met input it cannot take: the targeting result is `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abort;

type Res<'a> = Result<Val<'a>, Abort>;

/// The most element steps (of `map`, `filter`, `reduce`, `all`, `some`, `none`, nested ones
/// multiplied) one evaluation may take: past it the evaluation aborts.
pub(crate) const MAX_ITERATIONS: u32 = 100_000;

/// The data `var` reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a, 's> {
    /// The evaluation context.
    Context,
    /// An element of `map`, `filter`, `all`, `some`, `none`.
    Item(&'s Val<'a>),
    /// `reduce`'s `{"current", "accumulator"}`.
    Reduce {
        current: &'s Val<'a>,
        accumulator: &'s Val<'a>,
    },
}

/// What an expression reads besides itself.
#[derive(Debug)]
pub(crate) struct Env<'a, 'c, 's> {
    /// `Context` is invariant in its lifetime (its attributes sit in a `SmallVec`), hence the
    /// second one.
    pub(crate) ctx: &'a Context<'c>,
    pub(crate) flag_key: &'a str,
    pub(crate) scope: Scope<'a, 's>,
    /// Element steps left (see [`MAX_ITERATIONS`]).
    pub(crate) budget: &'s Cell<u32>,
}

impl<'a, 'c, 's> Env<'a, 'c, 's> {
    /// The environment of a whole evaluation: the context as the data, `budget` (a fresh
    /// `Cell::new(MAX_ITERATIONS)`) for its element steps.
    pub(crate) fn new(ctx: &'a Context<'c>, flag_key: &'a str, budget: &'s Cell<u32>) -> Self {
        Env {
            ctx,
            flag_key,
            scope: Scope::Context,
            budget,
        }
    }

    /// The same environment with other data.
    fn with<'t>(&'t self, scope: Scope<'a, 't>) -> Env<'a, 'c, 't> {
        Env {
            ctx: self.ctx,
            flag_key: self.flag_key,
            scope,
            budget: self.budget,
        }
    }

    /// Takes one element step, or aborts when the budget is spent.
    #[inline]
    fn step(&self) -> Result<(), Abort> {
        match self.budget.get().checked_sub(1) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(Abort),
        }
    }

    /// A top-level name: a context attribute, or a member of the scoped data.
    #[inline]
    fn get(&self, name: &str) -> Option<Val<'a>> {
        match self.scope {
            Scope::Context => self.ctx.get(name).map(attr),
            _ => lookup(self, std::iter::once(name)),
        }
    }
}

fn attr(v: AttrValue<'_>) -> Val<'_> {
    match v {
        AttrValue::Str(s) => Val::Str(s),
        AttrValue::Int(i) => Val::Num(i as f64),
        AttrValue::Float(f) => Val::Num(f),
        AttrValue::Bool(b) => Val::Bool(b),
        AttrValue::Json(j) => Val::of(j),
    }
}

/// One step into a nested value: an object member or an array index.
fn step<'a>(v: &'a Value, seg: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(seg),
        Value::Array(items) => items.get(seg.parse::<usize>().ok()?),
        _ => None,
    }
}

/// The value at `segs` inside `v`; `None` when absent or `null`.
fn scoped<'a, 'p>(v: &Val<'a>, mut segs: impl Iterator<Item = &'p str>) -> Option<Val<'a>> {
    let found = match segs.next() {
        None => v.clone(),
        Some(seg) => match v {
            Val::Json(j) => {
                let mut j: &'a Value = step(j, seg)?;
                for seg in segs {
                    j = step(j, seg)?;
                }
                Val::of(j)
            }
            Val::List(items) => return scoped(items.get(seg.parse::<usize>().ok()?)?, segs),
            _ => return None,
        },
    };
    match found {
        Val::Null => None,
        found => Some(found),
    }
}

/// The value at a `var` path; `None` when absent or `null` (so the default applies).
#[inline]
fn lookup<'a, 'p>(
    env: &Env<'a, '_, '_>,
    mut segs: impl Iterator<Item = &'p str>,
) -> Option<Val<'a>> {
    match env.scope {
        Scope::Context => {}
        Scope::Item(item) => return scoped(item, segs),
        Scope::Reduce {
            current,
            accumulator,
        } => {
            return match segs.next()? {
                "current" => scoped(current, segs),
                "accumulator" => scoped(accumulator, segs),
                _ => None,
            };
        }
    }
    let first = segs.next()?;
    let mut v = env.ctx.get(first)?;
    for seg in segs {
        let AttrValue::Json(j) = v else {
            return None;
        };
        v = AttrValue::from(step(j, seg)?);
    }
    match attr(v) {
        Val::Null => None,
        found => Some(found),
    }
}

#[inline]
fn arg<'a>(args: &'a [Node], i: usize, env: &Env<'a, '_, '_>) -> Res<'a> {
    match args.get(i) {
        Some(n) => eval(n, env),
        None => Ok(Val::Null),
    }
}

/// Evaluates `node`.
pub(crate) fn eval<'a>(node: &'a Node, env: &Env<'a, '_, '_>) -> Res<'a> {
    match node {
        Node::Null => Ok(Val::Null),
        Node::Bool(b) => Ok(Val::Bool(*b)),
        Node::Num(n) => Ok(Val::Num(*n)),
        Node::Str(s) => Ok(Val::Str(s)),
        Node::Lit(v) => Ok(Val::of(v)),
        Node::Var1 { name, default } => match env.get(name) {
            Some(Val::Null) | None => match default {
                Some(d) => eval(d, env),
                None => Ok(Val::Null),
            },
            Some(v) => Ok(v),
        },
        Node::Var { path, default } => match lookup(env, path.iter().map(|s| &**s)) {
            Some(v) => Ok(v),
            None => match default {
                Some(d) => eval(d, env),
                None => Ok(Val::Null),
            },
        },
        Node::VarDyn { path, default } => {
            let p = eval(path, env)?;
            let text = match &p {
                Val::Null => None,
                other => Some(other.to_js_string()),
            };
            let found = text
                .as_deref()
                .filter(|t| !t.is_empty())
                .and_then(|t| lookup(env, t.split('.')));
            match (found, default) {
                (Some(v), _) => Ok(v),
                (None, Some(d)) => eval(d, env),
                (None, None) => Ok(Val::Null),
            }
        }
        Node::FlagKey => Ok(Val::Str(env.flag_key)),
        Node::Timestamp => Ok(Val::Num(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs() as f64),
        )),
        Node::Array(items) => Ok(Val::List(
            items
                .iter()
                .map(|n| eval(n, env))
                .collect::<Result<_, _>>()?,
        )),
        Node::If(args) => {
            let mut i = 0;
            while let (Some(cond), Some(then)) = (args.get(i), args.get(i + 1)) {
                if test(cond, env)? {
                    return eval(then, env);
                }
                i += 2;
            }
            arg(args, i, env)
        }
        Node::And(args) => {
            let mut last = Val::Null;
            for a in args.iter() {
                last = eval(a, env)?;
                if !last.truthy() {
                    return Ok(last);
                }
            }
            Ok(last)
        }
        Node::Or(args) => {
            let mut last = Val::Null;
            for a in args.iter() {
                last = eval(a, env)?;
                if last.truthy() {
                    return Ok(last);
                }
            }
            Ok(last)
        }
        Node::Op(op, args) => operator(*op, args, env),
        Node::Cmp(op, args) => compare(*op, args, env).map(Val::Bool),
        Node::SemVer(node) => sem_ver(node, env).map(Val::Bool),
        Node::Fractional(f) => fractional(f, env),
        Node::Iter(op, args) => iterate(*op, args, env),
        Node::Abort => Err(Abort),
    }
}

/// `map`, `filter`, `reduce`, `all`, `some`, `none` (jsonlogic.com/operations.html): the first
/// argument is the array, the second the logic run per element; `reduce`'s third is the
/// initial accumulator. A first argument that is not an array is an empty one.
fn iterate<'a>(op: IterOp, args: &'a [Node], env: &Env<'a, '_, '_>) -> Res<'a> {
    match op {
        IterOp::All | IterOp::Some | IterOp::None => iter_test(op, args, env).map(Val::Bool),
        IterOp::Map | IterOp::Filter => {
            let list = arg(args, 0, env)?;
            let mut out = Vec::new();
            let Some(logic) = args.get(1) else {
                // No logic: every element maps to `null` and none passes the filter.
                if op == IterOp::Map {
                    for _ in list.elements().into_iter().flatten() {
                        env.step()?;
                        out.push(Val::Null);
                    }
                }
                return Ok(Val::List(out));
            };
            for item in list.elements().into_iter().flatten() {
                env.step()?;
                let inner = env.with(Scope::Item(&item));
                if op == IterOp::Map {
                    out.push(eval(logic, &inner)?);
                } else if test(logic, &inner)? {
                    out.push(item);
                }
            }
            Ok(Val::List(out))
        }
        IterOp::Reduce => {
            let list = arg(args, 0, env)?;
            let mut accumulator = arg(args, 2, env)?;
            let Some(logic) = args.get(1) else {
                let empty = list
                    .elements()
                    .is_none_or(|mut items| items.next().is_none());
                return Ok(if empty { accumulator } else { Val::Null });
            };
            for current in list.elements().into_iter().flatten() {
                env.step()?;
                let next = eval(
                    logic,
                    &env.with(Scope::Reduce {
                        current: &current,
                        accumulator: &accumulator,
                    }),
                )?;
                accumulator = next;
            }
            Ok(accumulator)
        }
    }
}

/// `all` (every element passes, and there is one), `some` (one passes), `none` (none passes),
/// without building a list.
fn iter_test<'a>(op: IterOp, args: &'a [Node], env: &Env<'a, '_, '_>) -> Result<bool, Abort> {
    let list = arg(args, 0, env)?;
    let mut items = list.elements().into_iter().flatten().peekable();
    if op == IterOp::All && items.peek().is_none() {
        return Ok(false);
    }
    for item in items {
        env.step()?;
        let pass = match args.get(1) {
            Some(logic) => test(logic, &env.with(Scope::Item(&item)))?,
            None => false,
        };
        match (op, pass) {
            (IterOp::All, false) => return Ok(false),
            (IterOp::Some, true) => return Ok(true),
            (IterOp::None, true) => return Ok(false),
            _ => {}
        }
    }
    Ok(op != IterOp::Some)
}

/// An operand of a comparison: constants and plain attributes without a trip through
/// [`eval`].
#[inline(always)]
fn operand<'a>(node: &'a Node, env: &Env<'a, '_, '_>) -> Res<'a> {
    match node {
        Node::Str(s) => Ok(Val::Str(s)),
        Node::Num(n) => Ok(Val::Num(*n)),
        Node::Var1 {
            name,
            default: None,
        } => Ok(env.get(name).unwrap_or(Val::Null)),
        _ => eval(node, env),
    }
}

#[inline]
fn compare<'a>(op: Op, args: &'a (Node, Node), env: &Env<'a, '_, '_>) -> Result<bool, Abort> {
    let (a, b) = (operand(&args.0, env)?, operand(&args.1, env)?);
    Ok(match op {
        Op::Eq => a.loose_eq(&b),
        Op::Ne => !a.loose_eq(&b),
        Op::StrictEq => a.strict_eq(&b),
        Op::StrictNe => !a.strict_eq(&b),
        _ => ordered(op, a.compare(&b)),
    })
}

/// The truthiness of `node`, computed without building the value where the node is a test
/// (a comparison, `!`, `and`, `or`, `sem_ver`, `starts_with`): `if` conditions take this path.
pub(crate) fn test<'a>(node: &'a Node, env: &Env<'a, '_, '_>) -> Result<bool, Abort> {
    match node {
        Node::Cmp(op, args) => compare(*op, args, env),
        Node::SemVer(n) => sem_ver(n, env),
        Node::Op(Op::Not, args) => Ok(!match args.first() {
            Some(n) => test(n, env)?,
            None => false,
        }),
        Node::Op(Op::Truthy, args) => match args.first() {
            Some(n) => test(n, env),
            None => Ok(false),
        },
        // `and` is truthy when it has arguments and all are; `or` when one is.
        Node::And(args) => {
            for a in args.iter() {
                if !test(a, env)? {
                    return Ok(false);
                }
            }
            Ok(!args.is_empty())
        }
        Node::Or(args) => {
            for a in args.iter() {
                if test(a, env)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Node::Op(op @ (Op::StartsWith | Op::EndsWith), args) => affix(*op, args, env),
        Node::Bool(b) => Ok(*b),
        Node::Iter(op @ (IterOp::All | IterOp::Some | IterOp::None), args) => {
            iter_test(*op, args, env)
        }
        _ => Ok(eval(node, env)?.truthy()),
    }
}

fn operator<'a>(op: Op, args: &'a [Node], env: &Env<'a, '_, '_>) -> Res<'a> {
    let a = || arg(args, 0, env);
    let b = || arg(args, 1, env);
    Ok(match op {
        Op::Eq => Val::Bool(a()?.loose_eq(&b()?)),
        Op::Ne => Val::Bool(!a()?.loose_eq(&b()?)),
        Op::StrictEq => Val::Bool(a()?.strict_eq(&b()?)),
        Op::StrictNe => Val::Bool(!a()?.strict_eq(&b()?)),
        Op::Not => Val::Bool(!a()?.truthy()),
        Op::Truthy => Val::Bool(a()?.truthy()),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let ok = |o| ordered(op, o);
            let (x, y) = (a()?, b()?);
            let first = ok(x.compare(&y));
            // `<` and `<=` take a third argument: "between".
            if args.len() >= 3 && matches!(op, Op::Lt | Op::Le) {
                let z = arg(args, 2, env)?;
                Val::Bool(first && ok(y.compare(&z)))
            } else {
                Val::Bool(first)
            }
        }
        Op::In => {
            let (needle, hay) = (a()?, b()?);
            Val::Bool(match (hay.as_str(), hay.elements()) {
                (Some(h), _) => match needle.as_str() {
                    Some(n) => h.contains(n),
                    None => h.contains(&needle.to_js_string()),
                },
                (None, Some(mut items)) => items.any(|i| i.strict_eq(&needle)),
                (None, None) => false,
            })
        }
        Op::Cat => {
            let mut out = String::new();
            for n in args.iter() {
                eval(n, env)?.write_js(&mut out);
            }
            Val::String(out)
        }
        Op::Substr => substr(
            a()?,
            b()?.to_number(),
            args.get(2).map(|n| eval(n, env)).transpose()?,
        )?,
        Op::Add => {
            let mut sum = 0.0;
            for n in args.iter() {
                sum += eval(n, env)?.parse_float();
            }
            Val::Num(sum)
        }
        Op::Mul => {
            let mut product = 1.0;
            for n in args.iter() {
                product *= eval(n, env)?.parse_float();
            }
            Val::Num(product)
        }
        Op::Sub => match args.len() {
            0 => Val::Num(f64::NAN),
            1 => Val::Num(-a()?.to_number()),
            _ => Val::Num(a()?.to_number() - b()?.to_number()),
        },
        Op::Div => Val::Num(a()?.to_number() / b()?.to_number()),
        Op::Mod => Val::Num(a()?.to_number() % b()?.to_number()),
        Op::Min | Op::Max => {
            let mut acc = if op == Op::Min {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
            for n in args.iter() {
                let x = eval(n, env)?.to_number();
                // Math.min/max: any NaN makes the result NaN.
                acc = if x.is_nan() || acc.is_nan() {
                    f64::NAN
                } else if op == Op::Min {
                    acc.min(x)
                } else {
                    acc.max(x)
                };
            }
            Val::Num(acc)
        }
        Op::Merge => {
            let mut out = Vec::new();
            for n in args.iter() {
                let v = eval(n, env)?;
                match v.elements() {
                    Some(items) => out.extend(items),
                    None => out.push(v),
                }
            }
            Val::List(out)
        }
        Op::Missing => {
            let first = a()?;
            let mut missing = Vec::new();
            if first.is_list() {
                for key in first.elements().into_iter().flatten() {
                    if is_missing(&key, env) {
                        missing.push(key);
                    }
                }
            } else {
                for n in args.iter() {
                    let key = eval(n, env)?;
                    if is_missing(&key, env) {
                        missing.push(key);
                    }
                }
            }
            Val::List(missing)
        }
        Op::MissingSome => {
            let need = a()?.to_number();
            let keys = b()?;
            let mut missing = Vec::new();
            let mut total = 0usize;
            for key in keys.elements().into_iter().flatten() {
                total += 1;
                if is_missing(&key, env) {
                    missing.push(key);
                }
            }
            if (total - missing.len()) as f64 >= need {
                Val::List(Vec::new())
            } else {
                Val::List(missing)
            }
        }
        Op::StartsWith | Op::EndsWith => Val::Bool(affix(op, args, env)?),
        Op::Log => a()?,
    })
}

/// Whether `o` satisfies the relational operator `op`; no ordering (a NaN) satisfies none.
#[inline]
fn ordered(op: Op, o: Option<Ordering>) -> bool {
    match (op, o) {
        (_, None) => false,
        (Op::Lt, Some(o)) => o == Ordering::Less,
        (Op::Le, Some(o)) => o != Ordering::Greater,
        (Op::Gt, Some(o)) => o == Ordering::Greater,
        (_, Some(o)) => o != Ordering::Less,
    }
}

/// `starts_with` / `ends_with`: two strings, else abort.
#[inline]
fn affix<'a>(op: Op, args: &'a [Node], env: &Env<'a, '_, '_>) -> Result<bool, Abort> {
    let [s, affix] = args else {
        return Err(Abort);
    };
    let (s, affix) = (operand(s, env)?, operand(affix, env)?);
    let (Some(s), Some(affix)) = (s.as_str(), affix.as_str()) else {
        return Err(Abort);
    };
    Ok(if op == Op::StartsWith {
        s.starts_with(affix)
    } else {
        s.ends_with(affix)
    })
}

/// `missing`: a key whose value is absent, `null` or `""`.
fn is_missing(key: &Val<'_>, env: &Env<'_, '_, '_>) -> bool {
    let owned;
    let path = match key.as_str() {
        Some(s) => s,
        None => {
            owned = key.to_js_string();
            &owned
        }
    };
    if path.is_empty() {
        return false;
    }
    match lookup(env, path.split('.')) {
        None => true,
        Some(v) => v.as_str() == Some(""),
    }
}

/// JavaScript's `String.prototype.substr(start, length)` over characters.
fn substr<'a>(s: Val<'a>, start: f64, len: Option<Val<'a>>) -> Res<'a> {
    let owned;
    let text: &str = match &s {
        Val::Str(t) => t,
        other => {
            owned = other.to_js_string();
            &owned
        }
    };
    let count = text.chars().count() as f64;
    let start = if start.is_nan() { 0.0 } else { start.trunc() };
    let from = if start < 0.0 {
        (count + start).max(0.0)
    } else {
        start.min(count)
    };
    let to = match len.map(|l| l.to_number()) {
        None => count,
        Some(l) if l.is_nan() => from,
        // jsonlogic.js: a negative length stops that many characters before the end.
        Some(l) if l < 0.0 => (count + l.trunc()).max(from),
        Some(l) => (from + l.trunc()).min(count),
    };
    let (from, to) = (from as usize, to as usize);
    let byte = |c: usize| text.char_indices().nth(c).map_or(text.len(), |(i, _)| i);
    let (b0, b1) = (byte(from), byte(to.max(from)));
    match (&s, text.get(b0..b1)) {
        (Val::Str(t), Some(_)) => Ok(Val::Str(t.get(b0..b1).unwrap_or(""))),
        (_, Some(part)) => Ok(Val::String(part.to_owned())),
        (_, None) => Ok(Val::Str("")),
    }
}

/// flagd's `sem_ver` (Go's `golang.org/x/mod/semver`): a `v` prefix and partial versions are
/// taken, build metadata is ignored; a value that is not a version aborts.
fn sem_ver<'a>(node: &'a SemVerNode, env: &Env<'a, '_, '_>) -> Result<bool, Abort> {
    let version = operand(&node.version, env)?;
    let op = match &node.op {
        Ok(op) => *op,
        Err(computed) => match eval(computed, env)?.as_str().and_then(SemOp::parse) {
            Some(op) => op,
            None => return Err(Abort),
        },
    };
    let a = version
        .as_str()
        .and_then(Semver::parse_flagd)
        .ok_or(Abort)?;
    let target;
    let b = match &node.target {
        Ok(constant) => constant.borrow(),
        Err(computed) => {
            target = eval(computed, env)?;
            target.as_str().and_then(Semver::parse_flagd).ok_or(Abort)?
        }
    };
    let ord = a.precedence(&b);
    let (ma, mb) = (a.major_minor(), b.major_minor());
    Ok(match op {
        SemOp::Eq => ord == Ordering::Equal,
        SemOp::Ne => ord != Ordering::Equal,
        SemOp::Lt => ord == Ordering::Less,
        SemOp::Le => ord != Ordering::Greater,
        SemOp::Gt => ord == Ordering::Greater,
        SemOp::Ge => ord != Ordering::Less,
        SemOp::Major => ma.0 == mb.0,
        SemOp::Minor => ma == mb,
    })
}

/// flagd's `fractional`: MurmurHash3 x86_32 (seed 0) of the bucketing value, bucket
/// `(hash × total weight) >> 32` against the cumulative weights in order.
fn fractional<'a>(f: &'a Fractional, env: &Env<'a, '_, '_>) -> Res<'a> {
    let hash = match &f.bucketing {
        Bucketing::Default => default_bucketing(f, env)?,
        Bucketing::Cat { prefix, rest } => {
            let mut hash = prefix.clone();
            let mut scratch = String::new();
            for p in rest.iter() {
                write_hash(&mut hash, &eval(p, env)?, &mut scratch);
            }
            hash.finish()
        }
        Bucketing::Expr(node) => match eval(node, env)? {
            v @ (Val::Str(_) | Val::String(_)) => {
                let mut hash = Murmur3::new(0);
                hash.write(v.as_str().unwrap_or("").as_bytes());
                hash.finish()
            }
            Val::Null => default_bucketing(f, env)?,
            // Not a string: flagd reads it as a malformed bucket.
            _ => return Err(Abort),
        },
    };
    if !f.scalar_names {
        // Every name is checked, as flagd checks each bucket before picking one.
        for (name, _) in f.buckets.iter() {
            check_name(&eval(name, env)?)?;
        }
    }
    let pick = |total: u64, ends: &[u64]| {
        let bucket = (u64::from(hash) * total) >> 32;
        ends.iter().position(|end| bucket < *end)
    };
    let chosen = match &f.fixed {
        Some((ends, total)) => pick(*total, ends),
        None => {
            let mut ends: SmallVec<[u64; 8]> = SmallVec::with_capacity(f.buckets.len());
            let mut total: u64 = 0;
            for (_, weight) in f.buckets.iter() {
                let w = match weight {
                    None => 1,
                    Some(w) => match eval(w, env)? {
                        Val::Null => 1,
                        Val::Num(n) => weight_of(n).ok_or(Abort)?,
                        _ => return Err(Abort),
                    },
                };
                total += w;
                if total > super::compile::MAX_WEIGHT {
                    return Err(Abort);
                }
                ends.push(total);
            }
            if total == 0 {
                return Err(Abort);
            }
            pick(total, &ends)
        }
    };
    let (name, _) = chosen.and_then(|i| f.buckets.get(i)).ok_or(Abort)?;
    let v = eval(name, env)?;
    check_name(&v)?;
    Ok(v)
}

/// A bucket's variant: a string, boolean, number or `null`.
fn check_name(v: &Val<'_>) -> Result<(), Abort> {
    match v {
        Val::Json(_) | Val::List(_) => Err(Abort),
        _ => Ok(()),
    }
}

/// flag key ‖ targeting key (the flag key hashed when compiled); no targeting key aborts.
fn default_bucketing(f: &Fractional, env: &Env<'_, '_, '_>) -> Result<u32, Abort> {
    let key = match env.ctx.get(crate::model::TARGETING_KEY) {
        Some(AttrValue::Str(k)) => k,
        _ => return Err(Abort),
    };
    let mut hash = f.flag_key_hash.clone();
    hash.write(key.as_bytes());
    Ok(hash.finish())
}

fn write_hash(hash: &mut Murmur3, v: &Val<'_>, scratch: &mut String) {
    match v.as_str() {
        Some(s) => hash.write(s.as_bytes()),
        None => {
            scratch.clear();
            v.write_js(scratch);
            hash.write(scratch.as_bytes());
        }
    }
}
