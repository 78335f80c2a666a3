//! Schema validation of the merged document and its conversion into typed definitions.
//!
//! Every mapping is checked against the fields its DSL version allows (Cloudify's `framework`
//! schema with its `validate_version` gates): an unknown field, or a field of a later version,
//! is an error at its line and column. Values that later stages only carry along (property
//! values, operation inputs, outputs …) become JSON here.

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::error::Error;
use crate::version::Version;
use crate::yaml::{Key, Mark, Node, Value};
use drover_model::Map;

/// The blueprint, validated.
#[derive(Debug, Default)]
pub struct Blueprint {
    pub version: Version,
    pub description: Option<String>,
    /// Input definitions, with where each is defined.
    pub inputs: IndexMap<String, (Map, Mark)>,
    pub plugins: IndexMap<String, Map>,
    pub node_types: IndexMap<String, TypeDef>,
    pub relationships: IndexMap<String, TypeDef>,
    pub data_types: IndexMap<String, TypeDef>,
    pub node_templates: IndexMap<String, NodeTemplate>,
    pub workflows: IndexMap<String, Workflow>,
    pub groups: IndexMap<String, Group>,
    pub policies: IndexMap<String, Policy>,
    pub policy_types: Map,
    pub policy_triggers: Map,
    pub outputs: Map,
    pub capabilities: Map,
    pub labels: Map,
    pub blueprint_labels: Map,
}

/// A node type, relationship type or data type.
#[derive(Debug, Clone, Default)]
pub struct TypeDef {
    pub mark: Mark,
    pub derived_from: Option<(String, Mark)>,
    /// Property name → schema (`type`, `default`, `required`, `description`, `constraints`).
    pub properties: IndexMap<String, Map>,
    pub interfaces: Interfaces,
    pub source_interfaces: Interfaces,
    pub target_interfaces: Interfaces,
}

/// Interface name → operation name → operation.
pub type Interfaces = IndexMap<String, IndexMap<String, RawOperation>>;

/// An operation as written (short form `impl` or long form), before it is bound to a plugin.
/// In a type, `inputs` is a schema (name → `{default, type …}`); in a template, values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawOperation {
    pub implementation: String,
    pub inputs: Map,
    pub executor: Option<String>,
    pub max_retries: Option<Json>,
    pub retry_interval: Option<Json>,
    pub timeout: Option<Json>,
    pub timeout_recoverable: Option<Json>,
    pub mark: Mark,
}

impl RawOperation {
    /// An operation with nothing set (`{}` or `''`): Cloudify's NO_OP, which overrides an
    /// inherited implementation with nothing.
    pub fn is_noop(&self) -> bool {
        self.implementation.is_empty()
            && self.inputs.is_empty()
            && self.executor.is_none()
            && self.max_retries.is_none()
            && self.retry_interval.is_none()
            && self.timeout.is_none()
            && self.timeout_recoverable.is_none()
    }
}

#[derive(Debug, Clone, Default)]
pub struct NodeTemplate {
    pub mark: Mark,
    pub type_name: String,
    pub type_mark: Mark,
    pub properties: Map,
    pub interfaces: Interfaces,
    pub relationships: Vec<RelationshipTemplate>,
    /// `instances: {deploy: N}` (before 1_3).
    pub instances_deploy: Option<Json>,
    /// `capabilities: {scalable: {properties: …}}` (from 1_3).
    pub scalable: Map,
}

#[derive(Debug, Clone, Default)]
pub struct RelationshipTemplate {
    pub mark: Mark,
    pub type_name: String,
    pub target: String,
    pub properties: Map,
    pub source_interfaces: Interfaces,
    pub target_interfaces: Interfaces,
}

