//! Scale (Cloudify's `scale_entity`): adds or removes instances of a node or a scaling group,
//! with everything contained in them, then installs or uninstalls just those.
//!
//! As in Cloudify, a contained node's instance count is per container instance: scaling `app`
//! (contained in `host`) by +1 adds one `app` to every `host`. With `scale_compute`, a node
//! contained in a Compute node scales that Compute node instead. A failed scale-out is rolled
//! back (its new instances uninstalled and deleted) unless `rollback_if_failed` is false.

use std::collections::{HashMap, HashSet};

use drover_model::{InstanceRelationship, Map, NodeInstance, Plan};
use serde_json::Value;

use crate::journal::WorkflowPlan;
use crate::lifecycle::{COMPUTE, Phase, Selection};
use crate::workflows::{flag, int, strings};
use crate::world::World;

pub(crate) fn plan(world: &World, params: &Map) -> Result<WorkflowPlan, String> {
    let entity = params
        .get("scalable_entity_name")
        .and_then(Value::as_str)
        .ok_or("scale needs the parameter scalable_entity_name")?;
    let delta = int(params, "delta", 1)?;
    let rollback = match params.get("rollback_if_failed") {
        None | Some(Value::Null) => true,
        _ => flag(params, "rollback_if_failed")?,
    };
    let roots = root_nodes(world, entity, flag(params, "scale_compute")?)?;
    if delta > 0 {
        let added = scale_out(world, &roots, delta as usize);
        let relinked = relink(world, &added);
        let ids: Vec<String> = added.iter().map(|i| i.id.clone()).collect();
        let rollback = if rollback {
            vec![Phase::Uninstall {
                instances: Selection::Ids(ids.clone()),
                ignore_failure: true,
            }]
        } else {
            Vec::new()
        };
        Ok(WorkflowPlan {
            phases: vec![Phase::Install {
                instances: Selection::Ids(ids),
            }],
            rollback,
            added,
            removed: Vec::new(),
            relinked,
        })
    } else if delta < 0 {
        let include: HashSet<String> = strings(params, "include_instances")?.into_iter().collect();
        let exclude: HashSet<String> = strings(params, "exclude_instances")?.into_iter().collect();
        let chosen = scale_in(
            world,
            &roots,
            delta.unsigned_abs() as usize,
            &include,
            &exclude,
        )?;
        let removed: Vec<String> = contained_subtree(world, &chosen)
            .into_iter()
            .map(|i| world.instances[i as usize].id.clone())
            .collect();
        Ok(WorkflowPlan {
            phases: vec![Phase::Uninstall {
                instances: Selection::Ids(removed.clone()),
                ignore_failure: flag(params, "ignore_failure")?,
            }],
            rollback: Vec::new(),
            added: Vec::new(),
            removed,
            relinked: Vec::new(),
        })
    } else {
        Ok(WorkflowPlan::default())
    }
}

/// The nodes whose instances are added or removed (with what they contain).
fn root_nodes(world: &World, entity: &str, scale_compute: bool) -> Result<Vec<u32>, String> {
    if let Some(group) = world.plan.scaling_groups.get(entity) {
        let members: Vec<u32> = group
            .members
            .iter()
            .filter_map(|m| world.node_index.get(m).copied())
            .collect();
        // A member contained in another member comes along with it.
        return Ok(members
            .iter()
            .copied()
            .filter(|&n| {
                !ancestors(&world.plan, n)
                    .iter()
                    .any(|a| members.contains(a))
            })
            .collect());
    }
    let &node = world
        .node_index
        .get(entity)
        .ok_or_else(|| format!("no node or scaling group {entity}"))?;
    if scale_compute
        && let Some(&host) = ancestors(&world.plan, node).iter().find(|&&a| {
            world.plan.nodes[a as usize]
                .type_hierarchy
                .iter()
                .any(|t| t == COMPUTE)
        })
    {
        return Ok(vec![host]);
    }
    Ok(vec![node])
}

/// The node a node is contained in, if any.
fn container(plan: &Plan, node: u32) -> Option<u32> {
    let target = plan.nodes[node as usize]
        .relationships
        .iter()
        .find(|r| r.is_contained_in())?;
    plan.nodes
        .iter()
        .position(|n| n.id == target.target_id)
        .map(|p| p as u32)
}

fn ancestors(plan: &Plan, node: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut current = container(plan, node);
    while let Some(c) = current {
        if out.contains(&c) {
            break;
        }
        out.push(c);
        current = container(plan, c);
    }
    out
}

