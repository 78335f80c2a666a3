//! The built-in workflows (Cloudify's `default_workflows` plugin, `cloudify.plugins.workflows.*`):
//! each turns its parameters and the deployment into a [`WorkflowPlan`] of phases.

use std::collections::HashSet;

use drover_model::{Map, Plan};
use serde_json::Value;

use crate::journal::WorkflowPlan;
use crate::lifecycle::{Phase, Selection};
use crate::scale;
use crate::world::World;

/// The built-in workflows, by the name drover calls them.
pub const BUILT_IN: &[&str] = &[
    "install",
    "uninstall",
    "reinstall",
    "start",
    "stop",
    "restart",
    "execute_operation",
    "heal",
    "scale",
];

/// The built-in that implements Cloudify's `cloudify.plugins.workflows.<name>`.
fn built_in_for(implementation: &str) -> Option<&'static str> {
    match implementation {
        "auto_heal_reinstall_node_subgraph" => Some("heal"),
        "scale_entity" => Some("scale"),
        other => BUILT_IN
            .iter()
            .copied()
            .find(|b| *b == other && *b != "heal" && *b != "scale"),
    }
}

/// Which built-in implements a deployment's workflow: its mapping in the plan
/// (`default_workflows.cloudify.plugins.workflows.<name>`), or the built-in of that name when the
/// plan does not declare it.
pub(crate) fn built_in(plan: &Plan, name: &str) -> Result<&'static str, String> {
    match plan.workflows.get(name) {
        Some(spec) => spec
            .operation
            .strip_prefix("cloudify.plugins.workflows.")
            .and_then(built_in_for)
            .ok_or_else(|| {
                format!(
                    "workflow {name} is implemented by {}.{}, which drover does not run (it runs {})",
                    spec.plugin,
                    spec.operation,
                    BUILT_IN.join(", ")
                )
            }),
        None => BUILT_IN
            .iter()
            .copied()
            .find(|b| *b == name)
            .ok_or_else(|| format!("the deployment has no workflow {name}")),
    }
}

/// The built-in of a workflow and its parameters: the declared parameters' defaults, then
/// `given`.
pub(crate) fn resolve(plan: &Plan, name: &str, given: &Map) -> Result<(&'static str, Map), String> {
    let builtin = built_in(plan, name)?;
    let mut params = Map::new();
    if let Some(spec) = plan.workflows.get(name) {
        for (k, decl) in &spec.parameters {
            if let Some(default) = decl.get("default") {
                params.insert(k.clone(), default.clone());
            }
        }
    }
    for (k, v) in given {
        params.insert(k.clone(), v.clone());
    }
    Ok((builtin, params))
}

/// Plans a built-in workflow.
pub(crate) fn plan(world: &World, builtin: &str, params: &Map) -> Result<WorkflowPlan, String> {
    let phases = match builtin {
        "install" => vec![Phase::Install {
            instances: Selection::All,
        }],
        "uninstall" => vec![Phase::Uninstall {
            instances: Selection::All,
            ignore_failure: flag(params, "ignore_failure")?,
        }],
        "start" => vec![Phase::Start {
            instances: Selection::All,
        }],
        "stop" => vec![Phase::Stop {
            instances: Selection::All,
        }],
        "reinstall" => vec![
            Phase::Uninstall {
                instances: Selection::All,
                ignore_failure: flag(params, "ignore_failure")?,
            },
            Phase::Install {
                instances: Selection::All,
            },
        ],
        "restart" => vec![
            Phase::Stop {
                instances: Selection::All,
            },
            Phase::Start {
                instances: Selection::All,
            },
        ],
        "execute_operation" => vec![execute_operation(world, params)?],
        "heal" => heal(world, params)?,
        "scale" => return scale::plan(world, params),
        other => return Err(format!("no built-in workflow {other}")),
    };
    Ok(WorkflowPlan {
        phases,
        ..WorkflowPlan::default()
    })
}

