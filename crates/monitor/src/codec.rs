//! The bodies the monitor reads and writes on the bus (`drover.bus.v1` protobuf, see
//! `drover_proto::codec`), each behind one function so that an encoding change is a one-line
//! change here.

use drover_model::{EventRecord, Heartbeat};

/// The beats of a heartbeat body: one agent's, or a batch of a hollow host's; the error is the
/// reason it is dead-lettered.
pub fn decode_heartbeats(body: &[u8]) -> Result<Vec<Heartbeat>, String> {
    drover_proto::codec::decode_heartbeats(body).map_err(|e| e.to_string())
}

/// An event record for the `ingest` queue.
pub fn encode_record(record: &EventRecord) -> Vec<u8> {
    drover_proto::codec::encode_record(record)
}

/// An event record from the `ingest` queue, as [`encode_record`] wrote it.
pub fn decode_record(body: &[u8]) -> Result<EventRecord, String> {
    drover_proto::codec::decode_record(body).map_err(|e| e.to_string())
}
