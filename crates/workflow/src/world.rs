//! The deployment as the engine sees it while it runs: the plan's nodes and the node instances,
//! indexed by position so that graphs refer to instances and relationships by number.

use std::collections::HashMap;

use drover_model::{NodeInstance, Plan, PlanNode, PlanRelationship};

use crate::state::State;

const CLEAN: u8 = 0;
const STATE: u8 = 1;
const PROPS: u8 = 2;

/// One relationship of an instance, resolved: the target instance and the plan relationship.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rel {
    pub target: u32,
    /// Index into the source node's `relationships`.
    pub plan_rel: u32,
}

/// Nodes and instances of one deployment, with lookups by id.
pub(crate) struct World {
    pub plan: Plan,
    pub instances: Vec<NodeInstance>,
    pub states: Vec<State>,
    /// For each instance, the index of its node in `plan.nodes`.
    pub node_of: Vec<u32>,
    pub rels: Vec<Vec<Rel>>,
    pub instance_index: HashMap<String, u32>,
    pub node_index: HashMap<String, u32>,
    /// Instances changed since the last flush to the store: [`STATE`] or [`PROPS`].
    dirty: Vec<u8>,
    /// Instances whose runtime properties changed: written with the next journal batch.
    props_dirty: Vec<u32>,
    /// Instances whose state only changed: written when the phase ends. The journal has their
    /// state changes (the set-state tasks done), so a resume rebuilds them.
    state_dirty: Vec<u32>,
}

impl World {
    /// Indexes a plan and its instances. Relationships whose target instance or plan
    /// relationship cannot be found are an error naming them.
    pub fn new(mut plan: Plan, instances: Vec<NodeInstance>) -> Result<World, String> {
        // The plan's own instance list is where the deployment started; `instances` is where it
        // is. Only the latter is used, so the former is not kept twice.
        plan.node_instances = Vec::new();
        let node_index: HashMap<String, u32> = plan
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i as u32))
            .collect();
        let instance_index: HashMap<String, u32> = instances
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i as u32))
            .collect();
        let mut node_of = Vec::with_capacity(instances.len());
        let mut rels = Vec::with_capacity(instances.len());
        for instance in &instances {
            let node = *node_index.get(&instance.node_id).ok_or_else(|| {
                format!(
                    "node instance {} is of node {}, which the plan does not have",
                    instance.id, instance.node_id
                )
            })?;
            node_of.push(node);
            let plan_node = &plan.nodes[node as usize];
            let mut resolved = Vec::with_capacity(instance.relationships.len());
            for r in &instance.relationships {
                let target = *instance_index.get(&r.target_id).ok_or_else(|| {
                    format!(
                        "node instance {} has a relationship to {}, which does not exist",
                        instance.id, r.target_id
                    )
                })?;
                let plan_rel = plan_node
                    .relationships
                    .iter()
                    .position(|p| p.target_id == r.target_name && p.type_name == r.type_name)
                    .ok_or_else(|| {
                        format!(
                            "node {} has no {} relationship to {}",
                            plan_node.id, r.type_name, r.target_name
                        )
                    })?;
                resolved.push(Rel {
                    target,
                    plan_rel: plan_rel as u32,
                });
            }
            rels.push(resolved);
        }
        let states = instances.iter().map(|i| State::parse(&i.state)).collect();
        let n = instances.len();
        Ok(World {
            plan,
            instances,
            states,
            node_of,
            rels,
            instance_index,
            node_index,
            dirty: vec![CLEAN; n],
            props_dirty: Vec::new(),
            state_dirty: Vec::new(),
        })
    }

    pub fn node(&self, instance: u32) -> &PlanNode {
        &self.plan.nodes[self.node_of[instance as usize] as usize]
    }

    pub fn plan_rel(&self, instance: u32, rel: u32) -> &PlanRelationship {
        let r = self.rels[instance as usize][rel as usize];
        &self.node(instance).relationships[r.plan_rel as usize]
    }

    /// Sets an instance's state. `instances[i].state` catches up in [`World::take_dirty`]:
    /// until then `states` is the truth.
    pub fn set_state(&mut self, instance: u32, state: State) {
        self.states[instance as usize] = state;
        self.instances[instance as usize].version += 1;
        if self.dirty[instance as usize] == CLEAN {
            self.dirty[instance as usize] = STATE;
            self.state_dirty.push(instance);
        }
    }

    pub fn set_runtime_properties(&mut self, instance: u32, props: drover_model::Map) {
        let ni = &mut self.instances[instance as usize];
        ni.runtime_properties = props;
        ni.version += 1;
        if self.dirty[instance as usize] != PROPS {
            self.dirty[instance as usize] = PROPS;
            self.props_dirty.push(instance);
        }
    }

    /// The instances whose runtime properties changed since the last call, and with `all` also
    /// those whose state only changed, cloned for the store.
    pub fn take_dirty(&mut self, all: bool) -> Vec<NodeInstance> {
        let mut list = std::mem::take(&mut self.props_dirty);
        if all {
            list.append(&mut self.state_dirty);
        }
        list.into_iter()
            // An instance in both lists shows up once.
            .filter(|&i| std::mem::replace(&mut self.dirty[i as usize], CLEAN) != CLEAN)
            .map(|i| {
                let ni = &mut self.instances[i as usize];
                let state = self.states[i as usize].as_str();
                if ni.state != state {
                    ni.state = state.to_owned();
                }
                ni.clone()
            })
            .collect()
    }

    /// Instances of a node, in order.
    pub fn instances_of(&self, node_id: &str) -> Vec<u32> {
        match self.node_index.get(node_id) {
            Some(&n) => (0..self.instances.len() as u32)
                .filter(|&i| self.node_of[i as usize] == n)
                .collect(),
            None => Vec::new(),
        }
    }
}
