//! The values a targeting expression computes with, and JsonLogic's coercions (JavaScript's,
//! as jsonlogic.com defines the operators): truthiness, loose and strict equality, relational
//! comparison, `ToNumber`, `parseFloat` and `ToString`.
//!
//! A value borrows from the compiled expression or the evaluation context wherever it can, so
//! the common paths (`var`, comparisons, `if`, `in`, string operators) allocate nothing; only
//! `cat`, `substr` of a computed string, `merge`, a non-empty `missing` and arrays built from
//! computed elements own their result.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::Value;

/// A JsonLogic value during evaluation.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    /// A string computed during evaluation (`cat`, `substr`, number formatting).
    String(String),
    /// An array or object borrowed from the expression or the context.
    Json(&'a Value),
    /// An array computed during evaluation.
    List(Vec<Val<'a>>),
}

impl<'a> Val<'a> {
    /// A borrowed JSON value: scalars become scalars, arrays and objects stay JSON.
    #[inline]
    pub(crate) fn of(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Val::Str(s),
            Value::Array(_) | Value::Object(_) => Val::Json(v),
        }
    }

    /// The string, when this is one.
    #[inline]
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            Val::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    fn is_array(&self) -> bool {
        matches!(self, Val::List(_) | Val::Json(Value::Array(_)))
    }

    /// The elements when this is an array.
    pub(crate) fn elements(&self) -> Option<Elements<'_, 'a>> {
        match self {
            Val::List(items) => Some(Elements::List(items.iter())),
            Val::Json(Value::Array(items)) => Some(Elements::Json(items.iter())),
            _ => None,
        }
    }

    /// JsonLogic truthiness: `0`, `NaN`, `""`, `null`, `false` and the empty array are false;
    /// everything else (`"0"`, `{}`, `[0]`) is true.
    #[inline]
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::String(s) => !s.is_empty(),
            Val::Json(Value::Array(a)) => !a.is_empty(),
            Val::Json(_) => true,
            Val::List(items) => !items.is_empty(),
        }
    }

    /// JavaScript `ToNumber` (`Number(x)`): `null` → 0, booleans → 0/1, strings parsed (blank →
    /// 0, malformed → NaN), arrays through their string form, objects → NaN.
    pub(crate) fn to_number(&self) -> f64 {
        match self {
            Val::Null => 0.0,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Num(n) => *n,
            Val::Str(s) => string_to_number(s),
            Val::String(s) => string_to_number(s),
            Val::Json(Value::Object(_)) => f64::NAN,
            Val::Json(_) | Val::List(_) => string_to_number(&self.to_js_string()),
        }
    }

    /// JavaScript `parseFloat(x)`, which jsonlogic.js's `+` and `*` use: the longest numeric
    /// prefix of the string form; NaN when there is none (so `null` and `true` are NaN).
    pub(crate) fn parse_float(&self) -> f64 {
        match self {
            Val::Num(n) => *n,
            Val::Str(s) => parse_float_prefix(s),
            Val::String(s) => parse_float_prefix(s),
            Val::Null | Val::Bool(_) => f64::NAN,
            _ => parse_float_prefix(&self.to_js_string()),
        }
    }

    /// JavaScript `ToString`, written into `out` (arrays join their elements with `,`, `null`
    /// inside an array is empty, objects are `[object Object]`).
    pub(crate) fn write_js(&self, out: &mut String) {
        match self {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Num(n) => write_number(*n, out),
            Val::Str(s) => out.push_str(s),
            Val::String(s) => out.push_str(s),
            Val::Json(Value::Object(_)) => out.push_str("[object Object]"),
            Val::Json(_) | Val::List(_) => {
                if let Some(items) = self.elements() {
                    for (i, item) in items.enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        if !item.is_null() {
                            item.write_js(out);
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn to_js_string(&self) -> String {
        let mut s = String::new();
        self.write_js(&mut s);
        s
    }

    /// JavaScript `===`: same type and value; arrays and objects are never equal (they are
    /// compared by identity in JavaScript, and every evaluation builds new ones).
    #[inline]
    pub(crate) fn strict_eq(&self, other: &Val<'_>) -> bool {
        if let (Val::Str(a), Val::Str(b)) = (self, other) {
            return a == b;
        }
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Num(a), Val::Num(b)) => a == b,
            _ => match (self.as_str(), other.as_str()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }

    /// JavaScript `==` (abstract equality).
    #[inline]
    pub(crate) fn loose_eq(&self, other: &Val<'_>) -> bool {
        // The common case first: a string attribute against a string constant.
        if let (Val::Str(a), Val::Str(b)) = (self, other) {
            return a == b;
        }
        self.loose_eq_slow(other)
    }

    fn loose_eq_slow(&self, other: &Val<'_>) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Null, _) | (_, Val::Null) => false,
            (Val::Num(a), Val::Num(b)) => a == b,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            // A boolean compares as a number.
            (Val::Bool(_), _) => Val::Num(self.to_number()).loose_eq(other),
            (_, Val::Bool(_)) => self.loose_eq(&Val::Num(other.to_number())),
            (Val::Json(_) | Val::List(_), Val::Json(_) | Val::List(_)) => false,
            // An array or object against a primitive: its primitive (string) form.
            (Val::Json(_) | Val::List(_), _) => Val::String(self.to_js_string()).loose_eq(other),
            (_, Val::Json(_) | Val::List(_)) => self.loose_eq(&Val::String(other.to_js_string())),
            _ => match (self.as_str(), other.as_str()) {
                (Some(a), Some(b)) => a == b,
                // A string against a number: the string as a number.
                _ => self.to_number() == other.to_number(),
            },
        }
    }

    /// JavaScript's relational comparison (`<` and friends): two strings compare as strings,
    /// anything else as numbers; `None` when a NaN makes every comparison false.
    pub(crate) fn compare(&self, other: &Val<'_>) -> Option<Ordering> {
        let prim_a;
        let prim_b;
        // Arrays and objects compare through their string form.
        let a: &Val<'_> = if matches!(self, Val::Json(_) | Val::List(_)) {
            prim_a = Val::String(self.to_js_string());
            &prim_a
        } else {
            self
        };
        let b: &Val<'_> = if matches!(other, Val::Json(_) | Val::List(_)) {
            prim_b = Val::String(other.to_js_string());
            &prim_b
        } else {
            other
        };
        match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => Some(compare_utf16(x, y)),
            _ => a.to_number().partial_cmp(&b.to_number()),
        }
    }

    /// The variant a targeting result names: strings as they are, booleans as `"true"` /
    /// `"false"`, numbers in their JSON form (flagd strips the quotes of the JSON result).
    pub(crate) fn variant_name<'s>(&'s self, buf: &'s mut String) -> Option<&'s str> {
        match self {
            Val::Str(s) => Some(s),
            Val::String(s) => Some(s),
            Val::Bool(true) => Some("true"),
            Val::Bool(false) => Some("false"),
            Val::Num(n) if n.is_finite() => {
                write_number(*n, buf);
                Some(buf)
            }
            _ => None,
        }
    }

    /// An owned JSON form (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => number_json(*n),
            Val::Str(s) => Value::String((*s).to_owned()),
            Val::String(s) => Value::String(s.clone()),
            Val::Json(v) => (*v).clone(),
            Val::List(items) => Value::Array(items.iter().map(Val::to_json).collect()),
        }
    }

    /// Whether this is an array (for `merge` and `missing`).
    pub(crate) fn is_list(&self) -> bool {
        self.is_array()
    }
}

