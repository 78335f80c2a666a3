//! Synthetic event records and their messages, for the integration tests and the benchmark.

use drover_bus::Message;
use drover_model::{Event, EventContext, EventMessage};
use drover_store::EventRecord;

/// Record `n` of a run: id `<run>-<n>`, a few hundred bytes like a real task event.
pub fn record(run: &str, n: u64) -> EventRecord {
    EventRecord {
        id: format!("{run}-{n}"),
        level: None,
        logger: None,
        event: Event {
            event_type: "task_succeeded".into(),
            context: EventContext {
                deployment_id: format!("{run}-d{}", n % 10),
                execution_id: format!("{run}-e{}", n % 10),
                workflow_id: "install".into(),
                task_id: Some(format!("{run}-e{}-0-{n}-0", n % 10)),
                operation: Some("cloudify.interfaces.lifecycle.start".into()),
                plugin: Some("script".into()),
                node_id: Some(format!("vm_{n}")),
                node_name: Some("vm".into()),
                ..EventContext::default()
            },
            message: EventMessage {
                text: format!("Task succeeded 'script.start' on vm_{n}"),
                arguments: serde_json::Value::Null,
            },
            timestamp: format!(
                "2026-11-26T{:02}:{:02}:{:02}.{:03}Z",
                (n / 3_600_000) % 24,
                (n / 60_000) % 60,
                (n / 1000) % 60,
                n % 1000
            ),
            kind: "cloudify_event".into(),
        },
    }
}

/// A record as ingest's messages carry it.
pub fn message(record: &EventRecord) -> Message {
    Message::new(drover_proto::codec::encode_record(record)).with_id(record.id.clone())
}

/// Publishes records `0..n` of a run to the ingest queue as shippers do (messages of
/// `MAX_RECORDS_PER_MESSAGE` records), `chunk` records at a time with pipelined confirms.
pub async fn publish(
    bus: &dyn drover_bus::Bus,
    run: &str,
    n: u64,
    chunk: u64,
) -> drover_bus::Result<()> {
    let mut next = 0;
    while next < n {
        let end = (next + chunk).min(n);
        let records: Vec<EventRecord> = (next..end).map(|i| record(run, i)).collect();
        bus.publish_batch(drover_shipping::ingest_messages(bus, &records))
            .await?;
        next = end;
    }
    Ok(())
}
