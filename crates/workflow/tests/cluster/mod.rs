//! The workflow service on real RabbitMQ, for the service, broker-restart and takeover tests:
//! agents on the host queues that count what they really ran, the gRPC client, and waits.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_agent::{
    AgentQueue, AgentService, OperationEnv, OperationRunner, Plugin, PluginFuture, PluginOutput,
    PluginRegistry, RunnerConfig,
};
use drover_bus::{AmqpBus, AmqpOptions, Bus, Topology};
use drover_model::{OperationTask, Plan};
use drover_proto::drover::workflow::v1 as pb;
use drover_shipping::Shipper;
use drover_store::StateStore;
use drover_workflow::testing::PlanBuilder;
use drover_workflow::{
    BusDispatcher, Engine, HostRouter, IngestEvents, Replica, ReplicaConfig, RunOptions,
    WorkflowService,
};
use pb::workflow_client::WorkflowClient;
use tokio::task::JoinHandle;

pub type Client = WorkflowClient<tonic::transport::Channel>;

/// The broker at `DROVER_AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("DROVER_AMQP_URL").expect(
        "DROVER_AMQP_URL is not set: start RabbitMQ with `scripts/rabbitmq start` and set \
         DROVER_AMQP_URL=$(scripts/rabbitmq url)",
    )
}

/// A bus on the broker with names no other test uses.
pub async fn rabbitmq(topology: Topology) -> Arc<dyn Bus> {
    let options =
        AmqpOptions::new(amqp_url(), topology).with_reconnect_budget(Duration::from_secs(180));
    Arc::new(
        AmqpBus::connect(options)
            .await
            .expect("connecting to RabbitMQ"),
    )
}

/// Two hosts with two apps each, and a db without a host (its operations go to `central`):
/// 7 instances.
pub fn plan(hosts: u64) -> Plan {
    PlanBuilder::new()
        .node("db", 1)
        .compute("host", hosts)
        .node("app", 2)
        .contained_in("host")
        .connected_to("db")
        .build()
}

/// How many times each task id really ran on the agents.
#[derive(Clone, Default)]
pub struct Runs(Arc<Mutex<HashMap<String, u32>>>);

impl Runs {
    pub fn total(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Task ids that ran more than once.
    pub fn repeated(&self) -> Vec<(String, u32)> {
        let runs = self.0.lock().unwrap();
        runs.iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (id.clone(), *n))
            .collect()
    }
}

/// Every operation: counted, then succeeds after `delay` once the gate is open.
struct Counting {
    runs: Runs,
    delay: Duration,
    gate: tokio::sync::watch::Receiver<bool>,
}

impl Plugin for Counting {
    fn run<'a>(&'a self, task: &'a OperationTask, _: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async move {
            *self
                .runs
                .0
                .lock()
                .unwrap()
                .entry(task.task_id.clone())
                .or_default() += 1;
            tokio::time::sleep(self.delay).await;
            let mut gate = self.gate.clone();
            // A closed channel (the test is over) lets it end as well.
            let _ = gate.wait_for(|open| *open).await.map(|_| ());
            PluginOutput::succeeded(serde_json::Value::Null)
        })
    }
}

/// Agents for `central` and every host of `plan` (named by the host instance's id, as
/// `HostRouter` routes), sharing one runner, so a repeated task id gets its first result.
pub struct Agents {
    pub runs: Runs,
    /// Open (true) at first; while closed, operations that started do not end.
    pub gate: tokio::sync::watch::Sender<bool>,
    handles: Vec<JoinHandle<Result<(), drover_bus::BusError>>>,
    _work: tempfile::TempDir,
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.handles.iter().for_each(|h| h.abort());
    }
}

pub async fn agents(bus: Arc<dyn Bus>, plan: &Plan, delay: Duration) -> Agents {
    agents_shipping(bus, plan, delay, None).await
}

/// [`agents`] that ship their task events through `events`, as `drover-agent` does.
pub async fn agents_shipping(
    bus: Arc<dyn Bus>,
    plan: &Plan,
    delay: Duration,
    events: Option<drover_agent::Shipper>,
) -> Agents {
    let runs = Runs::default();
    let (gate, gate_rx) = tokio::sync::watch::channel(true);
    let mut plugins = PluginRegistry::empty();
    plugins.set_fallback(Arc::new(Counting {
        runs: runs.clone(),
        delay,
        gate: gate_rx,
    }));
    let work = tempfile::tempdir().unwrap();
    let runner = Arc::new(
        OperationRunner::new(
            RunnerConfig::new(work.path()),
            plugins,
            drover_agent::discard_logs(),
        )
        .unwrap(),
    );
    let mut queues = vec![AgentQueue::Central];
    let mut hosts: Vec<&str> = plan
        .node_instances
        .iter()
        .filter_map(|i| i.host_id.as_deref())
        .collect();
    hosts.sort();
    hosts.dedup();
    queues.extend(hosts.iter().map(|h| AgentQueue::from(*h)));
    let handles = queues
        .into_iter()
        .map(|queue| {
            let mut service = AgentService::new(bus.clone(), runner.clone(), queue);
            if let Some(shipper) = &events {
                service = service.with_events(shipper.clone());
            }
            tokio::spawn(service.with_concurrency(8).run())
        })
        .collect();
    // The agents declare their queues as they start; nothing may be sent to them before.
    for host in hosts {
        let route = bus.topology().task_to_agent(host);
        drover_bus::suite::publish_when_routable(
            bus.as_ref(),
            &route,
            drover_bus::Message::new("probe"),
            Duration::from_millis(50),
        )
        .await;
    }
    Agents {
        runs,
        gate,
        handles,
        _work: work,
    }
}

