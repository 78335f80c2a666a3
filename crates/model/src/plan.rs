//! The deployment plan: what a blueprint plus inputs turns into before anything runs.
//!
//! Field names follow Cloudify's deployment plan (`dsl_parser.tasks.prepare_deployment_plan`), so a
//! plan serialised to JSON reads the same as Cloudify's. Operations are keyed by their full name
//! (`cloudify.interfaces.lifecycle.create`) only: the short aliases Cloudify adds are ambiguous
//! as soon as two interfaces share an operation name, and nothing in drover looks them up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Map;

/// A whole deployment plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The blueprint's `tosca_definitions_version`, e.g. `cloudify_dsl_1_4`.
    pub version: String,
    pub nodes: Vec<PlanNode>,
    pub node_instances: Vec<PlanNodeInstance>,
    /// Input definitions (type, default, description, constraints …), as the blueprint declared them.
    #[serde(default)]
    pub inputs: Map,
    /// Outputs, with plan-time functions evaluated and runtime ones (get_attribute …) kept.
    #[serde(default)]
    pub outputs: Map,
    #[serde(default)]
    pub capabilities: Map,
    #[serde(default)]
    pub workflows: BTreeMap<String, WorkflowSpec>,
    #[serde(default)]
    pub groups: Map,
    #[serde(default)]
    pub policies: Map,
    #[serde(default)]
    pub policy_types: Map,
    #[serde(default)]
    pub policy_triggers: Map,
    #[serde(default)]
    pub scaling_groups: BTreeMap<String, ScalingGroup>,
    /// Relationship type definitions, by name.
    #[serde(default)]
    pub relationships: Map,
    #[serde(default)]
    pub labels: Map,
    #[serde(default)]
    pub blueprint_labels: Map,
    #[serde(default)]
    pub deployment_plugins_to_install: Vec<Value>,
    #[serde(default)]
    pub workflow_plugins_to_install: Vec<Value>,
    #[serde(default)]
    pub host_agent_plugins_to_install: Vec<Value>,
}

/// One node template of the plan, with its type fully derived and merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// Root type first, the node's own type last (Cloudify's order).
    pub type_hierarchy: Vec<String>,
    pub properties: Map,
    pub operations: BTreeMap<String, Operation>,
    pub relationships: Vec<PlanRelationship>,
    /// The node that hosts this one (itself for a Compute node); `None` for unhosted nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(default)]
    pub plugins: Vec<Value>,
    #[serde(default)]
    pub plugins_to_install: Vec<Value>,
    #[serde(default)]
    pub deployment_plugins_to_install: Vec<Value>,
    pub instances: Instances,
    pub capabilities: NodeCapabilities,
}

/// `instances: {deploy: N}`, the pre-1_3 way of saying how many instances to make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Instances {
    pub deploy: u64,
}

/// `capabilities: {scalable: {properties: …}}` of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeCapabilities {
    pub scalable: Scalable,
}

/// The `scalable` capability, also used by scaling groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scalable {
    pub properties: ScalableProperties,
}

/// Instance counts of a node or a scaling group. `max_instances` of `-1` means unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalableProperties {
    pub default_instances: u64,
    pub min_instances: u64,
    pub max_instances: i64,
    pub current_instances: u64,
    pub planned_instances: u64,
}

impl Default for ScalableProperties {
    fn default() -> Self {
        Self {
            default_instances: 1,
            min_instances: 0,
            max_instances: -1,
            current_instances: 1,
            planned_instances: 1,
        }
    }
}

/// An operation bound to its implementation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The plugin that runs it (`script` for a script path); empty for a no-op.
    pub plugin: String,
    /// The plugin's operation (a Python-style dotted path, or the script path for the script plugin).
    pub operation: String,
    /// `central_deployment_agent` or `host_agent`; `None` for a no-op.
    pub executor: Option<String>,
    pub inputs: Map,
    pub max_retries: Option<Value>,
    pub retry_interval: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_recoverable: Option<Value>,
    /// Whether `inputs` hold runtime functions (get_attribute …) that the task must evaluate.
    #[serde(default)]
    pub has_intrinsic_functions: bool,
}

impl Operation {
    /// An operation with no implementation: running it does nothing.
    pub fn is_noop(&self) -> bool {
        self.operation.is_empty()
    }
}

/// A relationship of a node to a target node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanRelationship {
    #[serde(rename = "type")]
    pub type_name: String,
    pub target_id: String,
    /// Root first, own type last.
    pub type_hierarchy: Vec<String>,
    pub properties: Map,
    pub source_operations: BTreeMap<String, Operation>,
    pub target_operations: BTreeMap<String, Operation>,
}

impl PlanRelationship {
    /// Whether this relationship is (derived from) `cloudify.relationships.contained_in`.
    pub fn is_contained_in(&self) -> bool {
        self.type_hierarchy
            .iter()
            .any(|t| t == "cloudify.relationships.contained_in")
    }
}

/// One instance of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanNodeInstance {
    /// `<node>_<6 random lowercase letters and digits>`.
    pub id: String,
    pub node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    pub relationships: Vec<InstanceRelationship>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaling_groups: Vec<ScalingGroupRef>,
}

/// A relationship of a node instance to one target instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceRelationship {
    #[serde(rename = "type")]
    pub type_name: String,
    pub target_id: String,
    pub target_name: String,
}

/// The scaling-group instance a node instance belongs to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalingGroupRef {
    pub name: String,
    pub id: String,
}

/// A scaling group: members scale out and in together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalingGroup {
    pub members: Vec<String>,
    pub properties: ScalableProperties,
}

/// A workflow bound to its implementation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSpec {
    pub plugin: String,
    pub operation: String,
    #[serde(default)]
    pub parameters: Map,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_cascading: Option<bool>,
}
