//! Node instances: multiplying plan nodes into instances as Cloudify does
//! (`dsl_parser/rel_graph.py` of cloudify-common, deployment creation).
//!
//! Cloudify builds networkx graphs and copies a subgraph at every level of its recursion; drover
//! keeps the same semantics on flat vectors indexed by vertex (a node or a scaling group) and by
//! instance, so that 100,000 instances take milliseconds:
//!
//! 1. The containment forest ([`Forest`]): a vertex's parent is the node it is contained in or
//!    the scaling group it is a member of. A node that is both a group member and contained in a
//!    node `X` hangs under its group, and the group's outermost enclosing group hangs under `X`
//!    (Cloudify's "replaced" contained_in relationship).
//! 2. Instances ([`Arena`]): from the roots down, every vertex gets its `planned_instances` under
//!    each instance of its parent. Groups get instances too: they are the `scaling_groups` ids of
//!    their members' instances, and are left out of the result.
//! 3. Relationships: contained_in reaches the instance's first ancestor that is not a group;
//!    connected_to and depends_on reach the target's instances by connection type, only those in
//!    the same instance of the smallest scaling group that holds both ends, if there is one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use drover_model::{
    InstanceRelationship, PlanNode, PlanNodeInstance, PlanRelationship, ScalingGroup,
    ScalingGroupRef,
};
use serde_json::Value;

use crate::Error;

const CONNECTED_TO: &str = "cloudify.relationships.connected_to";
const DEPENDS_ON: &str = "cloudify.relationships.depends_on";

/// Most node and group instances one plan may have. Cloudify has no bound; drover has one so
/// that `planned_instances: 1000000000000` is an error instead of an exhausted machine.
pub const MAX_INSTANCES: u64 = 1_000_000;

/// Most instance relationships one plan may have (two 100,000-instance nodes connected
/// all to all would otherwise make 10^10 of them).
pub const MAX_INSTANCE_RELATIONSHIPS: u64 = 5_000_000;

/// Instance ids are `<node>_<6 of [a-z0-9]>`, like Cloudify's.
const ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: u32 = 6;
const ID_SPACE: u32 = 36u32.pow(ID_LEN);

/// "No instance" in the `u32` instance links of [`Arena`].
const NONE: u32 = u32::MAX;

/// Makes the node instances of a plan's nodes: `planned_instances` of each node per instance of
/// its host (contained_in multiplication), relationships to target instances by connection type,
/// and scaling-group membership.
///
/// Scaling groups may be given as the blueprint wrote them or as Cloudify's parser leaves them
/// in the plan (without members that are contained in another member of the same group, see
/// [`contained_member_removals`]): both give the same instances.
pub fn node_instances(
    nodes: &[PlanNode],
    scaling_groups: &BTreeMap<String, ScalingGroup>,
) -> Result<Vec<PlanNodeInstance>, Error> {
    let forest = Forest::build(nodes, scaling_groups)?;
    let arena = Arena::instantiate(&forest)?;
    arena.into_node_instances(&forest)
}

/// A relationship of a node that survives into instances, resolved to its target vertex.
struct Link<'a> {
    relationship: &'a PlanRelationship,
    target: usize,
    kind: LinkKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    ContainedIn,
    AllToAll,
    AllToOne,
}

/// The plan's nodes and scaling groups as a containment forest. Vertices `0..nodes.len()` are
/// the nodes, in plan order; the groups follow, in name order.
struct Forest<'a> {
    nodes: &'a [PlanNode],
    /// Name and `planned_instances` of each group.
    groups: Vec<(&'a str, u64)>,
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    depth: Vec<usize>,
    /// Each node's relationships that make instance relationships, in the node's order.
    links: Vec<Vec<Link<'a>>>,
}