/// A boolean parameter (false when absent); `"true"`/`"false"` strings are accepted, as from `-p`.
pub(crate) fn flag(params: &Map, name: &str) -> Result<bool, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(format!(
            "parameter {name} must be true or false, not {other}"
        )),
    }
}

/// An integer parameter; a string of digits is accepted, as from `-p`.
pub(crate) fn int(params: &Map, name: &str, default: i64) -> Result<i64, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("parameter {name} must be an integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("parameter {name} must be an integer, not {s:?}")),
        Some(other) => Err(format!("parameter {name} must be an integer, not {other}")),
    }
}

/// A number parameter; a numeric string is accepted, as from `-p`.
pub(crate) fn float(params: &Map, name: &str, default: f64) -> Result<f64, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| format!("parameter {name} must be a number")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("parameter {name} must be a number, not {s:?}")),
        Some(other) => Err(format!("parameter {name} must be a number, not {other}")),
    }
}

/// A list-of-strings parameter (empty when absent); one string reads as a list of one.
pub(crate) fn strings(params: &Map, name: &str) -> Result<Vec<String>, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("parameter {name} must be a list of strings"))
            })
            .collect(),
        Some(other) => Err(format!(
            "parameter {name} must be a list of strings, not {other}"
        )),
    }
}

fn execute_operation(world: &World, params: &Map) -> Result<Phase, String> {
    let operation = params
        .get("operation")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("execute_operation needs the parameter operation")?
        .to_owned();
    let kwargs = match params.get("operation_kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("parameter operation_kwargs must be a mapping".into()),
    };
    let node_ids: HashSet<String> = strings(params, "node_ids")?.into_iter().collect();
    let instance_ids: HashSet<String> = strings(params, "node_instance_ids")?.into_iter().collect();
    let type_names: HashSet<String> = strings(params, "type_names")?.into_iter().collect();
    let mut selected = Vec::new();
    for (i, ni) in world.instances.iter().enumerate() {
        let node = world.node(i as u32);
        if (node_ids.is_empty() || node_ids.contains(&ni.node_id))
            && (instance_ids.is_empty() || instance_ids.contains(&ni.id))
            && (type_names.is_empty() || node.type_hierarchy.iter().any(|t| type_names.contains(t)))
        {
            selected.push(ni.id.clone());
        }
    }
    let defined = selected.iter().any(|id| {
        world
            .instance_index
            .get(id)
            .is_some_and(|&i| world.node(i).operations.contains_key(&operation))
    });
    if !defined {
        return Err(format!(
            "no selected node instance has the operation {operation}"
        ));
    }
    Ok(Phase::Operation {
        operation,
        instances: Selection::Ids(selected),
        kwargs,
        allow_kwargs_override: flag(params, "allow_kwargs_override")?,
        by_dependency_order: flag(params, "run_by_dependency_order")?,
    })
}

/// Heal: reinstall the failing instance's host and everything on it (uninstall ignoring
/// failures, then install); other instances stay, and run unlink/establish with them.
fn heal(world: &World, params: &Map) -> Result<Vec<Phase>, String> {
    let id = params
        .get("node_instance_id")
        .and_then(Value::as_str)
        .ok_or("heal needs the parameter node_instance_id")?;
    let &failing = world
        .instance_index
        .get(id)
        .ok_or_else(|| format!("no node instance {id}"))?;
    let root = world.instances[failing as usize]
        .host_id
        .as_ref()
        .and_then(|h| world.instance_index.get(h).copied())
        .unwrap_or(failing);
    let members = scale::contained_subtree(world, &[root]);
    let ids: Vec<String> = members
        .into_iter()
        .map(|i| world.instances[i as usize].id.clone())
        .collect();
    Ok(vec![
        Phase::Uninstall {
            instances: Selection::Ids(ids.clone()),
            ignore_failure: true,
        },
        Phase::Install {
            instances: Selection::Ids(ids),
        },
    ])
}
