//! Events in Cloudify's shape, and the observer that receives them as they happen.

use std::time::{Duration, SystemTime};

use drover_model::{Event, EventContext, EventMessage};

/// Receives an execution's events and progress while it runs (the CLI's progress bar and
/// `--events-json`). Called on the executor's task: keep it quick.
pub trait Observer: Send {
    /// Whether to receive the routine events of every task (sending_task, task_started,
    /// task_succeeded); workflow events, failures and retries always come. Making those events
    /// is a good part of a dry run's cost, so observers that drop them say so.
    fn wants_task_events(&self) -> bool {
        true
    }
    fn event(&mut self, _event: &Event) {}
    fn progress(&mut self, _progress: &Progress) {}
}

/// Ignores everything.
pub struct NullObserver;

impl Observer for NullObserver {
    fn wants_task_events(&self) -> bool {
        false
    }
}

/// Where a running phase is.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The phase number, from 0, and how many the workflow has.
    pub phase: u32,
    pub phases: u32,
    pub tasks_done: u64,
    pub tasks_total: u64,
    /// Operations that ended (succeeded or failed), not counting local steps.
    pub operations_done: u64,
    pub failures: u64,
    /// Instances that reached the phase's final state, of those in the phase.
    pub instances_done: u64,
    pub instances_total: u64,
}

/// The event types of a workflow's end, the last event of a run.
pub const END_EVENT_TYPES: [&str; 3] = [
    "workflow_succeeded",
    "workflow_failed",
    "workflow_cancelled",
];

/// How long no new event must come after the end event before a watcher takes a run's events
/// as complete: several ingest replicas index side by side, so another's last batch can become
/// searchable just after the end event (more than the event index's 1 s refresh interval).
pub const END_EVENT_QUIET: Duration = Duration::from_millis(1500);

/// The time now, as events carry it.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub(crate) fn event(event_type: &str, context: EventContext, text: String) -> Event {
    Event {
        event_type: event_type.to_owned(),
        context,
        message: EventMessage {
            text,
            arguments: serde_json::Value::Null,
        },
        timestamp: now(),
        kind: "cloudify_event".to_owned(),
    }
}