#[cfg(test)]
fn number_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// The elements of an array value.
#[derive(Debug)]
pub(crate) enum Elements<'v, 'a> {
    List(std::slice::Iter<'v, Val<'a>>),
    Json(std::slice::Iter<'a, Value>),
}

impl<'a> Iterator for Elements<'_, 'a> {
    type Item = Val<'a>;

    fn next(&mut self) -> Option<Val<'a>> {
        match self {
            Elements::List(it) => it.next().cloned(),
            Elements::Json(it) => it.next().map(Val::of),
        }
    }
}

/// JavaScript's string order compares UTF-16 code units; UTF-8 byte order agrees except where
/// a character above U+FFFF meets one in U+E000..=U+FFFF.
fn compare_utf16(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

fn is_js_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// JavaScript `Number(string)`.
pub(crate) fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(is_js_space);
    if t.is_empty() {
        return 0.0;
    }
    let (sign, body) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, t.get(1..).unwrap_or("")),
        Some(b'+') => (1.0, t.get(1..).unwrap_or("")),
        _ => (1.0, t),
    };
    if body == "Infinity" {
        return sign * f64::INFINITY;
    }
    // Hex, octal and binary literals take no sign in JavaScript.
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(digits) = t.strip_prefix(prefix) {
            return u64::from_str_radix(digits, radix).map_or(f64::NAN, |v| v as f64);
        }
    }
    // Rust also reads "inf", "nan" and "infinity", which JavaScript does not.
    if !body
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        || !body.bytes().any(|b| b.is_ascii_digit())
    {
        return f64::NAN;
    }
    t.parse::<f64>().unwrap_or(f64::NAN)
}

