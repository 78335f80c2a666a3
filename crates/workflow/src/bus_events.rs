//! An execution's events to the `ingest` queue, so that the event index (and through it the
//! gateway's `/events`) holds the workflow's own events beside the agents' logs and task
//! events. Used by replicas: [`IngestEvents`] as the engine's event sink (every event, in the
//! journal's order), or [`ShipEvents`] as an observer beside a store that keeps the events
//! itself (best effort). `drover local` keeps its events in the store.

use std::sync::Arc;

use async_trait::async_trait;
use drover_bus::Bus;
use drover_model::{ClockSequence, Event, EventRecord, execution_event_records};
use drover_shipping::{Shipper, ingest_messages};

use crate::event_sink::EventSink;
use crate::events::Observer;

/// Ships every event of a run; progress is not shipped.
pub struct ShipEvents {
    shipper: Shipper,
}

impl ShipEvents {
    pub fn new(shipper: Shipper) -> Self {
        ShipEvents { shipper }
    }
}

impl Observer for ShipEvents {
    fn event(&mut self, event: &Event) {
        let id = event
            .task_event_id()
            .unwrap_or_else(|| self.shipper.next_id());
        self.shipper.ship(EventRecord {
            id,
            level: None,
            logger: None,
            event: event.clone(),
        });
    }
}

/// The `ingest` queue as an execution's [`EventSink`]: each append is published (in messages
/// of [`drover_shipping::MAX_RECORDS_PER_MESSAGE`] records) and its confirms awaited, so the
/// events are in the durable queue before the journal says their tasks are done. Ingest
/// indexes them behind the execution: the execution's status can be final before its last
/// events are searchable (clients that follow events wait for the workflow's end event).
/// Records carry the ids the store would give them (`execution_event_records`), so a
/// re-published task event overwrites itself.
pub struct IngestEvents {
    bus: Arc<dyn Bus>,
    sequence: ClockSequence,
}

impl IngestEvents {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        IngestEvents {
            bus,
            sequence: ClockSequence::default(),
        }
    }
}

#[async_trait]
impl EventSink for IngestEvents {
    async fn append(&self, execution_id: &str, events: Vec<Event>) -> Result<(), String> {
        let records = execution_event_records(execution_id, &events, &self.sequence);
        let messages = ingest_messages(self.bus.as_ref(), &records);
        self.bus
            .publish_batch(messages)
            .await
            .map_err(|e| format!("publishing events to ingest: {e}"))
    }
}
