//! The monitor on `MemoryBus`: failures confirmed, reported to ingest and healed once; shards
//! split between replicas and taken over when one dies.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use drover_bus::{Bus, ConsumeOptions, MemoryBus, Message, Topology};
use drover_model::{EventRecord, Heartbeat};
use drover_monitor::{MemoryHealer, Monitor, MonitorConfig};
use tokio::task::JoinHandle;

const BEAT: Duration = Duration::from_millis(200);

/// An agent that heartbeats until its handle is aborted.
fn agent(bus: Arc<dyn Bus>, name: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let route = bus.topology().heartbeat(&name);
        let mut ticker = tokio::time::interval(BEAT);
        for sequence in 0.. {
            ticker.tick().await;
            let beat = Heartbeat {
                agent: name.clone(),
                sequence,
                sent_at_ms: 0,
            };
            let body = drover_proto::codec::encode_heartbeat(&beat);
            if let Ok(confirm) = bus.publish(&route, Message::new(body)).await {
                let _ = confirm.await;
            }
        }
    })
}

/// Events on the ingest queue until `quiet` passes without one.
async fn events(bus: &MemoryBus, quiet: Duration) -> Vec<EventRecord> {
    let mut ingest = bus
        .consume(
            &bus.topology().ingest_queue_name(),
            ConsumeOptions::default(),
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Ok(delivery) = tokio::time::timeout(quiet, ingest.next()).await {
        let delivery = delivery.unwrap();
        events.push(drover_monitor::codec::decode_record(&delivery.message.body).unwrap());
        delivery.ack().await.unwrap();
    }
    events
}

fn of_type<'a>(events: &'a [EventRecord], kind: &str) -> BTreeSet<&'a str> {
    events
        .iter()
        .filter(|e| e.event.event_type == kind)
        .filter_map(|e| e.event.context.node_id.as_deref())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_agents_fail_once_are_healed_once_and_recover() {
    let bus = MemoryBus::new(Topology::new());
    let shared: Arc<dyn Bus> = Arc::new(bus.clone());
    let healer = Arc::new(MemoryHealer::new());
    // An install runs on d1 when the failures happen: heals wait for it.
    let install = healer.start("d1", "install");
    let config = MonitorConfig {
        deployment: "d1".into(),
        claim_interval: Duration::from_millis(100),
        ..MonitorConfig::default()
    };
    let monitor = Monitor::start(shared.clone(), healer.clone(), config);
    let mut agents: Vec<_> = (0..20)
        .map(|i| Some(agent(shared.clone(), format!("a{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(monitor.health().shards, [0, 1, 2, 3]);
    assert_eq!(monitor.health().agents_alive, 20);

    for dead in [3, 11] {
        agents[dead].take().unwrap().abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let health = monitor.health();
    assert_eq!((health.agents_alive, health.agents_failed), (18, 2));
    assert_eq!((health.heals_running, health.heals_queued), (0, 2));
    assert!(healer.heals().is_empty(), "healed during the install");

    healer.end(&install);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heals: BTreeSet<_> = healer.heals().into_iter().map(|(d, i, _)| (d, i)).collect();
    let expected: BTreeSet<_> = [
        ("d1".to_string(), "a11".to_string()),
        ("d1".into(), "a3".into()),
    ]
    .into_iter()
    .collect();
    assert_eq!(heals, expected);
    assert_eq!(healer.heals().len(), 2, "one heal per instance");

    // a3 comes back.
    agents[3] = Some(agent(shared.clone(), "a3".into()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(monitor.health().agents_failed, 1);

    let events = events(&bus, Duration::from_millis(300)).await;
    assert_eq!(of_type(&events, "agent_failed"), ["a11", "a3"].into());
    assert_eq!(of_type(&events, "heal_started"), ["a11", "a3"].into());
    assert_eq!(of_type(&events, "agent_recovered"), ["a3"].into());
    assert_eq!(events.len(), 5, "{events:#?}");
    let metrics = monitor.metrics().render();
    assert!(
        metrics.contains("drover_monitor_agent_failures_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_monitor_detection_seconds_count 2\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_the_shards_and_take_over_a_dead_ones() {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(Topology::new().with_monitor_shards(4)));
    let config = MonitorConfig {
        claim_interval: Duration::from_millis(100),
        max_shards: Some(2),
        ..MonitorConfig::default()
    };
    let healer = Arc::new(MemoryHealer::new());
    let first = Monitor::start(bus.clone(), healer.clone(), config.clone());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = Monitor::start(bus.clone(), healer.clone(), config);
    let _agents: Vec<_> = (0..40)
        .map(|i| agent(bus.clone(), format!("a{i}")))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b) = (first.health(), second.health());
    assert_eq!(a.shards.len(), 2, "{a:?} {b:?}");
    assert_eq!(b.shards.len(), 2, "{a:?} {b:?}");
    assert_eq!(a.agents_alive + b.agents_alive, 40);

    drop(first);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = second.health();
    assert_eq!(b.shards, [0, 1, 2, 3]);
    assert_eq!((b.agents_alive, b.agents_failed), (40, 0));
    assert!(
        healer.heals().is_empty(),
        "a takeover healed {:?}",
        healer.heals()
    );
}
