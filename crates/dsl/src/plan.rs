//! The deployment plan: node templates merged with their types, operations bound to plugins,
//! functions evaluated, host nodes, scaling groups and workflows, in the shape of Cloudify's
//! `prepare_deployment_plan`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::error::Error;
use crate::functions::{self, Budget, Context};
use crate::parse::{Blueprint, Interfaces, RawOperation};
use crate::types::{self, Derived};
use crate::yaml::Mark;
use drover_model::plan::{NodeCapabilities, Scalable};
use drover_model::{
    Instances, Map, Operation, Plan, PlanNode, PlanRelationship, ScalableProperties, WorkflowSpec,
};

const COMPUTE: &str = "cloudify.nodes.Compute";
const CONTAINED_IN: &str = "cloudify.relationships.contained_in";
/// The most operations and properties the nodes of a plan may hold (about 1 KB each, as built).
/// Each node template copies its type's operations and property defaults, so a small blueprint
/// (many templates of a type with many operations) could otherwise ask for any amount of memory.
const MAX_PLAN_ENTRIES: usize = 500_000;
const DEPENDS_ON_OPERATION: &str = "cloudify.relationships.depends_on_lifecycle_operation";
const LIFECYCLE: &str = "cloudify.interfaces.lifecycle";
const SCRIPT_PLUGIN: &str = "script";
const SCRIPT_RUN: &str = "script_runner.tasks.run";
const SCRIPT_WORKFLOW: &str = "script_runner.tasks.execute_workflow";
const CENTRAL: &str = "central_deployment_agent";
const HOST_AGENT: &str = "host_agent";

