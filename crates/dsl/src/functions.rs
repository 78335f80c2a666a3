//! Intrinsic functions. The plan-time ones (`get_input`, `get_property`, `concat`, `merge`, the
//! `string_*` functions) are evaluated into the plan; the runtime ones (`get_attribute`,
//! `get_secret`, `get_capability`, `get_sys` …) stay as they are, for the task that runs the
//! operation to evaluate, and mark their operation `has_intrinsic_functions`.
//!
//! A function is a single-entry mapping whose key is a function name, as in Cloudify. A plan-time
//! function whose arguments still hold a runtime function (`concat` of a `get_attribute`) is kept,
//! with its arguments evaluated as far as they go.

use std::cell::Cell;
use std::collections::HashMap;

use serde_json::Value as Json;

use drover_model::Map;

/// Functions evaluated while planning.
const PLAN_TIME: &[&str] = &[
    "get_input",
    "get_property",
    "concat",
    "merge",
    "string_find",
    "string_replace",
    "string_split",
    "string_lower",
    "string_upper",
];
/// Functions kept for runtime.
const RUNTIME: &[&str] = &[
    "get_attribute",
    "get_attributes_list",
    "get_attributes_dict",
    "get_secret",
    "get_capability",
    "get_environment_capability",
    "get_group_capability",
    "get_sys",
    "get_label",
    "get_consumers",
];
/// How deep `get_property` may chain into properties that are themselves functions; deeper is
/// taken for a cycle.
const MAX_CHAIN: usize = 64;

/// The name and arguments of a function value.
fn function(value: &Json) -> Option<(&str, &Json)> {
    let Json::Object(map) = value else {
        return None;
    };
    if map.len() != 1 {
        return None;
    }
    let (name, args) = map.iter().next()?;
    (PLAN_TIME.contains(&name.as_str()) || RUNTIME.contains(&name.as_str()))
        .then_some((name.as_str(), args))
}

/// Whether a value is an intrinsic function call.
pub fn is_function(value: &Json) -> bool {
    function(value).is_some()
}

/// Whether a value holds a function anywhere.
pub fn contains_function(value: &Json) -> bool {
    if is_function(value) {
        return true;
    }
    match value {
        Json::Array(items) => items.iter().any(contains_function),
        Json::Object(map) => map.values().any(contains_function),
        _ => false,
    }
}

/// What functions are evaluated against.
pub struct Context<'a> {
    /// Input values (given, or defaults); `None` for an input with neither.
    pub inputs: &'a HashMap<String, Option<Json>>,
    /// Node properties as merged, before evaluation, by node name.
    pub nodes: &'a HashMap<&'a str, &'a Map>,
    pub self_node: Option<&'a str>,
    pub source: Option<&'a str>,
    pub target: Option<&'a str>,
    /// Shared by every evaluation of one plan.
    pub budget: &'a Budget,
}

impl Context<'_> {
    fn with_self<'b>(&'b self, node: &'b str) -> Context<'b> {
        Context {
            inputs: self.inputs,
            nodes: self.nodes,
            self_node: Some(node),
            source: None,
            target: None,
            budget: self.budget,
        }
    }
}

/// The most values `get_input` and `get_property` may copy into one plan. Without a bound, a few
/// thousand references to one large property would multiply it past any memory.
const MAX_COPIED_VALUES: usize = 10_000_000;

/// Counts the values functions copy into a plan.
pub struct Budget {
    spent: Cell<usize>,
    limit: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            spent: Cell::new(0),
            limit: MAX_COPIED_VALUES,
        }
    }
}

impl Budget {
    fn charge(&self, value: &Json) -> Result<(), String> {
        let spent = self.spent.get().saturating_add(size(value));
        self.spent.set(spent);
        if spent > self.limit {
            return Err(format!(
                "functions copy more than {} values into the plan (get_property or get_input of large values, many times)",
                self.limit
            ));
        }
        Ok(())
    }
}

fn size(value: &Json) -> usize {
    match value {
        Json::Array(items) => 1 + items.iter().map(size).sum::<usize>(),
        Json::Object(map) => 1 + map.values().map(size).sum::<usize>(),
        _ => 1,
    }
}

/// Evaluates the plan-time functions of a value. Errors are messages; the caller locates them.
pub fn evaluate(value: &Json, ctx: &Context<'_>) -> Result<Json, String> {
    eval(value, ctx, 0)
}

fn eval(value: &Json, ctx: &Context<'_>, chain: usize) -> Result<Json, String> {
    if let Some((name, args)) = function(value) {
        return call(name, args, ctx, chain);
    }
    match value {
        Json::Array(items) => items
            .iter()
            .map(|i| eval(i, ctx, chain))
            .collect::<Result<_, _>>()
            .map(Json::Array),
        Json::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), eval(v, ctx, chain)?)))
            .collect::<Result<Map, String>>()
            .map(Json::Object),
        _ => Ok(value.clone()),
    }
}

