//! Hand-built plans and a recording operation runner, for tests that must not depend on the
//! DSL parser.
//!
//! ```
//! use drover_workflow::testing::PlanBuilder;
//! let plan = PlanBuilder::new()
//!     .node("db", 1)
//!     .compute("host", 2)
//!     .node("app", 2)
//!     .contained_in("host")
//!     .connected_to("db")
//!     .build();
//! assert_eq!(plan.node_instances.len(), 1 + 2 + 4);
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use drover_model::{
    InstanceRelationship, Map, Operation, OperationTask, Plan, PlanNode, PlanNodeInstance,
    PlanRelationship, TaskOutcome, TaskResult,
};

use crate::dispatch::OperationRunner;

/// The lifecycle operations every node gets.
pub const LIFECYCLE: &[&str] = &[
    "cloudify.interfaces.lifecycle.precreate",
    "cloudify.interfaces.lifecycle.create",
    "cloudify.interfaces.lifecycle.configure",
    "cloudify.interfaces.lifecycle.start",
    "cloudify.interfaces.lifecycle.poststart",
    "cloudify.interfaces.lifecycle.prestop",
    "cloudify.interfaces.lifecycle.stop",
    "cloudify.interfaces.lifecycle.delete",
    "cloudify.interfaces.lifecycle.postdelete",
];

/// The relationship operations every relationship gets, on both sides.
pub const RELATIONSHIP: &[&str] = &[
    "cloudify.interfaces.relationship_lifecycle.preconfigure",
    "cloudify.interfaces.relationship_lifecycle.postconfigure",
    "cloudify.interfaces.relationship_lifecycle.establish",
    "cloudify.interfaces.relationship_lifecycle.unlink",
];

/// An operation implemented by the `test` plugin.
pub fn operation(name: &str) -> Operation {
    Operation {
        plugin: "test".into(),
        operation: format!("test.{}", name.rsplit('.').next().unwrap_or(name)),
        executor: Some("central_deployment_agent".into()),
        ..Operation::default()
    }
}

/// Builds a plan node by node; a contained node gets its count of instances per container
/// instance, as Cloudify's `default_instances`.
#[derive(Default)]
pub struct PlanBuilder {
    nodes: Vec<PlanNode>,
}

