//! Type derivation and merging, as Cloudify's `node_types`, `relationships`, `data_types` and
//! `interfaces.operation_merger` do it.
//!
//! - A derived type's property schemas replace its parent's by name; its interfaces merge
//!   operation by operation, the derived operation winning whole (an empty `{}` erases the
//!   inherited one).
//! - A template's operation merges into its type's: an empty implementation inherits the type's;
//!   with the same implementation the template's inputs fill the type's input schema and its
//!   unset fields (executor, retries, timeouts) inherit; with another implementation the template
//!   operation stands alone.
//! - Property values fill the type's property schema: missing ones take the default, required
//!   ones without a default are errors, unknown ones are errors, and data-typed values are filled
//!   from their data type the same way.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::error::Error;
use crate::functions;
use crate::parse::{Interfaces, RawOperation, TypeDef};
use crate::yaml::Mark;
use drover_model::Map;

/// A type with its ancestors folded in.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    /// Root first, the type itself last.
    pub hierarchy: Vec<String>,
    pub properties: IndexMap<String, Map>,
    pub interfaces: Interfaces,
    pub source_interfaces: Interfaces,
    pub target_interfaces: Interfaces,
}

/// The longest derivation chain accepted (every derived type keeps its whole hierarchy).
const MAX_DERIVATION_DEPTH: usize = 1000;

/// Derives every type of a section (`node_types`, `relationships`, `data_types`), rejecting
/// unknown parents and cyclic derivations. Each type is folded once, from its nearest derived
/// ancestor.
///
/// `data_types` (already derived; empty while deriving data types themselves) let a property
/// that keeps its parent's data type merge its default into the parent's, as Cloudify's
/// `merge_schemas` does.
pub fn derive_all(
    section: &str,
    defs: &IndexMap<String, TypeDef>,
    data_types: &HashMap<String, Derived>,
) -> Result<HashMap<String, Derived>, Error> {
    let mut done: HashMap<String, Derived> = HashMap::with_capacity(defs.len());
    for name in defs.keys() {
        // Walk up to the first derived ancestor (or the root).
        let mut chain: Vec<&str> = Vec::new();
        let mut on_chain: HashSet<&str> = HashSet::new();
        let mut current = name.as_str();
        while !done.contains_key(current) {
            if !on_chain.insert(current) {
                let def_mark = defs.get(name).map(|d| d.mark.clone()).unwrap_or_default();
                chain.push(current);
                return Err(def_mark.error(
                    format!("{section}.{name}"),
                    format!("cyclic derivation: {}", chain.join(" -> ")),
                ));
            }
            chain.push(current);
            let Some(def) = defs.get(current) else { break };
            match &def.derived_from {
                Some((parent, mark)) => {
                    if !defs.contains_key(parent) {
                        return Err(mark.error(
                            format!("{section}.{current}.derived_from"),
                            format!("'{current}' is derived from '{parent}', which is not defined in {section}"),
                        ));
                    }
                    current = parent;
                }
                None => break,
            }
        }
        for type_name in chain.iter().rev() {
            if done.contains_key(*type_name) {
                continue;
            }
            let Some(def) = defs.get(*type_name) else {
                continue;
            };
            let parent = def.derived_from.as_ref().and_then(|(p, _)| done.get(p));
            if parent.is_some_and(|p| p.hierarchy.len() >= MAX_DERIVATION_DEPTH) {
                return Err(def.mark.error(
                    format!("{section}.{type_name}"),
                    format!(
                        "'{type_name}' derives from more than {MAX_DERIVATION_DEPTH} ancestors"
                    ),
                ));
            }
            let derived = derive(section, type_name, def, parent, data_types)?;
            done.insert((*type_name).to_string(), derived);
        }
    }
    Ok(done)
}

