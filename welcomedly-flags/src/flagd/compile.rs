//! JsonLogic, compiled once: a flag's `targeting` (with its `$ref`s to `$evaluators` expanded)
//! becomes a tree of [`Node`]s that [`super::eval`] runs without looking at JSON again.
//!
//! JsonLogic's reading of JSON (jsonlogic.com): an object with exactly one key is an operation
//! whose argument is an array (a lone argument is wrapped in one); any other object is data; an
//! array is evaluated element by element. An operation this module does not know makes the
//! flag a `PARSE_ERROR`, as flagd reports it.
//!
//! Custom operators with arguments of a shape they can never take (`starts_with` with one
//! argument, `sem_ver` with an unknown comparison) compile to [`Node::Abort`]: flagd reports
//! those at evaluation as a `null` result (the default variant), not as a parse error.

use std::fmt;

use serde_json::{Map, Value};

use super::value::Val;
use crate::bucketing::Murmur3;
use crate::eval::OwnedSemver;

/// A comparison of `sem_ver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SemOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `^`: the same major version.
    Major,
    /// `~`: the same major and minor version.
    Minor,
}

impl SemOp {
    pub(crate) fn parse(s: &str) -> Option<SemOp> {
        Some(match s {
            "=" => SemOp::Eq,
            "!=" => SemOp::Ne,
            "<" => SemOp::Lt,
            "<=" => SemOp::Le,
            ">" => SemOp::Gt,
            ">=" => SemOp::Ge,
            "^" => SemOp::Major,
            "~" => SemOp::Minor,
            _ => return None,
        })
    }
}

/// Operators whose arguments are all evaluated first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    StrictEq,
    StrictNe,
    Not,
    Truthy,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Cat,
    Substr,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Min,
    Max,
    Merge,
    Missing,
    MissingSome,
    StartsWith,
    EndsWith,
    /// `log`: its first argument.
    Log,
}

/// The array operations: their second argument runs once per element, with the element as
/// the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IterOp {
    Map,
    Filter,
    Reduce,
    All,
    Some,
    None,
}

/// A compiled JsonLogic expression.
///
/// Scalar constants, one-segment `var`s and two-argument comparisons have nodes of their own:
/// they are most of what flagd rules are made of, and skipping the general forms halves the
/// cost of a typical `{"==": [{"var": "plan"}, "pro"]}`.
#[derive(Debug)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
    /// A constant array or object (data without operations).
    Lit(Value),
    /// `var` of one top-level attribute.
    Var1 {
        name: Box<str>,
        default: Option<Box<Node>>,
    },
    /// `var` with a constant path, split at its dots.
    Var {
        path: Box<[Box<str>]>,
        default: Option<Box<Node>>,
    },
    /// `var` with a computed path.
    VarDyn {
        path: Box<Node>,
        default: Option<Box<Node>>,
    },
    /// `{"var": "$flagd.flagKey"}`: the key of the flag being evaluated.
    FlagKey,
    /// `{"var": "$flagd.timestamp"}`: unix seconds at evaluation.
    Timestamp,
    /// An array with computed elements.
    Array(Box<[Node]>),
    /// `if` (and `?:`): condition, value, …, else.
    If(Box<[Node]>),
    /// `and`: the first falsy argument, or the last.
    And(Box<[Node]>),
    /// `or`: the first truthy argument, or the last.
    Or(Box<[Node]>),
    /// An operator over its evaluated arguments.
    Op(Op, Box<[Node]>),
    /// A comparison (`==`, `!=`, `===`, `!==`, `<`, `<=`, `>`, `>=`) of exactly two arguments.
    Cmp(Op, Box<(Node, Node)>),
    /// `sem_ver`.
    SemVer(Box<SemVerNode>),
    /// flagd's `fractional`.
    Fractional(Box<Fractional>),
    /// `map`, `filter`, `reduce`, `all`, `some`, `none`: the array, the per-element logic and
    /// (`reduce`) the initial accumulator.
    Iter(IterOp, Box<[Node]>),
    /// An operation that can never succeed: evaluation gives `null`.
    Abort,
}

impl Node {
    /// A constant scalar (a `fractional` bucket name that needs no check at evaluation).
    pub(crate) fn is_scalar(&self) -> bool {
        matches!(
            self,
            Node::Null | Node::Bool(_) | Node::Num(_) | Node::Str(_)
        )
    }
}