/// The given instances and every instance contained in them, transitively, in world order.
pub(crate) fn contained_subtree(world: &World, roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (i, rels) in world.rels.iter().enumerate() {
        for (r, rel) in rels.iter().enumerate() {
            if world.plan_rel(i as u32, r as u32).is_contained_in() {
                children.entry(rel.target).or_default().push(i as u32);
            }
        }
    }
    let mut member = vec![false; world.instances.len()];
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut member[i as usize], true) {
            continue;
        }
        stack.extend(children.get(&i).into_iter().flatten());
    }
    (0..world.instances.len() as u32)
        .filter(|&i| member[i as usize])
        .collect()
}

/// New instances: `delta` copies of each root node's contained subtree, per container instance.
fn scale_out(world: &World, roots: &[u32], delta: usize) -> Vec<NodeInstance> {
    let plan = &world.plan;
    let mut taken: HashSet<String> = world.instance_index.keys().cloned().collect();
    let mut added = Vec::new();
    for &root in roots {
        let parents: Vec<Option<u32>> = match container(plan, root) {
            Some(p) => world
                .instances_of(&plan.nodes[p as usize].id)
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None],
        };
        for parent in parents {
            for _ in 0..delta {
                let parent = parent.map(|p| {
                    let ni = &world.instances[p as usize];
                    (ni.id.clone(), ni.host_id.clone())
                });
                let mut copy: Vec<NodeInstance> = Vec::new();
                make_subtree(world, root, parent, &mut taken, &mut copy);
                link(world, &mut copy);
                added.extend(copy);
            }
        }
    }
    added
}

/// Makes instances of `node` and what it contains (relationships other than contained_in are
/// added by [`link`] once the whole copy exists).
fn make_subtree(
    world: &World,
    node: u32,
    parent: Option<(String, Option<String>)>,
    taken: &mut HashSet<String>,
    out: &mut Vec<NodeInstance>,
) {
    let plan_node = &world.plan.nodes[node as usize];
    let id = loop {
        let suffix: String = (0..6)
            .map(|_| {
                fastrand::choice(b"abcdefghijklmnopqrstuvwxyz0123456789")
                    .map_or('0', |&c| c as char)
            })
            .collect();
        let id = format!("{}_{suffix}", plan_node.id);
        if taken.insert(id.clone()) {
            break id;
        }
    };
    let is_compute = plan_node.type_hierarchy.iter().any(|t| t == COMPUTE);
    let host_id = if is_compute {
        Some(id.clone())
    } else {
        parent.as_ref().and_then(|(_, h)| h.clone())
    };
    let mut relationships = Vec::new();
    if let (Some((parent_id, _)), Some(rel)) = (
        &parent,
        plan_node.relationships.iter().find(|r| r.is_contained_in()),
    ) {
        relationships.push(InstanceRelationship {
            type_name: rel.type_name.clone(),
            target_id: parent_id.clone(),
            target_name: rel.target_id.clone(),
        });
    }
    out.push(NodeInstance {
        id: id.clone(),
        deployment_id: world
            .instances
            .first()
            .map(|i| i.deployment_id.clone())
            .unwrap_or_default(),
        node_id: plan_node.id.clone(),
        host_id: host_id.clone(),
        state: "uninitialized".into(),
        relationships,
        ..NodeInstance::default()
    });
    for (c, child) in world.plan.nodes.iter().enumerate() {
        if container(&world.plan, c as u32) == Some(node) {
            let count = child.capabilities.scalable.properties.default_instances;
            for _ in 0..count {
                make_subtree(
                    world,
                    c as u32,
                    Some((id.clone(), host_id.clone())),
                    taken,
                    out,
                );
            }
        }
    }
}

/// Adds the non-contained relationships of a new copy: to the copy's own instances of the target
/// node when it has some, otherwise to all existing instances of the target node.
fn link(world: &World, copy: &mut [NodeInstance]) {
    let in_copy: HashMap<String, Vec<String>> = copy.iter().fold(HashMap::new(), |mut m, ni| {
        m.entry(ni.node_id.clone()).or_default().push(ni.id.clone());
        m
    });
    for ni in copy.iter_mut() {
        let Some(&node) = world.node_index.get(&ni.node_id) else {
            continue;
        };
        let mut rels = Vec::new();
        for rel in &world.plan.nodes[node as usize].relationships {
            if rel.is_contained_in() {
                rels.extend(
                    ni.relationships
                        .iter()
                        .find(|r| r.type_name == rel.type_name)
                        .cloned(),
                );
                continue;
            }
            let targets: Vec<String> = match in_copy.get(&rel.target_id) {
                Some(ids) => ids.clone(),
                None => world
                    .instances_of(&rel.target_id)
                    .into_iter()
                    .map(|i| world.instances[i as usize].id.clone())
                    .collect(),
            };
            rels.extend(targets.into_iter().map(|target_id| InstanceRelationship {
                type_name: rel.type_name.clone(),
                target_id,
                target_name: rel.target_id.clone(),
            }));
        }
        ni.relationships = rels;
    }
}