fn derive(
    section: &str,
    name: &str,
    def: &TypeDef,
    parent: Option<&Derived>,
    data_types: &HashMap<String, Derived>,
) -> Result<Derived, Error> {
    let Some(parent) = parent else {
        return Ok(Derived {
            hierarchy: vec![name.to_string()],
            properties: def.properties.clone(),
            interfaces: def.interfaces.clone(),
            source_interfaces: def.source_interfaces.clone(),
            target_interfaces: def.target_interfaces.clone(),
        });
    };
    let mut hierarchy = parent.hierarchy.clone();
    hierarchy.push(name.to_string());
    let mut properties = parent.properties.clone();
    for (k, v) in &def.properties {
        let mut v = v.clone();
        if let Some(overridden) = parent.properties.get(k) {
            let path = format!("{section}.{name}.properties.{k}");
            let check = PropertyCheck {
                data_types,
                what: &format!("the default of '{name}'"),
                mark: &def.mark,
                require: false,
            };
            if let Some(default) = inherited_default(&v, overridden, &check, &path)? {
                v.insert("default".into(), default);
            }
        }
        properties.insert(k.clone(), v);
    }
    Ok(Derived {
        hierarchy,
        properties,
        interfaces: merge_type_interfaces(&def.interfaces, &parent.interfaces),
        source_interfaces: merge_type_interfaces(&def.source_interfaces, &parent.source_interfaces),
        target_interfaces: merge_type_interfaces(&def.target_interfaces, &parent.target_interfaces),
    })
}

/// A property redefined with its parent's data type keeps the parent's default under its own:
/// the fields its default leaves out come from the parent's.
fn inherited_default(
    overriding: &Map,
    overridden: &Map,
    check: &PropertyCheck<'_>,
    path: &str,
) -> Result<Option<Json>, Error> {
    let type_name = overriding.get("type").and_then(Json::as_str);
    let Some(type_name) = type_name.filter(|t| {
        check.data_types.contains_key(*t)
            && overridden.get("type").and_then(Json::as_str) == Some(t)
    }) else {
        return Ok(None);
    };
    if overridden.get("default").is_none_or(Json::is_null) {
        return Ok(None);
    }
    let derived = schema_default(overridden, check, path, 0)?;
    let initial = overriding
        .get("default")
        .filter(|d| !d.is_null())
        .cloned()
        .unwrap_or_else(|| Json::Object(Map::new()));
    let merged = typed_at_depth(initial, Some(type_name), derived.as_ref(), check, path, 0)?;
    Ok(merged
        .as_object()
        .is_some_and(|m| !m.is_empty())
        .then_some(merged))
}

/// A derived type's interfaces over its parent's: operation by operation, the derived one whole.
fn merge_type_interfaces(overriding: &Interfaces, overridden: &Interfaces) -> Interfaces {
    let mut merged = overridden.clone();
    for (interface, operations) in overriding {
        let target = merged.entry(interface.clone()).or_default();
        for (name, op) in operations {
            target.insert(name.clone(), op.clone());
        }
    }
    merged
}

/// A template's interfaces (node template, relationship of a node template) over its type's.
pub fn merge_template_interfaces(
    template: &Interfaces,
    of_type: &Interfaces,
    path: &str,
) -> Result<Interfaces, Error> {
    let mut merged = Interfaces::new();
    for (interface, type_ops) in of_type {
        let template_ops = template.get(interface);
        let mut ops = IndexMap::new();
        for (name, type_op) in type_ops {
            let op = match template_ops.and_then(|t| t.get(name)) {
                Some(template_op) => {
                    merge_operation(template_op, type_op, &format!("{path}.{interface}.{name}"))?
                }
                None => RawOperation {
                    inputs: schema_inputs(
                        &type_op.inputs,
                        &Map::new(),
                        &type_op.mark,
                        &format!("{path}.{interface}.{name}"),
                    )?,
                    ..type_op.clone()
                },
            };
            ops.insert(name.clone(), op);
        }
        if let Some(template_ops) = template_ops {
            for (name, op) in template_ops {
                if !ops.contains_key(name) {
                    ops.insert(name.clone(), op.clone());
                }
            }
        }
        merged.insert(interface.clone(), ops);
    }
    for (interface, ops) in template {
        if !merged.contains_key(interface) {
            merged.insert(interface.clone(), ops.clone());
        }
    }
    Ok(merged)
}