/// `sem_ver`: version, comparison and version; the comparison and a constant target are parsed
/// when compiled.
#[derive(Debug)]
pub(crate) struct SemVerNode {
    pub(crate) version: Node,
    pub(crate) op: Result<SemOp, Node>,
    pub(crate) target: Result<OwnedSemver, Node>,
}

/// How `fractional` gets its bucketing value.
#[derive(Debug)]
pub(crate) enum Bucketing {
    /// Flag key + targeting key (`prefix` is the flag key, hashed when compiled).
    Default,
    /// A `cat` whose leading constant parts (`prefix`, with `$flagd.flagKey`) are hashed when
    /// compiled; the rest is streamed into the hash at evaluation, never built as a string.
    Cat { prefix: Murmur3, rest: Box<[Node]> },
    /// Any other expression: a string, or `null` for the default.
    Expr(Node),
}

/// flagd's `fractional`.
#[derive(Debug)]
pub(crate) struct Fractional {
    pub(crate) bucketing: Bucketing,
    /// The flag key, hashed: the default bucketing value's start.
    pub(crate) flag_key_hash: Murmur3,
    /// `(variant, weight)`; a missing weight is 1.
    pub(crate) buckets: Box<[(Node, Option<Node>)]>,
    /// Cumulative weights and their total when every weight is a constant.
    pub(crate) fixed: Option<(Box<[u64]>, u64)>,
    /// Whether every bucket name is a constant scalar.
    pub(crate) scalar_names: bool,
}

/// Why a flag's targeting does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CompileError {
    UnknownOperator(String),
    MissingRef(String),
    RefCycle(String),
    TooManyNodes(usize),
    TooDeep(usize),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::UnknownOperator(op) => write!(
                f,
                "unknown JsonLogic operator {op:?}; use one of flagd's (see flagd.dev/reference/custom-operations)"
            ),
            CompileError::MissingRef(name) => write!(
                f,
                "\"$ref\" names {name:?}, which is not in \"$evaluators\"; add it there or fix the name"
            ),
            CompileError::RefCycle(name) => write!(
                f,
                "\"$ref\" to {name:?} refers back to itself; break the cycle in \"$evaluators\""
            ),
            CompileError::TooManyNodes(max) => write!(
                f,
                "the targeting expands to more than {max} expression nodes (with its \"$ref\"s); simplify it or raise FlagdLimits::max_nodes_per_flag"
            ),
            CompileError::TooDeep(max) => write!(
                f,
                "the targeting nests deeper than {max} levels (with its \"$ref\"s); flatten it or raise FlagdLimits::max_depth"
            ),
        }
    }
}

/// Compiles one flag's targeting.
#[derive(Debug)]
pub(crate) struct Compiler<'e> {
    evaluators: Option<&'e Map<String, Value>>,
    /// The flag whose targeting this is (`$flagd.flagKey` is a constant of it).
    flag_key: &'e str,
    max_nodes: usize,
    max_depth: usize,
    nodes: usize,
    /// `$ref`s being expanded, for cycles.
    refs: Vec<&'e str>,
}

