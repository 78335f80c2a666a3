//! Healing end to end on a real RabbitMQ: a deployment installed through the real workflow
//! service (gRPC service and replica in this process, `MemoryStore`), hollow agents named after
//! the deployment's hosts whose heartbeats say which deployment and instance they serve, and a
//! monitor healing through `WorkflowHealer`. Two hosts' heartbeats stop: the monitor detects
//! them, starts one `heal` per failed host, the heals reinstall those hosts' subtrees on the
//! agents, and every instance is `started` again. `#[ignore]`d: needs `DROVER_AMQP_URL`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_agent::{
    AgentIdentity, AgentQueue, AgentService, HollowHost, OperationEnv, OperationRunner, Plugin,
    PluginFuture, PluginOutput, PluginRegistry, RunnerConfig,
};
use drover_bus::{AmqpBus, AmqpOptions, Bus};
use drover_model::OperationTask;
use drover_monitor::workflow_healer::WorkflowHealer;
use drover_monitor::{Monitor, MonitorConfig};
use drover_proto::drover::workflow::v1 as pb;
use drover_store::{MemoryStore, StateStore};
use drover_workflow::testing::PlanBuilder;
use drover_workflow::{
    BusDispatcher, Engine, HostRouter, Replica, ReplicaConfig, RunOptions, WorkflowService,
};
use pb::workflow_client::WorkflowClient;
use serde_json::Value;

type Client = WorkflowClient<tonic::transport::Channel>;

const DEPLOYMENT: &str = "d1";
const HOSTS: u64 = 6;
const LIMIT: Duration = Duration::from_secs(120);

/// Every operation the agents ran: (instance, operation), in order.
#[derive(Clone, Default)]
struct Ran(Arc<Mutex<Vec<(String, String)>>>);

impl Ran {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The instances with an operation from index `from` on.
    fn instances_since(&self, from: usize) -> BTreeSet<String> {
        self.0.lock().unwrap()[from..]
            .iter()
            .map(|(instance, _)| instance.clone())
            .collect()
    }

    /// The short operation names run on `instance` from index `from` on.
    fn operations_since(&self, from: usize, instance: &str) -> Vec<String> {
        self.0.lock().unwrap()[from..]
            .iter()
            .filter(|(i, _)| i == instance)
            .map(|(_, op)| op.rsplit('.').next().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Plugin for Ran {
    fn run<'a>(&'a self, task: &'a OperationTask, _: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async move {
            if task.relationship.is_none() {
                self.0
                    .lock()
                    .unwrap()
                    .push((task.node.node_instance_id.clone(), task.operation.clone()));
            }
            PluginOutput::succeeded(Value::Null)
        })
    }
}

