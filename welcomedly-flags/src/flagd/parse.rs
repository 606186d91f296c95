//! Reading a flagd flag file (flagd.dev/reference/flag-definitions, schemas `flags.json` and
//! `targeting.json`) into compiled flags.
//!
//! A file that is not JSON, is not an object, has no `flags` object, or passes a bound of
//! [`FlagdLimits`] is refused as a whole. A flag that breaks the schema or whose targeting does
//! not compile (unknown operator, `$ref` to a missing evaluator, expression too large) is kept
//! as a per-flag `PARSE_ERROR`: the rest of the file loads.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use serde_json::{Map, Value};

use super::compile::{Compiler, Node};
use super::{FlagProblem, FlagdError, FlagdLimits};
use crate::model::FlagType;

/// A flag's variants: names and values by id, looked up by name.
#[derive(Debug)]
pub(crate) struct Variants {
    pub(crate) list: Box<[(Box<str>, Value)]>,
    /// For many variants; a few are scanned.
    by_name: Option<HashMap<Box<str>, u32, RandomState>>,
}

impl Variants {
    fn new(list: Vec<(Box<str>, Value)>) -> Variants {
        let by_name = (list.len() > 8).then(|| {
            (0u32..)
                .zip(&list)
                .map(|(i, (name, _))| (name.clone(), i))
                .collect()
        });
        Variants {
            list: list.into_boxed_slice(),
            by_name,
        }
    }

    #[inline]
    pub(crate) fn find(&self, name: &str) -> Option<u32> {
        match &self.by_name {
            Some(map) => map.get(name).copied(),
            None => (0u32..)
                .zip(self.list.iter())
                .find(|(_, (n, _))| **n == *name)
                .map(|(i, _)| i),
        }
    }
}

/// A flag that compiled.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) enabled: bool,
    /// `None` for a flag without variants.
    pub(crate) kind: Option<FlagType>,
    pub(crate) variants: Variants,
    pub(crate) default_variant: Option<u32>,
    /// `None`: no targeting (or `{}`), the default variant is static.
    pub(crate) targeting: Option<Node>,
    /// Flag-set metadata overlaid with the flag's own.
    pub(crate) metadata: Map<String, Value>,
}

/// One flag of the file: compiled, or the reason it is a `PARSE_ERROR`.
#[derive(Debug)]
pub(crate) struct FlagdFlag {
    pub(crate) key: Box<str>,
    pub(crate) body: Result<Compiled, Box<str>>,
}

/// The whole file, compiled.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) flags: Vec<FlagdFlag>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) problems: Vec<FlagProblem>,
}

pub(crate) fn parse(text: &str, limits: &FlagdLimits) -> Result<Parsed, FlagdError> {
    if text.len() > limits.max_bytes {
        return Err(FlagdError::TooLarge {
            size: text.len(),
            max: limits.max_bytes,
        });
    }
    let root: Value = serde_json::from_str(text).map_err(|e| FlagdError::Syntax(e.to_string()))?;
    let Value::Object(root) = root else {
        return Err(FlagdError::Shape(
            "the file is not a JSON object; a flagd file is {\"flags\": {…}}".into(),
        ));
    };
    let Some(Value::Object(flags)) = root.get("flags") else {
        return Err(FlagdError::Shape(
            "\"flags\" is missing or not an object; a flagd file is {\"flags\": {\"<key>\": {…}}}"
                .into(),
        ));
    };
    if flags.len() > limits.max_flags {
        return Err(FlagdError::TooManyFlags {
            count: flags.len(),
            max: limits.max_flags,
        });
    }
    let evaluators = match root.get("$evaluators") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => Some(e),
        Some(_) => {
            return Err(FlagdError::Shape(
                "\"$evaluators\" is not an object; it maps names to JsonLogic expressions".into(),
            ));
        }
    };
    let metadata = match root.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => {
            check_metadata(m).map_err(|e| FlagdError::Shape(format!("flag-set {e}")))?;
            m.clone()
        }
        Some(_) => {
            return Err(FlagdError::Shape(
                "the flag-set \"metadata\" is not an object".into(),
            ));
        }
    };

    let mut out = Parsed {
        flags: Vec::with_capacity(flags.len()),
        metadata,
        problems: Vec::new(),
    };
    let mut nodes = 0usize;
    for (key, def) in flags {
        let budget = limits
            .max_nodes_per_flag
            .min(limits.max_nodes.saturating_sub(nodes));
        let mut compiler = Compiler::new(evaluators, key, budget, limits.max_depth);
        let body = flag(def, &mut compiler, &out.metadata);
        nodes += compiler.nodes();
        if nodes >= limits.max_nodes {
            return Err(FlagdError::TooManyNodes {
                max: limits.max_nodes,
            });
        }
        if let Err(message) = &body {
            out.problems.push(FlagProblem {
                flag: key.clone(),
                message: message.to_string(),
            });
        }
        out.flags.push(FlagdFlag {
            key: key.as_str().into(),
            body,
        });
    }
    Ok(out)
}

