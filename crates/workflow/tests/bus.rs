//! The engine over a message bus: `BusDispatcher` publishes the tasks, an in-process
//! `drover_agent::AgentService` consumes them and runs them through the agent's real
//! `OperationRunner`, and the results come back over the bus. On `MemoryBus` in a plain
//! `cargo test`; on RabbitMQ in the `#[ignore]`d tests (`DROVER_AMQP_URL`, as scripts/test runs
//! them).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use drover_agent::{
    AgentQueue, AgentService, OperationEnv, OperationRunner, Plugin, PluginFuture, PluginOutput,
    PluginRegistry, RunnerConfig,
};
use drover_bus::{AmqpBus, AmqpOptions, Bus, MemoryBus, Topology};
use drover_model::{ExecutionStatus, OperationTask, Plan};
use drover_store::MemoryStore;
use drover_workflow::NewDeployment;
use drover_workflow::testing::{PlanBuilder, RecordingRunner};
use drover_workflow::{BusDispatcher, Engine};
use serde_json::json;

/// The workflow tests' recording runner as the agent's `test` plugin (the plugin `PlanBuilder`
/// names), so that what ran on the agents is checked as the in-process tests check it; it also
/// notes which agent ran each operation, and for which instance.
struct Recorder {
    runner: RecordingRunner,
    agent: String,
    ran_on: RanOn,
}

/// (agent, instance) per operation run.
type RanOn = Arc<Mutex<Vec<(String, String)>>>;

impl Plugin for Recorder {
    fn run<'a>(&'a self, task: &'a OperationTask, _: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async move {
            let instance = match &task.relationship {
                Some(r) if r.side == "target" => &r.target.node_instance_id,
                _ => &task.node.node_instance_id,
            };
            self.ran_on
                .lock()
                .unwrap()
                .push((self.agent.clone(), instance.clone()));
            let result = drover_workflow::OperationRunner::run(&self.runner, task.clone()).await;
            PluginOutput {
                outcome: result.outcome,
                runtime_properties: result.runtime_properties,
            }
        })
    }
}

/// An engine and its agents on one bus, and what the agents ran.
struct Setup {
    engine: Engine<BusDispatcher>,
    record: RecordingRunner,
    ran_on: RanOn,
    agents: Vec<tokio::task::JoinHandle<Result<(), drover_bus::BusError>>>,
    _work: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.agents.iter().for_each(|agent| agent.abort());
    }
}

fn plan() -> Plan {
    PlanBuilder::new()
        .node("db", 1)
        .compute("host", 2)
        .node("app", 2)
        .contained_in("host")
        .connected_to("db")
        .build()
}

/// An engine sending every task to `central`, where one agent consumes.
async fn setup(bus: Arc<dyn Bus>) -> Setup {
    let dispatcher = BusDispatcher::start(bus.clone(), "w1").await.unwrap();
    setup_with(bus, dispatcher, &[AgentQueue::Central]).await
}

/// An engine on `dispatcher`, with one agent per queue, all recording to one record.
async fn setup_with(bus: Arc<dyn Bus>, dispatcher: BusDispatcher, queues: &[AgentQueue]) -> Setup {
    let record = RecordingRunner::new();
    let ran_on = RanOn::default();
    let work = tempfile::tempdir().unwrap();
    let agents = queues
        .iter()
        .map(|queue| {
            let mut plugins = PluginRegistry::empty();
            let recorder = Recorder {
                runner: record.clone(),
                agent: format!("{queue:?}"),
                ran_on: ran_on.clone(),
            };
            plugins.register("test", Arc::new(recorder));
            let config = RunnerConfig::new(work.path());
            let runner = OperationRunner::new(config, plugins, drover_agent::discard_logs());
            let agent = AgentService::new(bus.clone(), Arc::new(runner.unwrap()), queue.clone());
            tokio::spawn(agent.with_concurrency(8).run())
        })
        .collect();
    let engine = Engine::new(Arc::new(MemoryStore::new()), dispatcher);
    engine
        .create_deployment(NewDeployment::new("d", "bp", plan()))
        .unwrap();
    Setup {
        engine,
        record,
        ran_on,
        agents,
        _work: work,
    }
}