/// Relationships existing instances gain to the added ones: an existing instance whose node has a
/// (non-contained) relationship to a node with new instances connects to each of them, and runs
/// establish with them (as an intact instance of the install phase).
fn relink(world: &World, added: &[NodeInstance]) -> Vec<(String, Vec<InstanceRelationship>)> {
    let mut new_by_node: HashMap<&str, Vec<&str>> = HashMap::new();
    for ni in added {
        new_by_node.entry(&ni.node_id).or_default().push(&ni.id);
    }
    let mut out = Vec::new();
    for (i, ni) in world.instances.iter().enumerate() {
        let mut rels = Vec::new();
        for rel in &world.node(i as u32).relationships {
            if rel.is_contained_in() {
                continue;
            }
            for target in new_by_node
                .get(rel.target_id.as_str())
                .into_iter()
                .flatten()
            {
                rels.push(InstanceRelationship {
                    type_name: rel.type_name.clone(),
                    target_id: (*target).to_owned(),
                    target_name: rel.target_id.clone(),
                });
            }
        }
        if !rels.is_empty() {
            out.push((ni.id.clone(), rels));
        }
    }
    out
}

/// Picks the root instances to remove: `count` per container instance (or overall), the
/// included ones first, then the newest, never the excluded ones.
fn scale_in(
    world: &World,
    roots: &[u32],
    count: usize,
    include: &HashSet<String>,
    exclude: &HashSet<String>,
) -> Result<Vec<u32>, String> {
    let mut chosen = Vec::new();
    for &root in roots {
        let node_id = &world.plan.nodes[root as usize].id;
        let mut by_parent: Vec<(Option<u32>, Vec<u32>)> = Vec::new();
        for i in world.instances_of(node_id) {
            let parent = world.rels[i as usize]
                .iter()
                .enumerate()
                .find(|(r, _)| world.plan_rel(i, *r as u32).is_contained_in())
                .map(|(_, rel)| rel.target);
            match by_parent.iter_mut().find(|(p, _)| *p == parent) {
                Some((_, list)) => list.push(i),
                None => by_parent.push((parent, vec![i])),
            }
        }
        for (_, candidates) in by_parent {
            let id = |i: &u32| &world.instances[*i as usize].id;
            let mut order: Vec<u32> = candidates
                .iter()
                .copied()
                .filter(|i| include.contains(id(i)))
                .collect();
            order.extend(
                candidates
                    .iter()
                    .rev()
                    .copied()
                    .filter(|i| !include.contains(id(i)) && !exclude.contains(id(i))),
            );
            if order.len() < count {
                return Err(format!(
                    "cannot remove {count} instances of {node_id}: only {} may go",
                    order.len()
                ));
            }
            chosen.extend(order.into_iter().take(count));
        }
    }
    Ok(chosen)
}

/// Sets the plan's instance counts from the instances that exist (after a scale, a rollback).
pub(crate) fn recount(plan: &mut Plan, instances: &[NodeInstance]) {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for ni in instances {
        *counts.entry(ni.node_id.as_str()).or_default() += 1;
    }
    let totals: Vec<u64> = plan
        .nodes
        .iter()
        .map(|n| counts.get(n.id.as_str()).copied().unwrap_or(0))
        .collect();
    for n in 0..plan.nodes.len() {
        let per_container = match container(plan, n as u32) {
            Some(c) if totals[c as usize] > 0 => totals[n] / totals[c as usize],
            _ => totals[n],
        };
        let node = &mut plan.nodes[n];
        node.instances.deploy = per_container;
        let props = &mut node.capabilities.scalable.properties;
        props.current_instances = per_container;
        props.planned_instances = per_container;
    }
    for group in plan.scaling_groups.values_mut() {
        if let Some(first) = group.members.first()
            && let Some(n) = plan.nodes.iter().position(|n| &n.id == first)
        {
            group.properties.current_instances = plan.nodes[n].instances.deploy;
            group.properties.planned_instances = plan.nodes[n].instances.deploy;
        }
    }
}