/// A replica with the gRPC service in this process, as `drover-workflow` composes them.
pub struct InProcess {
    pub addr: SocketAddr,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.handles.iter().for_each(|h| h.abort());
    }
}

pub async fn in_process(bus: Arc<dyn Bus>, store: Arc<dyn StateStore>, name: &str) -> InProcess {
    in_process_with(bus, store, name, Events::Store).await
}

/// Where an in-process replica keeps its executions' events.
pub enum Events {
    /// In the store only.
    Store,
    /// In the store, and shipped to ingest (best effort) through this shipper.
    StoreAndShipped(Shipper),
    /// On the ingest queue only (`IngestEvents`), as a replica on OpenSearch does.
    Ingest,
}

/// [`in_process`] with the replica's events kept as `events` says.
pub async fn in_process_with(
    bus: Arc<dyn Bus>,
    store: Arc<dyn StateStore>,
    name: &str,
    events: Events,
) -> InProcess {
    let router = HostRouter::new(store.clone());
    let dispatcher = BusDispatcher::start(bus.clone(), name)
        .await
        .unwrap()
        .with_router(move |topology, task| router.route(topology, task));
    let mut engine = Engine::new(store, dispatcher);
    if let Events::Ingest = events {
        engine = engine.with_events(Arc::new(IngestEvents::new(bus.clone())));
    }
    let engine = Arc::new(engine);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(WorkflowService::new(engine.clone(), bus.clone()).into_server())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let config = ReplicaConfig {
        capacity: 2,
        run: RunOptions {
            parallelism: 20,
            keep_events: true,
        },
        ..ReplicaConfig::default()
    };
    let mut replica = Replica::new(engine, bus, config);
    if let Events::StoreAndShipped(shipper) = events {
        replica = replica.with_events(shipper);
    }
    let handles = vec![
        tokio::spawn(async move { server.await.expect("serving") }),
        tokio::spawn(async move {
            replica.run().await.expect("consuming executions");
        }),
    ];
    InProcess { addr, handles }
}

/// A client of the service at `addr`, waiting up to a minute for it to listen.
pub async fn client(addr: SocketAddr) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match WorkflowClient::connect(format!("http://{addr}")).await {
            Ok(client) => return client,
            Err(e) if Instant::now() > deadline => panic!("the service at {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn create_deployment(client: &mut Client, id: &str, plan: &Plan) -> pb::Deployment {
    client
        .create_deployment(pb::CreateDeploymentRequest {
            deployment_id: id.into(),
            blueprint_id: "bp".into(),
            source: Some(pb::create_deployment_request::Source::PlanJson(
                serde_json::to_string(plan).unwrap(),
            )),
            ..Default::default()
        })
        .await
        .expect("CreateDeployment")
        .into_inner()
}

pub async fn start(client: &mut Client, deployment: &str, workflow: &str) -> pb::Execution {
    client
        .start_execution(pb::StartExecutionRequest {
            deployment_id: deployment.into(),
            workflow_id: workflow.into(),
            parameters_json: String::new(),
            dry_run: false,
        })
        .await
        .expect("StartExecution")
        .into_inner()
}

pub async fn get(client: &mut Client, id: &str) -> pb::Execution {
    client
        .get_execution(pb::GetExecutionRequest {
            execution_id: id.into(),
        })
        .await
        .expect("GetExecution")
        .into_inner()
}

const FINAL: [&str; 3] = ["terminated", "failed", "cancelled"];

/// Polls until the execution has ended, up to `limit`.
pub async fn wait_end(client: &mut Client, id: &str, limit: Duration) -> pb::Execution {
    let deadline = Instant::now() + limit;
    loop {
        let execution = get(client, id).await;
        if FINAL.contains(&execution.status.as_str()) {
            return execution;
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} still {} after {limit:?}",
            execution.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until at least `n` operations ran.
pub async fn wait_runs(runs: &Runs, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while runs.total() < n {
        assert!(
            Instant::now() < deadline,
            "{} operations ran, not {n}",
            runs.total()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
