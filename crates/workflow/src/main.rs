//! `drover-workflow`: one replica of the workflow service — the gRPC `Workflow` server and a
//! consumer of the `executions` queue on RabbitMQ, over a state store shared by every replica.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drover_bus::Bus;
use drover_shipping::{Shipper, ShipperConfig};
use drover_store::{FileStore, StateStore};
use drover_telemetry::{BusArgs, HttpArgs, HttpSide};
use drover_workflow::{
    BusDispatcher, Engine, HostRouter, IngestEvents, ProvisionConfig, ProvisioningDispatcher,
    Replica, ReplicaConfig, RunOptions, WorkflowService, remote_provisioner,
};

#[derive(Parser)]
#[command(
    name = "drover-workflow",
    version,
    about = "Runs drover's workflow executions"
)]
struct Cli {
    #[command(flatten)]
    bus: BusArgs,
    /// The state directory (FileStore), shared by the replicas (see the `replica` module's doc
    /// for what two processes on one directory may do at once).
    #[arg(long, required_unless_present = "store")]
    state_dir: Option<PathBuf>,
    /// The state store as a URL instead: file:DIR, memory:, or http(s):// for OpenSearch.
    #[arg(long, env = "DROVER_STORE_URL", conflicts_with = "state_dir")]
    store: Option<String>,
    /// Where the gRPC service listens.
    #[arg(
        long,
        env = "DROVER_WORKFLOW_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: SocketAddr,
    #[command(flatten)]
    http: HttpArgs,
    /// This replica's name: its results queue is `results.<NAME>`. Unique among the replicas,
    /// and the same after a restart. Default: workflow-<port>.
    #[arg(long)]
    name: Option<String>,
    /// Executions run at once (0: serve gRPC only).
    #[arg(long, default_value_t = 4)]
    capacity: u16,
    /// Operation tasks in flight per execution at most. Each agent bounds how many it runs at
    /// once (its own --concurrency), so this bounds only what waits in the broker; a large
    /// deployment needs many in flight, or it runs at one round trip per handful of operations.
    #[arg(long, default_value_t = 1000)]
    parallelism: usize,
    /// Send every task to `central` instead of its host's agent.
    #[arg(long)]
    central_only: bool,
    /// drover-provisioner (http://HOST:PORT): Compute servers come from it, in batches.
    /// Without it, provisioning tasks go to `central` like any central operation.
    #[arg(long, env = "DROVER_PROVISIONER_GRPC", value_name = "URL")]
    provisioner_url: Option<String>,
    /// Compute instances per provisioning request at most.
    #[arg(long, default_value_t = 100)]
    provision_batch: usize,
    /// How long a provisioning task waits for others to share its request, in milliseconds.
    #[arg(long, default_value_t = 50)]
    provision_window_ms: u64,
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
    let name = cli
        .name
        .unwrap_or_else(|| format!("workflow-{}", cli.listen.port()));
    let bus: Arc<dyn Bus> = Arc::new(
        cli.bus
            .connect(cli.bus.topology(), &name)
            .await
            .context("cannot connect to the broker")?,
    );
    let mut http = HttpSide::new("workflow").with_reachable("rabbitmq", &cli.bus.amqp_url)?;
    // With an OpenSearch store, the event index is OpenSearch too, filled by ingest.
    let opensearch_store = cli.store.as_deref().filter(|url| url.starts_with("http"));
    if let Some(url) = opensearch_store {
        http = http.with_reachable("store", url)?;
    }
    http.spawn(cli.http.http_listen).await?;
    let mut dispatcher = BusDispatcher::start(bus.clone(), name.clone())
        .await
        .context("starting the dispatcher")?;
    if !cli.central_only {
        let router = HostRouter::new(store.clone());
        dispatcher = dispatcher.with_router(move |topology, task| router.route(topology, task));
    }
    let provisioner = cli
        .provisioner_url
        .as_deref()
        .map(|url| remote_provisioner(url, cli.provision_batch))
        .transpose()
        .context("--provisioner-url")?;
    let batching = ProvisionConfig {
        batch_size: cli.provision_batch,
        window: Duration::from_millis(cli.provision_window_ms),
    };
    let dispatcher = ProvisioningDispatcher::new(dispatcher, provisioner, batching);
    let mut engine = Engine::new(store, dispatcher);
    if opensearch_store.is_some() {
        // Executions' events go through ingest (confirmed by the broker before the journal
        // entries after them), so an execution waits for the broker, not for the indexing.
        engine = engine.with_events(Arc::new(IngestEvents::new(bus.clone())));
    }
    let engine = Arc::new(engine);
    let service = WorkflowService::new(engine.clone(), bus.clone()).into_server();
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve(cli.listen);
    tracing::info!(%name, listen = %cli.listen, "serving");
    let config = ReplicaConfig {
        capacity: cli.capacity,
        run: RunOptions {
            parallelism: cli.parallelism,
            keep_events: true,
        },
        ..ReplicaConfig::default()
    };
    if cli.capacity == 0 {
        return server.await.context("the gRPC server failed");
    }
    let mut replica = Replica::new(engine, bus.clone(), config);
    let _shipping = if opensearch_store.is_none() {
        // Events kept in another store go to ingest too, for the event index the gateway
        // reads; with an OpenSearch store they go nowhere else.
        let (shipper, shipping) = Shipper::start(bus, &name, ShipperConfig::default());
        replica = replica.with_events(shipper);
        Some(shipping)
    } else {
        None
    };
    tokio::select! {
        served = server => served.context("the gRPC server failed"),
        consumed = replica.run() => consumed.context("the executions queue failed"),
    }
}