/// JavaScript `parseFloat(string)`: the longest prefix (after leading spaces) that reads as a
/// decimal number.
fn parse_float_prefix(s: &str) -> f64 {
    let t = s.trim_start_matches(is_js_space);
    let bytes = t.as_bytes();
    let mut end = 0;
    let mut i = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        i = 1;
    }
    if t.get(i..).is_some_and(|r| r.starts_with("Infinity")) {
        return if bytes.first() == Some(&b'-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    let mut digits = false;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
        digits = true;
        end = i;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
            digits = true;
            end = i;
        }
    }
    if !digits {
        return f64::NAN;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut j = end + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let start = j;
        while bytes.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j > start {
            end = j;
        }
    }
    t.get(..end)
        .and_then(|p| p.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// JavaScript's `Number.prototype.toString()` for the values flags meet: integers without a
/// fraction, others in Rust's shortest round-trip form (which writes numbers of 1e21 and above,
/// and below 1e-6, in full where JavaScript uses an exponent).
pub(crate) fn write_number(n: f64, out: &mut String) {
    if n.is_nan() {
        out.push_str("NaN");
    } else if n.is_infinite() {
        out.push_str(if n > 0.0 { "Infinity" } else { "-Infinity" });
    } else if n == 0.0 {
        out.push('0');
    } else if n.fract() == 0.0 && n.abs() < 1e21 {
        let _ = write!(out, "{n:.0}");
    } else {
        let _ = write!(out, "{n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(j: &Value) -> Val<'_> {
        Val::of(j)
    }

    #[test]
    fn truthiness_follows_jsonlogic() {
        for (j, want) in [
            (json!(null), false),
            (json!(false), false),
            (json!(0), false),
            (json!(0.0), false),
            (json!(""), false),
            (json!([]), false),
            (json!("0"), true),
            (json!({}), true),
            (json!([0]), true),
            (json!(-1), true),
            (json!("false"), true),
        ] {
            assert_eq!(v(&j).truthy(), want, "{j}");
        }
        assert!(!Val::Num(f64::NAN).truthy());
    }

    #[test]
    fn loose_equality_is_javascripts() {
        let cases = [
            (json!(1), json!("1"), true),
            (json!(0), json!(""), true),
            (json!(0), json!(false), true),
            (json!(1), json!(true), true),
            (json!("1"), json!(true), true),
            (json!(null), json!(0), false),
            (json!(null), json!(null), true),
            (json!(null), json!(""), false),
            (json!("abc"), json!("abc"), true),
            (json!("abc"), json!("ABC"), false),
            (json!([1, 2]), json!("1,2"), true),
            (json!([]), json!(0), true),
            (json!([]), json!([]), false),
            (json!("1.0"), json!(1), true),
            (json!(" 2 "), json!(2), true),
            (json!("x"), json!(0), false),
        ];
        for (a, b, want) in cases {
            assert_eq!(v(&a).loose_eq(&v(&b)), want, "{a} == {b}");
            assert_eq!(v(&b).loose_eq(&v(&a)), want, "{b} == {a}");
        }
    }

    #[test]
    fn strict_equality_needs_the_same_type() {
        assert!(v(&json!(1)).strict_eq(&v(&json!(1.0))));
        assert!(!v(&json!(1)).strict_eq(&v(&json!("1"))));
        assert!(!v(&json!(null)).strict_eq(&v(&json!(false))));
        assert!(Val::String("a".into()).strict_eq(&Val::Str("a")));
        assert!(!v(&json!([])).strict_eq(&v(&json!([]))));
    }

    #[test]
    fn relational_comparison() {
        let lt = |a: Value, b: Value| v(&a).compare(&v(&b)) == Some(Ordering::Less);
        assert!(lt(json!(1), json!(2)));
        assert!(
            lt(json!("10"), json!("9")),
            "two strings compare as strings"
        );
        assert!(!lt(json!(10), json!("9")), "a number makes it numeric");
        assert!(lt(json!(null), json!(1)));
        assert!(lt(json!(false), json!(true)));
        assert_eq!(v(&json!("x")).compare(&v(&json!(1))), None);
    }

    #[test]
    fn number_conversions() {
        assert_eq!(string_to_number(" 12 "), 12.0);
        assert_eq!(string_to_number(""), 0.0);
        assert_eq!(string_to_number("0x1f"), 31.0);
        assert_eq!(string_to_number("-Infinity"), f64::NEG_INFINITY);
        assert!(string_to_number("12px").is_nan());
        assert!(string_to_number("inf").is_nan());
        assert!(string_to_number("nan").is_nan());
        assert_eq!(parse_float_prefix("12px"), 12.0);
        assert_eq!(parse_float_prefix("  -1.5e3x"), -1500.0);
        assert_eq!(parse_float_prefix("1e"), 1.0);
        assert!(parse_float_prefix("px").is_nan());
        assert!(Val::Null.parse_float().is_nan());
        let s = |n: f64| {
            let mut out = String::new();
            write_number(n, &mut out);
            out
        };
        assert_eq!(s(1.0), "1");
        assert_eq!(s(-0.0), "0");
        assert_eq!(s(1.5), "1.5");
        assert_eq!(s(0.1 + 0.2), "0.30000000000000004");
    }
}