impl<'a> Forest<'a> {
    fn build(
        nodes: &'a [PlanNode],
        scaling_groups: &'a BTreeMap<String, ScalingGroup>,
    ) -> Result<Self, Error> {
        let names = vertex_names(nodes, scaling_groups)?;
        let links = nodes
            .iter()
            .map(|node| node_links(node, &names, nodes.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let contained: Vec<Option<usize>> = links
            .iter()
            .map(|links| {
                let mut containers = links.iter().filter(|l| l.kind == LinkKind::ContainedIn);
                containers.next().map(|l| l.target)
            })
            .collect();
        let mut member_of = group_membership(nodes.len(), scaling_groups, &names)?;
        for (member, _) in contained_member_removals(&member_of, &contained) {
            member_of[member] = None;
        }
        let groups = scaling_groups
            .iter()
            .map(|(name, group)| (name.as_str(), group.properties.planned_instances))
            .collect();
        let mut forest = Forest {
            nodes,
            groups,
            parent: Vec::new(),
            children: Vec::new(),
            depth: Vec::new(),
            links,
        };
        forest.parent = forest.containment_parents(&member_of, &contained)?;
        forest.depth = forest.depths()?;
        forest.children = vec![Vec::new(); forest.parent.len()];
        for (vertex, parent) in forest.parent.iter().enumerate() {
            if let Some(parent) = parent {
                forest.children[*parent].push(vertex);
            }
        }
        Ok(forest)
    }

    fn is_group(&self, vertex: usize) -> bool {
        vertex >= self.nodes.len()
    }

    fn name(&self, vertex: usize) -> &'a str {
        match self.nodes.get(vertex) {
            Some(node) => &node.id,
            None => self.groups[vertex - self.nodes.len()].0,
        }
    }

    fn planned_instances(&self, vertex: usize) -> u64 {
        match self.nodes.get(vertex) {
            Some(node) => node.capabilities.scalable.properties.planned_instances,
            None => self.groups[vertex - self.nodes.len()].1,
        }
    }

    /// Whether the node is its own host (a Compute): its instances are the hosts of the
    /// instances below them, unless a host instance is above it already (Cloudify gives a
    /// Compute in a Compute the outer one as its host).
    fn is_own_host(&self, vertex: usize) -> bool {
        self.nodes
            .get(vertex)
            .is_some_and(|node| node.host_id.as_deref() == Some(node.id.as_str()))
    }

    /// The parent of each vertex: members under their group; contained nodes under their
    /// container, except group members, whose outermost group goes under the container instead.
    fn containment_parents(
        &self,
        member_of: &[Option<usize>],
        contained: &[Option<usize>],
    ) -> Result<Vec<Option<usize>>, Error> {
        let mut parent = member_of.to_vec();
        for (node, target) in contained.iter().enumerate() {
            let Some(target) = *target else { continue };
            let Some(group) = member_of[node] else {
                parent[node] = Some(target);
                continue;
            };
            let mut top = group;
            while let Some(outer) = member_of[top] {
                top = outer;
            }
            match parent[top] {
                Some(other) if other != target => {
                    return Err(Error::new(format!(
                        "the members of scaling group '{}' are contained in different nodes, \
                         '{}' and '{}': a group's members must share their container",
                        self.name(top),
                        self.name(other),
                        self.name(target)
                    )));
                }
                _ => parent[top] = Some(target),
            }
        }
        Ok(parent)
    }

    /// The depth of each vertex in the forest, or an error naming a vertex on a containment
    /// cycle (a node contained in itself, through hosts or groups).
    fn depths(&self) -> Result<Vec<usize>, Error> {
        const UNKNOWN: usize = usize::MAX;
        let mut depth = vec![UNKNOWN; self.parent.len()];
        let mut on_path = vec![false; self.parent.len()];
        let mut path = Vec::new();
        for start in 0..self.parent.len() {
            path.clear();
            let mut vertex = start;
            let mut next_depth = loop {
                if depth[vertex] != UNKNOWN {
                    break depth[vertex] + 1;
                }
                if on_path[vertex] {
                    return Err(Error::new(format!(
                        "'{}' is contained in itself (contained_in relationships and scaling \
                         groups make a cycle)",
                        self.name(vertex)
                    )));
                }
                on_path[vertex] = true;
                path.push(vertex);
                match self.parent[vertex] {
                    Some(parent) => vertex = parent,
                    None => break 0,
                }
            };
            for &vertex in path.iter().rev() {
                depth[vertex] = next_depth;
                on_path[vertex] = false;
                next_depth += 1;
            }
        }
        Ok(depth)
    }

    /// Cloudify's `minimal_containing_group`: the innermost scaling group enclosing both vertices,
    /// i.e. the first group at or above their lowest common ancestor.
    fn smallest_shared_group(&self, a: usize, b: usize) -> Option<usize> {
        let (mut a, mut b) = (a, b);
        while a != b {
            if self.depth[a] >= self.depth[b] {
                a = self.parent[a]?;
            } else {
                b = self.parent[b]?;
            }
        }
        let mut vertex = Some(a);
        while let Some(v) = vertex {
            if self.is_group(v) {
                return Some(v);
            }
            vertex = self.parent[v];
        }
        None
    }

    /// The number of instances of all vertices, or an error past [`MAX_INSTANCES`].
    fn instance_total(&self) -> Result<u64, Error> {
        let mut total: u64 = 0;
        let mut stack: Vec<(usize, u64)> = (0..self.parent.len())
            .filter(|&v| self.parent[v].is_none())
            .map(|v| (v, 1))
            .collect();
        while let Some((vertex, parents)) = stack.pop() {
            let count = parents.saturating_mul(self.planned_instances(vertex));
            total = total.saturating_add(count);
            if total > MAX_INSTANCES {
                return Err(Error::new(format!(
                    "the plan would have more than {MAX_INSTANCES} node instances \
                     (at '{}', with {} instances)",
                    self.name(vertex),
                    count
                )));
            }
            stack.extend(self.children[vertex].iter().map(|&child| (child, count)));
        }
        Ok(total)
    }
}

/// Node and group names to vertices; a name used twice is an error.
fn vertex_names<'a>(
    nodes: &'a [PlanNode],
    scaling_groups: &'a BTreeMap<String, ScalingGroup>,
) -> Result<HashMap<&'a str, usize>, Error> {
    let mut names = HashMap::with_capacity(nodes.len() + scaling_groups.len());
    for (vertex, name) in nodes
        .iter()
        .map(|n| n.id.as_str())
        .chain(scaling_groups.keys().map(String::as_str))
        .enumerate()
    {
        if names.insert(name, vertex).is_some() {
            return Err(Error::new(format!(
                "'{name}' names two nodes, or a node and a scaling group"
            )));
        }
    }
    Ok(names)
}

