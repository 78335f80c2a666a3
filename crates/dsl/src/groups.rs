//! Scaling groups: the groups a `cloudify.policies.scaling` policy targets, validated and
//! trimmed as Cloudify's `policies.Policies` does it:
//! - a node or group is a member of one scaling group at most, and groups do not nest in a cycle;
//! - nodes sharing a scaling group are contained in a shared node (or one in the other), so that
//!   scaling the group scales whole hosts;
//! - a node in the same scaling group as a node containing it is removed from that group (it
//!   scales with its container anyway); when they meet only through nested groups, the nested
//!   group on the contained node's side is removed instead.

use std::collections::{BTreeMap, HashMap, HashSet};

use drover_model::{PlanNode, ScalingGroup};

use crate::error::Error;
use crate::functions::Context;
use crate::parse::Blueprint;
use crate::plan::scaling_properties;

/// Scaling groups of a blueprint whose nodes are planned.
pub fn scaling_groups(
    bp: &Blueprint,
    nodes: &[PlanNode],
    ctx: &Context<'_>,
) -> Result<BTreeMap<String, ScalingGroup>, Error> {
    check_groups(bp)?;
    let mut groups: BTreeMap<String, ScalingGroup> = BTreeMap::new();
    for (name, policy) in &bp.policies {
        let path = format!("policies.{name}");
        let properties = scaling_properties(
            &policy.properties,
            ctx,
            &policy.mark,
            &format!("{path}.properties"),
        )?;
        for (target, mark) in &policy.targets {
            let Some(group) = bp.groups.get(target) else {
                return Err(mark.error(
                    format!("{path}.targets"),
                    format!("'{target}' is not a valid policy target: only groups are"),
                ));
            };
            groups.insert(
                target.clone(),
                ScalingGroup {
                    members: unique(group.members.iter().map(|(m, _)| m.as_str())),
                    properties,
                },
            );
        }
    }
    let parent = parents(&groups, bp)?;
    let containers = containers(nodes, &parent);
    check_shared_containers(&groups, &parent, &containers, bp)?;
    remove_contained_members(&mut groups, &parent, &containers);
    Ok(groups)
}

