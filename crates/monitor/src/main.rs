//! `drover-monitor`: one replica of the monitor service (see `drover_monitor`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drover_bus::Bus;
use drover_monitor::grpc::MonitorGrpc;
use drover_monitor::phi::PhiConfig;
use drover_monitor::policy::{DefaultPolicies, PolicySource, StorePolicies};
use drover_monitor::tracker::TrackerConfig;
use drover_monitor::workflow_healer::WorkflowHealer;
use drover_monitor::{Monitor, MonitorConfig};
use drover_telemetry::{BusArgs, HttpArgs, HttpSide};

#[derive(Parser)]
#[command(
    name = "drover-monitor",
    version,
    about = "Watches agents' heartbeats and heals what fails"
)]
struct Cli {
    #[command(flatten)]
    bus: BusArgs,
    /// How many `monitor.<n>` shard queues the heartbeats exchange spreads agents over; the
    /// same for every replica and agent.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// The most shards this replica claims outright (shards left free are still taken over);
    /// all of them when omitted.
    #[arg(long)]
    max_shards: Option<usize>,
    /// The gRPC address (GetHealth, ListAgents).
    #[arg(long, env = "DROVER_MONITOR_LISTEN", default_value = "127.0.0.1:50054")]
    listen: SocketAddr,
    #[command(flatten)]
    http: HttpArgs,
    /// The workflow service that runs heals, `http://host:port`.
    #[arg(long, env = "DROVER_WORKFLOW_GRPC")]
    workflow_url: String,
    /// The deployment of agents whose heartbeats name none (agents that predate the field).
    #[arg(long, default_value = "")]
    deployment: String,
    /// The state store holding the deployments (`file:DIR`, `memory:`, an OpenSearch URL):
    /// their blueprints' groups and policies say what is healed and scaled. Without it every
    /// failed instance is healed (the default auto-heal policy) and nothing is scaled.
    #[arg(long, env = "DROVER_STORE_URL")]
    store: Option<String>,
    /// phi at which an agent is suspected.
    #[arg(long, default_value_t = PhiConfig::default().threshold)]
    phi_threshold: f64,
    /// Floor of the heartbeat gaps' standard deviation, in milliseconds.
    #[arg(long, default_value_t = 50)]
    phi_min_std_ms: u64,
    /// A gap this much longer than usual is normal, in milliseconds.
    #[arg(long, default_value_t = 250)]
    phi_acceptable_pause_ms: u64,
    /// How many heartbeat gaps the detector remembers per agent.
    #[arg(long, default_value_t = PhiConfig::default().window)]
    phi_window: usize,
    /// The agents' heartbeat interval, assumed until an agent has history, in milliseconds.
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u64,
}

fn main() -> anyhow::Result<()> {
    drover_telemetry::init_tracing("info");
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let topology = cli.bus.topology().with_monitor_shards(cli.shards);
    let bus: Arc<dyn Bus> = Arc::new(
        cli.bus
            .connect(topology, "drover-monitor")
            .await
            .context("cannot connect to the broker")?,
    );
    let healer = Arc::new(WorkflowHealer::new(&cli.workflow_url)?);
    let policies: Arc<dyn PolicySource> = match &cli.store {
        Some(url) => Arc::new(StorePolicies(
            drover_store::open(url).with_context(|| format!("cannot open the store {url}"))?,
        )),
        None => Arc::new(DefaultPolicies),
    };
    let config = MonitorConfig {
        tracker: TrackerConfig {
            phi: PhiConfig {
                threshold: cli.phi_threshold,
                window: cli.phi_window,
                min_std_deviation: Duration::from_millis(cli.phi_min_std_ms),
                acceptable_pause: Duration::from_millis(cli.phi_acceptable_pause_ms),
                first_interval: Duration::from_millis(cli.heartbeat_ms),
            },
            ..TrackerConfig::default()
        },
        max_shards: cli.max_shards,
        deployment: cli.deployment,
        ..MonitorConfig::default()
    };
    let monitor = Arc::new(Monitor::start_with_policies(bus, healer, policies, config));
    let metrics = monitor.metrics();
    HttpSide::new("monitor")
        .with_reachable("rabbitmq", &cli.bus.amqp_url)?
        .with_text(move || metrics.render())
        .spawn(cli.http.http_listen)
        .await?;
    tracing::info!(grpc = %cli.listen, "monitor up");
    let grpc = tonic::transport::Server::builder()
        .add_service(MonitorGrpc::server(monitor.clone()))
        .serve_with_shutdown(cli.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        });
    grpc.await.context("gRPC server")
}