#[derive(Debug, Clone, Default)]
pub struct Workflow {
    pub mark: Mark,
    pub mapping: String,
    pub parameters: Map,
    pub is_cascading: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct Group {
    pub members: Vec<(String, Mark)>,
    pub json: Map,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub mark: Mark,
    pub targets: Vec<(String, Mark)>,
    pub properties: Map,
    pub json: Map,
}

/// The one policy type `policies` may use.
const SCALING_POLICY: &str = "cloudify.policies.scaling";

/// A field allowed in a mapping, from a DSL version on.
type Field = (&'static str, (u8, u8));
const ANY: (u8, u8) = (1, 0);

const TOP_LEVEL: &[Field] = &[
    ("tosca_definitions_version", ANY),
    ("description", (1, 2)),
    ("imports", ANY),
    ("dsl_definitions", (1, 2)),
    ("metadata", ANY),
    ("inputs", ANY),
    ("plugins", ANY),
    ("node_types", ANY),
    ("relationships", ANY),
    ("node_templates", ANY),
    ("policy_types", ANY),
    ("policy_triggers", ANY),
    ("groups", ANY),
    ("policies", (1, 3)),
    ("workflows", ANY),
    ("outputs", ANY),
    ("data_types", (1, 2)),
    ("capabilities", ANY),
    ("imported_blueprints", ANY),
    ("namespaces_mapping", ANY),
    ("labels", ANY),
    ("blueprint_labels", ANY),
    ("deployment_settings", ANY),
    ("resource_tags", (1, 3)),
];

const INPUT: &[Field] = &[
    ("description", ANY),
    ("type", ANY),
    ("default", ANY),
    ("required", (1, 2)),
    ("constraints", ANY),
    ("display_label", (1, 3)),
    ("hidden", (1, 3)),
    ("item_type", (1, 4)),
    ("display", ANY),
];
const PROPERTY: &[Field] = &[
    ("description", ANY),
    ("type", ANY),
    ("default", ANY),
    ("required", (1, 2)),
    ("constraints", ANY),
    ("display_label", (1, 3)),
    ("hidden", (1, 3)),
    ("item_type", ANY),
    ("display", ANY),
];
const PLUGIN: &[Field] = &[
    ("executor", ANY),
    ("source", ANY),
    ("install", ANY),
    ("install_arguments", (1, 1)),
    ("package_name", (1, 2)),
    ("package_version", (1, 2)),
    ("supported_platform", (1, 2)),
    ("distribution", (1, 2)),
    ("distribution_version", (1, 2)),
    ("distribution_release", (1, 2)),
    ("properties", (1, 5)),
    ("properties_description", (1, 5)),
];
const TYPE_DEF: &[Field] = &[
    ("derived_from", ANY),
    ("properties", ANY),
    ("interfaces", ANY),
    ("runtime_properties", (1, 5)),
];
const RELATIONSHIP_TYPE: &[Field] = &[
    ("derived_from", ANY),
    ("properties", ANY),
    ("source_interfaces", ANY),
    ("target_interfaces", ANY),
];
const DATA_TYPE: &[Field] = &[
    ("derived_from", ANY),
    ("properties", ANY),
    ("description", ANY),
    ("version", ANY),
];
const OPERATION: &[Field] = &[
    ("implementation", ANY),
    ("inputs", ANY),
    ("executor", ANY),
    ("max_retries", (1, 1)),
    ("retry_interval", (1, 1)),
    ("timeout", ANY),
    ("timeout_recoverable", ANY),
];
const NODE_TEMPLATE: &[Field] = &[
    ("type", ANY),
    ("properties", ANY),
    ("interfaces", ANY),
    ("relationships", ANY),
    ("instances", ANY),
    ("capabilities", (1, 3)),
];
const RELATIONSHIP: &[Field] = &[
    ("type", ANY),
    ("target", ANY),
    ("properties", ANY),
    ("source_interfaces", ANY),
    ("target_interfaces", ANY),
];
const WORKFLOW: &[Field] = &[
    ("mapping", ANY),
    ("parameters", ANY),
    ("is_cascading", ANY),
    ("availability_rules", (1, 4)),
];
const WORKFLOW_PARAMETER: &[Field] = &[
    ("description", ANY),
    ("type", ANY),
    ("default", ANY),
    ("required", (1, 2)),
    ("constraints", ANY),
    ("item_type", (1, 4)),
];
const GROUP: &[Field] = &[("members", ANY), ("policies", ANY)];
const POLICY: &[Field] = &[("type", ANY), ("targets", ANY), ("properties", ANY)];
const SCALABLE: &[Field] = &[
    ("default_instances", ANY),
    ("min_instances", ANY),
    ("max_instances", ANY),
];

/// Joins a field path: `parent.child`.
fn join(path: &str, child: &str) -> String {
    if path.is_empty() {
        child.to_string()
    } else {
        format!("{path}.{child}")
    }
}

/// The entries of a mapping (`null` reads as empty), or an error naming what was expected.
fn entries<'a>(node: &'a Node, path: &str, what: &str) -> Result<&'a [(Key, Node)], Error> {
    match &node.value {
        Value::Map(entries) => Ok(entries),
        Value::Null => Ok(&[]),
        _ => Err(node.mark.error(
            path,
            format!("expected {what} (a mapping), got {}", node.kind()),
        )),
    }
}