/// Cloudify's `NodeTemplateNodeTypeOperationMerger`.
fn merge_operation(
    template: &RawOperation,
    of_type: &RawOperation,
    path: &str,
) -> Result<RawOperation, Error> {
    if template.is_noop() {
        return Ok(RawOperation::default());
    }
    if of_type.is_noop() {
        return Ok(template.clone());
    }
    let implementation = if template.implementation.is_empty() {
        of_type.implementation.clone()
    } else {
        template.implementation.clone()
    };
    if implementation != of_type.implementation {
        return Ok(RawOperation {
            implementation,
            ..template.clone()
        });
    }
    let pick = |t: &Option<Json>, o: &Option<Json>| t.clone().or_else(|| o.clone());
    Ok(RawOperation {
        implementation,
        inputs: schema_inputs(&of_type.inputs, &template.inputs, &template.mark, path)?,
        executor: template
            .executor
            .clone()
            .or_else(|| of_type.executor.clone()),
        max_retries: pick(&template.max_retries, &of_type.max_retries),
        retry_interval: pick(&template.retry_interval, &of_type.retry_interval),
        timeout: pick(&template.timeout, &of_type.timeout),
        timeout_recoverable: pick(&template.timeout_recoverable, &of_type.timeout_recoverable),
        mark: template.mark.clone(),
    })
}

/// Fills an operation's input schema with values: defaults, then the given values. A schema input
/// with neither is an error.
fn schema_inputs(schema: &Map, values: &Map, mark: &Mark, path: &str) -> Result<Map, Error> {
    let mut merged = Map::new();
    for (name, input) in schema {
        if let Some(default) = input.get("default") {
            merged.insert(name.clone(), default.clone());
        }
    }
    for (name, value) in values {
        merged.insert(name.clone(), value.clone());
    }
    let missing: Vec<&str> = schema
        .iter()
        .filter(|(name, input)| {
            !merged.contains_key(*name) && input.get("required") != Some(&Json::Bool(false))
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(mark.error(
            format!("{path}.inputs"),
            format!("missing operation inputs {missing:?}: they have no default and no value"),
        ));
    }
    Ok(merged)
}

/// Property types that are not data types, with how values are checked.
const PRIMITIVES: &[&str] = &[
    "string", "integer", "float", "boolean", "list", "dict", "regex", "textarea",
];

/// How deep data types may nest in one another; deeper is taken for a data type that contains
/// itself.
const MAX_DATA_TYPE_DEPTH: usize = 32;

/// What property values are checked for, and how to name them in errors.
pub struct PropertyCheck<'a> {
    pub data_types: &'a HashMap<String, Derived>,
    /// The owner, for messages ("node template 'vm'").
    pub what: &'a str,
    pub mark: &'a Mark,
    /// Whether a required property without a value is an error (it is not while computing
    /// the defaults of data-typed properties).
    pub require: bool,
}

/// Fills a property schema with values (Cloudify's `_merge_flattened_schema_and_instance_properties`):
/// unknown values are errors, missing ones take the schema default, required ones without a default
/// are errors, and every value is checked against its type. `derived` holds defaults that take
/// precedence over the schema's (the enclosing value's default, for a data type's fields).
pub fn merge_properties(
    schema: &IndexMap<String, Map>,
    values: &Map,
    derived: Option<&Map>,
    check: &PropertyCheck<'_>,
    path: &str,
) -> Result<Map, Error> {
    merge_at_depth(schema, values, derived, check, path, 0)
}

