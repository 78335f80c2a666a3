//! `drover-workflow`: one replica of the workflow service — the gRPC `Workflow` server and a
//! consumer of the `executions` queue on RabbitMQ, over a state store shared by every replica.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drover_bus::{AmqpBus, AmqpOptions, Bus, Topology};
use drover_store::{FileStore, StateStore};
use drover_workflow::{
    BusDispatcher, Engine, HostRouter, Replica, ReplicaConfig, RunOptions, WorkflowService,
};

#[derive(Parser)]
#[command(
    name = "drover-workflow",
    version,
    about = "Runs drover's workflow executions"
)]
struct Cli {
    /// The broker, e.g. amqp://127.0.0.1:5672/%2f.
    #[arg(long)]
    amqp_url: String,
    /// The prefix of every exchange and queue name, as the agents use it.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Let the broker delete queues unused for this many seconds (tests sharing a broker).
    #[arg(long)]
    queue_expiry_s: Option<u64>,
    /// The state directory (FileStore), shared by the replicas (see the `replica` module's doc
    /// for what two processes on one directory may do at once).
    #[arg(long, required_unless_present = "store")]
    state_dir: Option<PathBuf>,
    /// The state store as a URL instead: file:DIR, memory:, or http(s):// for OpenSearch.
    #[arg(long, conflicts_with = "state_dir")]
    store: Option<String>,
    /// Where the gRPC service listens.
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// This replica's name: its results queue is `results.<NAME>`. Unique among the replicas,
    /// and the same after a restart. Default: workflow-<port>.
    #[arg(long)]
    name: Option<String>,
    /// Executions run at once (0: serve gRPC only).
    #[arg(long, default_value_t = 4)]
    capacity: u16,
    /// Operation tasks in flight per execution at most.
    #[arg(long, default_value_t = 100)]
    parallelism: usize,
    /// Send every task to `central` instead of its host's agent.
    #[arg(long)]
    central_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drover_telemetry::init_tracing("info");
    let cli = Cli::parse();
    let store: Arc<dyn StateStore> = match (&cli.store, &cli.state_dir) {
        (Some(url), _) => {
            drover_store::open(url).with_context(|| format!("opening the store {url}"))?
        }
        (None, Some(dir)) => {
            Arc::new(FileStore::open(dir).with_context(|| format!("opening {}", dir.display()))?)
        }
        (None, None) => anyhow::bail!("--state-dir or --store is required"),
    };
    let mut topology = Topology::new().with_prefix(cli.prefix);
    if let Some(seconds) = cli.queue_expiry_s {
        topology = topology.with_queue_expiry(Duration::from_secs(seconds));
    }
    let bus: Arc<dyn Bus> = Arc::new(
        AmqpBus::connect(AmqpOptions::new(cli.amqp_url, topology))
            .await
            .context("cannot connect to the broker")?,
    );
    let name = cli
        .name
        .unwrap_or_else(|| format!("workflow-{}", cli.listen.port()));
    let mut dispatcher = BusDispatcher::start(bus.clone(), name.clone())
        .await
        .context("starting the dispatcher")?;
    if !cli.central_only {
        let router = HostRouter::new(store.clone());
        dispatcher = dispatcher.with_router(move |topology, task| router.route(topology, task));
    }
    let engine = Arc::new(Engine::new(store, dispatcher));
    let service = WorkflowService::new(engine.clone(), bus.clone()).into_server();
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve(cli.listen);
    tracing::info!(%name, listen = %cli.listen, "serving");
    let config = ReplicaConfig {
        capacity: cli.capacity,
        run: RunOptions {
            parallelism: cli.parallelism,
            store_events: true,
        },
        ..ReplicaConfig::default()
    };
    if cli.capacity == 0 {
        return server.await.context("the gRPC server failed");
    }
    let replica = Replica::new(engine, bus, config);
    tokio::select! {
        served = server => served.context("the gRPC server failed"),
        consumed = replica.run() => consumed.context("the executions queue failed"),
    }
}
