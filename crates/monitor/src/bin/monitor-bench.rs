//! `monitor-bench`: the failure drill (`drover_monitor::drill`) for each agent count given, on
//! the RabbitMQ at `DROVER_AMQP_URL`; prints, per count N, `detect_p50_ms_N`,
//! `detect_p99_ms_N` and `false_positives_N` as JSON lines
//! `{"name", "value", "unit", "reference", "reference_source", "target"}`. 1 % of the agents are
//! stopped; agents are heartbeats only (the detection path), since a full hollow agent costs
//! a broker channel each, and their beats travel batched as a hollow host sends them.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drover_bus::Topology;
use drover_monitor::drill::{self, DrillConfig};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    /// Agent counts, one drill each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    agents: Vec<usize>,
    /// The heartbeat interval of each drill, in milliseconds, in the order of `--agents` (the
    /// last one for the drills past the list): the interval a broker on this machine carries
    /// for that many agents, stated in the figures.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    heartbeat_ms: Vec<u64>,
    /// How long each drill watches after the kill, in seconds.
    #[arg(long, default_value_t = 120)]
    observe_s: u64,
}

fn main() -> anyhow::Result<()> {
    drover_telemetry::init_tracing("warn");
    let cli = Cli::parse();
    let url = std::env::var("DROVER_AMQP_URL").context("DROVER_AMQP_URL is not set")?;
    let runtime = tokio::runtime::Runtime::new()?;
    for (index, agents) in cli.agents.into_iter().enumerate() {
        let interval = cli
            .heartbeat_ms
            .get(index)
            .or(cli.heartbeat_ms.last())
            .copied()
            .unwrap_or(200);
        let heartbeat = Duration::from_millis(interval);
        let mut config = DrillConfig::new(agents, (agents / 100).max(1));
        config.services = false;
        config.heartbeat = heartbeat;
        config.monitor.tracker.phi.first_interval = heartbeat;
        config.observe = Duration::from_secs(cli.observe_s);
        let prefix = format!("bench.monitor.{}.{agents}.", std::process::id());
        let topology = Topology::new()
            .with_prefix(prefix)
            .with_queue_expiry(Duration::from_secs(60));
        let report = runtime.block_on(drill::run(&url, topology, config))?;
        let missed = report.missed();
        eprintln!(
            "monitor-bench: {agents} agents every {interval} ms, {} stopped, {} detected \
             (missed {}), {} false positives (first: {:?}), {} heals, {} heartbeats consumed \
             ({:.0}/s while watched)",
            report.killed.len(),
            report.latencies().len(),
            missed.len(),
            report.false_positives.len(),
            report.false_positives.iter().take(5).collect::<Vec<_>>(),
            report.heals.len(),
            report.heartbeats,
            report.heartbeats_per_s,
        );
        let ms = |p| report.percentile(p).map(|d| d.as_millis() as f64);
        let issue = format!(
            "issue 7: p99 detection under 1 s, no false positive; {agents} heartbeat-only \
             agents beating every {interval} ms, 1 % stopped, watched {} s",
            cli.observe_s
        );
        let emit = |name: String, value: Option<f64>, unit: &str, target: Option<f64>| {
            println!(
                "{}",
                json!({"name": name, "value": value, "unit": unit, "reference": null,
                       "reference_source": &issue, "target": target})
            );
        };
        emit(format!("detect_p50_ms_{agents}"), ms(50.0), "ms", None);
        emit(
            format!("detect_p99_ms_{agents}"),
            ms(99.0),
            "ms",
            Some(1000.0),
        );
        emit(
            format!("false_positives_{agents}"),
            Some(report.false_positives.len() as f64),
            "agents",
            Some(0.0),
        );
        emit(
            format!("heartbeats_per_s_{agents}"),
            Some(report.heartbeats_per_s.round()),
            "heartbeats/s",
            Some((agents as f64 * 1000.0 / interval as f64).round()),
        );
    }
    Ok(())
}
