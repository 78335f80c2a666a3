//! The external plugin protocol's lines, as JSON (one object per line, UTF-8, `\n`-terminated).
//!
//! Agent to plugin: `run` (one per operation, with an id unique among the requests of this
//! plugin process) and `cancel` (the operation timed out; the plugin may stop working on it).
//! Plugin to agent, each carrying the id of the request it belongs to: any number of `log` and
//! `runtime_properties` lines, then exactly one `result` line, after which the agent ignores
//! that id. Lines of different requests may interleave: several requests can be in flight.

use drover_model::{Map, OperationTask, TaskNode, TaskOutcome, TaskRelationship};
use serde::{Deserialize, Serialize};

use crate::log::LogLevel;

/// A line the agent writes to the plugin's stdin.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Request<'a> {
    Run {
        id: &'a str,
        task_id: &'a str,
        execution_id: &'a str,
        deployment_id: &'a str,
        workflow_id: &'a str,
        /// Full operation name, e.g. `cloudify.interfaces.lifecycle.create`.
        operation: &'a str,
        /// The operation's implementation with the plugin name, e.g. `echo.tasks.create`.
        implementation: &'a str,
        inputs: &'a Map,
        /// Node properties and the instance's runtime properties.
        node: &'a TaskNode,
        #[serde(skip_serializing_if = "Option::is_none")]
        relationship: Option<&'a TaskRelationship>,
        attempt: u32,
    },
    Cancel {
        id: &'a str,
    },
}

impl<'a> Request<'a> {
    pub(super) fn run(id: &'a str, task: &'a OperationTask) -> Self {
        Request::Run {
            id,
            task_id: &task.task_id,
            execution_id: &task.execution_id,
            deployment_id: &task.deployment_id,
            workflow_id: &task.workflow_id,
            operation: &task.operation,
            implementation: &task.implementation,
            inputs: &task.inputs,
            node: &task.node,
            relationship: task.relationship.as_ref(),
            attempt: task.attempt,
        }
    }
}

/// A line the plugin writes to its stdout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Reply {
    /// A log line of the operation.
    Log {
        id: String,
        level: LogLevel,
        message: String,
    },
    /// Sets runtime properties of an instance (the operation's own when no id is given; for a
    /// relationship operation, the source's or the target's); a `null` value deletes the key.
    RuntimeProperties {
        id: String,
        #[serde(default)]
        node_instance_id: Option<String>,
        set: Map,
    },
    /// The operation's outcome: `"status": "succeeded"` with an optional `result`, or
    /// `"status": "failed"` with `error`, `recoverable` and an optional `retry_after_s`.
    Result {
        id: String,
        #[serde(flatten)]
        outcome: TaskOutcome,
    },
}

impl Reply {
    pub(super) fn id(&self) -> &str {
        match self {
            Reply::Log { id, .. }
            | Reply::RuntimeProperties { id, .. }
            | Reply::Result { id, .. } => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn replies_parse() {
        let parse = |v: serde_json::Value| serde_json::from_value::<Reply>(v);
        assert_eq!(
            parse(json!({"id": "1", "type": "result", "status": "succeeded", "result": 3}))
                .unwrap(),
            Reply::Result {
                id: "1".into(),
                outcome: TaskOutcome::Succeeded { result: 3.into() }
            }
        );
        assert_eq!(
            parse(
                json!({"id": "1", "type": "result", "status": "failed", "error": "no",
                         "recoverable": false})
            )
            .unwrap(),
            Reply::Result {
                id: "1".into(),
                outcome: TaskOutcome::Failed {
                    error: "no".into(),
                    recoverable: false,
                    retry_after_s: None
                }
            }
        );
        assert!(parse(json!({"id": "1", "type": "log", "level": "loud", "message": "x"})).is_err());
        assert!(parse(json!({"id": "1", "type": "result", "status": "maybe"})).is_err());
        assert!(parse(json!({"type": "log", "level": "info", "message": "x"})).is_err());
    }
}
