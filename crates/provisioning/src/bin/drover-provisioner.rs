//! `drover-provisioner`: the provisioning service (gRPC) over one cloud account. Prints
//! `listening on http://ADDR` on stdout once it accepts connections.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use drover_provisioning::process::ProcessCloud;
use drover_provisioning::{
    CloudDriver, Journal, Metrics, NovaAccount, NovaDriver, NovaPolicy, Provisioner,
    ProvisionerConfig, ProvisioningService, RequestPolicy, SimCloud, SimConfig,
};
use drover_telemetry::{HttpArgs, HttpSide};

#[derive(Clone, Copy, ValueEnum)]
enum Cloud {
    /// OpenStack: the account from the OS_* variables of an OpenStack RC file.
    Nova,
    /// Local processes running --process-program.
    Process,
    /// The in-memory sim cloud (lost on exit).
    Sim,
}

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address of the gRPC server.
    #[arg(
        long,
        env = "DROVER_PROVISIONER_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    listen: String,
    #[command(flatten)]
    http: HttpArgs,
    #[arg(
        long,
        env = "DROVER_PROVISIONER_CLOUD",
        value_enum,
        default_value = "nova"
    )]
    cloud: Cloud,
    /// Where the creation journal lives (nova): keep it across restarts.
    #[arg(
        long,
        env = "DROVER_PROVISIONER_STATE_DIR",
        default_value = ".drover-provisioner"
    )]
    state_dir: PathBuf,
    /// Cloud requests per second for this account (every HTTP request counts).
    #[arg(long, default_value_t = 10)]
    requests_per_second: u32,
    /// Requests that may go out back to back before the pace applies.
    #[arg(long, default_value_t = 1)]
    burst: u32,
    /// Provisioner replicas sharing this account: each paces at --requests-per-second and
    /// --burst divided by this (at least 1), so together they stay under the account's limit.
    #[arg(long, env = "DROVER_PROVISIONER_REPLICAS", default_value_t = 1)]
    replicas: u32,
    /// Servers per batch.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrent_batches: usize,
    /// Servers being created (requested and polled) at once.
    #[arg(long, default_value_t = 100)]
    concurrent_creations: usize,
    /// Tries of one request, and rounds of one server.
    #[arg(long, default_value_t = 8)]
    max_attempts: usize,
    #[arg(long, default_value_t = 30.0)]
    request_timeout_s: f64,
    /// How long a server may stay in BUILD before it is deleted and made again.
    #[arg(long, default_value_t = 600.0)]
    build_timeout_s: f64,
    #[arg(long, default_value_t = 2.0)]
    poll_interval_s: f64,
    /// Times a server that ended in ERROR (or timed out in BUILD) is made again.
    #[arg(long, default_value_t = 2)]
    rebuilds: usize,
    /// How long a new server may be missing from the cloud's lists.
    #[arg(long, default_value_t = 5.0)]
    list_consistency_s: f64,
    /// imageRef / flavorRef when a Compute node names none.
    #[arg(long, default_value = "")]
    default_image: String,
    #[arg(long, default_value = "")]
    default_flavor: String,
    /// Network uuid to attach (repeatable; Nova's "auto" when none).
    #[arg(long)]
    network: Vec<String>,
    /// The program a `process` server runs (e.g. drover-agent), and its arguments.
    #[arg(long, default_value = "drover-agent")]
    process_program: PathBuf,
    #[arg(long, allow_hyphen_values = true)]
    process_arg: Vec<String>,
}

fn seconds(s: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{flag}: {s} is not a duration"))
}

fn nonzero(n: u32, flag: &str) -> anyhow::Result<NonZeroU32> {
    NonZeroU32::new(n).with_context(|| format!("--{flag} must be at least 1"))
}

impl Args {
    /// This replica's share of an account-wide figure.
    fn share(&self, figure: u32) -> u32 {
        (figure / self.replicas.max(1)).max(1)
    }

    fn driver(&self) -> anyhow::Result<Arc<dyn CloudDriver>> {
        Ok(match self.cloud {
            Cloud::Sim => Arc::new(SimCloud::new(SimConfig::default())),
            Cloud::Process => Arc::new(ProcessCloud::new(
                "drover-provisioner",
                self.process_program.clone(),
                self.process_arg.clone(),
            )),
            Cloud::Nova => {
                let account = NovaAccount::from_env().map_err(|var| {
                    anyhow::anyhow!("--cloud nova needs {var} (source an OpenStack RC file)")
                })?;
                std::fs::create_dir_all(&self.state_dir)
                    .with_context(|| format!("creating {}", self.state_dir.display()))?;
                let journal = Journal::open(&self.state_dir.join("nova-journal.jsonl"))?;
                let policy = NovaPolicy {
                    requests: RequestPolicy {
                        requests_per_second: nonzero(
                            self.share(self.requests_per_second),
                            "requests-per-second",
                        )?,
                        burst: nonzero(self.share(self.burst), "burst")?,
                        timeout: seconds(self.request_timeout_s, "request-timeout-s")?,
                        max_attempts: self.max_attempts,
                        min_backoff: Duration::from_millis(200),
                        max_backoff: Duration::from_secs(10),
                    },
                    batch_size: self.batch_size,
                    concurrent_creations: self.concurrent_creations,
                    build_timeout: seconds(self.build_timeout_s, "build-timeout-s")?,
                    poll_interval: seconds(self.poll_interval_s, "poll-interval-s")?,
                    rebuilds: self.rebuilds,
                    list_consistency: seconds(self.list_consistency_s, "list-consistency-s")?,
                    default_image: self.default_image.clone(),
                    default_flavor: self.default_flavor.clone(),
                    networks: self.network.clone(),
                };
                Arc::new(NovaDriver::new(account, policy, Arc::new(journal))?)
            }
        })
    }

    /// The provisioner's own pace is per driver call; the nova driver paces every request
    /// itself, so the provisioner only bounds batches in flight.
    fn provisioner_config(&self) -> anyhow::Result<ProvisionerConfig> {
        let rps = match self.cloud {
            Cloud::Nova => 10_000,
            Cloud::Process | Cloud::Sim => self.share(self.requests_per_second),
        };
        Ok(ProvisionerConfig {
            batch_size: self.batch_size,
            requests_per_second: nonzero(rps, "requests-per-second")?,
            burst: nonzero(
                self.share(self.burst).max(self.concurrent_batches as u32),
                "burst",
            )?,
            concurrent_requests: self.concurrent_batches,
            max_attempts: self.max_attempts,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drover_telemetry::init_tracing("error");
    let args = Args::parse();
    let provisioner = Provisioner::new(args.driver()?, args.provisioner_config()?);
    let mut http = HttpSide::new("provisioner");
    let metrics = Metrics::default();
    metrics.register(http.registry());
    if let (Cloud::Nova, Ok(auth_url)) = (args.cloud, std::env::var("OS_AUTH_URL")) {
        http = http.with_reachable("keystone", &auth_url)?;
    }
    http.spawn(args.http.http_listen).await?;
    let service = ProvisioningService::new(provisioner, args.batch_size).with_metrics(metrics);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on http://{}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await
        .context("serving")?;
    Ok(())
}