impl<'e> Compiler<'e> {
    pub(crate) fn new(
        evaluators: Option<&'e Map<String, Value>>,
        flag_key: &'e str,
        max_nodes: usize,
        max_depth: usize,
    ) -> Compiler<'e> {
        Compiler {
            evaluators,
            flag_key,
            max_nodes,
            max_depth,
            nodes: 0,
            refs: Vec::new(),
        }
    }

    /// Expression nodes made so far (for the file-wide budget).
    pub(crate) fn nodes(&self) -> usize {
        self.nodes
    }

    pub(crate) fn compile(&mut self, v: &'e Value) -> Result<Node, CompileError> {
        self.node(v, 0)
    }

    fn node(&mut self, v: &'e Value, depth: usize) -> Result<Node, CompileError> {
        if depth > self.max_depth {
            return Err(CompileError::TooDeep(self.max_depth));
        }
        // Constants count by their size too: a `$ref` copies its evaluator's constants each
        // time it is used, so a large literal behind many `$ref`s must meet the budget.
        self.nodes += 1 + match v {
            Value::String(s) => s.len() / 64,
            _ => 0,
        };
        if self.nodes > self.max_nodes {
            return Err(CompileError::TooManyNodes(self.max_nodes));
        }
        match v {
            Value::Array(items) => {
                if items.iter().all(is_data) {
                    self.nodes += data_weight(v);
                    if self.nodes > self.max_nodes {
                        return Err(CompileError::TooManyNodes(self.max_nodes));
                    }
                    return Ok(Node::Lit(v.clone()));
                }
                Ok(Node::Array(self.list(items, depth)?))
            }
            Value::Object(map) if map.len() == 1 => {
                let Some((op, arg)) = map.iter().next() else {
                    return Ok(Node::Lit(v.clone()));
                };
                self.operation(op, arg, depth)
            }
            Value::Object(_) => {
                self.nodes += data_weight(v);
                if self.nodes > self.max_nodes {
                    return Err(CompileError::TooManyNodes(self.max_nodes));
                }
                Ok(Node::Lit(v.clone()))
            }
            Value::Null => Ok(Node::Null),
            Value::Bool(b) => Ok(Node::Bool(*b)),
            Value::Number(n) => Ok(Node::Num(n.as_f64().unwrap_or(f64::NAN))),
            Value::String(s) => Ok(Node::Str(s.as_str().into())),
        }
    }

    fn list(&mut self, items: &'e [Value], depth: usize) -> Result<Box<[Node]>, CompileError> {
        items.iter().map(|i| self.node(i, depth + 1)).collect()
    }

    /// An operation's arguments: an array, or a lone value taken as one argument.
    fn args(&mut self, arg: &'e Value, depth: usize) -> Result<Box<[Node]>, CompileError> {
        match arg {
            Value::Array(items) => self.list(items, depth),
            other => Ok(Box::new([self.node(other, depth + 1)?])),
        }
    }

    fn operation(
        &mut self,
        op: &'e str,
        arg: &'e Value,
        depth: usize,
    ) -> Result<Node, CompileError> {
        let simple = |o: Op, c: &mut Compiler<'e>| Ok(Node::Op(o, c.args(arg, depth)?));
        let compare = |o: Op, c: &mut Compiler<'e>| {
            let args = c.args(arg, depth)?;
            if args.len() != 2 {
                return Ok(Node::Op(o, args));
            }
            let mut args = args.into_vec().into_iter();
            match (args.next(), args.next()) {
                (Some(a), Some(b)) => Ok(Node::Cmp(o, Box::new((a, b)))),
                _ => Ok(Node::Abort),
            }
        };
        match op {
            "$ref" => self.reference(arg, depth),
            "var" => self.var(arg, depth),
            "if" | "?:" => Ok(Node::If(self.args(arg, depth)?)),
            "and" => Ok(Node::And(self.args(arg, depth)?)),
            "or" => Ok(Node::Or(self.args(arg, depth)?)),
            "==" => compare(Op::Eq, self),
            "!=" => compare(Op::Ne, self),
            "===" => compare(Op::StrictEq, self),
            "!==" => compare(Op::StrictNe, self),
            "!" => simple(Op::Not, self),
            "!!" => simple(Op::Truthy, self),
            "<" => compare(Op::Lt, self),
            "<=" => compare(Op::Le, self),
            ">" => compare(Op::Gt, self),
            ">=" => compare(Op::Ge, self),
            "in" => simple(Op::In, self),
            "cat" => simple(Op::Cat, self),
            "substr" => simple(Op::Substr, self),
            "+" => simple(Op::Add, self),
            "-" => simple(Op::Sub, self),
            "*" => simple(Op::Mul, self),
            "/" => simple(Op::Div, self),
            "%" => simple(Op::Mod, self),
            "min" => simple(Op::Min, self),
            "max" => simple(Op::Max, self),
            "merge" => simple(Op::Merge, self),
            "missing" => simple(Op::Missing, self),
            "missing_some" => simple(Op::MissingSome, self),
            "log" => simple(Op::Log, self),
            "starts_with" | "ends_with" => {
                let args = self.args(arg, depth)?;
                if args.len() != 2 {
                    return Ok(Node::Abort);
                }
                let o = if op == "starts_with" {
                    Op::StartsWith
                } else {
                    Op::EndsWith
                };
                Ok(Node::Op(o, args))
            }
            "map" => Ok(Node::Iter(IterOp::Map, self.args(arg, depth)?)),
            "filter" => Ok(Node::Iter(IterOp::Filter, self.args(arg, depth)?)),
            "reduce" => Ok(Node::Iter(IterOp::Reduce, self.args(arg, depth)?)),
            "all" => Ok(Node::Iter(IterOp::All, self.args(arg, depth)?)),
            "some" => Ok(Node::Iter(IterOp::Some, self.args(arg, depth)?)),
            "none" => Ok(Node::Iter(IterOp::None, self.args(arg, depth)?)),
            "sem_ver" => self.sem_ver(arg, depth),
            "fractional" => self.fractional(arg, depth),
            other => Err(CompileError::UnknownOperator(other.to_owned())),
        }
    }

    /// `{"$ref": "name"}`: the evaluator's expression in its place, as flagd substitutes it.
    fn reference(&mut self, arg: &'e Value, depth: usize) -> Result<Node, CompileError> {
        let name = match arg {
            Value::String(s) => s.as_str(),
            other => return Err(CompileError::MissingRef(other.to_string())),
        };
        let Some(body) = self.evaluators.and_then(|e| e.get(name)) else {
            return Err(CompileError::MissingRef(name.to_owned()));
        };
        if self.refs.contains(&name) {
            return Err(CompileError::RefCycle(name.to_owned()));
        }
        self.refs.push(name);
        let node = self.node(body, depth + 1);
        self.refs.pop();
        node
    }

    fn var(&mut self, arg: &'e Value, depth: usize) -> Result<Node, CompileError> {
        let (path, default) = match arg {
            Value::Array(items) => (items.first(), items.get(1)),
            other => (Some(other), None),
        };
        let default = match default {
            Some(d) => Some(Box::new(self.node(d, depth + 1)?)),
            None => None,
        };
        let text = match path {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Ok(Node::VarDyn {
                    path: Box::new(self.node(other, depth + 1)?),
                    default,
                });
            }
        };
        let path = split_path(&text);
        match path.as_slice() {
            [flagd, prop] if &**flagd == "$flagd" && &**prop == "flagKey" => Ok(Node::FlagKey),
            [flagd, prop] if &**flagd == "$flagd" && &**prop == "timestamp" => Ok(Node::Timestamp),
            [name] => Ok(Node::Var1 {
                name: name.clone(),
                default,
            }),
            _ => Ok(Node::Var {
                path: path.into_boxed_slice(),
                default,
            }),
        }
    }

    fn sem_ver(&mut self, arg: &'e Value, depth: usize) -> Result<Node, CompileError> {
        let mut args = self.args(arg, depth)?.into_vec();
        if args.len() != 3 {
            return Ok(Node::Abort);
        }
        let (Some(target), Some(op), Some(version)) = (args.pop(), args.pop(), args.pop()) else {
            return Ok(Node::Abort);
        };
        let op = match op {
            Node::Str(s) => match SemOp::parse(&s) {
                Some(op) => Ok(op),
                None => return Ok(Node::Abort),
            },
            c if c.is_scalar() || matches!(c, Node::Lit(_)) => return Ok(Node::Abort),
            computed => Err(computed),
        };
        let target = match target {
            Node::Str(s) => match OwnedSemver::parse_flagd(&s) {
                Some(v) => Ok(v),
                None => return Ok(Node::Abort),
            },
            c if c.is_scalar() || matches!(c, Node::Lit(_)) => return Ok(Node::Abort),
            computed => Err(computed),
        };
        Ok(Node::SemVer(Box::new(SemVerNode {
            version,
            op,
            target,
        })))
    }

    fn fractional(&mut self, arg: &'e Value, depth: usize) -> Result<Node, CompileError> {
        let Value::Array(items) = arg else {
            // Still compiled, so an unknown operator inside is a parse error.
            self.node(arg, depth + 1)?;
            return Ok(Node::Abort);
        };
        let mut flag_key_hash = Murmur3::new(0);
        flag_key_hash.write(self.flag_key.as_bytes());
        let (bucketing, rest) = match items.split_first() {
            // A leading array is already a bucket; a leading `null` stands for the default.
            Some((Value::Array(_), _)) | None => (Bucketing::Default, items.as_slice()),
            Some((Value::Null, rest)) => (Bucketing::Default, rest),
            Some((first, rest)) => (self.bucketing(first, depth + 1)?, rest),
        };
        let mut buckets = Vec::with_capacity(rest.len());
        let mut abort = rest.is_empty();
        for bucket in rest {
            match bucket {
                Value::Array(parts) if !parts.is_empty() => {
                    let mut parts = parts.iter();
                    let (Some(name), weight) = (parts.next(), parts.next()) else {
                        abort = true;
                        continue;
                    };
                    let name = self.node(name, depth + 2)?;
                    // A constant array or object is never a variant name.
                    if matches!(name, Node::Lit(_)) {
                        abort = true;
                    }
                    let weight = match weight {
                        Some(w) => Some(self.node(w, depth + 2)?),
                        None => None,
                    };
                    buckets.push((name, weight));
                }
                other => {
                    self.node(other, depth + 1)?;
                    abort = true;
                }
            }
        }
        if abort {
            return Ok(Node::Abort);
        }
        // Constant weights: checked and summed now, as flagd would on every evaluation.
        let mut fixed = Some((Vec::with_capacity(buckets.len()), 0u64));
        for (_, weight) in &buckets {
            let w = match weight {
                None | Some(Node::Null) => Some(1),
                Some(Node::Num(n)) => match weight_of(*n) {
                    Some(w) => Some(w),
                    None => return Ok(Node::Abort),
                },
                Some(n) if n.is_scalar() || matches!(n, Node::Lit(_)) => {
                    return Ok(Node::Abort);
                }
                Some(_) => None,
            };
            match (w, &mut fixed) {
                (Some(w), Some((ends, total))) => {
                    *total += w;
                    if *total > MAX_WEIGHT {
                        return Ok(Node::Abort);
                    }
                    ends.push(*total);
                }
                _ => fixed = None,
            }
        }
        if let Some((_, 0)) = fixed {
            return Ok(Node::Abort);
        }
        let scalar_names = buckets.iter().all(|(n, _)| n.is_scalar());
        Ok(Node::Fractional(Box::new(Fractional {
            bucketing,
            flag_key_hash,
            buckets: buckets.into_boxed_slice(),
            fixed: fixed.map(|(ends, total)| (ends.into_boxed_slice(), total)),
            scalar_names,
        })))
    }

    /// The bucketing value: a `cat` has its constant start hashed now.
    fn bucketing(&mut self, first: &'e Value, depth: usize) -> Result<Bucketing, CompileError> {
        let node = self.node(first, depth)?;
        let Node::Op(Op::Cat, parts) = node else {
            return Ok(Bucketing::Expr(node));
        };
        let mut prefix = Murmur3::new(0);
        let mut parts = parts.into_vec().into_iter().peekable();
        let mut text = String::new();
        while let Some(part) = parts.next_if(|p| p.is_scalar() || matches!(p, Node::FlagKey)) {
            text.clear();
            match part {
                Node::FlagKey => text.push_str(self.flag_key),
                Node::Null => text.push_str("null"),
                Node::Bool(b) => text.push_str(if b { "true" } else { "false" }),
                Node::Num(n) => Val::Num(n).write_js(&mut text),
                Node::Str(s) => text.push_str(&s),
                _ => {}
            }
            prefix.write(text.as_bytes());
        }
        Ok(Bucketing::Cat {
            prefix,
            rest: parts.collect(),
        })
    }
}