/// Install, then uninstall, with every operation run on the agent, in Cloudify's order.
async fn install_and_uninstall(bus: Arc<dyn Bus>) {
    let s = setup(bus).await;
    install(&s.engine).await;
    let lines = s.record.record.lines();
    let instances = s.engine.store().node_instances("d").unwrap();
    assert_eq!(instances.len(), 7);
    assert_relationship_order(&lines, &instances, true);
    assert!(instances.iter().all(|i| i.state == "started"));
    // What the agent's operations changed came back in their results.
    assert!(
        instances
            .iter()
            .all(|i| i.runtime_properties["start_ran"] == json!(true))
    );
    let app: Vec<&str> = lines
        .iter()
        .filter(|l| owner(l) == "app_1" && !l.contains("->"))
        .map(|l| op(l))
        .collect();
    assert_eq!(
        app,
        ["precreate", "create", "configure", "start", "poststart"]
    );

    let (e, _) = run(&s.engine, "uninstall", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let lines = s.record.record.lines()[lines.len()..].to_vec();
    let instances = s.engine.store().node_instances("d").unwrap();
    assert_relationship_order(&lines, &instances, false);
    assert!(instances.iter().all(|i| i.state == "deleted"));
    let ops: Vec<&str> = lines.iter().map(|l| op(l)).collect();
    assert!(
        ops.contains(&"delete") && !ops.contains(&"create"),
        "{ops:?}"
    );
}

/// A dry run goes through the bus and the agent, which acknowledges without running.
async fn dry_run_install(bus: Arc<dyn Bus>) {
    let s = setup(bus).await;
    let (e, events) = run_with(&s.engine, "install", json!({}), true).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert!(s.record.record.lines().is_empty());
    let succeeded = events
        .iter()
        .filter(|e| e.event_type == "task_succeeded")
        .count();
    assert!(succeeded > 0);
    assert!(instances(&s.engine).values().all(|i| i.state == "started"));
}

/// Operations of instances on a host go to that host's agent, the others (db_1's) to
/// `central`: the same install, spread over three queues and three agents. A relationship's
/// target-side operation runs where its target lives.
async fn install_on_host_agents(bus: Arc<dyn Bus>) {
    let hosts: HashMap<String, String> = plan()
        .node_instances
        .into_iter()
        .filter_map(|i| Some((i.id, i.host_id?)))
        .collect();
    let expected = hosts.clone();
    let dispatcher = BusDispatcher::start(bus.clone(), "w1")
        .await
        .unwrap()
        .with_router(move |topology, task| {
            let instance = match &task.relationship {
                Some(r) if r.side == "target" => &r.target.node_instance_id,
                _ => &task.node.node_instance_id,
            };
            match hosts.get(instance) {
                Some(host) => topology.task_to_agent(host),
                None => topology.task_to_central(),
            }
        });
    let queues = [
        AgentQueue::Central,
        AgentQueue::from("host_1"),
        AgentQueue::from("host_2"),
    ];
    let s = setup_with(bus.clone(), dispatcher, &queues).await;
    // The agents declare their queues as they start; the engine must not send before.
    for host in ["host_1", "host_2"] {
        let route = bus.topology().task_to_agent(host);
        let declared = async {
            while bus
                .publish(&route, drover_bus::Message::new("probe"))
                .await
                .unwrap()
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(15), declared)
            .await
            .expect("the host agents declare their queues");
    }
    install(&s.engine).await;
    let lines = s.record.record.lines();
    let instances = s.engine.store().node_instances("d").unwrap();
    assert_relationship_order(&lines, &instances, true);
    assert!(instances.iter().all(|i| i.state == "started"));
    assert_eq!(lines.iter().filter(|l| op(l) == "start").count(), 7);
    let ran_on = s.ran_on.lock().unwrap().clone();
    let agents: std::collections::BTreeSet<&String> = ran_on.iter().map(|(a, _)| a).collect();
    assert_eq!(agents.len(), 3, "{agents:?}");
    for (agent, instance) in &ran_on {
        let want = match expected.get(instance) {
            Some(host) => format!("{:?}", AgentQueue::from(host.as_str())),
            None => format!("{:?}", AgentQueue::Central),
        };
        assert_eq!(agent, &want, "{instance}");
    }
}

fn memory_bus() -> Arc<dyn Bus> {
    Arc::new(MemoryBus::new(Topology::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_and_uninstall_on_the_memory_bus() {
    install_and_uninstall(memory_bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_on_the_memory_bus() {
    dry_run_install(memory_bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_agents_on_the_memory_bus() {
    install_on_host_agents(memory_bus()).await;
}

/// A bus on the RabbitMQ at `DROVER_AMQP_URL`, with names no other test uses.
async fn rabbitmq(case: &str) -> Arc<dyn Bus> {
    let url = std::env::var("DROVER_AMQP_URL").expect(
        "DROVER_AMQP_URL is not set: start RabbitMQ with `scripts/rabbitmq start` and set \
         DROVER_AMQP_URL=$(scripts/rabbitmq url)",
    );
    let options = AmqpOptions::new(url, drover_bus::suite::topology(case))
        .with_reconnect_budget(Duration::from_secs(15));
    Arc::new(
        AmqpBus::connect(options)
            .await
            .expect("connecting to RabbitMQ"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn install_and_uninstall_on_rabbitmq() {
    install_and_uninstall(rabbitmq("workflow-install").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn dry_run_on_rabbitmq() {
    dry_run_install(rabbitmq("workflow-dry-run").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn host_agents_on_rabbitmq() {
    install_on_host_agents(rabbitmq("workflow-host-agents").await).await;
}
