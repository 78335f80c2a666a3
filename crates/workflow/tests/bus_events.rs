//! A replica ships its executions' events to the `ingest` queue (on MemoryBus): the workflow's
//! start and end and every task's events, with the ids agents use for task events, so that
//! the event index holds them once. A store that indexes the engine's events itself gets the
//! same ids from them; a replica on OpenSearch keeps them on the ingest queue only
//! (`IngestEvents`), every one of them.

mod cluster;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cluster::*;
use drover_bus::{Bus, ConsumeOptions, Consumer, MemoryBus, Topology};
use drover_model::{Event, EventRecord};
use drover_proto::codec;
use drover_shipping::{Shipper, ShipperConfig, task_event_id};
use drover_store::{MemoryStore, StateStore};

/// A memory bus, a consumer of its `ingest` queue, and a memory store.
async fn memory_bus_and_ingest() -> (Arc<dyn Bus>, Consumer, Arc<dyn StateStore>) {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(Topology::new()));
    let queue = bus.topology().ingest_queue_name();
    let ingest = bus
        .consume(&queue, ConsumeOptions::default().with_prefetch(1000))
        .await
        .unwrap();
    (bus, ingest, Arc::new(MemoryStore::new()))
}

/// Creates deployment `d1` of `plan` on the service and installs it: the install execution.
async fn install_and_wait(
    service: &InProcess,
    plan: &drover_model::Plan,
) -> drover_proto::drover::workflow::v1::Execution {
    let mut client = client(service.addr).await;
    create_deployment(&mut client, "d1", plan).await;
    let install = start(&mut client, "d1", "install").await;
    let ended = wait_end(&mut client, &install.id, Duration::from_secs(60)).await;
    assert_eq!(ended.status, "terminated");
    install
}

/// The records on the ingest queue up to the workflow's end event; each message is named by
/// its first record.
async fn records_until_the_end(ingest: &mut Consumer) -> Vec<EventRecord> {
    let mut records: Vec<EventRecord> = Vec::new();
    while !records
        .iter()
        .any(|r| r.event.event_type == "workflow_succeeded")
    {
        let delivery = tokio::time::timeout(Duration::from_secs(10), ingest.next())
            .await
            .expect("the execution's events reach ingest")
            .unwrap();
        let batch = codec::decode_records(&delivery.message.body).unwrap();
        assert_eq!(delivery.message.id.as_ref(), Some(&batch[0].id));
        records.extend(batch);
        delivery.ack().await.unwrap();
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_ships_workflow_and_task_events_to_ingest() {
    let (bus, mut ingest, store) = memory_bus_and_ingest().await;
    let plan = plan(2);
    let agents = agents(bus.clone(), &plan, Duration::ZERO).await;
    let (shipper, _shipping) = Shipper::start(bus.clone(), "wf-events", ShipperConfig::default());
    let service = in_process_with(bus, store, "wf-events", Events::StoreAndShipped(shipper)).await;
    let install = install_and_wait(&service, &plan).await;

    let records = records_until_the_end(&mut ingest).await;
    assert_eq!(records[0].event.event_type, "workflow_started");
    assert!(records.iter().all(
        |r| r.event.context.execution_id == install.id && r.event.context.deployment_id == "d1"
    ));
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), records.len(), "every record has its own id");
    let succeeded: Vec<&EventRecord> = records
        .iter()
        .filter(|r| r.event.event_type == "task_succeeded")
        .collect();
    assert_eq!(succeeded.len(), agents.runs.total());
    for record in succeeded {
        let context = &record.event.context;
        let task = context.task_id.as_deref().unwrap();
        let attempt = context.task_current_retries.unwrap();
        assert_eq!(record.id, task_event_id(task, attempt, "task_succeeded"));
    }
}

/// With a store that indexes the engine's events itself, a replica ships none and the agents
/// ship only what the engine cannot see (a task's start): every task event is written by one
/// side, under the id both sides would give it, so a repeated write replaces, never adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_event_is_written_by_one_side_under_its_task_event_id() {
    let (bus, mut ingest, store) = memory_bus_and_ingest().await;
    let plan = plan(2);
    let (shipper, _shipping) =
        drover_agent::Shipper::start(bus.clone(), "agents", ShipperConfig::default());
    let agents = agents_shipping(bus.clone(), &plan, Duration::ZERO, Some(shipper)).await;
    let service = in_process(bus, store.clone(), "wf-ids").await;
    let install = install_and_wait(&service, &plan).await;

    // Each run: the agent's task_started.
    let runs = agents.runs.total();
    let mut records: Vec<EventRecord> = Vec::new();
    while records.len() < runs {
        let delivery = tokio::time::timeout(Duration::from_secs(10), ingest.next())
            .await
            .expect("the agents' task events reach ingest")
            .unwrap();
        records.extend(codec::decode_records(&delivery.message.body).unwrap());
        delivery.ack().await.unwrap();
    }
    let engine_events = store.events(&install.id).unwrap();
    let engine: HashMap<String, &Event> = engine_events
        .iter()
        .filter_map(|e| Some((e.task_event_id()?, e)))
        .collect();
    for record in &records {
        let event = &record.event;
        assert_eq!(event.event_type, "task_started", "{event:?}");
        assert_eq!(event.task_event_id().as_deref(), Some(record.id.as_str()));
        // Over the bus only the agent sees a task start.
        assert!(!engine.contains_key(&record.id));
    }
    // How each run ended is the engine's, under the same id scheme.
    let ended: Vec<&&Event> = engine
        .values()
        .filter(|e| e.event_type == "task_succeeded")
        .collect();
    assert_eq!(ended.len(), runs);
    for event in ended {
        let task = event.context.task_id.as_deref().unwrap();
        let attempt = event.context.task_current_retries.unwrap();
        assert_eq!(
            event.task_event_id().unwrap(),
            task_event_id(task, attempt, "task_succeeded")
        );
    }
    // Nothing more reaches ingest: the agents ship no task_succeeded.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ingest.next())
            .await
            .is_err(),
        "an unexpected record reached ingest"
    );
}

/// With `IngestEvents` the execution's events are on the ingest queue and not in the store:
/// every task's end and every state change, under the ids the store would give them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeping_events_on_ingest_puts_every_one_there() {
    let (bus, mut ingest, store) = memory_bus_and_ingest().await;
    let plan = plan(3);
    let agents = agents(bus.clone(), &plan, Duration::ZERO).await;
    let service = in_process_with(bus, store.clone(), "wf-ingest", Events::Ingest).await;
    let install = install_and_wait(&service, &plan).await;

    let records = records_until_the_end(&mut ingest).await;
    assert!(store.events(&install.id).unwrap().is_empty());
    assert_eq!(records[0].event.event_type, "workflow_started");
    assert_eq!(
        records.last().unwrap().event.event_type,
        "workflow_succeeded",
        "the end event comes last"
    );
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), records.len(), "every record has its own id");
    let count = |kind: &str| {
        records
            .iter()
            .filter(|r| r.event.event_type == kind)
            .count()
    };
    assert_eq!(count("sending_task"), agents.runs.total());
    assert_eq!(count("task_succeeded"), agents.runs.total());
    // Six state changes per instance: Creating … Node instance started.
    assert_eq!(count("workflow_node_event"), 6 * plan.node_instances.len());
    for record in &records {
        assert!(
            record.id.starts_with(&format!("{}-", install.id)),
            "{}",
            record.id
        );
        if let Some(id) = record.event.task_event_id() {
            assert_eq!(record.id, id);
        }
    }
}
