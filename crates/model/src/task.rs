//! Operation tasks and their results: what the workflow engine sends to an agent and gets back.
//!
//! Agents reach the manager through the bus only, so a task carries everything the operation
//! may read (node properties, the instance's runtime properties, and for a relationship operation
//! the other side's), and its result carries the runtime properties the operation changed; the
//! engine writes those to the state store.

use serde::{Deserialize, Serialize};

use crate::Map;

/// The plugin of the tasks that ask the provisioner, not an agent, to make (implementation
/// `create`) or free (`delete`) the server of a Compute node instance whose blueprint gives it no
/// create/delete of its own. The dispatcher routes them; the result carries the server's runtime
/// properties (`ip`, `external_id`).
pub const PROVISIONING_PLUGIN: &str = "drover_provisioning";

/// One operation to run on one node instance (or one side of a relationship instance).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperationTask {
    /// Unique per task; a task re-sent after a takeover keeps its id so agents can deduplicate.
    pub task_id: String,
    pub execution_id: String,
    pub workflow_id: String,
    pub deployment_id: String,
    /// Full operation name, e.g. `cloudify.interfaces.lifecycle.create`.
    pub operation: String,
    pub plugin: String,
    /// The plugin's operation: a dotted path, or the script path for the script plugin.
    pub implementation: String,
    /// `central_deployment_agent` or `host_agent`.
    pub executor: Option<String>,
    /// Operation inputs with runtime functions already evaluated.
    pub inputs: Map,
    /// Send and acknowledge, but do not run the operation.
    pub dry_run: bool,
    /// Which attempt this is, from 0.
    pub attempt: u32,
    /// Seconds the operation may run before it is killed; `None` for no limit.
    pub timeout_s: Option<f64>,
    /// The directory the blueprint was read from, against which script paths resolve.
    pub blueprint_dir: Option<String>,
    /// The instance the operation runs for (the source side of a relationship operation).
    pub node: TaskNode,
    /// For a relationship operation: the relationship type, and the other side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship: Option<TaskRelationship>,
}

/// A node instance as an operation sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskNode {
    pub node_instance_id: String,
    pub node_id: String,
    /// The node's type name (`ctx node type`); empty when the engine did not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_type: String,
    pub properties: Map,
    pub runtime_properties: Map,
}

/// The relationship of a relationship operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRelationship {
    #[serde(rename = "type")]
    pub type_name: String,
    /// `source` or `target`: which side's operation this is.
    pub side: String,
    pub source: TaskNode,
    pub target: TaskNode,
}

/// What came of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: String,
    pub execution_id: String,
    pub outcome: TaskOutcome,
    /// Runtime properties after the operation, by node instance id (the instance, and for a
    /// relationship operation possibly the other side), only for instances it changed.
    #[serde(default)]
    pub runtime_properties: std::collections::BTreeMap<String, Map>,
}

/// Success, or a failure that may be retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskOutcome {
    Succeeded {
        #[serde(default)]
        result: serde_json::Value,
    },
    Failed {
        error: String,
        /// A recoverable failure is retried (up to max_retries); a non-recoverable one is not.
        recoverable: bool,
        /// Seconds to wait before the retry, when the operation asked for a specific delay.
        #[serde(default)]
        retry_after_s: Option<f64>,
    },
}
