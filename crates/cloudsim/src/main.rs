//! `drover-cloudsim`: serves the simulated OpenStack cloud. Prints `listening on URL` (the
//! Keystone URL clients authenticate against) on stdout once it accepts connections.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use drover_cloudsim::SimConfig;

/// Settings: a JSON config file (SimConfig's fields), overridden by flags or their
/// DROVER_CLOUDSIM_* environment variables.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, env = "DROVER_CLOUDSIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: String,
    /// A JSON file with any of the fields below (snake_case names).
    #[arg(long, env = "DROVER_CLOUDSIM_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "DROVER_CLOUDSIM_USER")]
    user: Option<String>,
    #[arg(long, env = "DROVER_CLOUDSIM_PASSWORD")]
    password: Option<String>,
    #[arg(long, env = "DROVER_CLOUDSIM_PROJECT")]
    project: Option<String>,
    /// Delay added to every API request.
    #[arg(long, env = "DROVER_CLOUDSIM_LATENCY_MS")]
    latency_ms: Option<u64>,
    /// Compute requests per second; beyond, 429 with Retry-After.
    #[arg(long, env = "DROVER_CLOUDSIM_RATE_LIMIT_RPS")]
    rate_limit_rps: Option<u32>,
    /// Fraction of compute requests answered 500/503 without effect.
    #[arg(long, env = "DROVER_CLOUDSIM_ERROR_RATE")]
    error_rate: Option<f64>,
    /// Fraction of creates and deletes carried out but answered 500.
    #[arg(long, env = "DROVER_CLOUDSIM_LOST_RESPONSE_RATE")]
    lost_response_rate: Option<f64>,
    /// Time a server spends in BUILD.
    #[arg(long, env = "DROVER_CLOUDSIM_BUILD_MS")]
    build_ms: Option<u64>,
    /// Fraction of servers ending in ERROR.
    #[arg(long, env = "DROVER_CLOUDSIM_BUILD_ERROR_RATE")]
    build_error_rate: Option<f64>,
    /// Fraction of servers stuck in BUILD for ever.
    #[arg(long, env = "DROVER_CLOUDSIM_STUCK_RATE")]
    stuck_rate: Option<f64>,
    /// Most servers alive at once.
    #[arg(long, env = "DROVER_CLOUDSIM_QUOTA_INSTANCES")]
    quota_instances: Option<usize>,
    /// Delay before a new server shows in lists.
    #[arg(long, env = "DROVER_CLOUDSIM_LIST_DELAY_MS")]
    list_delay_ms: Option<u64>,
    /// Most servers per create request.
    #[arg(long, env = "DROVER_CLOUDSIM_MAX_COUNT")]
    max_count: Option<usize>,
    #[arg(long, env = "DROVER_CLOUDSIM_SEED")]
    seed: Option<u64>,
}

impl Args {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => SimConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(value) = &self.$field { config.$field = value.clone().into(); })* };
        }
        set!(
            user,
            password,
            project,
            latency_ms,
            rate_limit_rps,
            error_rate,
            lost_response_rate,
            build_ms,
            build_error_rate,
            stuck_rate,
            quota_instances,
            list_delay_ms,
            max_count,
            seed
        );
        config.validate()?;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drover_telemetry::init_tracing("error");
    let args = Args::parse();
    let config = args.config()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on http://{}/v3", listener.local_addr()?);
    tracing::info!(?config, "cloudsim started");
    tokio::select! {
        served = drover_cloudsim::serve(listener, config) => served.context("serving")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
