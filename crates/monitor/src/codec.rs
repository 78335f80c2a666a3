//! The bodies the monitor reads and writes on the bus, each behind one function so that the
//! encoding (JSON today, `drover_proto::codec` protobuf soon) changes in one line.

use drover_model::{EventRecord, Heartbeat};

/// A heartbeat's body; the error is the reason it is dead-lettered.
pub fn decode_heartbeat(body: &[u8]) -> Result<Heartbeat, String> {
    serde_json::from_slice(body).map_err(|e| format!("not a heartbeat: {e}"))
}

/// An event record for the `ingest` queue.
pub fn encode_record(record: &EventRecord) -> Vec<u8> {
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}
