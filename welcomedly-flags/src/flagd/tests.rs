//! Operator-level tests: one JsonLogic expression, one context, the value it computes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};

use super::compile::{CompileError, Compiler};
use super::eval::{Abort, Env, eval};
use crate::context::Context;

/// Compiles `logic` (with `evaluators`) and evaluates it against `data` (a JSON object
/// turned into a context) for flag `flag-key`; `Err` is an abort (the `null` result).
fn run_with(logic: Value, data: &Value, evaluators: &Value) -> Result<Value, Abort> {
    let mut c = Compiler::new(evaluators.as_object(), "flag-key", 10_000, 64);
    let node = c.compile(&logic).expect("compiles");
    let ctx = Context::from_json(data);
    let budget = std::cell::Cell::new(super::eval::MAX_ITERATIONS);
    let env = Env::new(&ctx, "flag-key", &budget);
    eval(&node, &env).map(|v| v.to_json())
}

fn run(logic: Value, data: Value) -> Value {
    run_with(logic.clone(), &data, &json!({})).unwrap_or_else(|_| panic!("{logic} aborted"))
}

fn compile_err(logic: Value) -> CompileError {
    let evaluators = json!({ "loop": { "$ref": "loop" } });
    let mut c = Compiler::new(evaluators.as_object(), "flag-key", 10_000, 64);
    c.compile(&logic).expect_err("does not compile")
}

#[test]
fn equality_and_its_coercions() {
    let d = json!({ "n": 1, "s": "1", "b": true, "z": 0, "e": "" });
    for (logic, want) in [
        (json!({ "==": [{ "var": "n" }, { "var": "s" }] }), true),
        (json!({ "==": [{ "var": "n" }, { "var": "b" }] }), true),
        (json!({ "==": [{ "var": "z" }, { "var": "e" }] }), true),
        (json!({ "==": [null, { "var": "nope" }] }), true),
        (json!({ "==": [0, { "var": "nope" }] }), false),
        (json!({ "===": [{ "var": "n" }, { "var": "s" }] }), false),
        (json!({ "===": [{ "var": "n" }, 1.0] }), true),
        (json!({ "!=": [{ "var": "n" }, "1"] }), false),
        (json!({ "!==": [{ "var": "n" }, "1"] }), true),
    ] {
        assert_eq!(run(logic.clone(), d.clone()), json!(want), "{logic}");
    }
}

#[test]
fn logic_and_truthiness() {
    assert_eq!(run(json!({ "!": [[]] }), json!({})), json!(true));
    assert_eq!(run(json!({ "!": "0" }), json!({})), json!(false));
    assert_eq!(run(json!({ "!!": [[0]] }), json!({})), json!(true));
    assert_eq!(run(json!({ "!!": "" }), json!({})), json!(false));
    // and/or return the deciding value, not a boolean.
    assert_eq!(run(json!({ "and": [1, "a", 0, 2] }), json!({})), json!(0));
    assert_eq!(run(json!({ "and": [1, "a"] }), json!({})), json!("a"));
    assert_eq!(run(json!({ "or": [0, "", "x", 1] }), json!({})), json!("x"));
    assert_eq!(run(json!({ "or": [0, false] }), json!({})), json!(false));
    assert_eq!(run(json!({ "and": [] }), json!({})), json!(null));
}

#[test]
fn if_chains() {
    let logic = json!({ "if": [
        { "==": [{ "var": "tier" }, "gold"] }, "g",
        { "==": [{ "var": "tier" }, "silver"] }, "s",
        "other"
    ] });
    assert_eq!(run(logic.clone(), json!({ "tier": "gold" })), json!("g"));
    assert_eq!(run(logic.clone(), json!({ "tier": "silver" })), json!("s"));
    assert_eq!(run(logic, json!({})), json!("other"));
    assert_eq!(run(json!({ "if": [false, "a"] }), json!({})), json!(null));
    assert_eq!(run(json!({ "if": [] }), json!({})), json!(null));
    assert_eq!(run(json!({ "if": ["only"] }), json!({})), json!("only"));
    assert_eq!(run(json!({ "?:": [true, 1, 2] }), json!({})), json!(1));
}