/// The group each vertex is a direct member of. Errors: an unknown member, a member of two
/// groups, groups that contain each other.
fn group_membership(
    node_count: usize,
    scaling_groups: &BTreeMap<String, ScalingGroup>,
    names: &HashMap<&str, usize>,
) -> Result<Vec<Option<usize>>, Error> {
    let mut member_of = vec![None; node_count + scaling_groups.len()];
    for (offset, (group_name, group)) in scaling_groups.iter().enumerate() {
        let group_vertex = node_count + offset;
        for member in &group.members {
            let Some(&vertex) = names.get(member.as_str()) else {
                return Err(Error::new(format!(
                    "member '{member}' of scaling group '{group_name}' is neither a node nor a \
                     scaling group"
                )));
            };
            match member_of[vertex] {
                Some(other) if other != group_vertex => {
                    let other_name = scaling_groups
                        .keys()
                        .nth(other - node_count)
                        .map_or("?", String::as_str);
                    return Err(Error::new(format!(
                        "'{member}' is a member of two scaling groups, '{other_name}' and \
                         '{group_name}'"
                    )));
                }
                _ => member_of[vertex] = Some(group_vertex),
            }
        }
    }
    for (offset, group_name) in scaling_groups.keys().enumerate() {
        let mut vertex = node_count + offset;
        for _ in 0..=scaling_groups.len() {
            match member_of[vertex] {
                Some(outer) => vertex = outer,
                None => break,
            }
        }
        if member_of[vertex].is_some() {
            return Err(Error::new(format!(
                "scaling group '{group_name}' is inside itself (groups that are members of each \
                 other)"
            )));
        }
    }
    Ok(member_of)
}

