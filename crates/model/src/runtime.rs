//! What a deployment becomes while workflows run on it: node instances with their state and
//! runtime properties, executions, and events.
//!
//! The JSON form follows Cloudify's REST shapes (node instances, executions) and its event shape
//! (`event_type`, `context`, `message.text`, `timestamp`), so tools that read Cloudify's read these.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{InstanceRelationship, Map, ScalingGroupRef};

/// A node instance as it stands: the plan's instance plus what workflows did to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInstance {
    pub id: String,
    pub deployment_id: String,
    pub node_id: String,
    #[serde(default)]
    pub host_id: Option<String>,
    /// Lifecycle state: `uninitialized`, `creating`, `created`, … `started`, `stopping`, … `deleted`.
    pub state: String,
    #[serde(default)]
    pub runtime_properties: Map,
    #[serde(default)]
    pub relationships: Vec<InstanceRelationship>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaling_groups: Vec<ScalingGroupRef>,
    /// Bumped on every write, as Cloudify's `version`.
    #[serde(default)]
    pub version: u64,
}

/// Where an execution is in its life (Cloudify's execution statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Pending,
    Started,
    Cancelling,
    ForceCancelling,
    Cancelled,
    Terminated,
    Failed,
}

impl ExecutionStatus {
    /// Whether the execution has ended (nothing more will run unless it is resumed).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Cancelled | Self::Terminated | Self::Failed)
    }
}

/// One run of a workflow on a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub deployment_id: String,
    pub workflow_id: String,
    pub parameters: Map,
    pub status: ExecutionStatus,
    #[serde(default)]
    pub error: String,
    pub created_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
    #[serde(default)]
    pub is_dry_run: bool,
}

/// An event in Cloudify's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_type: String,
    pub context: EventContext,
    pub message: EventMessage,
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    /// Always `cloudify_event` (logs, which come later, are `cloudify_log`).
    #[serde(rename = "type")]
    pub kind: String,
}

/// The `message` of an event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    pub text: String,
    #[serde(default)]
    pub arguments: Value,
}

/// The `context` of an event. As in Cloudify, `node_id` is the node *instance* id and
/// `node_name` the node's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventContext {
    pub deployment_id: String,
    pub execution_id: String,
    pub workflow_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_current_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_total_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
}

/// The tenant of what names none: a request without a `Tenant` header, a deployment made
/// before deployments recorded theirs, `drover local`.
pub const DEFAULT_TENANT: &str = "default_tenant";

/// A deployment: a blueprint's plan with its inputs, where the blueprint was read from, and
/// the tenant it belongs to (whose secrets its `get_secret` reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub blueprint_id: String,
    pub plan: crate::Plan,
    #[serde(default)]
    pub inputs: Map,
    /// The blueprint's directory, against which script paths resolve.
    #[serde(default)]
    pub blueprint_dir: Option<String>,
    pub created_at: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn default_tenant() -> String {
    DEFAULT_TENANT.to_owned()
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment {
            id: String::new(),
            blueprint_id: String::new(),
            plan: crate::Plan::default(),
            inputs: Map::new(),
            blueprint_dir: None,
            created_at: String::new(),
            tenant: default_tenant(),
        }
    }
}