impl PlanBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `cloudify.nodes.Root` node with every lifecycle operation.
    pub fn node(self, id: &str, instances: u64) -> Self {
        self.typed(id, &["cloudify.nodes.Root"], instances)
    }

    /// Adds a `cloudify.nodes.Compute` node.
    pub fn compute(self, id: &str, instances: u64) -> Self {
        self.typed(
            id,
            &["cloudify.nodes.Root", "cloudify.nodes.Compute"],
            instances,
        )
    }

    fn typed(mut self, id: &str, hierarchy: &[&str], instances: u64) -> Self {
        let mut node = PlanNode {
            id: id.into(),
            name: id.into(),
            type_name: hierarchy.last().copied().unwrap_or_default().into(),
            type_hierarchy: hierarchy.iter().map(|s| s.to_string()).collect(),
            operations: LIFECYCLE
                .iter()
                .map(|&o| (o.to_owned(), operation(o)))
                .collect(),
            ..PlanNode::default()
        };
        if hierarchy.contains(&"cloudify.nodes.Compute") {
            node.host_id = Some(id.into());
        }
        let props = &mut node.capabilities.scalable.properties;
        props.default_instances = instances;
        props.current_instances = instances;
        props.planned_instances = instances;
        node.instances.deploy = instances;
        self.nodes.push(node);
        self
    }

    fn last(&mut self) -> &mut PlanNode {
        self.nodes
            .last_mut()
            .expect("add a node before its relationships")
    }

    /// The last node gets a relationship of the given type hierarchy to `target`.
    pub fn relationship(mut self, target: &str, hierarchy: &[&str]) -> Self {
        let ops = |_: ()| {
            RELATIONSHIP
                .iter()
                .map(|&o| (o.to_owned(), operation(o)))
                .collect()
        };
        self.last().relationships.push(PlanRelationship {
            type_name: hierarchy.last().copied().unwrap_or_default().into(),
            target_id: target.into(),
            type_hierarchy: hierarchy.iter().map(|s| s.to_string()).collect(),
            properties: Map::new(),
            source_operations: ops(()),
            target_operations: ops(()),
        });
        self
    }

    pub fn contained_in(self, target: &str) -> Self {
        self.relationship(
            target,
            &[
                "cloudify.relationships.depends_on",
                "cloudify.relationships.contained_in",
            ],
        )
    }

    pub fn connected_to(self, target: &str) -> Self {
        self.relationship(
            target,
            &[
                "cloudify.relationships.depends_on",
                "cloudify.relationships.connected_to",
            ],
        )
    }

    /// Makes an operation of the last node a no-op.
    pub fn noop(mut self, op: &str) -> Self {
        if let Some(o) = self.last().operations.get_mut(op) {
            *o = Operation::default();
        }
        self
    }

    /// Changes an operation of the last node.
    pub fn with_operation(mut self, op: &str, f: impl FnOnce(&mut Operation)) -> Self {
        if let Some(o) = self.last().operations.get_mut(op) {
            f(o);
        }
        self
    }

    /// Sets a property of the last node.
    pub fn property(mut self, key: &str, value: serde_json::Value) -> Self {
        self.last().properties.insert(key.into(), value);
        self
    }

    /// Makes the plan: instances `<node>_<n>`, containers before what they contain.
    pub fn build(mut self) -> Plan {
        let mut instances: Vec<PlanNodeInstance> = Vec::new();
        let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
        let mut pending: Vec<usize> = (0..self.nodes.len()).collect();
        // Contained nodes wait for their container (a plan with a containment cycle stops here).
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|&n| {
                let node = &self.nodes[n];
                let container = node.relationships.iter().find(|r| r.is_contained_in());
                let parents: Vec<Option<usize>> = match container {
                    None => vec![None],
                    Some(r) => match by_node.get(&r.target_id) {
                        Some(ps) => ps.iter().copied().map(Some).collect(),
                        None => return true,
                    },
                };
                let mut made = Vec::new();
                for parent in parents {
                    for _ in 0..node.instances.deploy {
                        let id = format!("{}_{}", node.id, made.len() + 1);
                        let host_id = if node.host_id.as_deref() == Some(node.id.as_str()) {
                            Some(id.clone())
                        } else {
                            parent.and_then(|p| instances[p].host_id.clone())
                        };
                        let mut relationships = Vec::new();
                        if let (Some(p), Some(r)) = (parent, container) {
                            relationships.push(InstanceRelationship {
                                type_name: r.type_name.clone(),
                                target_id: instances[p].id.clone(),
                                target_name: r.target_id.clone(),
                            });
                        }
                        instances.push(PlanNodeInstance {
                            id,
                            node_id: node.id.clone(),
                            host_id,
                            relationships,
                            scaling_groups: Vec::new(),
                        });
                        made.push(instances.len() - 1);
                    }
                }
                by_node.insert(node.id.clone(), made);
                false
            });
            if pending.len() == before {
                break;
            }
        }
        // Other relationships: to every instance of the target node.
        for i in 0..instances.len() {
            let Some(node) = self.nodes.iter().find(|n| n.id == instances[i].node_id) else {
                continue;
            };
            let extra: Vec<InstanceRelationship> = node
                .relationships
                .iter()
                .filter(|r| !r.is_contained_in())
                .flat_map(|r| {
                    by_node
                        .get(&r.target_id)
                        .into_iter()
                        .flatten()
                        .map(|&t| InstanceRelationship {
                            type_name: r.type_name.clone(),
                            target_id: instances[t].id.clone(),
                            target_name: r.target_id.clone(),
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            instances[i].relationships.extend(extra);
        }
        // Nodes hosted on a Compute node know it.
        for n in 0..self.nodes.len() {
            if self.nodes[n].host_id.is_none()
                && let Some(first) = by_node.get(&self.nodes[n].id).and_then(|v| v.first())
                && let Some(host) = &instances[*first].host_id
            {
                let host_node = host.rsplit_once('_').map(|(n, _)| n.to_owned());
                self.nodes[n].host_id = host_node;
            }
        }
        Plan {
            version: "cloudify_dsl_1_3".into(),
            nodes: self.nodes,
            node_instances: instances,
            ..Plan::default()
        }
    }
}

/// What a [`RecordingRunner`] saw: one line per operation run,
/// `<operation short name> <instance>` or `<operation short name> <source>-><target> <side>`,
/// followed by the inputs as JSON when there are some.
#[derive(Clone, Default)]
pub struct Record(Arc<Mutex<Vec<String>>>);

impl Record {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A failure to inject: the operation (short name) on the instance fails `times` times.
#[derive(Clone, Debug)]
pub struct Failure {
    pub operation: String,
    pub instance: String,
    pub times: u32,
    pub recoverable: bool,
}

/// Runs nothing, records what it was asked to run, fails as told, and sets a runtime property
/// `<operation short name>_ran = true` on the instance.
#[derive(Clone, Default)]
pub struct RecordingRunner {
    pub record: Record,
    failures: Arc<Mutex<Vec<Failure>>>,
    delay: std::time::Duration,
}

impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes each operation take this long.
    pub fn with_delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn fail(self, failure: Failure) -> Self {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(failure);
        self
    }
}

fn short(op: &str) -> &str {
    op.rsplit('.').next().unwrap_or(op)
}

impl OperationRunner for RecordingRunner {
    async fn run(&self, task: OperationTask) -> TaskResult {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let op = short(&task.operation).to_owned();
        let line = match &task.relationship {
            Some(r) => format!(
                "{op} {}->{} {}",
                r.source.node_instance_id, r.target.node_instance_id, r.side
            ),
            None => format!("{op} {}", task.node.node_instance_id),
        };
        let line = if task.inputs.is_empty() {
            line
        } else {
            format!("{line} {}", serde_json::Value::Object(task.inputs.clone()))
        };
        self.record
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
        let failure = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            failures
                .iter_mut()
                .find(|f| {
                    f.operation == op && f.instance == task.node.node_instance_id && f.times > 0
                })
                .map(|f| {
                    f.times -= 1;
                    f.clone()
                })
        };
        let mut runtime_properties = std::collections::BTreeMap::new();
        let outcome = match failure {
            Some(f) => TaskOutcome::Failed {
                error: format!("{op} failed as the test asked"),
                recoverable: f.recoverable,
                retry_after_s: Some(0.0),
            },
            None => {
                if task.relationship.is_none() {
                    let mut props = task.node.runtime_properties.clone();
                    props.insert(format!("{op}_ran"), serde_json::Value::Bool(true));
                    runtime_properties.insert(task.node.node_instance_id.clone(), props);
                }
                TaskOutcome::Succeeded {
                    result: serde_json::Value::Null,
                }
            }
        };
        TaskResult {
            task_id: task.task_id,
            execution_id: task.execution_id,
            outcome,
            runtime_properties,
        }
    }
}
