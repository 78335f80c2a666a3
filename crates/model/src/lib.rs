//! drover's shared data model.
//!
//! Every service and library meets on these types: the deployment plan that `dsl` produces is the
//! input of the workflow engine, and the JSON form of [`Plan`] follows the field names of
//! Cloudify's deployment plan so that Cloudify's tools can read it.

pub mod bus;
pub mod plan;
pub mod runtime;
pub mod task;

pub use bus::{ClockSequence, EventRecord, Heartbeat, execution_event_records, task_event_id};
pub use plan::{
    InstanceRelationship, Instances, Operation, Plan, PlanNode, PlanNodeInstance, PlanRelationship,
    ScalableProperties, ScalingGroup, ScalingGroupRef, WorkflowSpec,
};
pub use runtime::{
    DEFAULT_TENANT, Deployment, Event, EventContext, EventMessage, Execution, ExecutionStatus,
    NodeInstance,
};
pub use task::{
    OperationTask, PROVISIONING_PLUGIN, TaskNode, TaskOutcome, TaskRelationship, TaskResult,
};

/// A JSON object, in insertion order (property order is kept as the blueprint wrote it).
pub type Map = serde_json::Map<String, serde_json::Value>;