/// Makes the plan (without node instances) of a validated blueprint.
pub fn make(
    bp: &Blueprint,
    given_inputs: &Map,
    resource_base: Option<&Path>,
    root: &Mark,
) -> Result<Plan, Error> {
    let data_types = types::derive_all("data_types", &bp.data_types, &HashMap::new())?;
    let node_types = types::derive_all("node_types", &bp.node_types, &data_types)?;
    let relationship_types = types::derive_all("relationships", &bp.relationships, &data_types)?;
    let input_values = crate::inputs::values(&bp.inputs, given_inputs, &data_types, root)?;
    let binder = Binder {
        plugins: &bp.plugins,
        resource_base,
    };
    // Cloudify binds relationship types' operations where they are defined, used or not.
    for name in bp.relationships.keys() {
        let Some(derived) = relationship_types.get(name) else {
            continue;
        };
        for (field, interfaces) in [
            ("source_interfaces", &derived.source_interfaces),
            ("target_interfaces", &derived.target_interfaces),
        ] {
            binder.operations(interfaces, &format!("relationships.{name}.{field}"))?;
        }
    }

    let mut nodes = Vec::with_capacity(bp.node_templates.len());
    let mut plan_size = 0usize;
    for (name, template) in &bp.node_templates {
        let path = format!("node_templates.{name}");
        let Some(node_type) = node_types.get(&template.type_name) else {
            return Err(template.type_mark.error(
                format!("{path}.type"),
                format!(
                    "node template '{name}' is of type '{}', which is not defined",
                    template.type_name
                ),
            ));
        };
        plan_size += node_entries(template, node_type, &relationship_types);
        if plan_size > MAX_PLAN_ENTRIES {
            return Err(template.mark.error(
                path,
                format!(
                    "the plan would hold more than {MAX_PLAN_ENTRIES} operations and properties: the node templates multiply their types' definitions too far"
                ),
            ));
        }
        let what = format!("node template '{name}'");
        let check = types::PropertyCheck {
            data_types: &data_types,
            what: &what,
            mark: &template.mark,
            require: true,
        };
        let properties = types::merge_properties(
            &node_type.properties,
            &template.properties,
            None,
            &check,
            &format!("{path}.properties"),
        )?;
        let interfaces = types::merge_template_interfaces(
            &template.interfaces,
            &node_type.interfaces,
            &format!("{path}.interfaces"),
        )?;
        let operations = binder.operations(&interfaces, &path)?;
        let mut relationships = Vec::with_capacity(template.relationships.len());
        let mut contained = 0;
        for (i, rel) in template.relationships.iter().enumerate() {
            let rpath = format!("{path}.relationships.{i}");
            let Some(rel_type) = relationship_types.get(&rel.type_name) else {
                return Err(rel.mark.error(
                    format!("{rpath}.type"),
                    format!("relationship type '{}' is not defined", rel.type_name),
                ));
            };
            if !bp.node_templates.contains_key(&rel.target) {
                return Err(rel.mark.error(
                    format!("{rpath}.target"),
                    format!(
                        "relationship target '{}' is not a node template",
                        rel.target
                    ),
                ));
            }
            if rel.target == *name {
                return Err(rel.mark.error(
                    format!("{rpath}.target"),
                    "a node template cannot have a relationship to itself",
                ));
            }
            if rel.type_name == DEPENDS_ON_OPERATION {
                check_lifecycle_operation_target(bp, rel, &rpath)?;
            }
            if rel_type.hierarchy.iter().any(|t| t == CONTAINED_IN) {
                contained += 1;
                if contained > 1 {
                    return Err(rel.mark.error(
                        rpath,
                        format!("node template '{name}' is contained in more than one node"),
                    ));
                }
            }
            relationships.push(relationship(rel, rel_type, &data_types, &binder, &rpath)?);
        }
        nodes.push(PlanNode {
            id: name.clone(),
            name: name.clone(),
            type_name: template.type_name.clone(),
            type_hierarchy: node_type.hierarchy.clone(),
            properties,
            operations,
            relationships,
            host_id: None,
            plugins: Vec::new(),
            plugins_to_install: Vec::new(),
            deployment_plugins_to_install: Vec::new(),
            // Set with the other functions-dependent values in `evaluate_nodes`.
            instances: Instances::default(),
            capabilities: NodeCapabilities::default(),
        });
    }
    set_host_ids(&mut nodes, bp)?;
    let budget = Budget::default();
    evaluate_nodes(&mut nodes, bp, &input_values, &budget)?;
    set_node_plugins(&mut nodes, &bp.plugins, bp)?;

    // Outputs, capabilities, labels and scaling policies see the evaluated node properties.
    let by_name: HashMap<&str, &Map> = nodes
        .iter()
        .map(|n| (n.id.as_str(), &n.properties))
        .collect();
    let ctx = Context {
        inputs: &input_values,
        nodes: &by_name,
        self_node: None,
        source: None,
        target: None,
        budget: &budget,
    };
    let outputs = evaluate_section(&bp.outputs, &ctx, "outputs", root)?;
    let capabilities = evaluate_section(&bp.capabilities, &ctx, "capabilities", root)?;
    let scaling_groups = crate::groups::scaling_groups(bp, &nodes, &ctx)?;
    let workflows = workflows(bp, &binder)?;

    let mut plan = Plan {
        description: bp.description.clone(),
        version: bp.version.name(),
        nodes: Vec::new(),
        node_instances: Vec::new(),
        inputs: bp
            .inputs
            .iter()
            .map(|(k, (v, _))| (k.clone(), Json::Object(v.clone())))
            .collect(),
        outputs,
        capabilities,
        workflows: workflows.0,
        groups: bp
            .groups
            .iter()
            .map(|(k, g)| (k.clone(), Json::Object(g.json.clone())))
            .collect(),
        policies: bp
            .policies
            .iter()
            .map(|(k, p)| (k.clone(), Json::Object(p.json.clone())))
            .collect(),
        policy_types: bp.policy_types.clone(),
        policy_triggers: bp.policy_triggers.clone(),
        scaling_groups,
        relationships: relationship_type_definitions(bp, &relationship_types),
        labels: evaluate_section(&bp.labels, &ctx, "labels", root)?,
        blueprint_labels: bp.blueprint_labels.clone(),
        deployment_plugins_to_install: Vec::new(),
        workflow_plugins_to_install: workflows.1,
        host_agent_plugins_to_install: Vec::new(),
    };
    let mut deployment = Vec::new();
    let mut host = Vec::new();
    for node in &nodes {
        add_plugins(&mut deployment, &node.deployment_plugins_to_install);
        add_plugins(&mut host, &node.plugins_to_install);
    }
    plan.deployment_plugins_to_install = deployment;
    plan.host_agent_plugins_to_install = host;
    plan.nodes = nodes;
    Ok(plan)
}