#[test]
fn comparisons_and_between() {
    let d = json!({ "age": 30, "v": "10" });
    for (logic, want) in [
        (json!({ "<": [{ "var": "age" }, 40] }), true),
        (json!({ "<=": [30, { "var": "age" }] }), true),
        (json!({ ">": [{ "var": "age" }, "29"] }), true),
        (json!({ ">=": [{ "var": "age" }, 31] }), false),
        (json!({ "<": [18, { "var": "age" }, 65] }), true),
        (json!({ "<": [30, { "var": "age" }, 65] }), false),
        (json!({ "<=": [30, { "var": "age" }, 30] }), true),
        (json!({ "<": [{ "var": "v" }, "9"] }), true),
        (json!({ "<": [{ "var": "v" }, 9] }), false),
        (json!({ "<": ["abc", 1] }), false),
        (json!({ ">": ["abc", 1] }), false),
    ] {
        assert_eq!(run(logic.clone(), d.clone()), json!(want), "{logic}");
    }
}

#[test]
fn in_strings_and_arrays() {
    let d = json!({ "country": "DE", "email": "a@corp.example", "n": 2 });
    for (logic, want) in [
        (json!({ "in": [{ "var": "country" }, ["DE", "FR"]] }), true),
        (json!({ "in": [{ "var": "country" }, ["de"]] }), false),
        (json!({ "in": ["corp", { "var": "email" }] }), true),
        (json!({ "in": [{ "var": "n" }, [1, 2]] }), true),
        // Array membership is strict: "2" is not 2.
        (json!({ "in": ["2", [1, 2]] }), false),
        (json!({ "in": ["x", { "var": "nope" }] }), false),
        (json!({ "in": [{ "var": "n" }, [1, { "var": "n" }]] }), true),
    ] {
        assert_eq!(run(logic.clone(), d.clone()), json!(want), "{logic}");
    }
}

