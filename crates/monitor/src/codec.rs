//! The bodies the monitor reads and writes on the bus, each behind one function so that an
//! encoding change is a one-line change here.

use drover_model::{EventRecord, Heartbeat};

/// A heartbeat's body (JSON, as drover-agent sends it today); the error is the reason it is
/// dead-lettered.
pub fn decode_heartbeat(body: &[u8]) -> Result<Heartbeat, String> {
    serde_json::from_slice(body).map_err(|e| format!("not a heartbeat: {e}"))
}

/// An event record for the `ingest` queue (JSON, what drover-ingest reads today).
pub fn encode_record(record: &EventRecord) -> Vec<u8> {
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// An event record from the `ingest` queue, as [`encode_record`] wrote it.
pub fn decode_record(body: &[u8]) -> Result<EventRecord, String> {
    serde_json::from_slice(body).map_err(|e| format!("not an event record: {e}"))
}