/// Adds plugins to a list keyed by plugin name, a later one replacing an earlier one of the same
/// name (Cloudify keeps these lists in dicts by name).
fn add_plugins(into: &mut Vec<Json>, from: &[Json]) {
    let name = |p: &Json| p.get("name").cloned();
    for plugin in from {
        match into.iter_mut().find(|p| name(p) == name(plugin)) {
            Some(slot) => *slot = plugin.clone(),
            None => into.push(plugin.clone()),
        }
    }
}

/// The operations and properties a node template will hold, counted before they are built.
fn node_entries(
    template: &crate::parse::NodeTemplate,
    node_type: &Derived,
    relationship_types: &HashMap<String, Derived>,
) -> usize {
    let operations = |i: &Interfaces| i.values().map(|ops| ops.len()).sum::<usize>();
    let relationships: usize = template
        .relationships
        .iter()
        .map(|r| {
            let of_type = relationship_types.get(&r.type_name).map_or(0, |t| {
                operations(&t.source_interfaces)
                    + operations(&t.target_interfaces)
                    + t.properties.len()
            });
            of_type
                + operations(&r.source_interfaces)
                + operations(&r.target_interfaces)
                + r.properties.len()
        })
        .sum();
    operations(&node_type.interfaces)
        + operations(&template.interfaces)
        + node_type.properties.len()
        + template.properties.len()
        + relationships
}

/// Binds operations to plugins (Cloudify's `process_operation`).
struct Binder<'a> {
    plugins: &'a IndexMap<String, Map>,
    resource_base: Option<&'a Path>,
}

/// What an implementation string resolves to.
enum Target {
    Plugin(String, String),
    Script(String),
}