/// Checks that a mapping holds only allowed fields, allowed in this version.
fn fields<'a>(
    node: &'a Node,
    path: &str,
    what: &str,
    allowed: &[Field],
    version: &Version,
) -> Result<&'a [(Key, Node)], Error> {
    let entries = entries(node, path, what)?;
    for (key, _) in entries {
        let Some((_, (major, minor))) = allowed.iter().find(|(name, _)| *name == key.name) else {
            let valid: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            return Err(key.mark.error(
                join(path, &key.name),
                format!(
                    "'{}' is not in schema. Valid schema values: {}",
                    key.name,
                    valid.join(", ")
                ),
            ));
        };
        version
            .require(
                node,
                &join(path, &key.name),
                &format!("'{}'", key.name),
                *major,
                *minor,
            )
            .map_err(|e| Error {
                location: Some(key.mark.at(join(path, &key.name))),
                ..e
            })?;
    }
    Ok(entries)
}

fn string(node: &Node, path: &str) -> Result<String, Error> {
    match &node.value {
        Value::Str(s) => Ok(s.clone()),
        _ => Err(node
            .mark
            .error(path, format!("expected a string, got {}", node.kind()))),
    }
}

/// A string, or the canonical text of a scalar where Cloudify accepts a scalar (YAML may read
/// `1.0` as a number).
fn optional_string(node: Option<&Node>, path: &str) -> Result<Option<String>, Error> {
    node.filter(|n| !n.is_null())
        .map(|n| string(n, path))
        .transpose()
}

fn json_map(node: &Node, path: &str, what: &str) -> Result<Map, Error> {
    match node.to_json() {
        Json::Object(map) => Ok(map),
        Json::Null => Ok(Map::new()),
        _ => Err(node.mark.error(
            path,
            format!("expected {what} (a mapping), got {}", node.kind()),
        )),
    }
}

