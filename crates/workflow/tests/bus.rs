//! The engine over a message bus: `BusDispatcher` publishes the tasks, an in-process
//! `drover_agent::AgentService` consumes them and runs them through the agent's real
//! `OperationRunner`, and the results come back over the bus. On `MemoryBus` in a plain
//! `cargo test`; on RabbitMQ in the `#[ignore]`d tests (`DROVER_AMQP_URL`, as scripts/test runs
//! them).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use drover_agent::{
    AgentQueue, AgentService, OperationEnv, OperationRunner, Plugin, PluginFuture, PluginOutput,
    PluginRegistry, RunnerConfig,
};
use drover_bus::{AmqpBus, AmqpOptions, Bus, MemoryBus, Topology};
use drover_model::{ExecutionStatus, Map, OperationTask};
use drover_store::MemoryStore;
use drover_workflow::testing::{PlanBuilder, RecordingRunner};
use drover_workflow::{BusDispatcher, Engine};
use serde_json::json;

/// The workflow tests' recording runner as the agent's `test` plugin (the plugin `PlanBuilder`
/// names), so that what ran on the agent is checked as the in-process tests check it.
struct Recorder(RecordingRunner);

impl Plugin for Recorder {
    fn run<'a>(&'a self, task: &'a OperationTask, _: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async move {
            let result = drover_workflow::OperationRunner::run(&self.0, task.clone()).await;
            PluginOutput {
                outcome: result.outcome,
                runtime_properties: result.runtime_properties,
            }
        })
    }
}

/// An engine on `bus` with one agent consuming `central`, and the agent's record.
struct Setup {
    engine: Engine<BusDispatcher>,
    record: RecordingRunner,
    agent: tokio::task::JoinHandle<Result<(), drover_bus::BusError>>,
    _work: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.agent.abort();
    }
}

async fn setup(bus: Arc<dyn Bus>) -> Setup {
    let record = RecordingRunner::new();
    let mut plugins = PluginRegistry::empty();
    plugins.register("test", Arc::new(Recorder(record.clone())));
    let work = tempfile::tempdir().unwrap();
    let runner = OperationRunner::new(
        RunnerConfig::new(work.path()),
        plugins,
        drover_agent::discard_logs(),
    )
    .unwrap();
    let agent =
        AgentService::new(bus.clone(), Arc::new(runner), AgentQueue::Central).with_concurrency(8);
    let agent = tokio::spawn(agent.run());
    let dispatcher = BusDispatcher::start(bus, "w1").await.unwrap();
    let engine = Engine::new(Arc::new(MemoryStore::new()), dispatcher);
    let plan = PlanBuilder::new()
        .node("db", 1)
        .compute("host", 2)
        .node("app", 2)
        .contained_in("host")
        .connected_to("db")
        .build();
    engine
        .create_deployment("d", "bp", plan, Map::new(), None)
        .unwrap();
    Setup {
        engine,
        record,
        agent,
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