impl Binder<'_> {
    fn operations(
        &self,
        interfaces: &Interfaces,
        path: &str,
    ) -> Result<BTreeMap<String, Operation>, Error> {
        let mut out = BTreeMap::new();
        for (interface, ops) in interfaces {
            for (name, op) in ops {
                let full = format!("{interface}.{name}");
                out.insert(full.clone(), self.operation(op, &full, path)?);
            }
        }
        Ok(out)
    }

    fn resolve(
        &self,
        implementation: &str,
        what: &str,
        name: &str,
        mark: &Mark,
        path: &str,
    ) -> Result<Target, Error> {
        let is_url = ["http://", "https://", "ftp://", "file:"]
            .iter()
            .any(|p| implementation.starts_with(p));
        let inline = implementation.trim().contains('\n');
        if is_url || inline || self.script_exists(implementation) {
            return Ok(Target::Script(implementation.to_string()));
        }
        let candidates: Vec<&String> = self
            .plugins
            .keys()
            .filter(|p| {
                implementation.len() > p.len()
                    && implementation.starts_with(p.as_str())
                    && implementation.as_bytes().get(p.len()) == Some(&b'.')
            })
            .collect();
        match candidates.as_slice() {
            [plugin] => Ok(Target::Plugin(
                (*plugin).clone(),
                implementation.get(plugin.len() + 1..).unwrap_or_default().to_string(),
            )),
            [] => Err(mark.error(
                format!("{path}.{name}"),
                format!(
                    "could not extract a plugin from {what} mapping '{implementation}', and no script of that path exists, for {what} '{name}'"
                ),
            )),
            many => Err(mark.error(
                format!("{path}.{name}"),
                format!("ambiguous {what} mapping '{implementation}' of '{name}': plugins {many:?} all match"),
            )),
        }
    }

    /// Whether a script of this path exists under the blueprint's directory (a namespace prefix
    /// is not part of the path).
    fn script_exists(&self, implementation: &str) -> bool {
        let Some(base) = self.resource_base else {
            return false;
        };
        let relative = match implementation.rfind(crate::imports::NAMESPACE_DELIMITER) {
            Some(i) => &implementation[i + crate::imports::NAMESPACE_DELIMITER.len()..],
            None => implementation,
        };
        !relative.is_empty()
            && !relative.starts_with('/')
            && !relative.contains("..")
            && base.join(relative).is_file()
    }

    fn script_plugin(
        &self,
        implementation: &str,
        what: &str,
        name: &str,
        mark: &Mark,
        path: &str,
    ) -> Result<String, Error> {
        self.plugins
            .keys()
            .find(|p| p.ends_with(SCRIPT_PLUGIN))
            .cloned()
            .ok_or_else(|| mark.error(format!("{path}.{name}"), format!("the script plugin is not defined, but {what} '{name}' maps to the script '{implementation}'")))
    }

    fn operation(&self, op: &RawOperation, name: &str, path: &str) -> Result<Operation, Error> {
        if op.implementation.is_empty() {
            return Ok(Operation::default());
        }
        let mut operation = Operation {
            inputs: op.inputs.clone(),
            executor: op.executor.clone(),
            max_retries: op.max_retries.clone(),
            retry_interval: op.retry_interval.clone(),
            timeout: op.timeout.clone(),
            timeout_recoverable: op.timeout_recoverable.clone(),
            ..Operation::default()
        };
        match self.resolve(&op.implementation, "operation", name, &op.mark, path)? {
            Target::Plugin(plugin, mapping) => {
                if operation.executor.is_none() {
                    operation.executor = self.plugin_executor(&plugin);
                }
                operation.plugin = plugin;
                operation.operation = mapping;
            }
            Target::Script(script) => {
                if op.inputs.contains_key("script_path") || op.inputs.contains_key("script_source")
                {
                    return Err(op.mark.error(format!("{path}.{name}"), format!("operation '{name}' maps to the script '{script}' and cannot also set the script_path input")));
                }
                let key = if script.trim().contains('\n') {
                    "script_source"
                } else {
                    "script_path"
                };
                operation
                    .inputs
                    .insert(key.into(), Json::String(script.clone()));
                operation.plugin =
                    self.script_plugin(&script, "operation", name, &op.mark, path)?;
                operation.operation = SCRIPT_RUN.into();
                operation.executor.get_or_insert_with(|| "auto".into());
            }
        }
        Ok(operation)
    }

    fn plugin_executor(&self, plugin: &str) -> Option<String> {
        self.plugins
            .get(plugin)?
            .get("executor")?
            .as_str()
            .map(str::to_string)
    }
}

fn relationship(
    rel: &crate::parse::RelationshipTemplate,
    rel_type: &Derived,
    data_types: &HashMap<String, Derived>,
    binder: &Binder<'_>,
    path: &str,
) -> Result<PlanRelationship, Error> {
    let what = format!("relationship '{}'", rel.type_name);
    let check = types::PropertyCheck {
        data_types,
        what: &what,
        mark: &rel.mark,
        require: true,
    };
    let properties = types::merge_properties(
        &rel_type.properties,
        &rel.properties,
        None,
        &check,
        &format!("{path}.properties"),
    )?;
    let source = types::merge_template_interfaces(
        &rel.source_interfaces,
        &rel_type.source_interfaces,
        &format!("{path}.source_interfaces"),
    )?;
    let target = types::merge_template_interfaces(
        &rel.target_interfaces,
        &rel_type.target_interfaces,
        &format!("{path}.target_interfaces"),
    )?;
    Ok(PlanRelationship {
        type_name: rel.type_name.clone(),
        target_id: rel.target.clone(),
        type_hierarchy: rel_type.hierarchy.clone(),
        properties,
        source_operations: binder.operations(&source, &format!("{path}.source_interfaces"))?,
        target_operations: binder.operations(&target, &format!("{path}.target_interfaces"))?,
    })
}