async fn client(addr: std::net::SocketAddr) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match WorkflowClient::connect(format!("http://{addr}")).await {
            Ok(client) => return client,
            Err(e) if Instant::now() > deadline => panic!("the service at {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn executions(client: &mut Client) -> Vec<pb::Execution> {
    client
        .list_executions(pb::ListExecutionsRequest {
            deployment_id: DEPLOYMENT.into(),
        })
        .await
        .expect("ListExecutions")
        .into_inner()
        .executions
}

fn heals(executions: &[pb::Execution]) -> Vec<(String, &pb::Execution)> {
    executions
        .iter()
        .filter(|e| e.workflow_id == "heal")
        .map(|e| {
            let parameters: Value = serde_json::from_str(&e.parameters_json).unwrap();
            let instance = parameters["node_instance_id"].as_str().unwrap_or_default();
            (instance.to_owned(), e)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn failed_hosts_are_healed_once_each_through_the_workflow_service() {
    let url = std::env::var("DROVER_AMQP_URL").expect(
        "DROVER_AMQP_URL is not set: start RabbitMQ with `scripts/rabbitmq start` and set \
         DROVER_AMQP_URL=$(scripts/rabbitmq url)",
    );
    let topology = drover_bus::suite::topology("monitor-heal");
    let bus: Arc<dyn Bus> = Arc::new(
        AmqpBus::connect(AmqpOptions::new(url, topology))
            .await
            .expect("connecting to RabbitMQ"),
    );
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let plan = PlanBuilder::new()
        .compute("host", HOSTS)
        .node("app", 1)
        .contained_in("host")
        .build();
    let mut hosts: Vec<String> = plan
        .node_instances
        .iter()
        .filter(|i| i.node_id == "host")
        .map(|i| i.id.clone())
        .collect();
    hosts.sort();

    // The agents: one per host, named after it, heartbeating what it serves; and central.
    let ran = Ran::default();
    let mut plugins = PluginRegistry::empty();
    plugins.set_fallback(Arc::new(ran.clone()));
    let work = tempfile::tempdir().unwrap();
    let runner = Arc::new(
        OperationRunner::new(
            RunnerConfig::new(work.path()),
            plugins,
            drover_agent::discard_logs(),
        )
        .unwrap(),
    );
    let identities = hosts
        .iter()
        .map(|host| AgentIdentity::new(host.clone(), DEPLOYMENT, host.clone()))
        .collect();
    let mut fleet = HollowHost::start_agents(
        bus.clone(),
        identities,
        Some(Duration::from_millis(200)),
        |queue| AgentService::new(bus.clone(), runner.clone(), queue),
    );
    let central =
        tokio::spawn(AgentService::new(bus.clone(), runner.clone(), AgentQueue::Central).run());
    for host in &hosts {
        drover_bus::suite::publish_when_routable(
            bus.as_ref(),
            &bus.topology().task_to_agent(host),
            drover_bus::Message::new("probe"),
            Duration::from_millis(50),
        )
        .await;
    }

    // The workflow service, as drover-workflow composes it.
    let router = HostRouter::new(store.clone());
    let dispatcher = BusDispatcher::start(bus.clone(), "wf-heal")
        .await
        .unwrap()
        .with_router(move |topology, task| router.route(topology, task));
    let engine = Arc::new(Engine::new(store.clone(), dispatcher));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkflowService::new(engine.clone(), bus.clone()).into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let config = ReplicaConfig {
        capacity: 4,
        run: RunOptions {
            parallelism: 20,
            keep_events: true,
        },
        ..ReplicaConfig::default()
    };
    let replica = tokio::spawn(Replica::new(engine, bus.clone(), config).run());
    let mut client = client(addr).await;

    // The monitor, before the install: failures during it would wait for it to end.
    let healer = Arc::new(WorkflowHealer::new(&format!("http://{addr}")).unwrap());
    let monitor = Monitor::start(bus.clone(), healer, MonitorConfig::default());

    client
        .create_deployment(pb::CreateDeploymentRequest {
            deployment_id: DEPLOYMENT.into(),
            blueprint_id: "bp".into(),
            source: Some(pb::create_deployment_request::Source::PlanJson(
                serde_json::to_string(&plan).unwrap(),
            )),
            ..Default::default()
        })
        .await
        .expect("CreateDeployment");
    let install = client
        .start_execution(pb::StartExecutionRequest {
            deployment_id: DEPLOYMENT.into(),
            workflow_id: "install".into(),
            parameters_json: String::new(),
            dry_run: false,
        })
        .await
        .expect("StartExecution")
        .into_inner();
    let deadline = Instant::now() + LIMIT;
    loop {
        let listed = executions(&mut client).await;
        let status = listed
            .iter()
            .find(|e| e.id == install.id)
            .map(|e| e.status.clone())
            .unwrap_or_default();
        if status == "terminated" {
            break;
        }
        assert!(
            !["failed", "cancelled"].contains(&status.as_str()) && Instant::now() < deadline,
            "install {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every agent tracked, with a few seconds of history.
    while monitor.health().agents_alive < HOSTS {
        assert!(Instant::now() < deadline, "{:?}", monitor.health());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(heals(&executions(&mut client).await).is_empty());

    // Two hosts' agents die (their heartbeats stop; their queues stay served, as a new agent
    // on the rebuilt host would serve them).
    let installed = ran.len();
    let failed: BTreeSet<String> = [1, 4].iter().map(|&i| hosts[i].clone()).collect();
    for (index, host) in hosts.iter().enumerate() {
        if failed.contains(host) {
            assert!(fleet.stop_heartbeat(index));
        }
    }

    // Wait for a heal per failed host, and for every heal to end.
    let deadline = Instant::now() + LIMIT;
    loop {
        let listed = executions(&mut client).await;
        let heals = heals(&listed);
        let healed: BTreeSet<String> = heals.iter().map(|(i, _)| i.clone()).collect();
        let ended = heals
            .iter()
            .all(|(_, e)| ["terminated", "failed", "cancelled"].contains(&e.status.as_str()));
        if healed == failed && ended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heals after {LIMIT:?}: {:?}",
            heals
                .iter()
                .map(|(i, e)| (i, &e.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A while longer: no second heal of the same instance, none of another.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listed = executions(&mut client).await;
    let mut per_instance: BTreeMap<String, Vec<&pb::Execution>> = BTreeMap::new();
    for (instance, execution) in heals(&listed) {
        per_instance.entry(instance).or_default().push(execution);
    }
    assert_eq!(
        per_instance.keys().cloned().collect::<BTreeSet<_>>(),
        failed,
        "heals of other instances"
    );
    for (instance, executions) in &per_instance {
        assert_eq!(executions.len(), 1, "{instance} healed more than once");
        assert_eq!(
            executions[0].status, "terminated",
            "{instance}: {}",
            executions[0].error
        );
    }

    // The heals reinstalled the failed hosts' subtrees, and only those.
    let app_of = |host: &str| {
        let instances = store.node_instances(DEPLOYMENT).unwrap();
        instances
            .into_iter()
            .find(|i| i.node_id == "app" && i.host_id.as_deref() == Some(host))
            .map(|i| i.id)
            .unwrap()
    };
    let mut rebuilt: BTreeSet<String> = failed.clone();
    rebuilt.extend(failed.iter().map(|host| app_of(host)));
    assert_eq!(ran.instances_since(installed), rebuilt);
    for instance in &rebuilt {
        let ops = ran.operations_since(installed, instance);
        let deleted = ops.iter().position(|op| op == "delete");
        let created = ops.iter().rposition(|op| op == "create");
        assert!(
            matches!((deleted, created), (Some(d), Some(c)) if d < c),
            "{instance}: {ops:?}"
        );
    }
    let instances = store.node_instances(DEPLOYMENT).unwrap();
    assert_eq!(instances.len(), 2 * HOSTS as usize);
    assert!(
        instances.iter().all(|i| i.state == "started"),
        "{:?}",
        instances
            .iter()
            .map(|i| (&i.id, &i.state))
            .collect::<Vec<_>>()
    );
    let health = monitor.health();
    assert_eq!(health.agents_failed, failed.len() as u64, "{health:?}");

    drop(monitor);
    drop(fleet);
    central.abort();
    replica.abort();
    server.abort();
}