/// Cloudify's `_remove_contained_nodes_from_scaling_groups` (`dsl_parser/elements/policies.py`),
/// which shapes the plan's `scaling_groups`, as (member, group) pairs to remove: a node member
/// that is (transitively) contained in a node sharing one of its groups leaves the smallest shared
/// group, being in it already through its container; if the node is in a subgroup of the smallest
/// shared group, the subgroup leaves instead. Computed on the membership as given: as in
/// Cloudify, removals do not affect each other. Without this, such a group would contain its own
/// container.
fn contained_member_removals(
    member_of: &[Option<usize>],
    contained: &[Option<usize>],
) -> Vec<(usize, usize)> {
    // The vertex itself, then its groups from the innermost out (acyclic: checked before).
    let chain = |vertex: usize| {
        let mut chain = vec![vertex];
        while let Some(group) = member_of[chain[chain.len() - 1]] {
            chain.push(group);
        }
        chain
    };
    let mut removals = Vec::new();
    for member in (0..contained.len()).filter(|&n| member_of[n].is_some()) {
        let member_chain = chain(member);
        let mut container = contained[member];
        // Bounded: a contained_in cycle is reported later, by the forest.
        for _ in 0..contained.len() {
            let Some(node) = container.filter(|&c| c != member) else {
                break;
            };
            container = contained[node];
            if member_of[node].is_none() {
                continue;
            }
            let node_chain = chain(node);
            let Some(&smallest) = member_chain[1..].iter().find(|g| node_chain.contains(g)) else {
                continue;
            };
            let removed = if member_of[member] == Some(smallest) {
                member
            } else {
                match member_chain.iter().rev().find(|g| !node_chain.contains(g)) {
                    Some(&subgroup) => subgroup,
                    None => continue,
                }
            };
            if member_of[removed] == Some(smallest) && !removals.contains(&(removed, smallest)) {
                removals.push((removed, smallest));
            }
        }
    }
    removals
}