/// A `depends_on_lifecycle_operation` relationship names, in its `operation` property, a
/// lifecycle operation that its target node template itself defines.
fn check_lifecycle_operation_target(
    bp: &Blueprint,
    rel: &crate::parse::RelationshipTemplate,
    path: &str,
) -> Result<(), Error> {
    let Some(operation) = rel
        .properties
        .get("operation")
        .filter(|o| !o.is_null() && *o != "")
    else {
        return Err(rel.mark.error(
            format!("{path}.properties"),
            format!("a {DEPENDS_ON_OPERATION} relationship needs an 'operation' property naming a lifecycle operation of its target"),
        ));
    };
    let defined = operation.as_str().is_some_and(|op| {
        bp.node_templates
            .get(&rel.target)
            .and_then(|t| t.interfaces.get(LIFECYCLE))
            .is_some_and(|ops| ops.contains_key(op))
    });
    if !defined {
        return Err(rel.mark.error(
            format!("{path}.properties.operation"),
            format!("operation {operation} is not defined in the {LIFECYCLE} interface of target node template '{}'", rel.target),
        ));
    }
    Ok(())
}

/// Host of each node: itself for a Compute node, else its contained_in target's host.
fn set_host_ids(nodes: &mut [PlanNode], bp: &Blueprint) -> Result<(), Error> {
    /// Where the walk up the contained_in chain stands for a node.
    #[derive(Clone, Copy)]
    enum Host {
        Unknown,
        Visiting,
        Known(Option<usize>),
    }
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let container = |i: usize| {
        nodes
            .get(i)?
            .relationships
            .iter()
            .find(|r| r.is_contained_in())
            .and_then(|r| index.get(r.target_id.as_str()).copied())
    };
    let is_compute = |i: usize| {
        nodes
            .get(i)
            .is_some_and(|n| n.type_hierarchy.iter().any(|t| t == COMPUTE))
    };
    // Each node is walked once: a walk stops at a node whose host is known.
    let mut hosts = vec![Host::Unknown; nodes.len()];
    for start in 0..nodes.len() {
        let mut path = Vec::new();
        let mut current = start;
        let host = loop {
            match hosts.get(current).copied().unwrap_or(Host::Known(None)) {
                Host::Known(host) => break host,
                Host::Visiting => {
                    let id = nodes.get(start).map(|n| n.id.clone()).unwrap_or_default();
                    let mark = bp
                        .node_templates
                        .get(&id)
                        .map(|t| t.mark.clone())
                        .unwrap_or_default();
                    return Err(mark.error(
                        format!("node_templates.{id}.relationships"),
                        format!("node template '{id}' is in a contained_in cycle"),
                    ));
                }
                Host::Unknown => {}
            }
            if let Some(h) = hosts.get_mut(current) {
                *h = Host::Visiting;
            }
            path.push(current);
            if is_compute(current) {
                break Some(current);
            }
            match container(current) {
                Some(next) => current = next,
                None => break None,
            }
        };
        for i in path {
            if let Some(h) = hosts.get_mut(i) {
                *h = Host::Known(host);
            }
        }
    }
    let ids: Vec<Option<String>> = hosts
        .iter()
        .map(|h| match h {
            Host::Known(Some(i)) => nodes.get(*i).map(|n| n.id.clone()),
            _ => None,
        })
        .collect();
    for (node, host) in nodes.iter_mut().zip(ids) {
        node.host_id = host;
    }
    Ok(())
}

