//! The OFREP request body (`{"context": {...}}`) read within bounds and turned into a borrowed
//! [`Context`].

use serde_json::{Map, Value};

use super::OfrepConfig;
use crate::context::{Context, TARGETING_KEY};

/// Why a request body was refused (answered `400`).
#[derive(Debug)]
pub(super) struct BadRequest {
    /// `PARSE_ERROR` (the body is not JSON) or `INVALID_CONTEXT`.
    pub(super) code: &'static str,
    pub(super) details: String,
}

impl BadRequest {
    fn invalid(details: impl Into<String>) -> Self {
        Self {
            code: "INVALID_CONTEXT",
            details: details.into(),
        }
    }
}

/// Parses the body into the context's attributes (an empty body or a missing or `null`
/// `context` is an empty context) and checks the bounds.
pub(super) fn parse(body: &[u8], config: &OfrepConfig) -> Result<Map<String, Value>, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    // serde_json refuses nesting deeper than 128 on its own, so a hostile body cannot exhaust the
    // stack before the depth check below; the body size was bounded by the caller.
    let request: Value = serde_json::from_slice(body).map_err(|e| BadRequest {
        code: "PARSE_ERROR",
        details: format!(
            "the request body is not JSON ({e}): send {{\"context\": {{\"targetingKey\": \"...\", ...}}}}"
        ),
    })?;
    let Value::Object(mut request) = request else {
        return Err(BadRequest::invalid(
            "the request body must be a JSON object: {\"context\": {...}}",
        ));
    };
    let context = match request.remove("context") {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(context)) => context,
        Some(_) => {
            return Err(BadRequest::invalid(
                "\"context\" must be a JSON object of attributes",
            ));
        }
    };
    if context.len() > config.max_attributes {
        return Err(BadRequest::invalid(format!(
            "the context has {} attributes; at most {} are accepted",
            context.len(),
            config.max_attributes
        )));
    }
    match context.get(TARGETING_KEY) {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => {
            return Err(BadRequest::invalid(
                "\"targetingKey\" must be a string (a user id, a session id, ...)",
            ));
        }
    }
    for (name, value) in &context {
        if depth(value, config.max_depth) > config.max_depth {
            return Err(BadRequest::invalid(format!(
                "attribute {:?} nests deeper than {} levels",
                cut(name),
                config.max_depth
            )));
        }
    }
    Ok(context)
}

/// The nesting depth of `value` (a scalar is 1), counted no further than one past `limit`.
fn depth(value: &Value, limit: usize) -> usize {
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return 1,
    };
    if limit == 0 {
        return 1;
    }
    1 + children.map(|v| depth(v, limit - 1)).max().unwrap_or(0)
}

/// An attribute name in an error message, cut to 64 bytes (it is client text).
fn cut(name: &str) -> &str {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or_default()
}

/// The evaluation context the attributes describe. Strings, integers, numbers and booleans
/// are attributes; `null`, arrays and objects are accepted (within the bounds) but no clause of
/// the native model can address them, so they are left out.
pub(super) fn context(attributes: &Map<String, Value>) -> Context<'_> {
    let mut ctx = Context::anonymous();
    for (name, value) in attributes {
        match value {
            Value::String(s) => ctx.set(name, s.as_str()),
            Value::Bool(b) => ctx.set(name, *b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => ctx.set(name, i),
                None => {
                    if let Some(f) = n.as_f64() {
                        ctx.set(name, f);
                    }
                }
            },
            // Nested values are for flagd targeting (`var` paths such as `user.plan`); the
            // native model's clauses do not match them.
            Value::Array(_) | Value::Object(_) => ctx.set(name, value),
            Value::Null => {}
        }
    }
    ctx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::AttrValue;

    fn parse_str(body: &str) -> Result<Map<String, Value>, BadRequest> {
        parse(body.as_bytes(), &OfrepConfig::default())
    }

    #[test]
    fn context_attributes_and_key() {
        let attrs = parse_str(
            r#"{"context": {"targetingKey": "u1", "plan": "pro", "age": 42, "score": 0.5, "beta": true, "tags": ["a"], "gone": null}}"#,
        )
        .unwrap();
        let ctx = context(&attrs);
        assert_eq!(ctx.key(), Some("u1"));
        assert_eq!(ctx.get("plan"), Some(AttrValue::Str("pro")));
        assert_eq!(ctx.get("age"), Some(AttrValue::Int(42)));
        assert_eq!(ctx.get("score"), Some(AttrValue::Float(0.5)));
        assert_eq!(ctx.get("beta"), Some(AttrValue::Bool(true)));
        assert_eq!(
            ctx.get("tags"),
            Some(AttrValue::Json(&serde_json::json!(["a"])))
        );
        assert_eq!(ctx.get("gone"), None);
    }

    #[test]
    fn empty_bodies_and_missing_contexts_are_empty_contexts() {
        for body in ["", "  ", "{}", r#"{"context": null}"#, r#"{"context": {}}"#] {
            assert!(parse_str(body).unwrap().is_empty(), "{body:?}");
        }
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let e = parse_str("{not json").unwrap_err();
        assert_eq!(e.code, "PARSE_ERROR");
        for body in [
            "[]",
            r#"{"context": "u1"}"#,
            r#"{"context": {"targetingKey": 42}}"#,
        ] {
            assert_eq!(
                parse_str(body).unwrap_err().code,
                "INVALID_CONTEXT",
                "{body}"
            );
        }
    }

    #[test]
    fn attribute_count_and_depth_are_bounded() {
        let config = OfrepConfig {
            max_attributes: 2,
            max_depth: 3,
            ..OfrepConfig::default()
        };
        assert!(parse(br#"{"context": {"a": 1, "b": 2}}"#, &config).is_ok());
        let e = parse(br#"{"context": {"a": 1, "b": 2, "c": 3}}"#, &config).unwrap_err();
        assert!(e.details.contains("at most 2"), "{}", e.details);
        assert!(parse(br#"{"context": {"a": {"b": {"c": 1}}}}"#, &config).is_ok());
        let e = parse(br#"{"context": {"a": {"b": {"c": [1]}}}}"#, &config).unwrap_err();
        assert!(e.details.contains("deeper than 3"), "{}", e.details);
        // serde_json's own limit holds far below any stack trouble.
        let deep = format!(
            "{{\"context\": {{\"a\": {}{}}}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(
            parse(deep.as_bytes(), &config).unwrap_err().code,
            "PARSE_ERROR"
        );
    }
}
