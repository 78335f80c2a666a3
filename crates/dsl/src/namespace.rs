//! Namespaces: an import written `ns--file.yaml` prefixes every name its file defines and every
//! reference to those names with `ns--`, except `cloudify.`-prefixed names (Cloudify's basic
//! types, which users may extend but never namespace). Operation and workflow implementations are
//! prefixed too, so that `plugin.task` finds the namespaced plugin and a script path keeps its
//! file's namespace.

use crate::imports::NAMESPACE_DELIMITER;
use crate::yaml::{Node, Value};

/// Sections whose entry names are namespaced.
const NAMED_SECTIONS: &[&str] = &[
    "node_types",
    "relationships",
    "data_types",
    "plugins",
    "node_templates",
    "inputs",
    "outputs",
    "workflows",
    "policy_types",
    "policy_triggers",
    "groups",
    "policies",
    "capabilities",
];
/// Property types that are not data types.
const PRIMITIVE_TYPES: &[&str] = &[
    "string", "integer", "float", "boolean", "list", "dict", "regex", "textarea",
];

/// Namespaces a whole imported document.
pub fn apply(document: &mut Node, ns: &str) {
    let Value::Map(sections) = &mut document.value else {
        return;
    };
    for (key, section) in sections.iter_mut() {
        if !NAMED_SECTIONS.contains(&key.name.as_str()) {
            continue;
        }
        let Value::Map(entries) = &mut section.value else {
            continue;
        };
        for (name, entry) in entries.iter_mut() {
            name.name = prefixed(ns, &name.name);
            match key.name.as_str() {
                "node_types" | "relationships" | "data_types" => type_definition(entry, ns),
                "node_templates" => node_template(entry, ns),
                "workflows" => workflow(entry, ns),
                "groups" => {
                    list_field(entry, "members", ns);
                    functions(entry, ns);
                }
                "policies" => list_field(entry, "targets", ns),
                _ => functions(entry, ns),
            }
        }
    }
}

/// `ns--name`, unless the name is one of Cloudify's.
pub fn prefixed(ns: &str, name: &str) -> String {
    if name.starts_with("cloudify.") {
        name.to_string()
    } else {
        format!("{ns}{NAMESPACE_DELIMITER}{name}")
    }
}

fn string_field(node: &mut Node, field: &str, ns: &str) {
    if let Some(Node {
        value: Value::Str(s),
        ..
    }) = get_mut(node, field)
    {
        *s = prefixed(ns, s);
    }
}

fn list_field(node: &mut Node, field: &str, ns: &str) {
    if let Some(Node {
        value: Value::Seq(items),
        ..
    }) = get_mut(node, field)
    {
        for item in items {
            if let Value::Str(s) = &mut item.value {
                *s = prefixed(ns, s);
            }
        }
    }
}

fn get_mut<'a>(node: &'a mut Node, field: &str) -> Option<&'a mut Node> {
    match &mut node.value {
        Value::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| k.name == field)
            .map(|(_, v)| v),
        _ => None,
    }
}

/// A node type, relationship or data type: parent, property types, implementations.
fn type_definition(entry: &mut Node, ns: &str) {
    string_field(entry, "derived_from", ns);
    if let Some(properties) = get_mut(entry, "properties")
        && let Value::Map(props) = &mut properties.value
    {
        for (_, schema) in props.iter_mut() {
            if let Some(Node {
                value: Value::Str(t),
                ..
            }) = get_mut(schema, "type")
                && !PRIMITIVE_TYPES.contains(&t.as_str())
            {
                *t = prefixed(ns, t);
            }
            functions(schema, ns);
        }
    }
    for field in ["interfaces", "source_interfaces", "target_interfaces"] {
        if let Some(interfaces) = get_mut(entry, field) {
            implementations(interfaces, ns);
        }
    }
}

fn node_template(entry: &mut Node, ns: &str) {
    string_field(entry, "type", ns);
    if let Some(Node {
        value: Value::Seq(relationships),
        ..
    }) = get_mut(entry, "relationships")
    {
        for relationship in relationships {
            string_field(relationship, "type", ns);
            string_field(relationship, "target", ns);
            for field in ["source_interfaces", "target_interfaces"] {
                if let Some(interfaces) = get_mut(relationship, field) {
                    implementations(interfaces, ns);
                }
            }
            functions(relationship, ns);
        }
    }
    if let Some(interfaces) = get_mut(entry, "interfaces") {
        implementations(interfaces, ns);
    }
    functions(entry, ns);
}

fn workflow(entry: &mut Node, ns: &str) {
    match &mut entry.value {
        Value::Str(s) => *s = format!("{ns}{NAMESPACE_DELIMITER}{s}"),
        Value::Map(_) => {
            if let Some(Node {
                value: Value::Str(s),
                ..
            }) = get_mut(entry, "mapping")
            {
                *s = format!("{ns}{NAMESPACE_DELIMITER}{s}");
            }
        }
        _ => {}
    }
}

/// Prefixes every operation implementation of `interfaces`, and namespaces its functions.
fn implementations(interfaces: &mut Node, ns: &str) {
    let Value::Map(interfaces) = &mut interfaces.value else {
        return;
    };
    for (_, interface) in interfaces.iter_mut() {
        let Value::Map(operations) = &mut interface.value else {
            continue;
        };
        for (_, operation) in operations.iter_mut() {
            match &mut operation.value {
                Value::Str(s) if !s.is_empty() => *s = format!("{ns}{NAMESPACE_DELIMITER}{s}"),
                Value::Map(_) => {
                    if let Some(Node {
                        value: Value::Str(s),
                        ..
                    }) = get_mut(operation, "implementation")
                        && !s.is_empty()
                    {
                        *s = format!("{ns}{NAMESPACE_DELIMITER}{s}");
                    }
                    functions(operation, ns);
                }
                _ => {}
            }
        }
    }
}

/// Namespaces the names intrinsic functions refer to: inputs of `get_input`, nodes of
/// `get_property` / `get_attribute` (not `SELF`, `SOURCE`, `TARGET`).
fn functions(node: &mut Node, ns: &str) {
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|i| functions(i, ns)),
        Value::Map(entries) => {
            if entries.len() == 1
                && let Some((key, argument)) = entries.first_mut()
            {
                match key.name.as_str() {
                    "get_input" => {
                        first_argument(argument, ns, false);
                        return;
                    }
                    "get_property"
                    | "get_attribute"
                    | "get_attributes_list"
                    | "get_attributes_dict" => {
                        first_argument(argument, ns, true);
                        return;
                    }
                    _ => {}
                }
            }
            entries.iter_mut().for_each(|(_, v)| functions(v, ns));
        }
        _ => {}
    }
}

fn first_argument(argument: &mut Node, ns: &str, node_reference: bool) {
    let target = match &mut argument.value {
        Value::Seq(items) => items.first_mut(),
        Value::Str(_) => Some(argument),
        _ => None,
    };
    if let Some(Node {
        value: Value::Str(s),
        ..
    }) = target
    {
        let special = node_reference && matches!(s.as_str(), "SELF" | "SOURCE" | "TARGET");
        if !special {
            *s = format!("{ns}{NAMESPACE_DELIMITER}{s}");
        }
    }
}