/// Evaluates the plan-time functions of node properties, operation inputs and scalable
/// properties, marking operations whose inputs keep runtime functions.
fn evaluate_nodes(
    nodes: &mut [PlanNode],
    bp: &Blueprint,
    inputs: &HashMap<String, Option<Json>>,
    budget: &Budget,
) -> Result<(), Error> {
    let raw: Vec<Map> = nodes.iter().map(|n| n.properties.clone()).collect();
    let names: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let by_name: HashMap<&str, &Map> = names.iter().map(String::as_str).zip(raw.iter()).collect();
    for node in nodes.iter_mut() {
        let template = bp.node_templates.get(&node.id);
        let mark = template.map(|t| t.mark.clone()).unwrap_or_default();
        let path = format!("node_templates.{}", node.id);
        let ctx = Context {
            inputs,
            nodes: &by_name,
            self_node: Some(node.id.as_str()),
            source: None,
            target: None,
            budget,
        };
        let located = |m: String, field: &str| mark.error(format!("{path}.{field}"), m);
        let evaluated =
            functions::evaluate(&Json::Object(std::mem::take(&mut node.properties)), &ctx)
                .map_err(|m| located(m, "properties"))?;
        if let Json::Object(map) = evaluated {
            node.properties = map;
        }
        for (name, op) in node.operations.iter_mut() {
            evaluate_operation(op, &ctx).map_err(|m| located(m, &format!("interfaces.{name}")))?;
        }
        if let Some(template) = template {
            let (instances, scalable) = evaluate_scalable(template, &ctx, &path)?;
            node.instances = instances;
            node.capabilities.scalable = scalable;
        }
        let self_name = node.id.clone();
        for rel in node.relationships.iter_mut() {
            let target = rel.target_id.clone();
            let rel_ctx = Context {
                inputs,
                nodes: &by_name,
                self_node: Some(self_name.as_str()),
                source: Some(self_name.as_str()),
                target: Some(target.as_str()),
                budget,
            };
            if let Json::Object(map) =
                functions::evaluate(&Json::Object(std::mem::take(&mut rel.properties)), &rel_ctx)
                    .map_err(|m| located(m, "relationships"))?
            {
                rel.properties = map;
            }
            for op in rel
                .source_operations
                .values_mut()
                .chain(rel.target_operations.values_mut())
            {
                evaluate_operation(op, &rel_ctx).map_err(|m| located(m, "relationships"))?;
            }
        }
    }
    Ok(())
}

fn evaluate_operation(op: &mut Operation, ctx: &Context<'_>) -> Result<(), String> {
    if let Json::Object(map) =
        functions::evaluate(&Json::Object(std::mem::take(&mut op.inputs)), ctx)?
    {
        op.inputs = map;
    }
    op.has_intrinsic_functions = op.inputs.values().any(functions::contains_function);
    Ok(())
}

/// Instance counts of a node: `capabilities.scalable.properties` (from 1_3) or
/// `instances.deploy`, with Cloudify's defaults (1 instance, min 0, no max).
fn evaluate_scalable(
    template: &crate::parse::NodeTemplate,
    ctx: &Context<'_>,
    path: &str,
) -> Result<(Instances, Scalable), Error> {
    let mut raw = template.scalable.clone();
    if let Some(deploy) = &template.instances_deploy
        && !raw.contains_key("default_instances")
    {
        raw.insert("default_instances".into(), deploy.clone());
    }
    let path = format!("{path}.capabilities.scalable.properties");
    let properties = scaling_properties(&raw, ctx, &template.mark, &path)?;
    Ok((
        Instances {
            deploy: properties.default_instances,
        },
        Scalable { properties },
    ))
}