/// Metadata values are strings, numbers or booleans (the schema's `metadata`).
fn check_metadata(m: &Map<String, Value>) -> Result<(), String> {
    match m
        .iter()
        .find(|(_, v)| !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)))
    {
        Some((k, _)) => Err(format!(
            "metadata {k:?} is not a string, number or boolean; flagd metadata holds only those"
        )),
        None => Ok(()),
    }
}

fn flag<'e>(
    def: &'e Value,
    compiler: &mut Compiler<'e>,
    set_metadata: &Map<String, Value>,
) -> Result<Compiled, Box<str>> {
    let Value::Object(def) = def else {
        return Err(
            "the flag is not an object; give it \"state\", \"variants\" and \"defaultVariant\""
                .into(),
        );
    };
    let enabled = match def.get("state") {
        Some(Value::String(s)) if s == "ENABLED" => true,
        Some(Value::String(s)) if s == "DISABLED" => false,
        _ => {
            return Err(
                "\"state\" is missing or not \"ENABLED\" / \"DISABLED\"; set one of the two".into(),
            );
        }
    };
    let Some(Value::Object(variants)) = def.get("variants") else {
        return Err("\"variants\" is missing or not an object; map variant names to values".into());
    };
    let mut kind: Option<FlagType> = None;
    for (name, v) in variants {
        let Some(t) = FlagType::of(v) else {
            return Err(format!(
                "variant {name:?} is null; variants are booleans, strings, numbers or objects"
            )
            .into());
        };
        kind = match kind {
            None => Some(t),
            Some(k) => match k.join(t) {
                Some(j) => Some(j),
                None => {
                    return Err(format!(
                        "variant {name:?} is {} but others are {}; all variants of a flag have one type",
                        t.describe(),
                        k.describe()
                    )
                    .into());
                }
            },
        };
    }
    let variants = Variants::new(
        variants
            .iter()
            .map(|(n, v)| (n.as_str().into(), v.clone()))
            .collect(),
    );
    let default_variant = match def.get("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => match variants.find(name) {
            Some(i) => Some(i),
            None => {
                return Err(format!(
                    "\"defaultVariant\" {name:?} is not one of the variants; name one of them, or null"
                )
                .into());
            }
        },
        Some(_) => {
            return Err("\"defaultVariant\" is not a string or null".into());
        }
    };
    let targeting = match def.get("targeting") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) if t.is_empty() => None,
        Some(t @ Value::Object(_)) => Some(
            compiler
                .compile(t)
                .map_err(|e| Box::<str>::from(format!("targeting: {e}")))?,
        ),
        Some(_) => {
            return Err("\"targeting\" is not an object; write a JsonLogic expression".into());
        }
    };
    let mut metadata = set_metadata.clone();
    match def.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            check_metadata(m)?;
            // The flag's own metadata wins over the set's.
            for (k, v) in m {
                metadata.insert(k.clone(), v.clone());
            }
        }
        Some(_) => return Err("\"metadata\" is not an object".into()),
    }
    Ok(Compiled {
        enabled,
        kind,
        variants,
        default_variant,
        targeting,
        metadata,
    })
}
