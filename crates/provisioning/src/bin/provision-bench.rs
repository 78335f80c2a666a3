//! `provision-bench`: provisions and then deprovisions N servers through a running
//! `drover-provisioner`, the way the engine does (a `Provisioner` over `RemoteCloud`), and prints
//! one JSON line with the times, the cloudsim's counters over the run, and the failures. The
//! client retries what the service did not answer, so a service killed and restarted on the
//! same address mid-run is asked for the rest of the batch again. Used by `scripts/bench
//! provisioning`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use drover_provisioning::{Provisioner, ProvisionerConfig, RemoteCloud, ServerKey, ServerSpec};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The provisioning service (`http://host:port`).
    #[arg(long)]
    endpoint: String,
    /// cloudsim's base URL (`http://host:port`), for `/_sim/stats`.
    #[arg(long)]
    cloudsim: String,
    #[arg(long, default_value_t = 1000)]
    servers: usize,
    #[arg(long, default_value = "bench")]
    deployment: String,
}

async fn stats(cloudsim: &str) -> anyhow::Result<Value> {
    let url = format!("{}/_sim/stats", cloudsim.trim_end_matches('/'));
    Ok(reqwest::get(&url).await?.error_for_status()?.json().await?)
}

fn count(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let remote = RemoteCloud::connect_lazy(&args.endpoint, 100)?;
    // Retries generous enough to outlast a restart of the service.
    let provisioner = Provisioner::new(
        Arc::new(remote),
        ProvisionerConfig {
            batch_size: 100,
            requests_per_second: NonZeroU32::new(1000).context("rps")?,
            burst: NonZeroU32::new(100).context("burst")?,
            concurrent_requests: 16,
            max_attempts: 20,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        },
    );
    let specs: Vec<ServerSpec> = (0..args.servers)
        .map(|i| ServerSpec {
            key: format!("vm_{i:05}"),
            deployment_id: args.deployment.clone(),
            properties: Default::default(),
        })
        .collect();
    let keys: Vec<ServerKey> = specs.iter().map(ServerSpec::server_key).collect();

    let before = stats(&args.cloudsim).await?;
    let start = Instant::now();
    let provisioned = provisioner.provision(specs).await;
    let provision_s = start.elapsed().as_secs_f64();
    let alive_after_provision = count(&stats(&args.cloudsim).await?, "alive");
    let start_delete = Instant::now();
    let deprovisioned = provisioner.deprovision(keys).await;
    let deprovision_s = start_delete.elapsed().as_secs_f64();
    let after = stats(&args.cloudsim).await?;

    let first_error = provisioned
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .chain(
            deprovisioned
                .iter()
                .filter_map(|r| r.as_ref().err().map(ToString::to_string)),
        )
        .next();
    let delta = |name: &str| count(&after, name) - count(&before, name);
    println!(
        "{}",
        json!({
            "servers": args.servers,
            "provision_s": provision_s,
            "deprovision_s": deprovision_s,
            "provision_failed": provisioned.iter().filter(|r| r.is_err()).count(),
            "deprovision_failed": deprovisioned.iter().filter(|r| r.is_err()).count(),
            "first_error": first_error,
            "alive_after_provision": alive_after_provision,
            "requests": delta("requests"),
            "rate_limited": delta("rate_limited"),
            "injected_errors": delta("injected_errors"),
            "lost_responses": delta("lost_responses"),
            "created": delta("created"),
            "duplicates": delta("duplicates"),
            "alive": count(&after, "alive"),
        })
    );
    Ok(())
}