fn call(name: &str, args: &Json, ctx: &Context<'_>, chain: usize) -> Result<Json, String> {
    match name {
        "get_input" => get_input(args, ctx, chain),
        "get_property" => get_property(args, ctx, chain),
        "concat" | "merge" | "string_find" | "string_replace" | "string_split" | "string_lower"
        | "string_upper" => {
            let Json::Array(items) = args else {
                return Err(format!("{name} takes a list of arguments, got {args}"));
            };
            let items: Vec<Json> = items
                .iter()
                .map(|i| eval(i, ctx, chain))
                .collect::<Result<_, _>>()?;
            if items.iter().any(contains_function) {
                let mut kept = Map::new();
                kept.insert(name.to_string(), Json::Array(items));
                return Ok(Json::Object(kept));
            }
            string_function(name, &items)
        }
        _ => {
            // Runtime functions keep their arguments, with plan-time functions inside evaluated.
            let mut kept = Map::new();
            kept.insert(name.to_string(), eval(args, ctx, chain)?);
            Ok(Json::Object(kept))
        }
    }
}

fn get_input(args: &Json, ctx: &Context<'_>, chain: usize) -> Result<Json, String> {
    let args = eval(args, ctx, chain)?;
    let (name, path) = match &args {
        Json::String(name) => (name.as_str(), &[][..]),
        Json::Array(items) => match items.split_first() {
            Some((Json::String(name), rest)) => (name.as_str(), rest),
            _ => {
                return Err(format!(
                    "get_input takes an input name or a list [name, key …], got {args}"
                ));
            }
        },
        _ => {
            return Err(format!(
                "get_input takes an input name or a list [name, key …], got {args}"
            ));
        }
    };
    let Some(value) = ctx.inputs.get(name) else {
        return Err(format!(
            "get_input refers to input '{name}', which is not defined"
        ));
    };
    let Some(value) = value else {
        return Err(format!("input '{name}' has no value and no default"));
    };
    let value = walk(value, path)
        .ok_or_else(|| format!("get_input: input '{name}' has no {}", show_path(path)))?;
    ctx.budget.charge(value)?;
    Ok(value.clone())
}

fn get_property(args: &Json, ctx: &Context<'_>, chain: usize) -> Result<Json, String> {
    if chain > MAX_CHAIN {
        return Err(
            "get_property: circular reference (properties refer to each other in a loop)".into(),
        );
    }
    let Json::Array(items) = args else {
        return Err(format!(
            "get_property takes a list [node, property, key …], got {args}"
        ));
    };
    let items: Vec<Json> = items
        .iter()
        .map(|i| eval(i, ctx, chain))
        .collect::<Result<_, _>>()?;
    let (Some(Json::String(node)), Some(_)) = (items.first(), items.get(1)) else {
        return Err(format!(
            "get_property takes a list [node, property, key …], got {args}"
        ));
    };
    let node_name = match node.as_str() {
        "SELF" => ctx
            .self_node
            .ok_or("get_property: SELF is only valid in a node's properties and operations")?,
        "SOURCE" => ctx
            .source
            .ok_or("get_property: SOURCE is only valid in relationship operations")?,
        "TARGET" => ctx
            .target
            .ok_or("get_property: TARGET is only valid in relationship operations")?,
        other => other,
    };
    let Some(properties) = ctx.nodes.get(node_name) else {
        return Err(format!(
            "get_property refers to node '{node_name}', which is not defined"
        ));
    };
    let path = items.get(1..).unwrap_or_default();
    let Some((Json::String(first), rest)) = path.split_first() else {
        return Err(format!(
            "get_property: the property name must be a string, got {args}"
        ));
    };
    let Some(value) = properties.get(first) else {
        return Err(format!(
            "get_property: node '{node_name}' has no property '{first}'"
        ));
    };
    // A property may itself be a function of its node.
    let ctx = ctx.with_self(node_name);
    let value = eval(value, &ctx, chain + 1)?;
    let value = walk(&value, rest).ok_or_else(|| {
        format!(
            "get_property: property '{first}' of node '{node_name}' has no {}",
            show_path(rest)
        )
    })?;
    ctx.budget.charge(value)?;
    Ok(value.clone())
}

/// Follows keys and indexes into a value.
fn walk<'v>(mut value: &'v Json, path: &[Json]) -> Option<&'v Json> {
    for step in path {
        value = match (value, step) {
            (Json::Object(map), Json::String(key)) => map.get(key)?,
            (Json::Array(items), Json::Number(n)) => {
                items.get(usize::try_from(n.as_u64()?).ok()?)?
            }
            _ => return None,
        };
    }
    Some(value)
}

