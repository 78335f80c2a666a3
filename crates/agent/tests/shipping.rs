//! Logs and events to the ingest queue (on MemoryBus): a script's output line by line and the
//! task's events, each with a unique id; a flood is dropped with a count, never buffered
//! without bound.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use drover_agent::{
    AgentQueue, AgentService, OperationRunner, PluginRegistry, RunnerConfig, Shipper, ShipperConfig,
};
use drover_bus::topology::OWNER_HEADER;
use drover_bus::{Bus, ConsumeOptions, Consumer, MemoryBus, Message, Topology};
use drover_model::{EventRecord, OperationTask, TaskNode};
use drover_proto::codec;

/// Every record waiting in the ingest queue.
async fn drain(ingest: &mut Consumer) -> Vec<EventRecord> {
    let mut records = Vec::new();
    while let Ok(delivery) = tokio::time::timeout(Duration::from_millis(300), ingest.next()).await {
        let delivery = delivery.unwrap();
        let batch = codec::decode_records(&delivery.message.body).unwrap();
        assert_eq!(delivery.message.id.as_ref(), Some(&batch[0].id));
        records.extend(batch);
        delivery.ack().await.unwrap();
    }
    records
}

async fn ingest(bus: &MemoryBus) -> Consumer {
    let queue = bus.topology().ingest_queue_name();
    let options = ConsumeOptions::default().with_prefetch(1000);
    bus.consume(&queue, options).await.unwrap()
}

fn task(id: &str, blueprint: &std::path::Path, script: &str) -> OperationTask {
    OperationTask {
        task_id: id.into(),
        execution_id: "e1".into(),
        workflow_id: "install".into(),
        deployment_id: "d1".into(),
        operation: "cloudify.interfaces.lifecycle.create".into(),
        plugin: "script".into(),
        implementation: script.into(),
        blueprint_dir: Some(blueprint.display().to_string()),
        node: TaskNode {
            node_instance_id: "web_1".into(),
            node_id: "web".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_output_and_task_events_reach_ingest() {
    let bus = Arc::new(MemoryBus::new(Topology::new()));
    let t = bus.topology().clone();
    bus.declare_queue(t.results_queue("w1")).await.unwrap();
    let mut results = bus
        .consume(&t.results_queue_name("w1"), ConsumeOptions::default())
        .await
        .unwrap();
    let mut ingest = ingest(&bus).await;
    let blueprint = tempfile::tempdir().unwrap();
    std::fs::write(
        blueprint.path().join("ok.sh"),
        "echo one\necho two >&2\nctx logger warning careful\n",
    )
    .unwrap();
    std::fs::write(blueprint.path().join("bad.sh"), "echo broken >&2\nexit 4\n").unwrap();
    let work = tempfile::tempdir().unwrap();
    let (shipper, shipping) = Shipper::start(bus.clone(), "web_1", ShipperConfig::default());
    let mut config = RunnerConfig::new(work.path());
    config.ctx_executable = Some(env!("CARGO_BIN_EXE_drover-agent").into());
    let runner =
        OperationRunner::new(config, PluginRegistry::with_builtins(), shipper.log_sink()).unwrap();
    let service = AgentService::new(bus.clone(), Arc::new(runner), AgentQueue::from("web_1"))
        .with_events(shipper);
    let agent = tokio::spawn(service.run());

    let route = t.task_to_agent("web_1");
    for (id, script) in [("t1", "ok.sh"), ("t2", "bad.sh"), ("t1", "ok.sh")] {
        let body = codec::encode_task(&task(id, blueprint.path(), script));
        let message = Message::new(body)
            .with_id(id)
            .with_header(OWNER_HEADER, "w1");
        drover_bus::suite::publish_when_routable(&*bus, &route, message, Duration::from_millis(10))
            .await;
        let delivery = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .unwrap()
            .unwrap();
        delivery.ack().await.unwrap();
    }
    agent.abort();
    let _ = agent.await;
    shipping.finished().await;

    let records = drain(&mut ingest).await;
    let seen: Vec<(String, Option<String>, Option<String>, String)> = records
        .iter()
        .map(|r| {
            (
                r.event.event_type.clone(),
                r.level.clone(),
                r.logger.clone(),
                r.event.message.text.clone(),
            )
        })
        .collect();
    let has = |event_type: &str, level: Option<&str>, logger: Option<&str>, text: &str| {
        seen.iter().any(|(e, l, g, t)| {
            e == event_type && l.as_deref() == level && g.as_deref() == logger && t.contains(text)
        })
    };
    assert!(has("task_started", None, None, "Task started"), "{seen:#?}");
    assert!(has("", Some("info"), Some("stdout"), "one"), "{seen:#?}");
    assert!(has("", Some("info"), Some("stderr"), "two"), "{seen:#?}");
    assert!(
        has("", Some("warning"), Some("ctx"), "careful"),
        "{seen:#?}"
    );
    // How a task ended is the engine's event, not the agent's.
    assert!(
        !seen
            .iter()
            .any(|(e, ..)| e == "task_succeeded" || e == "task_failed"),
        "{seen:#?}"
    );
    for record in &records {
        let c = &record.event.context;
        assert_eq!(
            (c.deployment_id.as_str(), c.execution_id.as_str()),
            ("d1", "e1")
        );
        assert_eq!(c.node_id.as_deref(), Some("web_1"));
        assert!(record.event.timestamp.ends_with('Z'), "{record:?}");
    }
    // t1 was sent twice and answered from memory the second time: its task_started comes
    // again with the same id (indexed once), its script's lines do not.
    let ids: BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), records.len() - 1, "{seen:#?}");
    assert_eq!(
        records
            .iter()
            .filter(|r| r.event.message.text == "one")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_flood_is_dropped_with_a_count_not_buffered() {
    let bus = Arc::new(MemoryBus::new(Topology::new()));
    let mut ingest = ingest(&bus).await;
    let config = ShipperConfig {
        max_queued: 50,
        max_queued_bytes: 1 << 20,
        max_batch: 16,
    };
    let (shipper, shipping) = Shipper::start(bus.clone(), "a", config);
    let logs = shipper.log_sink();
    let blueprint = tempfile::tempdir().unwrap();
    let task = task("t1", blueprint.path(), "x.sh");
    let sent = 10_000;
    // On this single-threaded runtime the shipping task cannot run during the loop: the
    // queue fills after 50 and the rest is dropped.
    for i in 0..sent {
        logs(drover_agent::LogRecord::of(
            &task,
            drover_agent::LogStream::Stdout,
            drover_agent::LogLevel::Info,
            format!("line {i}"),
        ));
    }
    drop((logs, shipper));
    shipping.finished().await;

    let records = drain(&mut ingest).await;
    let (warnings, lines): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r.event.message.text.contains("log records dropped"));
    let dropped: usize = warnings
        .iter()
        .map(|r| {
            let text = &r.event.message.text;
            text[..text.find(' ').unwrap()].parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(lines.len(), 50);
    assert_eq!(lines.len() + dropped, sent);
    assert_eq!(warnings[0].level.as_deref(), Some("warning"));
    assert_eq!(warnings[0].event.context.task_id.as_deref(), Some("t1"));
}