#[test]
fn var_paths_defaults_and_nesting() {
    let d = json!({
        "user": { "account": { "plan": "pro", "seats": [3, 5] } },
        "flat": "x", "zero": 0, "nul": null, "targetingKey": "tk"
    });
    for (logic, want) in [
        (json!({ "var": "user.account.plan" }), json!("pro")),
        (json!({ "var": ["user.account.plan"] }), json!("pro")),
        (json!({ "var": "user.account.seats.1" }), json!(5)),
        (
            json!({ "var": "user.account" }),
            json!({ "plan": "pro", "seats": [3, 5] }),
        ),
        (
            json!({ "var": ["user.account.missing", "dflt"] }),
            json!("dflt"),
        ),
        (json!({ "var": ["flat.deeper", "dflt"] }), json!("dflt")),
        (json!({ "var": ["zero", 7] }), json!(0)),
        (json!({ "var": ["nul", 7] }), json!(7)),
        (json!({ "var": "targetingKey" }), json!("tk")),
        (
            json!({ "var": { "cat": ["user.", "account.plan"] } }),
            json!("pro"),
        ),
        (json!({ "var": "$flagd.flagKey" }), json!("flag-key")),
        (json!({ "var": "nope" }), json!(null)),
    ] {
        assert_eq!(run(logic.clone(), d.clone()), want, "{logic}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let ts = run(json!({ "var": "$flagd.timestamp" }), json!({}));
    assert!((ts.as_f64().unwrap() - now).abs() <= 5.0, "{ts} vs {now}");
}

#[test]
fn missing_and_missing_some() {
    let d = json!({ "a": 1, "b": "", "c": { "d": 2 } });
    assert_eq!(
        run(
            json!({ "missing": ["a", "b", "x", "c.d", "c.e"] }),
            d.clone()
        ),
        json!(["b", "x", "c.e"])
    );
    assert_eq!(run(json!({ "missing": [] }), d.clone()), json!([]));
    assert_eq!(
        run(json!({ "missing": { "merge": ["a", ["x"]] } }), d.clone()),
        json!(["x"])
    );
    assert_eq!(
        run(json!({ "missing_some": [1, ["a", "x"]] }), d.clone()),
        json!([])
    );
    assert_eq!(
        run(json!({ "missing_some": [2, ["a", "x", "y"]] }), d.clone()),
        json!(["x", "y"])
    );
    // The usual use: a rule only when the attributes are there.
    assert_eq!(
        run(json!({ "if": [{ "missing": ["a"] }, "no", "yes"] }), d),
        json!("yes")
    );
}

#[test]
fn strings_cat_substr() {
    let d = json!({ "name": "welcomedly", "n": 1.5 });
    for (logic, want) in [
        (
            json!({ "cat": ["a", 1, true, null, { "var": "n" }] }),
            json!("a1truenull1.5"),
        ),
        (json!({ "cat": [[1, 2], "x"] }), json!("1,2x")),
        (
            json!({ "substr": [{ "var": "name" }, 3] }),
            json!("comedly"),
        ),
        (json!({ "substr": [{ "var": "name" }, -4] }), json!("edly")),
        (
            json!({ "substr": [{ "var": "name" }, 0, 7] }),
            json!("welcome"),
        ),
        (
            json!({ "substr": [{ "var": "name" }, 1, -3] }),
            json!("elcome"),
        ),
        (json!({ "substr": ["héllo", 1, 3] }), json!("éll")),
        (json!({ "substr": ["abc", 10] }), json!("")),
        (json!({ "substr": [12345, 1, 2] }), json!("23")),
    ] {
        assert_eq!(run(logic.clone(), d.clone()), want, "{logic}");
    }
}

#[test]
fn arithmetic() {
    for (logic, want) in [
        (json!({ "+": [1, "2", 3.5] }), json!(6.5)),
        (json!({ "+": [] }), json!(0)),
        (json!({ "-": [10, "4"] }), json!(6)),
        (json!({ "-": [3] }), json!(-3)),
        (json!({ "*": [2, "3px"] }), json!(6)),
        (json!({ "/": [7, 2] }), json!(3.5)),
        (json!({ "%": [7, 3] }), json!(1)),
        (json!({ "%": [-7, 3] }), json!(-1)),
        (json!({ "min": [3, "1", 2] }), json!(1)),
        (json!({ "max": [3, "10", 2] }), json!(10)),
        (
            json!({ "merge": [1, [2, 3], [[4]]] }),
            json!([1, 2, 3, [4]]),
        ),
        (json!({ "log": "x" }), json!("x")),
    ] {
        assert_eq!(run(logic.clone(), json!({})), want, "{logic}");
    }
    // NaN has no JSON form.
    assert_eq!(run(json!({ "+": ["x"] }), json!({})), json!(null));
    assert_eq!(run(json!({ "/": [1, 0] }), json!({})), json!(null));
}

#[test]
fn starts_with_ends_with() {
    let d = json!({ "email": "bob@corp.example", "num": 123 });
    assert_eq!(
        run(
            json!({ "starts_with": [{ "var": "email" }, "bob@"] }),
            d.clone()
        ),
        json!(true)
    );
    assert_eq!(
        run(
            json!({ "starts_with": [{ "var": "email" }, "alice"] }),
            d.clone()
        ),
        json!(false)
    );
    assert_eq!(
        run(
            json!({ "ends_with": [{ "var": "email" }, ".example"] }),
            d.clone()
        ),
        json!(true)
    );
    // Bad input aborts the targeting (flagd: null → the default variant).
    for bad in [
        json!({ "starts_with": [{ "var": "num" }, "1"] }),
        json!({ "ends_with": [{ "var": "email" }, 3] }),
        json!({ "starts_with": ["abc"] }),
        json!({ "ends_with": ["a", "b", "c"] }),
        json!({ "if": [{ "starts_with": [{ "var": "missing" }, "x"] }, "t", "f"] }),
    ] {
        assert_eq!(run_with(bad.clone(), &d, &json!({})), Err(Abort), "{bad}");
    }
}

#[test]
fn sem_ver_operators() {
    let cases = [
        ("1.2.3", "=", "1.2.3", true),
        ("1.2.3", "=", "v1.2.3", true),
        ("v1.2.3", "!=", "1.2.4", true),
        ("1.2.3", "<", "1.10.0", true),
        ("1.10.0", "<=", "1.10.0", true),
        ("2.0.0", ">", "2.0.0-rc.1", true),
        ("2.0.0-rc.2", ">", "2.0.0-rc.10", false),
        ("2.0.0-alpha", "<", "2.0.0", true),
        ("1.0.0", ">=", "1", true),
        ("1.5.0", "^", "1", true),
        ("2.0.0", "^", "1.9.9", false),
        ("3.0.1", "~", "3.0.0", true),
        ("3.1.0", "~", "3.0.0", false),
        ("1.0.0+build.1", "=", "1.0.0+build.2", true),
        ("1.0.0+other", "=", "1.0.0", true),
        ("1.2", "=", "1.2.0", true),
    ];
    for (a, op, b, want) in cases {
        let logic = json!({ "sem_ver": [{ "var": "v" }, op, b] });
        assert_eq!(run(logic, json!({ "v": a })), json!(want), "{a} {op} {b}");
    }
    // A computed operator.
    let logic = json!({ "sem_ver": [{ "var": "v" }, { "var": "op" }, "1.0.0"] });
    assert_eq!(run(logic, json!({ "v": "1.0.1", "op": ">" })), json!(true));
    for (v, op) in [
        (json!("not-a-version"), json!("=")),
        (json!("2.0.0.0"), json!("=")),
        (json!(1), json!("=")),
        (json!("1.0.0"), json!("===")),
    ] {
        let logic = json!({ "sem_ver": [{ "var": "v" }, { "var": "op" }, "1.0.0"] });
        let d = json!({ "v": v, "op": op });
        assert_eq!(run_with(logic, &d, &json!({})), Err(Abort), "{d}");
    }
    for bad in [
        json!({ "sem_ver": [{ "var": "v" }, "=="] }),
        json!({ "sem_ver": ["1.0.0", "===", "1.0.0"] }),
        json!({ "sem_ver": ["1.0.0", 5, "1.0.0"] }),
    ] {
        assert_eq!(
            run_with(bad.clone(), &json!({}), &json!({})),
            Err(Abort),
            "{bad}"
        );
    }
}

#[test]
fn refs_expand_and_errors_are_reported() {
    let evaluators = json!({
        "a": { "$ref": "b" },
        "b": { "$ref": "c" },
        "c": { "==": [{ "var": "plan" }, "pro"] }
    });
    let logic = json!({ "if": [{ "$ref": "a" }, "yes", "no"] });
    assert_eq!(
        run_with(logic.clone(), &json!({ "plan": "pro" }), &evaluators),
        Ok(json!("yes"))
    );
    assert_eq!(
        run_with(logic, &json!({ "plan": "free" }), &evaluators),
        Ok(json!("no"))
    );
    assert_eq!(
        compile_err(json!({ "$ref": "nope" })),
        CompileError::MissingRef("nope".into())
    );
    assert_eq!(
        compile_err(json!({ "$ref": "loop" })),
        CompileError::RefCycle("loop".into())
    );
    assert_eq!(
        compile_err(json!({ "if": [{ "regex_match": ["a", "b"] }, 1] })),
        CompileError::UnknownOperator("regex_match".into())
    );
    // An unknown operator inside a fractional bucket is still found.
    assert_eq!(
        compile_err(json!({ "fractional": [["a", { "nope": [] }]] })),
        CompileError::UnknownOperator("nope".into())
    );
}

#[test]
fn bounds_on_nodes_and_depth() {
    // A chain where each evaluator uses the next twice: 2^20 nodes once expanded.
    let mut evaluators = serde_json::Map::new();
    for i in 0..20 {
        evaluators.insert(
            format!("e{i}"),
            json!({ "and": [{ "$ref": format!("e{}", i + 1) }, { "$ref": format!("e{}", i + 1) }] }),
        );
    }
    evaluators.insert("e20".into(), json!({ "var": "x" }));
    let mut c = Compiler::new(Some(&evaluators), "flag-key", 10_000, 64);
    assert_eq!(
        c.compile(&json!({ "$ref": "e0" })).unwrap_err(),
        CompileError::TooManyNodes(10_000)
    );
    // A large constant behind many `$ref`s: copied each time, so it counts each time.
    let big: Vec<Value> = (0..2_000).map(|i| json!(format!("user-{i}"))).collect();
    let evaluators = json!({ "big": { "in": [{ "var": "targetingKey" }, big] } });
    let many: Vec<Value> = (0..100).map(|_| json!({ "$ref": "big" })).collect();
    let mut c = Compiler::new(evaluators.as_object(), "flag-key", 100_000, 64);
    assert_eq!(
        c.compile(&json!({ "or": many })).unwrap_err(),
        CompileError::TooManyNodes(100_000)
    );
    let long = json!({ "==": [{ "var": "x" }, "x".repeat(64 * 20_000)] });
    let mut c = Compiler::new(None, "flag-key", 10_000, 64);
    assert_eq!(
        c.compile(&long).unwrap_err(),
        CompileError::TooManyNodes(10_000)
    );
    let mut deep = json!({ "var": "x" });
    for _ in 0..100 {
        deep = json!({ "!": [deep] });
    }
    let mut c = Compiler::new(None, "flag-key", 10_000, 64);
    assert_eq!(c.compile(&deep).unwrap_err(), CompileError::TooDeep(64));
}

#[test]
fn data_objects_and_arrays_are_literals() {
    assert_eq!(
        run(json!({ "a": 1, "b": 2 }), json!({})),
        json!({ "a": 1, "b": 2 })
    );
    assert_eq!(run(json!({}), json!({})), json!({}));
    assert_eq!(
        run(json!([1, { "var": "x" }]), json!({ "x": 2 })),
        json!([1, 2])
    );
}

#[test]
fn compiled_sets_are_shareable_across_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<super::FlagdSet>();
    send_sync::<super::FlagdError>();
    send_sync::<super::Details<'static, bool>>();
    send_sync::<super::Export>();
}

#[test]
fn array_operations_as_jsonlogic_documents_them() {
    // jsonlogic.com/operations.html, "Array Operations", and the edges of json-logic-js.
    let d = json!({
        "integers": [1, 2, 3, 4, 5],
        "pies": [{ "filling": "pumpkin", "temp": 110 }, { "filling": "apple", "temp": 400 }],
        "x": 7,
        "nothing": null,
    });
    for (logic, want) in [
        (
            json!({ "map": [{ "var": "integers" }, { "*": [{ "var": "" }, 2] }] }),
            json!([2, 4, 6, 8, 10]),
        ),
        (
            json!({ "filter": [{ "var": "integers" }, { "%": [{ "var": "" }, 2] }] }),
            json!([1, 3, 5]),
        ),
        (
            json!({ "reduce": [{ "var": "integers" },
                               { "+": [{ "var": "current" }, { "var": "accumulator" }] }, 0] }),
            json!(15),
        ),
        (
            json!({ "all": [[1, 2, 3], { ">": [{ "var": "" }, 0] }] }),
            json!(true),
        ),
        (
            json!({ "all": [[1, -2, 3], { ">": [{ "var": "" }, 0] }] }),
            json!(false),
        ),
        // `all` of nothing is false (json-logic-js: `if (!scopedData.length) return false`).
        (
            json!({ "all": [[], { ">": [{ "var": "" }, 0] }] }),
            json!(false),
        ),
        (
            json!({ "some": [[-1, 0, 1], { ">": [{ "var": "" }, 0] }] }),
            json!(true),
        ),
        (
            json!({ "some": [[], { ">": [{ "var": "" }, 0] }] }),
            json!(false),
        ),
        (
            json!({ "none": [[-3, -2], { "==": [{ "var": "" }, 0] }] }),
            json!(true),
        ),
        (
            json!({ "none": [[-3, 0], { "==": [{ "var": "" }, 0] }] }),
            json!(false),
        ),
        (
            json!({ "none": [[], { "==": [{ "var": "" }, 0] }] }),
            json!(true),
        ),
        (
            json!({ "some": [{ "var": "pies" }, { "==": [{ "var": "filling" }, "apple"] }] }),
            json!(true),
        ),
        (
            json!({ "map": [{ "var": "pies" }, { "var": "filling" }] }),
            json!(["pumpkin", "apple"]),
        ),
        (
            json!({ "filter": [{ "var": "pies" }, { ">": [{ "var": "temp" }, 300] }] }),
            json!([{ "filling": "apple", "temp": 400 }]),
        ),
        // Nested arrays index with a path; the element's own members only.
        (
            json!({ "map": [[[1, 2], [3, 4]], { "var": "1" }] }),
            json!([2, 4]),
        ),
        // Inside the logic the data is the element: the context is out of sight.
        (json!({ "map": [[1], { "var": "x" }] }), json!([null])),
        // `reduce` over a computed list, and its accumulator read into.
        (
            json!({ "reduce": [{ "map": [{ "var": "integers" }, { "*": [{ "var": "" }, 10] }] },
                               { "max": [{ "var": "current" }, { "var": "accumulator" }] }, 0] }),
            json!(50),
        ),
        (
            json!({ "reduce": [[1, 2], { "cat": [{ "var": "accumulator" }, { "var": "current" }] }, "n"] }),
            json!("n12"),
        ),
        // Not an array: an empty one.
        (
            json!({ "map": [{ "var": "nothing" }, { "var": "" }] }),
            json!([]),
        ),
        (json!({ "filter": [{ "var": "x" }, true] }), json!([])),
        (
            json!({ "reduce": [{ "var": "nothing" }, { "var": "current" }, 3] }),
            json!(3),
        ),
        (json!({ "all": [{ "var": "nothing" }, true] }), json!(false)),
        (json!({ "some": [{ "var": "x" }, true] }), json!(false)),
        (json!({ "none": [{ "var": "nothing" }, true] }), json!(true)),
        // `merge` flattens one level; a scalar is an element.
        (json!({ "merge": [[1, 2], [3, 4]] }), json!([1, 2, 3, 4])),
        (json!({ "merge": [1, 2, [3, 4]] }), json!([1, 2, 3, 4])),
        (
            json!({ "merge": [[1, [2]], { "var": "integers" }] }),
            json!([1, [2], 1, 2, 3, 4, 5]),
        ),
        // As a condition: `if` takes the allocation-free test path.
        (
            json!({ "if": [{ "some": [{ "var": "integers" }, { "==": [{ "var": "" }, 3] }] }, "yes", "no"] }),
            json!("yes"),
        ),
        (
            json!({ "if": [{ "all": [{ "var": "integers" }, { "<": [{ "var": "" }, 3] }] }, "yes", "no"] }),
            json!("no"),
        ),
    ] {
        assert_eq!(run(logic.clone(), d.clone()), want, "{logic}");
    }
}

#[test]
fn nested_array_operations_stop_at_the_iteration_budget() {
    let thousand: Vec<u32> = (0..1000).collect();
    let d = json!({ "a": thousand });
    // 1 000 × 1 000 element steps: far past MAX_ITERATIONS, so the evaluation aborts.
    let logic = json!({ "some": [{ "var": "a" },
        { "some": [thousand, { "==": [{ "var": "" }, -1] }] }] });
    assert_eq!(run_with(logic, &d, &json!({})), Err(Abort));
    // Within the budget the same shape runs.
    let small =
        json!({ "some": [{ "var": "a" }, { "some": [[1, 2], { "==": [{ "var": "" }, 2] }] }] });
    assert_eq!(run(small, d), json!(true));
}
