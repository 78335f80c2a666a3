//! Messages of the bus besides tasks and results: what agents send to ingest and to the
//! monitors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::Event;

/// A log line or an event on its way to the event index: Cloudify's event shape (logs are
/// `"type": "cloudify_log"` with a `level` and an empty `event_type`) plus a unique id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Unique per record, and kept when the bus redelivers it: ingest indexes by this id, so a
    /// redelivery overwrites instead of duplicating.
    pub id: String,
    /// A log's level (`debug`, `info`, `warning`, `error`); none for an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// A log's source within the operation (`stdout`, `stderr`, `ctx`, `plugin`, `runner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<String>,
    #[serde(flatten)]
    pub event: Event,
}

/// The id of a task event: the task's id, attempt and the event's type. Whoever reports a
/// task's start or end (the agent running it, the engine that dispatched it, a replica
/// shipping the engine's events) uses this id, so the event index holds each such event once,
/// and a task answered twice (a redelivery) yields the same record.
pub fn task_event_id(task_id: &str, attempt: u32, event_type: &str) -> String {
    format!("{task_id}/{attempt}/{event_type}")
}

impl Event {
    /// The [`task_event_id`] of an event about one attempt of a task: an operation's, or a
    /// state change's (`workflow_node_event`: the change is a local task of the graph); none
    /// for the workflow's own events (started, ended …).
    pub fn task_event_id(&self) -> Option<String> {
        let context = &self.context;
        let task = context.task_id.as_deref()?;
        let attempt = context.task_current_retries?;
        Some(task_event_id(task, attempt, &self.event_type))
    }
}

/// Numbers that grow from call to call and from run to run: the wall clock in microseconds, or
/// one more than the last number handed out when the clock has not moved on (or went back).
#[derive(Debug, Default)]
pub struct ClockSequence(AtomicU64);

impl ClockSequence {
    /// The first of `n` consecutive numbers reserved for the caller.
    pub fn reserve(&self, n: u64) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        let mut last = self.0.load(Ordering::Relaxed);
        loop {
            let first = now.max(last + 1);
            match self.0.compare_exchange(
                last,
                first + n.saturating_sub(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return first,
                Err(actual) => last = actual,
            }
        }
    }
}

/// An execution's events as records for the event index, whichever way they travel (written
/// by the store, or through ingest): an event about a task attempt under its
/// [`Event::task_event_id`], the id the agent that ran the task ships its own copy under; the
/// workflow's own events under `<execution>-<number>`, numbered from `sequence` in append
/// order (a search for the execution's events finds both by the `<execution>-` prefix).
pub fn execution_event_records(
    execution_id: &str,
    events: &[Event],
    sequence: &ClockSequence,
) -> Vec<EventRecord> {
    let first = sequence.reserve(events.len() as u64);
    events
        .iter()
        .enumerate()
        .map(|(i, event)| EventRecord {
            id: event
                .task_event_id()
                .unwrap_or_else(|| format!("{execution_id}-{:020}", first + i as u64)),
            level: None,
            logger: None,
            event: event.clone(),
        })
        .collect()
}

/// An agent's "still here", sent every heartbeat interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent's name (also the routing key).
    pub agent: String,
    /// Counts the beats this agent sent, from 0 (a skipped tick sends none, so a gap means a
    /// beat was lost on the way).
    pub sequence: u64,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The deployment the agent serves; empty when the agent does not know it.
    #[serde(default)]
    pub deployment_id: String,
    /// The node instance the agent serves (a host agent: its host's instance), what the monitor
    /// heals when the agent fails; empty when the agent does not know it.
    #[serde(default)]
    pub node_instance_id: String,
    /// Measurements for threshold policies, by name (`load`: the 1-minute load average).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}
