//! Cloudify's lifecycle as task graphs (the reference is `cloudify.plugins.lifecycle` of
//! cloudify-common): what a phase of a workflow does to each instance, and in which order
//! instances go relative to each other.
//!
//! Rules kept from Cloudify:
//! - install, per instance: precreate, `creating` create `created`, preconfigure of each
//!   relationship, `configuring` configure `configured`, postconfigure, `starting` start,
//!   poststart, monitoring start, establish, `started`; steps an instance's state already passed
//!   are skipped, so installing a started instance does nothing.
//! - relationship steps: relationships grouped by consecutive target instance; a group's source
//!   and target operations run in parallel, groups one after another (reversed for unlink).
//! - a source instance's whole install waits for its target's whole install; uninstall is the
//!   mirror image (a target is uninstalled after all its sources).
//! - instances outside the phase that have relationships to instances in it ("intact" ones) run
//!   establish (install) or unlink (uninstall) for those relationships.
//!
//! Unlike Cloudify, a step whose operation is a no-op still changes the instance's state; the
//! operation itself is not dispatched. A Compute node without a create (delete) of its own gets
//! its server from the provisioner instead: a [`Kind::Provision`] task.

use serde::{Deserialize, Serialize};

use crate::graph::{Chain, Ends, Graph, GraphBuilder, Kind, Side, TaskId};
use crate::state::State;
use crate::world::World;

pub(crate) const PRECREATE: &str = "cloudify.interfaces.lifecycle.precreate";
pub(crate) const CREATE: &str = "cloudify.interfaces.lifecycle.create";
pub(crate) const CONFIGURE: &str = "cloudify.interfaces.lifecycle.configure";
pub(crate) const START: &str = "cloudify.interfaces.lifecycle.start";
pub(crate) const POSTSTART: &str = "cloudify.interfaces.lifecycle.poststart";
pub(crate) const PRESTOP: &str = "cloudify.interfaces.lifecycle.prestop";
pub(crate) const STOP: &str = "cloudify.interfaces.lifecycle.stop";
pub(crate) const DELETE: &str = "cloudify.interfaces.lifecycle.delete";
pub(crate) const POSTDELETE: &str = "cloudify.interfaces.lifecycle.postdelete";
pub(crate) const COMPUTE: &str = "cloudify.nodes.Compute";
const MONITORING_START: &str = "cloudify.interfaces.monitoring.start";
const MONITORING_STOP: &str = "cloudify.interfaces.monitoring.stop";
const PRECONFIGURE: &str = "cloudify.interfaces.relationship_lifecycle.preconfigure";
const POSTCONFIGURE: &str = "cloudify.interfaces.relationship_lifecycle.postconfigure";
const ESTABLISH: &str = "cloudify.interfaces.relationship_lifecycle.establish";
const UNLINK: &str = "cloudify.interfaces.relationship_lifecycle.unlink";

/// Which instances a phase is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Selection {
    All,
    Ids(Vec<String>),
}

/// One graph of a workflow. Journaled before it runs, so `resume` rebuilds the same graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Phase {
    Install {
        instances: Selection,
    },
    Uninstall {
        instances: Selection,
        ignore_failure: bool,
    },
    Start {
        instances: Selection,
    },
    Stop {
        instances: Selection,
    },
    Operation {
        operation: String,
        instances: Selection,
        kwargs: drover_model::Map,
        allow_kwargs_override: bool,
        by_dependency_order: bool,
    },
}

impl Phase {
    pub fn selection(&self) -> &Selection {
        match self {
            Phase::Install { instances }
            | Phase::Uninstall { instances, .. }
            | Phase::Start { instances }
            | Phase::Stop { instances }
            | Phase::Operation { instances, .. } => instances,
        }
    }

    /// The state an instance reaches when the phase is done with it (none for operations).
    pub fn final_state(&self) -> Option<State> {
        match self {
            Phase::Install { .. } | Phase::Start { .. } => Some(State::Started),
            Phase::Uninstall { .. } => Some(State::Deleted),
            Phase::Stop { .. } => Some(State::Stopped),
            Phase::Operation { .. } => None,
        }
    }