/// Members exist, and no group is named as a node template.
fn check_groups(bp: &Blueprint) -> Result<(), Error> {
    for (name, group) in &bp.groups {
        let mark = group
            .members
            .first()
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        if bp.node_templates.contains_key(name) {
            return Err(mark.error(
                format!("groups.{name}"),
                format!("both a group and a node template are named '{name}'"),
            ));
        }
        for (member, mark) in &group.members {
            if !bp.node_templates.contains_key(member) && !bp.groups.contains_key(member) {
                return Err(mark.error(
                    format!("groups.{name}.members"),
                    format!(
                        "member '{member}' of group '{name}' is neither a node template nor a group"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn unique<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .filter(|n| seen.insert(*n))
        .map(str::to_string)
        .collect()
}

/// The scaling group of each member; a member in two is an error, as is a cycle of groups.
fn parents(
    groups: &BTreeMap<String, ScalingGroup>,
    bp: &Blueprint,
) -> Result<HashMap<String, String>, Error> {
    let located = |group: &str, message: String| {
        let mark = bp
            .groups
            .get(group)
            .and_then(|g| g.members.first())
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        mark.error(format!("groups.{group}.members"), message)
    };
    let mut parent: HashMap<String, String> = HashMap::new();
    for (name, group) in groups {
        for member in &group.members {
            if let Some(other) = parent.insert(member.clone(), name.clone()) {
                return Err(located(
                    name,
                    format!(
                        "'{member}' is a member of two scaling groups, '{other}' and '{name}': nodes and groups may be in one only"
                    ),
                ));
            }
        }
    }
    for name in groups.keys() {
        let mut current = name.as_str();
        let mut steps = 0;
        while let Some(up) = parent.get(current) {
            steps += 1;
            if up == name || steps > groups.len() {
                return Err(located(
                    name,
                    format!("scaling group '{name}' contains itself through nested groups"),
                ));
            }
            current = up;
        }
    }
    Ok(parent)
}

/// The contained_in chain of each node that is a scaling-group member: the node itself first,
/// then its container, and so on. (Only members: the chains of all nodes of a deep containment
/// would take quadratic memory.)
fn containers(
    nodes: &[PlanNode],
    parent: &HashMap<String, String>,
) -> HashMap<String, Vec<String>> {
    let container: HashMap<&str, &str> = nodes
        .iter()
        .filter_map(|n| {
            let target = n.relationships.iter().find(|r| r.is_contained_in())?;
            Some((n.id.as_str(), target.target_id.as_str()))
        })
        .collect();
    nodes
        .iter()
        .filter(|n| parent.contains_key(&n.id))
        .map(|n| {
            let mut chain = vec![n.id.clone()];
            let mut current = n.id.as_str();
            // Contained_in cycles were rejected with the host ids; the bound is a second guard.
            while let Some(next) = container
                .get(current)
                .filter(|_| chain.len() <= nodes.len())
            {
                chain.push((*next).to_string());
                current = next;
            }
            (n.id.clone(), chain)
        })
        .collect()
}

/// The groups a member is in, innermost first, after the member itself.
fn group_chain<'a>(member: &'a str, parent: &'a HashMap<String, String>) -> Vec<&'a str> {
    let mut chain = vec![member];
    let mut current = member;
    while let Some(up) = parent
        .get(current)
        .filter(|_| chain.len() <= parent.len() + 1)
    {
        chain.push(up.as_str());
        current = up;
    }
    chain
}

/// Nodes sharing a scaling group (directly or through nested groups) are contained in a shared
/// node, one contains the other, or neither is contained in anything; or else one of them shares
/// a scaling group with a container of the other that passes this test.
fn check_shared_containers(
    groups: &BTreeMap<String, ScalingGroup>,
    parent: &HashMap<String, String>,
    containers: &HashMap<String, Vec<String>>,
    bp: &Blueprint,
) -> Result<(), Error> {
    let chain = |n: &str| {
        containers
            .get(n)
            .map(|c| c.get(1..).unwrap_or_default())
            .unwrap_or_default()
    };
    let fine = |a: &str, b: &str| {
        let (ca, cb) = (chain(a), chain(b));
        a == b
            || (ca.is_empty() && cb.is_empty())
            || ca.iter().any(|c| c == b)
            || cb.iter().any(|c| c == a)
            || ca.iter().any(|c| cb.contains(c))
    };
    let share_group = |a: &str, b: &str| {
        let ga = group_chain(a, parent);
        group_chain(b, parent)
            .iter()
            .skip(1)
            .any(|g| ga.iter().skip(1).any(|h| h == g))
    };
    for group in groups.keys() {
        let nodes: Vec<&str> = parent
            .keys()
            .filter(|m| {
                bp.node_templates.contains_key(*m)
                    && group_chain(m, parent).contains(&group.as_str())
            })
            .map(String::as_str)
            .collect();
        for (i, a) in nodes.iter().enumerate() {
            for b in nodes.iter().skip(i + 1) {
                if fine(a, b) {
                    continue;
                }
                let through = |x: &str, y: &str| {
                    containers
                        .get(x)
                        .into_iter()
                        .flatten()
                        .any(|c| c != y && share_group(y, c) && fine(y, c))
                };
                if !through(a, b) && !through(b, a) {
                    let mark = bp
                        .groups
                        .get(group)
                        .and_then(|g| g.members.first())
                        .map(|(_, m)| m.clone())
                        .unwrap_or_default();
                    return Err(mark.error(
                        format!("groups.{group}.members"),
                        format!("nodes '{a}' and '{b}' share scaling group '{group}' but are not contained in a shared node, nor is any node containing them"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Removes members that scale with a container in the same scaling group.
fn remove_contained_members(
    groups: &mut BTreeMap<String, ScalingGroup>,
    parent: &HashMap<String, String>,
    containers: &HashMap<String, Vec<String>>,
) {
    let mut removals: Vec<(String, String)> = Vec::new();
    let mut members: Vec<&String> = parent
        .keys()
        .filter(|m| containers.contains_key(*m))
        .collect();
    members.sort();
    for member in members {
        let member_groups = group_chain(member, parent);
        let Some(direct) = member_groups.get(1) else {
            continue;
        };
        for node in containers.get(member).into_iter().flatten().skip(1) {
            if !parent.contains_key(node) {
                continue;
            }
            let node_groups = group_chain(node, parent);
            // The innermost group both are in (member_groups is ordered inner to outer).
            let Some(shared) = member_groups
                .iter()
                .skip(1)
                .find(|g| node_groups.contains(g))
            else {
                continue;
            };
            let removed = if direct == shared {
                member.clone()
            } else {
                // The outermost of the member's groups inside the shared one.
                match member_groups
                    .iter()
                    .skip(1)
                    .take_while(|g| *g != shared)
                    .last()
                {
                    Some(g) => (*g).to_string(),
                    None => continue,
                }
            };
            removals.push(((*shared).to_string(), removed));
        }
    }
    for (group, removed) in removals {
        if let Some(g) = groups.get_mut(&group) {
            g.members.retain(|m| *m != removed);
        }
    }
}
