//! Messages of the bus besides tasks and results: what agents send to ingest and to the
//! monitors.

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

/// An agent's "still here", sent every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent's name (also the routing key).
    pub agent: String,
    /// Counts the beats this agent sent, from 0 (a skipped tick sends none, so a gap means a
    /// beat was lost on the way).
    pub sequence: u64,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
}