    /// Whether a failed operation of this phase is ignored.
    pub fn ignores_failure(&self) -> bool {
        matches!(
            self,
            Phase::Uninstall {
                ignore_failure: true,
                ..
            }
        )
    }
}

/// Builds a phase's graph from the instances' states when the phase started.
pub(crate) fn build(phase: &Phase, world: &World, states: &[State]) -> Result<Graph, String> {
    let n = world.instances.len();
    let mut member = vec![false; n];
    match phase.selection() {
        Selection::All => member.iter_mut().for_each(|m| *m = true),
        Selection::Ids(ids) => {
            for id in ids {
                let &i = world
                    .instance_index
                    .get(id)
                    .ok_or_else(|| format!("no node instance {id}"))?;
                member[i as usize] = true;
            }
        }
    }
    let mut g = GraphBuilder::default();
    let mut ends: Vec<Option<Ends>> = vec![None; n];
    let install_order = match phase {
        Phase::Install { .. } | Phase::Start { .. } => Some(true),
        Phase::Uninstall { .. } | Phase::Stop { .. } => Some(false),
        Phase::Operation {
            by_dependency_order,
            ..
        } => by_dependency_order.then_some(true),
    };
    for i in 0..n as u32 {
        if !member[i as usize] {
            continue;
        }
        let mut chain = Chain::new(i);
        let s = states[i as usize];
        match phase {
            Phase::Install { .. } => install_chain(&mut g, &mut chain, world, s),
            Phase::Uninstall { .. } => uninstall_chain(&mut g, &mut chain, world, s),
            Phase::Start { .. } => {
                chain.task(&mut g, Kind::SetState(State::Starting));
                op(&mut g, &mut chain, world, START);
                op(&mut g, &mut chain, world, POSTSTART);
                chain.task(&mut g, Kind::SetState(State::Started));
            }
            Phase::Stop { .. } => {
                chain.task(&mut g, Kind::SetState(State::Stopping));
                op(&mut g, &mut chain, world, PRESTOP);
                op(&mut g, &mut chain, world, STOP);
                chain.task(&mut g, Kind::SetState(State::Stopped));
            }
            Phase::Operation { operation, .. } => op(&mut g, &mut chain, world, operation),
        }
        ends[i as usize] = Some(chain.finish(&mut g));
    }
    if let Some(install) = install_order {
        order_instances(&mut g, world, &member, &ends, install);
    }
    match phase {
        Phase::Install { .. } => intact(&mut g, world, &member, &ends, ESTABLISH, true),
        Phase::Uninstall { .. } => intact(&mut g, world, &member, &ends, UNLINK, false),
        _ => {}
    }
    Ok(g.build())
}

fn install_chain(g: &mut GraphBuilder, c: &mut Chain, w: &World, s: State) {
    use State::*;
    if !matches!(
        s,
        Started | Starting | Created | Creating | Configured | Configuring
    ) {
        op(g, c, w, PRECREATE);
    }
    if !matches!(s, Started | Starting | Created | Configuring | Configured) {
        c.task(g, Kind::SetState(Creating));
        op_or_provision(g, c, w, CREATE, true);
        c.task(g, Kind::SetState(Created));
    }
    if !matches!(s, Started | Starting | Configured) {
        rel_ops(g, c, w, PRECONFIGURE, false);
        c.task(g, Kind::SetState(Configuring));
        op(g, c, w, CONFIGURE);
        c.task(g, Kind::SetState(Configured));
    }
    if s != Started {
        rel_ops(g, c, w, POSTCONFIGURE, false);
        c.task(g, Kind::SetState(Starting));
        op(g, c, w, START);
        op(g, c, w, POSTSTART);
        op(g, c, w, MONITORING_START);
        rel_ops(g, c, w, ESTABLISH, false);
        c.task(g, Kind::SetState(Started));
    }
}

fn uninstall_chain(g: &mut GraphBuilder, c: &mut Chain, w: &World, s: State) {
    use State::*;
    if !matches!(s, Stopped | Deleting | Deleted | Uninitialized) {
        c.task(g, Kind::SetState(Stopping));
        op(g, c, w, MONITORING_STOP);
        op(g, c, w, PRESTOP);
        op(g, c, w, STOP);
    }
    if !matches!(s, Stopped | Deleting | Deleted) {
        c.task(g, Kind::SetState(Stopped));
    }
    if !matches!(s, Deleted | Uninitialized) {
        rel_ops(g, c, w, UNLINK, true);
        c.task(g, Kind::SetState(Deleting));
        op_or_provision(g, c, w, DELETE, false);
        op(g, c, w, POSTDELETE);
    }
    if s != Deleted {
        c.task(g, Kind::SetState(Deleted));
    }
}