fn show_path(path: &[Json]) -> String {
    let parts: Vec<String> = path.iter().map(|p| p.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Python's `str()` of a value, as Cloudify's `concat` joins them.
fn python_str(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Bool(true) => "True".into(),
        Json::Bool(false) => "False".into(),
        Json::Null => "None".into(),
        Json::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn string_function(name: &str, args: &[Json]) -> Result<Json, String> {
    let text = |i: usize| -> Result<String, String> {
        match args.get(i) {
            Some(v) => Ok(python_str(v)),
            None => Err(format!("{name}: missing argument {}", i + 1)),
        }
    };
    Ok(match name {
        "concat" => Json::String(args.iter().map(python_str).collect()),
        "merge" => {
            let mut merged = Map::new();
            for arg in args {
                let Json::Object(map) = arg else {
                    return Err(format!("merge takes mappings, got {arg}"));
                };
                merged.extend(map.clone());
            }
            Json::Object(merged)
        }
        "string_lower" => Json::String(text(0)?.to_lowercase()),
        "string_upper" => Json::String(text(0)?.to_uppercase()),
        "string_find" => {
            let haystack = text(0)?;
            let found = haystack
                .find(&text(1)?)
                .map(|byte| haystack[..byte].chars().count() as i64)
                .unwrap_or(-1);
            Json::from(found)
        }
        "string_replace" => {
            let (s, old, new) = (text(0)?, text(1)?, text(2)?);
            match args.get(3).and_then(Json::as_u64) {
                Some(count) => Json::String(s.replacen(&old, &new, count as usize)),
                None => Json::String(s.replace(&old, &new)),
            }
        }
        "string_split" => {
            let (s, sep) = (text(0)?, text(1)?);
            if sep.is_empty() {
                return Err("string_split: empty separator".into());
            }
            let parts: Vec<Json> = s
                .split(sep.as_str())
                .map(|p| Json::String(p.to_string()))
                .collect();
            match args.get(2) {
                Some(index) => {
                    let i = index.as_u64().ok_or_else(|| {
                        format!("string_split: index must be a number, got {index}")
                    })?;
                    parts
                        .get(i as usize)
                        .cloned()
                        .ok_or_else(|| format!("string_split: no part {i}"))?
                }
                None => Json::Array(parts),
            }
        }
        _ => return Err(format!("unknown function {name}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval_with(
        value: Json,
        inputs: &[(&str, Json)],
        nodes: &[(&str, Json)],
    ) -> Result<Json, String> {
        let inputs: HashMap<String, Option<Json>> = inputs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.clone())))
            .collect();
        let props: Vec<(&str, Map)> = nodes
            .iter()
            .map(|(k, v)| (*k, v.as_object().cloned().unwrap_or_default()))
            .collect();
        let nodes: HashMap<&str, &Map> = props.iter().map(|(k, v)| (*k, v)).collect();
        let budget = Budget::default();
        let ctx = Context {
            budget: &budget,
            inputs: &inputs,
            nodes: &nodes,
            self_node: Some("a"),
            source: None,
            target: None,
        };
        evaluate(&value, &ctx)
    }

    #[test]
    fn get_input_and_nested_get_property() {
        let v = eval_with(
            json!({"x": {"get_input": "port"}, "y": {"get_property": ["b", "conf", "hosts", 1]}, "z": {"get_property": ["SELF", "p"]}}),
            &[("port", json!(8080))],
            &[
                ("a", json!({"p": {"get_input": "port"}})),
                ("b", json!({"conf": {"hosts": ["h0", "h1"]}})),
            ],
        );
        assert_eq!(v, Ok(json!({"x": 8080, "y": "h1", "z": 8080})));
    }

    #[test]
    fn concat_joins_like_python_and_keeps_runtime_arguments() {
        let v = eval_with(json!({"concat": ["a", 1, true, 1.0]}), &[], &[]);
        assert_eq!(v, Ok(json!("a1True1.0")));
        let kept = eval_with(
            json!({"concat": [{"get_input": "h"}, {"get_attribute": ["SELF", "ip"]}]}),
            &[("h", json!("x"))],
            &[],
        );
        assert_eq!(
            kept,
            Ok(json!({"concat": ["x", {"get_attribute": ["SELF", "ip"]}]}))
        );
    }

    #[test]
    fn copies_are_bounded() {
        let inputs: HashMap<String, Option<Json>> =
            [("big".to_string(), Some(json!([1, 2, 3, 4])))]
                .into_iter()
                .collect();
        let nodes = HashMap::new();
        let budget = Budget {
            spent: Cell::new(0),
            limit: 12,
        };
        let ctx = Context {
            inputs: &inputs,
            nodes: &nodes,
            self_node: None,
            source: None,
            target: None,
            budget: &budget,
        };
        let twice = json!([{"get_input": "big"}, {"get_input": "big"}]);
        assert!(evaluate(&twice, &ctx).is_ok());
        let err = evaluate(&twice, &ctx).err().unwrap_or_default();
        assert!(err.contains("more than 12 values"), "{err}");
    }

    #[test]
    fn circular_get_property_is_an_error() {
        let err = eval_with(
            json!({"get_property": ["SELF", "p"]}),
            &[],
            &[("a", json!({"p": {"get_property": ["SELF", "p"]}}))],
        );
        assert!(err.err().unwrap_or_default().contains("circular"));
    }

    #[test]
    fn unknown_input_is_an_error() {
        let err = eval_with(json!({"get_input": "nope"}), &[], &[]);
        assert_eq!(
            err,
            Err("get_input refers to input 'nope', which is not defined".into())
        );
    }
}
