//! Records shipped reach the ingest queue (MemoryBus) in order with their ids, batched into
//! messages of at most `MAX_RECORDS_PER_MESSAGE`; once every shipper clone is dropped, the
//! shipping task ends with all sent.

use std::sync::Arc;

use drover_bus::{Bus, ConsumeOptions, MemoryBus, Topology};
use drover_model::EventContext;
use drover_proto::codec;
use drover_shipping::{
    MAX_RECORDS_PER_MESSAGE, Shipper, ShipperConfig, event_record, ingest_messages, task_event_id,
};

#[tokio::test]
async fn shipped_records_reach_ingest_in_order_with_their_ids() {
    let bus = Arc::new(MemoryBus::new(Topology::new()));
    let queue = bus.topology().ingest_queue_name();
    let mut ingest = bus
        .consume(&queue, ConsumeOptions::default().with_prefetch(100))
        .await
        .unwrap();
    let (shipper, shipping) = Shipper::start(bus.clone(), "replica", ShipperConfig::default());
    let context = EventContext {
        execution_id: "e1".into(),
        ..EventContext::default()
    };
    let ids = [
        shipper.next_id(),
        task_event_id("e1-0-3-0", 0, "task_started"),
        shipper.next_id(),
    ];
    assert_ne!(ids[0], ids[2]);
    assert!(ids[0].starts_with("replica-"));
    assert_eq!(ids[1], "e1-0-3-0/0/task_started");
    for (n, id) in ids.iter().enumerate() {
        shipper.ship(event_record(
            id.clone(),
            "x",
            context.clone(),
            n.to_string(),
        ));
    }
    drop(shipper);
    shipping.finished().await;
    let mut records = Vec::new();
    while records.len() < ids.len() {
        let delivery = ingest.next().await.unwrap();
        let batch = codec::decode_records(&delivery.message.body).unwrap();
        assert_eq!(delivery.message.id.as_ref(), Some(&batch[0].id));
        records.extend(batch);
        delivery.ack().await.unwrap();
    }
    assert_eq!(records.len(), ids.len());
    for ((n, id), record) in ids.iter().enumerate().zip(&records) {
        assert_eq!(record.id, *id);
        assert_eq!(record.event.message.text, n.to_string());
        assert_eq!(record.event.kind, "cloudify_event");
    }
}

#[test]
fn records_are_cut_into_messages_of_at_most_the_maximum_in_order() {
    let bus = MemoryBus::new(Topology::new());
    let records: Vec<_> = (0..2 * MAX_RECORDS_PER_MESSAGE + 7)
        .map(|n| event_record(format!("r{n}"), "x", EventContext::default(), String::new()))
        .collect();
    let messages = ingest_messages(&bus, &records);
    let sizes: Vec<usize> = messages
        .iter()
        .map(|(_, m)| codec::decode_records(&m.body).unwrap().len())
        .collect();
    assert_eq!(sizes, [MAX_RECORDS_PER_MESSAGE, MAX_RECORDS_PER_MESSAGE, 7]);
    let ids: Vec<String> = messages
        .iter()
        .flat_map(|(_, m)| codec::decode_records(&m.body).unwrap())
        .map(|r| r.id)
        .collect();
    assert_eq!(
        ids,
        records.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(messages[1].1.id.as_deref(), Some("r100"));
    assert!(ingest_messages(&bus, &[]).is_empty());
}