fn merge_at_depth(
    schema: &IndexMap<String, Map>,
    values: &Map,
    derived: Option<&Map>,
    check: &PropertyCheck<'_>,
    path: &str,
    depth: usize,
) -> Result<Map, Error> {
    if depth > MAX_DATA_TYPE_DEPTH {
        return Err(check.mark.error(
            path,
            "data types nest too deep (does a data type contain itself?)",
        ));
    }
    for name in values.keys() {
        if !schema.contains_key(name) {
            return Err(check.mark.error(
                format!("{path}.{name}"),
                format!(
                    "{} has property '{name}', which its type does not define",
                    check.what
                ),
            ));
        }
    }
    let mut out = Map::new();
    for (name, property) in schema {
        let type_name = property.get("type").and_then(Json::as_str);
        let default = match derived.and_then(|d| d.get(name)) {
            Some(d) => Some(d.clone()),
            None => schema_default(property, check, &format!("{path}.{name}"), depth)?,
        };
        let Some(value) = values.get(name).cloned().or_else(|| default.clone()) else {
            if check.require && property.get("required") != Some(&Json::Bool(false)) {
                return Err(check.mark.error(
                    format!("{path}.{name}"),
                    format!("{} is missing the required property '{name}'", check.what),
                ));
            }
            continue;
        };
        let value = typed_at_depth(
            value,
            type_name,
            default.as_ref(),
            check,
            &format!("{path}.{name}"),
            depth,
        )?;
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// The default of a property schema; a data-typed property's default (`{}` when it has none) is
/// filled with its data type's defaults, as Cloudify's `SchemaPropertyDefault` does.
fn schema_default(
    property: &Map,
    check: &PropertyCheck<'_>,
    path: &str,
    depth: usize,
) -> Result<Option<Json>, Error> {
    let type_name = property.get("type").and_then(Json::as_str);
    let default = property.get("default").filter(|d| !d.is_null());
    let Some(data_type) = type_name.filter(|t| check.data_types.contains_key(*t)) else {
        return Ok(default.cloned());
    };
    let lenient = PropertyCheck {
        require: false,
        ..*check
    };
    let value = default.cloned().unwrap_or_else(|| Json::Object(Map::new()));
    typed_at_depth(value, Some(data_type), None, &lenient, path, depth + 1).map(Some)
}

/// Checks a value against its type; a data-typed mapping is filled from `derived` (the
/// property's default) and its data type's defaults.
pub fn typed_value(
    value: Json,
    type_name: Option<&str>,
    check: &PropertyCheck<'_>,
    path: &str,
) -> Result<Json, Error> {
    typed_at_depth(value, type_name, None, check, path, 0)
}

fn typed_at_depth(
    value: Json,
    type_name: Option<&str>,
    derived: Option<&Json>,
    check: &PropertyCheck<'_>,
    path: &str,
    depth: usize,
) -> Result<Json, Error> {
    let Some(type_name) = type_name else {
        return Ok(value);
    };
    if functions::is_function(&value) {
        return Ok(value);
    }
    let mismatch = |value: &Json| {
        check.mark.error(
            path,
            format!(
                "{}: '{path}' is of type {type_name}, but its value is {value}",
                check.what
            ),
        )
    };
    if PRIMITIVES.contains(&type_name) {
        return if primitive_ok(type_name, &value) {
            Ok(value)
        } else {
            Err(mismatch(&value))
        };
    }
    let Some(data_type) = check.data_types.get(type_name) else {
        // Types of later DSL versions (`node_id`, `secret_key` …) are only checked at runtime.
        return Ok(value);
    };
    let Json::Object(given) = value else {
        return Err(mismatch(&value));
    };
    let derived = derived.and_then(Json::as_object);
    merge_at_depth(
        &data_type.properties,
        &given,
        derived,
        check,
        path,
        depth + 1,
    )
    .map(Json::Object)
}

fn primitive_ok(type_name: &str, value: &Json) -> bool {
    match type_name {
        "string" => true,
        "integer" => value.is_i64() || value.is_u64(),
        "float" => value.is_number(),
        "boolean" => value.is_boolean(),
        "list" => value.is_array(),
        "dict" => value.is_object(),
        _ => !value.is_array() && !value.is_object(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(parent: Option<&str>) -> TypeDef {
        TypeDef {
            derived_from: parent.map(|p| (p.to_string(), Mark::default())),
            ..TypeDef::default()
        }
    }

    #[test]
    fn hierarchy_is_root_first() {
        let defs: IndexMap<String, TypeDef> = [("c", Some("b")), ("b", Some("a")), ("a", None)]
            .into_iter()
            .map(|(n, p)| (n.to_string(), def(p)))
            .collect();
        let derived = derive_all("node_types", &defs, &HashMap::new()).unwrap_or_default();
        assert_eq!(
            derived.get("c").map(|d| d.hierarchy.clone()),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
    }

    #[test]
    fn derivation_depth_is_bounded() {
        let defs: IndexMap<String, TypeDef> = (0..MAX_DERIVATION_DEPTH + 5)
            .map(|i| {
                let parent = (i > 0).then(|| format!("t{}", i - 1));
                (format!("t{i}"), def(parent.as_deref()))
            })
            .collect();
        let err = derive_all("node_types", &defs, &HashMap::new())
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(err.contains("more than 1000 ancestors"), "{err}");
    }

    #[test]
    fn cyclic_derivation_is_an_error() {
        let defs: IndexMap<String, TypeDef> = [("a", Some("b")), ("b", Some("a"))]
            .into_iter()
            .map(|(n, p)| (n.to_string(), def(p)))
            .collect();
        let err = derive_all("node_types", &defs, &HashMap::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cyclic derivation: a -> b -> a"), "{err}");
    }
}
