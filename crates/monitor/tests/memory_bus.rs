//! The monitor on `MemoryBus`: failures confirmed, reported to ingest and healed once; shards
//! split between replicas and taken over when one dies; the blueprint's policies choose what
//! is healed, and heartbeat metrics scale a group; a hollow host's batched beats count each for
//! its agent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use drover_agent::{AgentIdentity, Heartbeat, HeartbeatGroups, MetricSource};
use drover_bus::{Bus, ConsumeOptions, MemoryBus, Message, Topology};
use drover_model::{EventRecord, Plan};
use drover_monitor::policy::{DeploymentPolicies, Loaded, PolicySource};
use drover_monitor::{MemoryHealer, Monitor, MonitorConfig};
use serde_json::json;
use tokio::task::JoinHandle;

const BEAT: Duration = Duration::from_millis(200);

/// An agent that heartbeats until its handle is aborted.
fn agent(bus: Arc<dyn Bus>, name: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let route = bus.topology().heartbeat(&name);
        let mut ticker = tokio::time::interval(BEAT);
        for sequence in 0.. {
            ticker.tick().await;
            let beat = drover_model::Heartbeat {
                agent: name.clone(),
                sequence,
                ..drover_model::Heartbeat::default()
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

/// The policies of one blueprint: web instances are healed (db ones are not), and web's
/// average load above 0.5 for a second scales `webs` by one.
struct Blueprint(Loaded);

impl PolicySource for Blueprint {
    fn load(&self, deployment: &str) -> Result<Loaded, String> {
        match deployment {
            "d1" => Ok(self.0.clone()),
            other => Err(format!("no deployment {other}")),
        }
    }
}

fn blueprint() -> Blueprint {
    let trigger = |workflow: &str, parameters: serde_json::Value| {
        json!({"type": "cloudify.policies.triggers.execute_workflow",
               "parameters": {"workflow": workflow, "workflow_parameters": parameters}})
    };
    let groups = json!({
        "webs": {"members": ["web"], "policies": {
            "heal": {"type": "cloudify.policies.types.host_failure",
                     "triggers": {"t": trigger("heal", json!({}))}},
            "busy": {"type": "cloudify.policies.types.threshold",
                     "properties": {"service": "load", "threshold": 0.5,
                                    "stability_time": 1, "cooldown": 600},
                     "triggers": {"t": trigger("scale", json!({"delta": 1}))}}}},
    });
    let plan = Plan {
        groups: groups.as_object().cloned().unwrap(),
        ..Plan::default()
    };
    let nodes = (1..=4)
        .flat_map(|i| [(format!("web_{i}"), "web"), (format!("db_{i}"), "db")])
        .map(|(instance, node)| (instance, node.to_owned()))
        .collect();
    Blueprint(Loaded {
        policies: DeploymentPolicies::from_plan(&plan),
        nodes,
    })
}

struct Load(f64);

impl MetricSource for Load {
    fn sample(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([("load".to_owned(), self.0)])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blueprints_policies_choose_what_is_healed_and_metrics_scale_a_group() {
    let bus = MemoryBus::new(Topology::new());
    let shared: Arc<dyn Bus> = Arc::new(bus.clone());
    let healer = Arc::new(MemoryHealer::new());
    let config = MonitorConfig {
        claim_interval: Duration::from_millis(100),
        scale_interval: Duration::from_millis(200),
        ..MonitorConfig::default()
    };
    let monitor = Monitor::start_with_policies(
        shared.clone(),
        healer.clone(),
        Arc::new(blueprint()),
        config,
    );
    let mut agents: BTreeMap<String, Heartbeat> = (1..=4)
        .flat_map(|i| [(format!("web_{i}"), 0.9), (format!("db_{i}"), 0.1)])
        .map(|(instance, load)| {
            let identity = AgentIdentity::new(format!("agent-{instance}"), "d1", &instance);
            let heart = Heartbeat::start_with_metrics(
                shared.clone(),
                identity,
                BEAT,
                Some(Arc::new(Load(load))),
            );
            (instance, heart)
        })
        .collect();
    // An agent that names no deployment (as the central agent does): never healed.
    agents.insert(
        "central".to_owned(),
        Heartbeat::start_with_metrics(
            shared.clone(),
            AgentIdentity::new("central", "", ""),
            BEAT,
            Some(Arc::new(Load(0.9))),
        ),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(monitor.health().agents_alive, 9);
    // Web's load has been 0.9 for over a second: one scale, then the cooldown.
    let executions = healer.executions();
    let workflows: Vec<&str> = executions.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(workflows, ["scale"]);

    agents.remove("web_2");
    agents.remove("db_3");
    agents.remove("central");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(monitor.health().agents_failed, 3);
    // The heal waits for the scale to end.
    assert_eq!(
        (monitor.health().heals_queued, healer.heals().len()),
        (1, 0)
    );
    healer.end(&executions[0].1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heals: Vec<(String, String)> = healer.heals().into_iter().map(|(d, i, _)| (d, i)).collect();
    assert_eq!(heals, [("d1".to_owned(), "web_2".to_owned())]);

    let events = events(&bus, Duration::from_millis(300)).await;
    assert_eq!(
        of_type(&events, "agent_failed"),
        ["central", "db_3", "web_2"].into()
    );
    assert_eq!(of_type(&events, "heal_started"), ["web_2"].into());
    let scaled: Vec<&EventRecord> = events
        .iter()
        .filter(|e| e.event.event_type == "scale_started")
        .collect();
    assert_eq!(scaled.len(), 1, "{events:#?}");
    assert_eq!(scaled[0].event.message.arguments["group"], "webs");
    assert_eq!(scaled[0].event.message.arguments["value"], 0.9);
    let metrics = monitor.metrics().render();
    assert!(
        metrics.contains("drover_monitor_heals_skipped_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_monitor_scales_started_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_beat_of_a_batch_is_recorded_for_its_agent() {
    let bus = MemoryBus::new(Topology::new());
    let shared: Arc<dyn Bus> = Arc::new(bus.clone());
    let healer = Arc::new(MemoryHealer::new());
    let config = MonitorConfig {
        claim_interval: Duration::from_millis(100),
        ..MonitorConfig::default()
    };
    let monitor = Monitor::start(shared.clone(), healer.clone(), config);
    let agents = (0..30)
        .map(|i| AgentIdentity::new(format!("h{i}"), "d1", format!("host_{i}")))
        .collect();
    // 30 agents in 16 groups: every message but two is a batch.
    let hearts = HeartbeatGroups::start(shared.clone(), agents, BEAT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names: BTreeSet<String> = monitor.agents().into_iter().map(|a| a.name).collect();
    let expected: BTreeSet<String> = (0..30).map(|i| format!("h{i}")).collect();
    assert_eq!(names, expected);
    assert_eq!(monitor.health().agents_alive, 30);

    assert!(hearts.stop(7));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let health = monitor.health();
    assert_eq!((health.agents_alive, health.agents_failed), (29, 1));
    let heals: Vec<(String, String)> = healer.heals().into_iter().map(|(d, i, _)| (d, i)).collect();
    assert_eq!(heals, [("d1".to_owned(), "host_7".to_owned())]);
    // Read the failures while the others still beat: once they stop, they fail too.
    let events = events(&bus, Duration::from_millis(300)).await;
    assert_eq!(of_type(&events, "agent_failed"), ["host_7"].into());

    drop(hearts);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recorded: u64 = monitor.agents().iter().map(|a| a.heartbeats).sum();
    let counted = monitor
        .metrics()
        .heartbeats
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(recorded, counted, "every beat counted is recorded once");
    // About 15 beats each in the first 3 s alone; generous for a loaded machine.
    assert!(recorded > 30 * 5, "{recorded} beats recorded");
}
