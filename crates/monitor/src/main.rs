//! `drover-monitor`: one replica of the monitor service (see `drover_monitor`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drover_bus::{AmqpBus, AmqpOptions, Bus, Topology};
use drover_monitor::grpc::MonitorGrpc;
use drover_monitor::phi::PhiConfig;
use drover_monitor::tracker::TrackerConfig;
use drover_monitor::workflow_healer::WorkflowHealer;
use drover_monitor::{Monitor, MonitorConfig, metrics};

#[derive(Parser)]
#[command(
    name = "drover-monitor",
    version,
    about = "Watches agents' heartbeats and heals what fails"
)]
struct Cli {
    /// The broker, `amqp://user:password@host:port/vhost`.
    #[arg(long, env = "DROVER_AMQP_URL")]
    amqp_url: String,
    /// Prefix of every exchange and queue name (tests sharing a broker).
    #[arg(long, default_value = "")]
    prefix: String,
    /// How many `monitor.<n>` shard queues the heartbeats exchange spreads agents over; the
    /// same for every replica and agent.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// The most shards this replica claims outright (shards left free are still taken over);
    /// all of them when omitted.
    #[arg(long)]
    max_shards: Option<usize>,
    /// The gRPC address (GetHealth, ListAgents).
    #[arg(long, default_value = "127.0.0.1:50056")]
    listen: SocketAddr,
    /// The address of the Prometheus `/metrics` endpoint.
    #[arg(long, default_value = "127.0.0.1:9106")]
    metrics_listen: SocketAddr,
    /// The workflow service that runs heals, `http://host:port`.
    #[arg(long)]
    workflow_url: String,
    /// The deployment the agents' instances belong to.
    #[arg(long)]
    deployment: String,
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
    let topology = Topology::new()
        .with_prefix(cli.prefix.clone())
        .with_monitor_shards(cli.shards);
    let options =
        AmqpOptions::new(cli.amqp_url.clone(), topology).with_connection_name("drover-monitor");
    let bus: Arc<dyn Bus> = Arc::new(
        AmqpBus::connect(options)
            .await
            .context("cannot connect to the broker")?,
    );
    let healer = Arc::new(WorkflowHealer::new(&cli.workflow_url)?);
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
    let monitor = Arc::new(Monitor::start(bus, healer, config));
    let metrics_listener = tokio::net::TcpListener::bind(cli.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.metrics_listen))?;
    tracing::info!(grpc = %cli.listen, metrics = %cli.metrics_listen, "monitor up");
    let grpc = tonic::transport::Server::builder()
        .add_service(MonitorGrpc::server(monitor.clone()))
        .serve_with_shutdown(cli.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        });
    tokio::select! {
        served = grpc => served.context("gRPC server")?,
        served = metrics::serve(metrics_listener, monitor.metrics()) => served.context("metrics server")?,
    }
    Ok(())
}