/// Appends the node's operation `name` as a step, unless the node has none or it is a no-op.
fn op(g: &mut GraphBuilder, c: &mut Chain, w: &World, name: &str) {
    if w.node(c.instance)
        .operations
        .get(name)
        .is_some_and(|o| !o.is_noop())
    {
        let op = g.op(name);
        c.task(g, Kind::Op { op });
    }
}

/// The node's create or delete; for a Compute node without one, the provisioner's.
fn op_or_provision(g: &mut GraphBuilder, c: &mut Chain, w: &World, name: &str, create: bool) {
    let node = w.node(c.instance);
    let own = node.operations.get(name).is_some_and(|o| !o.is_noop());
    if !own && node.type_hierarchy.iter().any(|t| t == COMPUTE) {
        c.task(g, Kind::Provision { create });
    } else {
        op(g, c, w, name);
    }
}

/// The source and target operations `name` of one relationship that are not no-ops.
fn rel_tasks(g: &mut GraphBuilder, w: &World, instance: u32, rel: u32, name: &str) -> Vec<TaskId> {
    let pr = w.plan_rel(instance, rel);
    let mut tasks = Vec::new();
    for (ops, side) in [
        (&pr.source_operations, Side::Source),
        (&pr.target_operations, Side::Target),
    ] {
        if ops.get(name).is_some_and(|o| !o.is_noop()) {
            let op = g.op(name);
            tasks.push(g.add(Kind::RelOp { op, rel, side }, instance));
        }
    }
    tasks
}

/// Appends relationship operation `name` of all the instance's relationships, grouped by
/// consecutive target instance.
fn rel_ops(g: &mut GraphBuilder, c: &mut Chain, w: &World, name: &str, reverse: bool) {
    let rels = &w.rels[c.instance as usize];
    let mut groups: Vec<Vec<TaskId>> = Vec::new();
    let mut last_target = None;
    for (r, rel) in rels.iter().enumerate() {
        let tasks = rel_tasks(g, w, c.instance, r as u32, name);
        if last_target != Some(rel.target) || groups.is_empty() {
            groups.push(Vec::new());
            last_target = Some(rel.target);
        }
        if let Some(group) = groups.last_mut() {
            group.extend(tasks);
        }
    }
    if reverse {
        groups.reverse();
    }
    for group in groups {
        c.step(g, group);
    }
}

/// A source instance's subgraph waits for its target's (install), or the reverse (uninstall).
fn order_instances(
    g: &mut GraphBuilder,
    w: &World,
    member: &[bool],
    ends: &[Option<Ends>],
    install: bool,
) {
    for (i, rels) in w.rels.iter().enumerate() {
        let Some(source) = ends[i].filter(|_| member[i]) else {
            continue;
        };
        for rel in rels {
            if let Some(target) = ends[rel.target as usize] {
                if install {
                    g.edge(target.last, source.first);
                } else {
                    g.edge(source.last, target.first);
                }
            }
        }
    }
}

/// Establish (install) or unlink (uninstall) on intact instances' relationships to members.
fn intact(
    g: &mut GraphBuilder,
    w: &World,
    member: &[bool],
    ends: &[Option<Ends>],
    name: &str,
    install: bool,
) {
    for (i, rels) in w.rels.iter().enumerate() {
        if member[i] {
            continue;
        }
        let mut previous: Vec<TaskId> = Vec::new();
        for (r, rel) in rels.iter().enumerate() {
            let Some(target) = ends[rel.target as usize] else {
                continue;
            };
            let tasks = rel_tasks(g, w, i as u32, r as u32, name);
            if tasks.is_empty() {
                continue;
            }
            g.join(&previous, &tasks, i as u32);
            for &t in &tasks {
                if install {
                    g.edge(target.last, t);
                } else {
                    g.edge(t, target.first);
                }
            }
            previous = tasks;
        }
    }
}