/// Validates the merged document and converts it.
pub fn blueprint(document: &Node, version: Version) -> Result<Blueprint, Error> {
    let mut bp = Blueprint {
        version,
        ..Blueprint::default()
    };
    let v = &version;
    for (key, value) in fields(document, "", "a blueprint", TOP_LEVEL, v)? {
        let path = key.name.as_str();
        match path {
            "description" => bp.description = optional_string(Some(value), path)?,
            "inputs" => {
                for (name, input) in entries(value, path, "inputs")? {
                    let p = join(path, &name.name);
                    fields(input, &p, "an input", INPUT, v)?;
                    check_constraints(input, &p, v)?;
                    check_hidden_input(input, &name.name, &p)?;
                    let definition = json_map(input, &p, "an input")?;
                    bp.inputs
                        .insert(name.name.clone(), (definition, name.mark.clone()));
                }
            }
            "plugins" => {
                for (name, plugin) in entries(value, path, "plugins")? {
                    let p = join(path, &name.name);
                    fields(plugin, &p, "a plugin", PLUGIN, v)?;
                    bp.plugins.insert(
                        name.name.clone(),
                        plugin_definition(plugin, &name.name, &p)?,
                    );
                }
            }
            "node_types" => {
                for (name, def) in entries(value, path, "node types")? {
                    let p = join(path, &name.name);
                    bp.node_types
                        .insert(name.name.clone(), type_def(def, &p, TYPE_DEF, v)?);
                }
            }
            "relationships" => {
                for (name, def) in entries(value, path, "relationship types")? {
                    let p = join(path, &name.name);
                    bp.relationships
                        .insert(name.name.clone(), type_def(def, &p, RELATIONSHIP_TYPE, v)?);
                }
            }
            "data_types" => {
                for (name, def) in entries(value, path, "data types")? {
                    let p = join(path, &name.name);
                    bp.data_types
                        .insert(name.name.clone(), type_def(def, &p, DATA_TYPE, v)?);
                }
            }
            "node_templates" => {
                for (name, def) in entries(value, path, "node templates")? {
                    let p = join(path, &name.name);
                    bp.node_templates
                        .insert(name.name.clone(), node_template(def, &p, v)?);
                }
            }
            "workflows" => {
                for (name, def) in entries(value, path, "workflows")? {
                    let p = join(path, &name.name);
                    bp.workflows
                        .insert(name.name.clone(), workflow(def, &p, v)?);
                }
            }
            "groups" => {
                for (name, def) in entries(value, path, "groups")? {
                    let p = join(path, &name.name);
                    bp.groups.insert(name.name.clone(), group(def, &p, v)?);
                }
            }
            "policies" => {
                for (name, def) in entries(value, path, "policies")? {
                    let p = join(path, &name.name);
                    bp.policies.insert(name.name.clone(), policy(def, &p, v)?);
                }
            }
            "outputs" | "capabilities" => {
                let mut map = Map::new();
                for (name, def) in entries(value, path, path)? {
                    let p = join(path, &name.name);
                    fields(
                        def,
                        &p,
                        "an output",
                        &[("description", ANY), ("value", ANY)],
                        v,
                    )?;
                    if def.get("value").is_none() {
                        return Err(def.mark.error(p, "missing 'value'"));
                    }
                    map.insert(name.name.clone(), def.to_json());
                }
                if path == "outputs" {
                    bp.outputs = map;
                } else {
                    bp.capabilities = map;
                }
            }
            "policy_types" => bp.policy_types = json_map(value, path, "policy types")?,
            "policy_triggers" => bp.policy_triggers = json_map(value, path, "policy triggers")?,
            "labels" => bp.labels = labels(value, path, v)?,
            "blueprint_labels" => bp.blueprint_labels = labels(value, path, v)?,
            "dsl_definitions" => match value.value {
                Value::Map(_) | Value::Seq(_) | Value::Null => {}
                _ => return Err(value.mark.error(path, "expected a mapping or a list")),
            },
            "metadata" | "deployment_settings" | "resource_tags" => {
                entries(value, path, path)?;
            }
            _ => {}
        }
    }
    Ok(bp)
}

/// Constraint operators (Cloudify's `constraints.CONSTRAINTS`).
const CONSTRAINTS: &[&str] = &[
    "equal",
    "greater_than",
    "greater_or_equal",
    "less_than",
    "less_or_equal",
    "in_range",
    "valid_values",
    "length",
    "min_length",
    "max_length",
    "pattern",
    "filter_id",
    "labels",
    "tenants",
    "name_pattern",
    "deployment_id",
];

/// A hidden input cannot be asked for, so a required one needs a default.
fn check_hidden_input(input: &Node, name: &str, path: &str) -> Result<(), Error> {
    let flag = |field: &str, default: bool| match input.get(field).map(|n| &n.value) {
        Some(Value::Bool(b)) => *b,
        _ => default,
    };
    if flag("hidden", false) && flag("required", true) && input.get("default").is_none() {
        return Err(input.mark.error(
            path,
            format!("input '{name}' is both hidden and required, so it needs a default"),
        ));
    }
    Ok(())
}