/// A node's relationships as instance links, in the node's order. Cloudify's graph has one edge
/// per (source, target) pair, so of several relationships to the same target only the last one
/// makes instance relationships; drover does the same.
fn node_links<'a>(
    node: &'a PlanNode,
    names: &HashMap<&str, usize>,
    node_count: usize,
) -> Result<Vec<Link<'a>>, Error> {
    let mut targets = Vec::with_capacity(node.relationships.len());
    for (index, relationship) in node.relationships.iter().enumerate() {
        let target = names
            .get(relationship.target_id.as_str())
            .copied()
            .filter(|&t| t < node_count)
            .ok_or_else(|| {
                Error::new(format!(
                    "node '{}' has a relationship to '{}', which is not a node",
                    node.id, relationship.target_id
                ))
            })?;
        targets.push((target, index));
    }
    targets.sort_unstable();
    let mut kept: Vec<(usize, usize)> = Vec::with_capacity(targets.len());
    for (target, index) in targets {
        match kept.last_mut() {
            Some(last) if last.0 == target => *last = (target, index),
            _ => kept.push((target, index)),
        }
    }
    kept.sort_unstable_by_key(|&(_, index)| index);
    let links = kept
        .into_iter()
        .map(|(target, index)| {
            let relationship = &node.relationships[index];
            let kind = link_kind(node, relationship)?;
            Ok(Link {
                relationship,
                target,
                kind,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut containers = links.iter().filter(|l| l.kind == LinkKind::ContainedIn);
    if let (Some(first), Some(second)) = (containers.next(), containers.next()) {
        return Err(Error::new(format!(
            "node '{}' is contained in two nodes, '{}' and '{}'",
            node.id, first.relationship.target_id, second.relationship.target_id
        )));
    }
    Ok(links)
}

/// What a relationship does to instances. Like Cloudify, only relationships derived from
/// contained_in, connected_to or depends_on can be instantiated.
fn link_kind(node: &PlanNode, relationship: &PlanRelationship) -> Result<LinkKind, Error> {
    if relationship.is_contained_in() {
        return Ok(LinkKind::ContainedIn);
    }
    let derives = |ancestor: &str| relationship.type_hierarchy.iter().any(|t| t == ancestor);
    if !derives(CONNECTED_TO) && !derives(DEPENDS_ON) {
        return Err(Error::new(format!(
            "relationship '{}' of node '{}' to '{}' is not derived from \
             cloudify.relationships.depends_on, connected_to or contained_in, so it cannot be \
             instantiated",
            relationship.type_name, node.id, relationship.target_id
        )));
    }
    // Cloudify's types give every relationship this property (default all_to_all).
    match relationship.properties.get("connection_type") {
        None => Ok(LinkKind::AllToAll),
        Some(Value::String(s)) if s == "all_to_all" => Ok(LinkKind::AllToAll),
        Some(Value::String(s)) if s == "all_to_one" => Ok(LinkKind::AllToOne),
        Some(other) => Err(Error::new(format!(
            "relationship '{}' of node '{}' to '{}': connection_type must be all_to_all or \
             all_to_one, not {other}",
            relationship.type_name, node.id, relationship.target_id
        ))),
    }
}

/// The instances of all vertices, parents before children.
struct Arena {
    vertex: Vec<usize>,
    parent: Vec<u32>,
    host: Vec<u32>,
    id: Vec<String>,
    /// The instances of each vertex, in creation order.
    of_vertex: Vec<Vec<u32>>,
}

impl Arena {
    fn instantiate(forest: &Forest) -> Result<Self, Error> {
        // Bounded by MAX_INSTANCES, so every instance index fits in a u32.
        let total = forest.instance_total()? as usize;
        let mut arena = Arena {
            vertex: Vec::with_capacity(total),
            parent: Vec::with_capacity(total),
            host: Vec::with_capacity(total),
            id: Vec::with_capacity(total),
            of_vertex: vec![Vec::new(); forest.parent.len()],
        };
        let mut ids = IdGenerator::with_capacity(total);
        // (vertex, parent instance, host instance of the parent)
        let mut stack: Vec<(usize, u32, u32)> = (0..forest.parent.len())
            .rev()
            .filter(|&v| forest.parent[v].is_none())
            .map(|v| (v, NONE, NONE))
            .collect();
        while let Some((vertex, parent, host)) = stack.pop() {
            let first = arena.vertex.len();
            for _ in 0..forest.planned_instances(vertex) {
                let instance = arena.vertex.len() as u32;
                let host = if host == NONE && forest.is_own_host(vertex) {
                    instance
                } else {
                    host
                };
                arena.vertex.push(vertex);
                arena.parent.push(parent);
                arena.host.push(host);
                arena.id.push(ids.generate(vertex, forest.name(vertex)));
                arena.of_vertex[vertex].push(instance);
            }
            for instance in (first..arena.vertex.len()).rev() {
                for &child in forest.children[vertex].iter().rev() {
                    stack.push((child, instance as u32, arena.host[instance]));
                }
            }
        }
        Ok(arena)
    }

    /// The first ancestor of an instance that is an instance of `vertex`.
    fn ancestor_of_vertex(&self, instance: u32, vertex: usize) -> Option<u32> {
        let mut current = self.parent[instance as usize];
        while current != NONE {
            if self.vertex[current as usize] == vertex {
                return Some(current);
            }
            current = self.parent[current as usize];
        }
        None
    }

    /// The instance an instance is contained in: its first ancestor that is not a group.
    fn container(&self, forest: &Forest, instance: u32) -> Option<u32> {
        let mut current = self.parent[instance as usize];
        while current != NONE && forest.is_group(self.vertex[current as usize]) {
            current = self.parent[current as usize];
        }
        (current != NONE).then_some(current)
    }

    /// The node instances, in creation order. Each id string is made once and moved into its
    /// instance; relationships and host ids clone it.
    fn into_node_instances(self, forest: &Forest) -> Result<Vec<PlanNodeInstance>, Error> {
        let mut relationships = self.relationships(forest)?;
        let mut ids = self.id;
        let mut output_index = vec![NONE; self.vertex.len()];
        let mut instances: Vec<PlanNodeInstance> = Vec::with_capacity(self.vertex.len());
        for (instance, &vertex) in self.vertex.iter().enumerate() {
            if forest.is_group(vertex) {
                continue;
            }
            // A host is the instance itself or an ancestor, made (and moved) before it.
            let host = self.host[instance];
            let host_id = if host == NONE {
                None
            } else if host as usize == instance {
                Some(ids[instance].clone())
            } else {
                Some(instances[output_index[host as usize] as usize].id.clone())
            };
            let scaling_groups = scaling_groups(forest, &self.vertex, &self.parent, &ids, instance);
            output_index[instance] = instances.len() as u32;
            instances.push(PlanNodeInstance {
                id: std::mem::take(&mut ids[instance]),
                node_id: forest.name(vertex).to_string(),
                host_id,
                relationships: std::mem::take(&mut relationships[instance]),
                scaling_groups,
            });
        }
        Ok(instances)
    }

    /// The relationships of every instance, by instance. They are counted before any is made,
    /// so that a plan past [`MAX_INSTANCE_RELATIONSHIPS`] costs nothing to refuse.
    fn relationships(&self, forest: &Forest) -> Result<Vec<Vec<InstanceRelationship>>, Error> {
        let mut planned = Vec::new();
        let mut total: u64 = 0;
        for (node, links) in forest.links.iter().enumerate() {
            let sources = &self.of_vertex[node];
            if sources.is_empty() {
                continue;
            }
            for link in links {
                let targets = Targets::of(forest, self, node, link)?;
                total = total.saturating_add(targets.count(forest, self, sources)?);
                if total > MAX_INSTANCE_RELATIONSHIPS {
                    return Err(Error::new(format!(
                        "the plan would have more than {MAX_INSTANCE_RELATIONSHIPS} instance \
                         relationships (at node '{}', relationship to '{}')",
                        forest.name(node),
                        link.relationship.target_id
                    )));
                }
                planned.push((sources, links.len(), link, targets));
            }
        }
        let mut relationships: Vec<Vec<InstanceRelationship>> = vec![Vec::new(); self.vertex.len()];
        for (sources, link_count, link, targets) in planned {
            for &source in sources {
                let reached = targets.reached_from(forest, self, source)?;
                let reached = reached.as_slice();
                let of_source = &mut relationships[source as usize];
                if of_source.capacity() == 0 {
                    of_source.reserve_exact(link_count.max(reached.len()));
                }
                of_source.extend(reached.iter().map(|&target| InstanceRelationship {
                    type_name: link.relationship.type_name.clone(),
                    target_id: self.id[target as usize].clone(),
                    target_name: forest.name(self.vertex[target as usize]).to_string(),
                }));
            }
        }
        Ok(relationships)
    }
}

/// Cloudify's `scaling_groups` of an instance: the group instances right above it, up to the
/// first ancestor that is not a group.
fn scaling_groups(
    forest: &Forest,
    vertex: &[usize],
    parent: &[u32],
    ids: &[String],
    instance: usize,
) -> Vec<ScalingGroupRef> {
    let mut groups = Vec::new();
    let mut current = parent[instance];
    while current != NONE && forest.is_group(vertex[current as usize]) {
        groups.push(ScalingGroupRef {
            name: forest.name(vertex[current as usize]).to_string(),
            id: ids[current as usize].clone(),
        });
        current = parent[current as usize];
    }
    groups
}

/// The target instances of one link, prepared once for all its source instances.
enum Targets<'t> {
    /// contained_in: each source's own container.
    Container,
    /// The same targets for every source.
    Shared(&'t [u32]),
    /// all_to_one: the target instance with the smallest id (Cloudify's `min`).
    One(Option<u32>),
    /// The targets in each instance of the smallest group holding both ends, by group instance.
    ByGroupInstance {
        group: usize,
        targets: HashMap<u32, Vec<u32>>,
    },
}

impl<'t> Targets<'t> {
    fn of(forest: &Forest, arena: &'t Arena, node: usize, link: &Link) -> Result<Self, Error> {
        if link.kind == LinkKind::ContainedIn {
            return Ok(Targets::Container);
        }
        let all = &arena.of_vertex[link.target];
        match (link.kind, forest.smallest_shared_group(node, link.target)) {
            (LinkKind::AllToOne, Some(group)) => Err(Error::new(format!(
                "'all_to_one' connection type is not supported within groups, but the source \
                 node '{}' and target node '{}' are both in group '{}'",
                forest.name(node),
                link.relationship.target_id,
                forest.name(group)
            ))),
            (LinkKind::AllToOne, None) => {
                Ok(Targets::One(all.iter().copied().min_by(|a, b| {
                    arena.id[*a as usize].cmp(&arena.id[*b as usize])
                })))
            }
            (_, None) => Ok(Targets::Shared(all)),
            (_, Some(group)) => {
                let mut targets: HashMap<u32, Vec<u32>> = HashMap::new();
                for &target in all {
                    if let Some(group_instance) = arena.ancestor_of_vertex(target, group) {
                        targets.entry(group_instance).or_default().push(target);
                    }
                }
                Ok(Targets::ByGroupInstance { group, targets })
            }
        }
    }

    /// How many relationships the sources make with these targets, at most.
    fn count(&self, forest: &Forest, arena: &Arena, sources: &[u32]) -> Result<u64, Error> {
        let sources_count = sources.len() as u64;
        Ok(match self {
            Targets::Container | Targets::One(_) => sources_count,
            Targets::Shared(targets) => sources_count.saturating_mul(targets.len() as u64),
            Targets::ByGroupInstance { .. } => {
                let mut count: u64 = 0;
                for &source in sources {
                    count += self.reached_from(forest, arena, source)?.as_slice().len() as u64;
                }
                count
            }
        })
    }

    /// The instances one source instance reaches.
    fn reached_from(
        &self,
        forest: &Forest,
        arena: &Arena,
        source: u32,
    ) -> Result<Reached<'_>, Error> {
        Ok(match self {
            Targets::Container => Reached::One(arena.container(forest, source)),
            Targets::Shared(targets) => Reached::Many(targets),
            Targets::One(target) => Reached::One(*target),
            Targets::ByGroupInstance { group, targets } => {
                let in_group = arena
                    .ancestor_of_vertex(source, *group)
                    .and_then(|g| targets.get(&g));
                match in_group {
                    Some(targets) => Reached::Many(targets),
                    None => {
                        return Err(Error::new(format!(
                            "instance '{}' has no target instances in its instance of scaling \
                             group '{}'",
                            arena.id[source as usize],
                            forest.name(*group)
                        )));
                    }
                }
            }
        })
    }
}

/// The target instances of one source instance, without allocating for the common single one.
enum Reached<'t> {
    One(Option<u32>),
    Many(&'t [u32]),
}

impl Reached<'_> {
    fn as_slice(&self) -> &[u32] {
        match self {
            Reached::One(target) => target.as_slice(),
            Reached::Many(targets) => targets,
        }
    }
}

/// Random instance ids, unique in the plan.
struct IdGenerator {
    rng: fastrand::Rng,
    /// (vertex, suffix) pairs taken. `<name>_<suffix>` strings are equal only when name and
    /// suffix are, and names are unique, so this is enough to make the ids unique.
    taken: HashSet<u64, BuildHasherDefault<MultiplyHasher>>,
}

/// The keys of [`IdGenerator::taken`] are random already: one multiplication spreads them over
/// the hash bits, at a fraction of the default hasher's cost.
#[derive(Default)]
struct MultiplyHasher(u64);

impl Hasher for MultiplyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl IdGenerator {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            rng: fastrand::Rng::new(),
            taken: HashSet::with_capacity_and_hasher(capacity, BuildHasherDefault::default()),
        }
    }

    /// `<name>_<6 random characters>`, drawn again on a collision as Cloudify does. A vertex has
    /// at most MAX_INSTANCES instances, far below ID_SPACE, so a free suffix is found quickly.
    fn generate(&mut self, vertex: usize, name: &str) -> String {
        loop {
            let mut code = self.rng.u32(0..ID_SPACE);
            if !self.taken.insert(((vertex as u64) << 32) | u64::from(code)) {
                continue;
            }
            let mut suffix = [0u8; ID_LEN as usize];
            for c in suffix.iter_mut().rev() {
                *c = ID_ALPHABET[(code % 36) as usize];
                code /= 36;
            }
            let mut id = String::with_capacity(name.len() + 1 + suffix.len());
            id.push_str(name);
            id.push('_');
            id.extend(suffix.iter().map(|&b| char::from(b)));
            return id;
        }
    }
}