/// The largest total weight flagd accepts (`math.MaxInt32`).
pub(crate) const MAX_WEIGHT: u64 = i32::MAX as u64;

/// A weight: a whole number in `0..=MAX_WEIGHT`.
pub(crate) fn weight_of(n: f64) -> Option<u64> {
    (n.fract() == 0.0 && (0.0..=MAX_WEIGHT as f64).contains(&n)).then_some(n as u64)
}

/// The budget a constant takes: one per value (and per key) plus one per 64 bytes of text.
fn data_weight(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(data_weight).sum::<usize>(),
        Value::Object(m) => {
            1 + m
                .iter()
                .map(|(k, v)| 1 + k.len() / 64 + data_weight(v))
                .sum::<usize>()
        }
        Value::String(s) => 1 + s.len() / 64,
        _ => 1,
    }
}

/// Whether a JSON value is plain data (holds no operation), so it compiles to a constant.
fn is_data(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().all(is_data),
        Value::Object(map) => map.len() != 1,
        _ => true,
    }
}

/// A `var` path: `""` is the whole context (no segments), else its dot-separated segments.
pub(crate) fn split_path(path: &str) -> Vec<Box<str>> {
    if path.is_empty() {
        return Vec::new();
    }
    path.split('.').map(Box::from).collect()
}