/// `constraints` of an input or parameter: a list of single-operator mappings (from 1_5 an
/// operator may come with an `error_message`).
fn check_constraints(schema: &Node, path: &str, v: &Version) -> Result<(), Error> {
    let Some(constraints) = schema.get("constraints") else {
        return Ok(());
    };
    let path = join(path, "constraints");
    let items = match &constraints.value {
        Value::Seq(items) => items.as_slice(),
        Value::Null => &[],
        _ => {
            return Err(constraints.mark.error(
                path,
                format!("expected a list of constraints, got {}", constraints.kind()),
            ));
        }
    };
    for (i, item) in items.iter().enumerate() {
        let p = join(&path, &i.to_string());
        let entries = entries(item, &p, "a constraint")?;
        let operators: Vec<&Key> = entries
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.name != "error_message")
            .collect();
        if entries.len() > operators.len() {
            v.require(item, &p, "a constraint's error_message", 1, 5)?;
        }
        let [operator] = operators.as_slice() else {
            return Err(item.mark.error(
                p,
                "each constraint is a mapping of one operator to its argument",
            ));
        };
        if !CONSTRAINTS.contains(&operator.name.as_str()) {
            return Err(operator.mark.error(
                join(&p, &operator.name),
                format!(
                    "no such constraint operator '{}': expected one of {}",
                    operator.name,
                    CONSTRAINTS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// A plugin: a valid executor, `install` (true unless said otherwise) with a `source` or
/// `package_name` to install from, and its name added (as in Cloudify's plan).
fn plugin_definition(plugin: &Node, name: &str, path: &str) -> Result<Map, Error> {
    let mut map = json_map(plugin, path, "a plugin")?;
    let executor_path = join(path, "executor");
    let Some(executor) = plugin.get("executor") else {
        return Err(plugin.mark.error(
            executor_path,
            format!("plugin '{name}' needs an 'executor'"),
        ));
    };
    check_executor(
        &string(executor, &executor_path)?,
        Some(executor),
        &executor_path,
    )?;
    let install = match plugin.get("install").map(|i| &i.value) {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(plugin
                .mark
                .error(join(path, "install"), "expected a boolean"));
        }
    };
    let declared = |field: &str| plugin.get(field).is_some_and(|v| !v.is_null());
    if install && !declared("source") && !declared("package_name") {
        return Err(plugin.mark.error(
            path,
            format!("plugin '{name}' needs to be installed, but declares no source or package_name (or install: false)"),
        ));
    }
    map.insert("install".into(), Json::Bool(install));
    map.insert("name".into(), Json::String(name.to_string()));
    Ok(map)
}

fn check_executor(executor: &str, node: Option<&Node>, path: &str) -> Result<(), Error> {
    const VALID: &[&str] = &["central_deployment_agent", "host_agent"];
    if VALID.contains(&executor) {
        return Ok(());
    }
    let mark = node.map(|n| n.mark.clone()).unwrap_or_default();
    Err(mark.error(
        path,
        format!(
            "illegal executor value '{executor}': expected one of {}",
            VALID.join(", ")
        ),
    ))
}

fn type_def(node: &Node, path: &str, schema: &[Field], v: &Version) -> Result<TypeDef, Error> {
    let mut def = TypeDef {
        mark: node.mark.clone(),
        ..TypeDef::default()
    };
    for (key, value) in fields(node, path, "a type", schema, v)? {
        let p = join(path, &key.name);
        match key.name.as_str() {
            "derived_from" => def.derived_from = Some((string(value, &p)?, value.mark.clone())),
            "properties" => {
                for (name, schema) in entries(value, &p, "properties")? {
                    let pp = join(&p, &name.name);
                    fields(schema, &pp, "a property schema", PROPERTY, v)?;
                    def.properties.insert(
                        name.name.clone(),
                        json_map(schema, &pp, "a property schema")?,
                    );
                }
            }
            "interfaces" => def.interfaces = interfaces(value, &p, true, v)?,
            "source_interfaces" => def.source_interfaces = interfaces(value, &p, true, v)?,
            "target_interfaces" => def.target_interfaces = interfaces(value, &p, true, v)?,
            _ => {}
        }
    }
    Ok(def)
}

/// Interfaces of a type (`in_type`: operation inputs are schemas) or of a template.
fn interfaces(node: &Node, path: &str, in_type: bool, v: &Version) -> Result<Interfaces, Error> {
    let mut out = Interfaces::new();
    for (name, interface) in entries(node, path, "interfaces")? {
        let p = join(path, &name.name);
        let mut operations = IndexMap::new();
        for (op_name, op) in entries(interface, &p, "an interface")? {
            let op_path = join(&p, &op_name.name);
            operations.insert(op_name.name.clone(), operation(op, &op_path, in_type, v)?);
        }
        out.insert(name.name.clone(), operations);
    }
    Ok(out)
}

fn operation(node: &Node, path: &str, in_type: bool, v: &Version) -> Result<RawOperation, Error> {
    let mut op = RawOperation {
        mark: node.mark.clone(),
        ..RawOperation::default()
    };
    match &node.value {
        Value::Str(s) => op.implementation = s.clone(),
        Value::Null => {}
        Value::Map(_) => {
            for (key, value) in fields(node, path, "an operation", OPERATION, v)? {
                let p = join(path, &key.name);
                match key.name.as_str() {
                    "implementation" => {
                        op.implementation = optional_string(Some(value), &p)?.unwrap_or_default()
                    }
                    "inputs" => {
                        if in_type {
                            for (name, schema) in entries(value, &p, "operation inputs")? {
                                let ip = join(&p, &name.name);
                                if !matches!(schema.value, Value::Map(_)) {
                                    return Err(schema.mark.error(
                                        ip,
                                        format!("an operation input of a type is a schema (a mapping with default, type, description), got {}", schema.kind()),
                                    ));
                                }
                                fields(schema, &ip, "an input schema", INPUT, v)?;
                            }
                        }
                        op.inputs = json_map(value, &p, "operation inputs")?;
                    }
                    "executor" if !value.is_null() => {
                        let e = string(value, &p)?;
                        check_executor(&e, Some(value), &p)?;
                        op.executor = Some(e);
                    }
                    "max_retries" => op.max_retries = number(value, &p, true, -1.0)?,
                    "retry_interval" => op.retry_interval = number(value, &p, false, 0.0)?,
                    "timeout" => op.timeout = number(value, &p, false, 0.0)?,
                    "timeout_recoverable" => {
                        op.timeout_recoverable = match value.value {
                            Value::Bool(_) | Value::Null => {
                                Some(value.to_json()).filter(|j| !j.is_null())
                            }
                            _ => {
                                return Err(value.mark.error(
                                    p,
                                    format!("expected a boolean, got {}", value.kind()),
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {
            return Err(node.mark.error(
                path,
                format!(
                    "expected an operation (a string or a mapping), got {}",
                    node.kind()
                ),
            ));
        }
    }
    Ok(op)
}

/// A retry setting: an integer (`integer_only`) or a number, at least `min`.
fn number(node: &Node, path: &str, integer_only: bool, min: f64) -> Result<Option<Json>, Error> {
    let value = match node.value {
        Value::Null => return Ok(None),
        Value::Int(i) => i as f64,
        Value::Float(f) if !integer_only => f,
        _ => {
            let what = if integer_only {
                "an integer"
            } else {
                "a number"
            };
            return Err(node
                .mark
                .error(path, format!("expected {what}, got {}", node.kind())));
        }
    };
    if value < min {
        return Err(node.mark.error(
            path,
            format!("expected a value of at least {min}, got {value}"),
        ));
    }
    Ok(Some(node.to_json()))
}

fn node_template(node: &Node, path: &str, v: &Version) -> Result<NodeTemplate, Error> {
    let mut t = NodeTemplate {
        mark: node.mark.clone(),
        ..NodeTemplate::default()
    };
    let entries = fields(node, path, "a node template", NODE_TEMPLATE, v)?;
    let Some(type_node) = node.get("type") else {
        return Err(node.mark.error(path, "a node template needs a 'type'"));
    };
    t.type_name = string(type_node, &join(path, "type"))?;
    t.type_mark = type_node.mark.clone();
    for (key, value) in entries {
        let p = join(path, &key.name);
        match key.name.as_str() {
            "properties" => t.properties = json_map(value, &p, "properties")?,
            "interfaces" => t.interfaces = interfaces(value, &p, false, v)?,
            "relationships" => {
                let items = match &value.value {
                    Value::Seq(items) => items.as_slice(),
                    Value::Null => &[],
                    _ => {
                        return Err(value.mark.error(
                            p,
                            format!("expected a list of relationships, got {}", value.kind()),
                        ));
                    }
                };
                for (i, item) in items.iter().enumerate() {
                    t.relationships
                        .push(relationship(item, &join(&p, &i.to_string()), v)?);
                }
            }
            "instances" => {
                for (k, val) in fields(value, &p, "instances", &[("deploy", ANY)], v)? {
                    let dp = join(&p, &k.name);
                    match val.value {
                        Value::Int(i) if i >= 0 => t.instances_deploy = Some(val.to_json()),
                        _ => {
                            return Err(val.mark.error(
                                dp,
                                format!("expected a non-negative integer, got {}", val.kind()),
                            ));
                        }
                    }
                }
            }
            "capabilities" => {
                for (k, val) in fields(value, &p, "capabilities", &[("scalable", ANY)], v)? {
                    let sp = join(&p, &k.name);
                    for (k2, props) in fields(
                        val,
                        &sp,
                        "the scalable capability",
                        &[("properties", ANY)],
                        v,
                    )? {
                        let pp = join(&sp, &k2.name);
                        fields(props, &pp, "scalable properties", SCALABLE, v)?;
                        t.scalable = json_map(props, &pp, "scalable properties")?;
                    }
                }
            }
            _ => {}
        }
    }
    let capabilities_key = entries
        .iter()
        .find(|(k, _)| k.name == "capabilities")
        .map(|(k, _)| k);
    if let (Some(_), Some(capabilities)) = (node.get("instances"), capabilities_key) {
        return Err(capabilities.mark.error(
            join(path, "capabilities"),
            "a node template defines both instances.deploy and capabilities.scalable (instances.deploy is deprecated)",
        ));
    }
    Ok(t)
}

fn relationship(node: &Node, path: &str, v: &Version) -> Result<RelationshipTemplate, Error> {
    let mut r = RelationshipTemplate {
        mark: node.mark.clone(),
        ..RelationshipTemplate::default()
    };
    let entries = fields(node, path, "a relationship", RELATIONSHIP, v)?;
    for required in ["type", "target"] {
        if node.get(required).is_none() {
            return Err(node
                .mark
                .error(path, format!("a relationship needs a '{required}'")));
        }
    }
    for (key, value) in entries {
        let p = join(path, &key.name);
        match key.name.as_str() {
            "type" => r.type_name = string(value, &p)?,
            "target" => r.target = string(value, &p)?,
            "properties" => r.properties = json_map(value, &p, "properties")?,
            "source_interfaces" => r.source_interfaces = interfaces(value, &p, false, v)?,
            "target_interfaces" => r.target_interfaces = interfaces(value, &p, false, v)?,
            _ => {}
        }
    }
    Ok(r)
}

fn workflow(node: &Node, path: &str, v: &Version) -> Result<Workflow, Error> {
    let mut w = Workflow {
        mark: node.mark.clone(),
        ..Workflow::default()
    };
    match &node.value {
        Value::Str(s) => w.mapping = s.clone(),
        Value::Map(_) => {
            for (key, value) in fields(node, path, "a workflow", WORKFLOW, v)? {
                let p = join(path, &key.name);
                match key.name.as_str() {
                    "mapping" => w.mapping = string(value, &p)?,
                    "parameters" => {
                        for (name, schema) in entries(value, &p, "workflow parameters")? {
                            let pp = join(&p, &name.name);
                            fields(schema, &pp, "a parameter schema", WORKFLOW_PARAMETER, v)?;
                            check_constraints(schema, &pp, v)?;
                        }
                        w.parameters = json_map(value, &p, "workflow parameters")?;
                    }
                    "is_cascading" => match value.value {
                        Value::Bool(b) => w.is_cascading = Some(b),
                        _ => {
                            return Err(value
                                .mark
                                .error(p, format!("expected a boolean, got {}", value.kind())));
                        }
                    },
                    _ => {}
                }
            }
            if node.get("mapping").is_none() {
                return Err(node.mark.error(path, "a workflow needs a 'mapping'"));
            }
        }
        _ => {
            return Err(node.mark.error(
                path,
                format!(
                    "expected a workflow (a string or a mapping), got {}",
                    node.kind()
                ),
            ));
        }
    }
    Ok(w)
}

fn names(node: &Node, path: &str) -> Result<Vec<(String, Mark)>, Error> {
    let Value::Seq(items) = &node.value else {
        return Err(node.mark.error(
            path,
            format!("expected a list of names, got {}", node.kind()),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            Ok((
                string(item, &join(path, &i.to_string()))?,
                item.mark.clone(),
            ))
        })
        .collect()
}

fn group(node: &Node, path: &str, v: &Version) -> Result<Group, Error> {
    fields(node, path, "a group", GROUP, v)?;
    let Some(members) = node.get("members") else {
        return Err(node.mark.error(path, "a group needs 'members'"));
    };
    let members = names(members, &join(path, "members"))?;
    if members.is_empty() {
        return Err(node
            .mark
            .error(join(path, "members"), "a group needs at least one member"));
    }
    Ok(Group {
        members,
        json: json_map(node, path, "a group")?,
    })
}

fn policy(node: &Node, path: &str, v: &Version) -> Result<Policy, Error> {
    fields(node, path, "a policy", POLICY, v)?;
    let type_name = match node.get("type") {
        Some(t) => string(t, &join(path, "type"))?,
        None => return Err(node.mark.error(path, "a policy needs a 'type'")),
    };
    let targets = match node.get("targets") {
        Some(t) => names(t, &join(path, "targets"))?,
        None => return Err(node.mark.error(path, "a policy needs 'targets'")),
    };
    if type_name != SCALING_POLICY {
        let mark = node.get("type").map(|t| t.mark.clone()).unwrap_or_default();
        return Err(mark.error(
            join(path, "type"),
            format!("'{type_name}' policy type is not implemented: only '{SCALING_POLICY}' is"),
        ));
    }
    if targets.is_empty() {
        return Err(node.mark.error(
            join(path, "targets"),
            "a policy needs at least one target group",
        ));
    }
    let properties = match node.get("properties") {
        Some(p) => {
            fields(
                p,
                &join(path, "properties"),
                "scaling properties",
                SCALABLE,
                v,
            )?;
            json_map(p, &join(path, "properties"), "policy properties")?
        }
        None => Map::new(),
    };
    Ok(Policy {
        mark: node.mark.clone(),
        targets,
        properties,
        json: json_map(node, path, "a policy")?,
    })
}

fn labels(node: &Node, path: &str, v: &Version) -> Result<Map, Error> {
    for (name, label) in entries(node, path, "labels")? {
        let p = join(path, &name.name);
        fields(label, &p, "a label", &[("values", ANY)], v)?;
        match label.get("values") {
            Some(Node {
                value: Value::Seq(_),
                ..
            }) => {}
            Some(other) => {
                return Err(other.mark.error(
                    join(&p, "values"),
                    format!("expected a list, got {}", other.kind()),
                ));
            }
            None => return Err(label.mark.error(p, "a label needs 'values'")),
        }
    }
    json_map(node, path, "labels")
}
