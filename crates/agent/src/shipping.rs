//! Logs and task events of an agent's operations to the `ingest` queue, through the shared
//! [`drover_shipping::Shipper`] (bounded, batched, never blocking the operation that logs).

use std::sync::Arc;

use drover_bus::Bus;
use drover_model::{EventContext, OperationTask};
use drover_shipping::{event_record, log_record, task_event_id};

use crate::log::{LogRecord, LogSink};

pub use drover_shipping::{ShipperConfig, Shipping};

/// Sends an agent's records to ingest; cheap to clone, every clone feeds the same queue.
#[derive(Clone)]
pub struct Shipper(drover_shipping::Shipper);

impl Shipper {
    /// Starts shipping on `bus` for the agent `agent`, from a task on the current runtime.
    pub fn start(bus: Arc<dyn Bus>, agent: &str, config: ShipperConfig) -> (Shipper, Shipping) {
        let (shipper, shipping) = drover_shipping::Shipper::start(bus, agent, config);
        (Shipper(shipper), shipping)
    }

    /// A runner's log sink that ships every line as a `cloudify_log` record.
    pub fn log_sink(&self) -> LogSink {
        let shipper = self.0.clone();
        Arc::new(move |log: LogRecord| {
            let context = EventContext {
                deployment_id: log.deployment_id,
                execution_id: log.execution_id,
                task_id: Some(log.task_id),
                operation: Some(log.operation),
                node_id: Some(log.node_instance_id),
                ..EventContext::default()
            };
            shipper.ship(log_record(
                shipper.next_id(),
                context,
                log.level.name(),
                log.stream.name(),
                log.message,
                log.timestamp,
            ));
        })
    }

    /// Ships a task event (the agent ships `task_started`) under its
    /// [`task_event_id`].
    pub fn task_event(&self, task: &OperationTask, event_type: &str, text: String) {
        let context = EventContext {
            deployment_id: task.deployment_id.clone(),
            execution_id: task.execution_id.clone(),
            workflow_id: task.workflow_id.clone(),
            task_id: Some(task.task_id.clone()),
            operation: Some(task.operation.clone()),
            plugin: Some(task.plugin.clone()),
            task_current_retries: Some(task.attempt),
            node_id: Some(task.node.node_instance_id.clone()),
            node_name: Some(task.node.node_id.clone()),
            ..EventContext::default()
        };
        let id = task_event_id(&task.task_id, task.attempt, event_type);
        self.0.ship(event_record(id, event_type, context, text));
    }
}