/// Reads `default_instances`, `min_instances`, `max_instances` (functions evaluated) and checks
/// `min <= default <= max` (`max` of -1 is unbounded).
pub(crate) fn scaling_properties(
    raw: &Map,
    ctx: &Context<'_>,
    mark: &Mark,
    path: &str,
) -> Result<ScalableProperties, Error> {
    let evaluated =
        functions::evaluate(&Json::Object(raw.clone()), ctx).map_err(|m| mark.error(path, m))?;
    let get = |name: &str, default: i64| -> Result<i64, Error> {
        match evaluated.get(name) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| {
                    mark.error(
                        format!("{path}.{name}"),
                        format!("{name} must be an integer, got {v}"),
                    )
                }),
        }
    };
    let default = get("default_instances", 1)?;
    let min = get("min_instances", 0)?;
    let max = get("max_instances", -1)?;
    let bad = |m: String| Err(mark.error(path, m));
    if default < 0 || min < 0 || max < -1 {
        return bad(format!(
            "instance counts must not be negative (max_instances may be -1, unbounded): default {default}, min {min}, max {max}"
        ));
    }
    if default < min || (max != -1 && (default > max || min > max)) {
        return bad(format!(
            "expected min_instances <= default_instances <= max_instances, got min {min}, default {default}, max {max}"
        ));
    }
    let default = default as u64;
    Ok(ScalableProperties {
        default_instances: default,
        min_instances: min as u64,
        max_instances: max,
        current_instances: default,
        planned_instances: default,
    })
}

/// Plugins each node uses (Cloudify's `get_plugins_from_operations`: one entry per plugin and
/// executor, the operation's executor replacing the plugin's), those its host must install, and
/// the check that a node without a host uses no `host_agent` plugin.
fn set_node_plugins(
    nodes: &mut [PlanNode],
    plugins: &IndexMap<String, Map>,
    bp: &Blueprint,
) -> Result<(), Error> {
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();
    let mut used: Vec<Vec<(String, Option<String>)>> = vec![Vec::new(); nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        let source_ops = node
            .relationships
            .iter()
            .flat_map(|r| r.source_operations.values());
        for op in node.operations.values().chain(source_ops) {
            add_use(&mut used, i, op);
        }
        for rel in &node.relationships {
            if let Some(&target) = index.get(&rel.target_id) {
                for op in rel.target_operations.values() {
                    add_use(&mut used, target, op);
                }
            }
        }
    }
    let executor_of = |p: &Json| p.get("executor").and_then(Json::as_str).map(str::to_string);
    let mut host_plugins: HashMap<String, Vec<Json>> = HashMap::new();
    for (node, uses) in nodes.iter_mut().zip(used) {
        node.plugins = uses
            .into_iter()
            .filter_map(|(name, executor)| {
                let mut plugin = plugins.get(&name)?.clone();
                plugin.insert("executor".into(), executor.map_or(Json::Null, Json::String));
                Some(Json::Object(plugin))
            })
            .collect();
        let with_executor = |executor: &str| -> Vec<Json> {
            node.plugins
                .iter()
                .filter(|p| executor_of(p).as_deref() == Some(executor))
                .cloned()
                .collect()
        };
        node.deployment_plugins_to_install = with_executor(CENTRAL);
        let host_agent = with_executor(HOST_AGENT);
        match &node.host_id {
            Some(host) => add_plugins(host_plugins.entry(host.clone()).or_default(), &host_agent),
            None => {
                if let Some(plugin) = node
                    .plugins
                    .iter()
                    .find(|p| executor_of(p).as_deref() == Some(HOST_AGENT))
                {
                    let name = plugin
                        .get("name")
                        .and_then(Json::as_str)
                        .unwrap_or_default();
                    let mark = bp
                        .node_templates
                        .get(&node.id)
                        .map(|t| t.mark.clone())
                        .unwrap_or_default();
                    return Err(mark.error(
                        format!("node_templates.{}", node.id),
                        format!(
                            "node template '{}' is not contained in a host (a cloudify.nodes.Compute), but uses plugin '{name}' with the host_agent executor, which runs on its host's agent",
                            node.id
                        ),
                    ));
                }
            }
        }
    }
    for node in nodes.iter_mut() {
        if node.host_id.as_deref() == Some(node.id.as_str()) {
            node.plugins_to_install = host_plugins.remove(&node.id).unwrap_or_default();
        }
    }
    Ok(())
}

