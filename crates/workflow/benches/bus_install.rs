//! An install through RabbitMQ: the blueprint given (`scripts/bench bus` passes
//! `gen_blueprint.py 100 100`, 10,101 instances) planned, then installed dry-run by the engine
//! on `BusDispatcher` with `HostRouter`, as a `drover-workflow` replica runs it (FileStore,
//! events stored), to one in-process hollow agent per host on a connection of their own. Prints
//! the install's wall time (`bus_install_<instances>_s`), its messages per second (a task and
//! its result per operation: `bus_install_msgs_per_s`) and the messages the broker really
//! carried (tasks and results travel batched: `bus_install_broker_msgs`,
//! `bus_install_broker_msgs_per_s`) as JSON lines. `DROVER_AMQP_URL` names the broker.
//! `cargo bench -p drover-workflow --bench bus_install -- BLUEPRINT [PARALLELISM]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drover_agent::{AgentQueue, AgentService, OperationRunner, PluginRegistry, RunnerConfig};
use drover_bus::{
    AmqpBus, AmqpOptions, Bus, BusError, Confirm, ConsumeOptions, Consumer, Message, QueueSpec,
    Route, Topology,
};
use drover_model::{ExecutionStatus, Map};
use drover_store::{FileStore, StateStore};
use drover_workflow::NewDeployment;
use drover_workflow::{
    BusDispatcher, Canceller, Engine, HostRouter, Observer, Progress, RunOptions,
};

/// Keeps the last progress report: its operation count.
struct LastProgress(u64);

impl Observer for LastProgress {
    fn wants_task_events(&self) -> bool {
        false
    }
    fn progress(&mut self, progress: &Progress) {
        self.0 = self.0.max(progress.operations_done);
    }
}

/// A bus that counts the messages published through it.
struct Counted {
    bus: AmqpBus,
    published: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Bus for Counted {
    fn topology(&self) -> &Topology {
        self.bus.topology()
    }

    async fn declare_queue(&self, spec: QueueSpec) -> Result<(), BusError> {
        self.bus.declare_queue(spec).await
    }

    async fn publish(&self, route: &Route, message: Message) -> Result<Confirm, BusError> {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.bus.publish(route, message).await
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, BusError> {
        self.bus.consume(queue, options).await
    }
}

async fn connect(url: &str, topology: &Topology, published: &Arc<AtomicU64>) -> Arc<dyn Bus> {
    let options = AmqpOptions::new(url.to_owned(), topology.clone());
    Arc::new(Counted {
        bus: AmqpBus::connect(options)
            .await
            .expect("connecting to RabbitMQ"),
        published: published.clone(),
    })
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let blueprint = args
        .first()
        .expect("usage: bus_install BLUEPRINT [PARALLELISM]");
    let parallelism = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(100);
    let url = std::env::var("DROVER_AMQP_URL").expect("DROVER_AMQP_URL");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let plan = drover_dsl::plan_file(std::path::Path::new(blueprint), &Default::default())
            .expect("planning the blueprint");
        let instances = plan.node_instances.len();
        eprintln!("bus_install: planned {instances} instances");
        let mut hosts: Vec<String> = plan
            .node_instances
            .iter()
            .filter_map(|i| i.host_id.clone())
            .collect();
        hosts.sort();
        hosts.dedup();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let topology = Topology::new()
            .with_prefix(format!("bench.{nanos}."))
            .with_queue_expiry(Duration::from_secs(120));

        let published = Arc::new(AtomicU64::new(0));
        let agents_bus = connect(&url, &topology, &published).await;
        let work = tempfile::tempdir().expect("a temporary directory");
        let runner = Arc::new(
            OperationRunner::new(
                RunnerConfig::new(work.path()),
                PluginRegistry::hollow(Duration::ZERO),
                drover_agent::discard_logs(),
            )
            .expect("a runner"),
        );
        let mut agents = tokio::task::JoinSet::new();
        // Instances without a host have their operations on `central`.
        let queues = std::iter::once(AgentQueue::Central)
            .chain(hosts.iter().map(|host| AgentQueue::from(host.as_str())));
        for queue in queues {
            agents.spawn(AgentService::new(agents_bus.clone(), runner.clone(), queue).run());
        }
        let bus = connect(&url, &topology, &published).await;
        eprintln!("bus_install: {} agents started", hosts.len());
        for host in &hosts {
            drover_bus::suite::publish_when_routable(
                bus.as_ref(),
                &topology.task_to_agent(host),
                drover_bus::Message::new("probe"),
                Duration::from_millis(50),
            )
            .await;
        }

        let state = tempfile::tempdir().expect("a temporary directory");
        let store: Arc<dyn StateStore> =
            Arc::new(FileStore::open(state.path()).expect("a file store"));
        let router = HostRouter::new(store.clone());
        let dispatcher = BusDispatcher::start(bus, "bench")
            .await
            .expect("a dispatcher")
            .with_router(move |topology, task| router.route(topology, task));
        let engine = Engine::new(store, dispatcher);
        engine
            .create_deployment(NewDeployment::new("d", "bench", plan))
            .expect("a deployment");
        let execution = engine
            .create_execution("d", "install", Map::new(), true)
            .expect("an execution");
        let options = RunOptions {
            parallelism,
            keep_events: true,
        };
        eprintln!("bus_install: installing");
        let published_before = published.load(Ordering::Relaxed);
        let mut observer = LastProgress(0);
        let started = Instant::now();
        let ended = engine
            .run(&execution.id, &options, &mut observer, Canceller::new().1)
            .await
            .expect("the install");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(ended.status, ExecutionStatus::Terminated, "{}", ended.error);
        let messages = 2 * observer.0;
        let broker_messages = published.load(Ordering::Relaxed) - published_before;
        eprintln!(
            "bus_install: {instances} instances, {} operations, {seconds:.2} s, {} hosts",
            observer.0,
            hosts.len()
        );
        println!(
            "{}",
            serde_json::json!({"name": format!("bus_install_{instances}_s"), "value": seconds, "unit": "s"})
        );
        println!(
            "{}",
            serde_json::json!({"name": "bus_install_msgs_per_s", "value": messages as f64 / seconds, "unit": "msgs/s"})
        );
        println!(
            "{}",
            serde_json::json!({"name": "bus_install_broker_msgs", "value": broker_messages, "unit": "msgs"})
        );
        println!(
            "{}",
            serde_json::json!({"name": "bus_install_broker_msgs_per_s", "value": broker_messages as f64 / seconds, "unit": "msgs/s"})
        );
        agents.abort_all();
    });
}