/// Records that node `i` uses an operation's plugin with the operation's executor.
fn add_use(used: &mut [Vec<(String, Option<String>)>], i: usize, op: &Operation) {
    if op.plugin.is_empty() {
        return;
    }
    let Some(list) = used.get_mut(i) else { return };
    let key = (op.plugin.clone(), op.executor.clone());
    if !list.contains(&key) {
        list.push(key);
    }
}

fn evaluate_section(
    section: &Map,
    ctx: &Context<'_>,
    path: &str,
    mark: &Mark,
) -> Result<Map, Error> {
    match functions::evaluate(&Json::Object(section.clone()), ctx)
        .map_err(|m| mark.error(path, m))?
    {
        Json::Object(map) => Ok(map),
        _ => Ok(Map::new()),
    }
}

/// Workflows bound to their plugins, and the plugins workflows need installed.
fn workflows(
    bp: &Blueprint,
    binder: &Binder<'_>,
) -> Result<(BTreeMap<String, WorkflowSpec>, Vec<Json>), Error> {
    let mut out = BTreeMap::new();
    let mut to_install = Vec::new();
    for (name, workflow) in &bp.workflows {
        let path = "workflows";
        let mut parameters = workflow.parameters.clone();
        let (plugin, operation) = match binder.resolve(
            &workflow.mapping,
            "workflow",
            name,
            &workflow.mark,
            path,
        )? {
            Target::Plugin(plugin, mapping) => (plugin, mapping),
            Target::Script(script) => {
                if parameters.contains_key("script_path") {
                    return Err(workflow.mark.error(format!("{path}.{name}"), format!("workflow '{name}' maps to a script and cannot also have a script_path parameter")));
                }
                let mut spec = Map::new();
                spec.insert("default".into(), Json::String(script.clone()));
                spec.insert(
                    "description".into(),
                    Json::String("Workflow script executed by the script plugin".into()),
                );
                parameters.insert("script_path".into(), Json::Object(spec));
                (
                    binder.script_plugin(&script, "workflow", name, &workflow.mark, path)?,
                    SCRIPT_WORKFLOW.to_string(),
                )
            }
        };
        if let Some(p) = bp.plugins.get(&plugin) {
            add_plugins(&mut to_install, &[Json::Object(p.clone())]);
        }
        out.insert(
            name.clone(),
            WorkflowSpec {
                plugin,
                operation,
                parameters,
                is_cascading: Some(workflow.is_cascading.unwrap_or(false)),
            },
        );
    }
    Ok((out, to_install))
}

/// The `relationships` section of the plan: each relationship type with its hierarchy.
fn relationship_type_definitions(bp: &Blueprint, derived: &HashMap<String, Derived>) -> Map {
    bp.relationships
        .keys()
        .filter_map(|name| {
            let d = derived.get(name)?;
            let mut map = Map::new();
            map.insert("name".into(), Json::String(name.clone()));
            map.insert(
                "type_hierarchy".into(),
                Json::Array(d.hierarchy.iter().cloned().map(Json::String).collect()),
            );
            map.insert(
                "properties".into(),
                Json::Object(
                    d.properties
                        .iter()
                        .map(|(k, v)| (k.clone(), Json::Object(v.clone())))
                        .collect(),
                ),
            );
            Some((name.clone(), Json::Object(map)))
        })
        .collect()
}
