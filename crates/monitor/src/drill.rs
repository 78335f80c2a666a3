//! A failure drill on a real broker: hollow agents heartbeat to a monitor replica, some are
//! killed at a known moment, and the monitor's `agent_failed` events are compared with what
//! really happened. The RabbitMQ test asserts on its report; `monitor-bench` prints its figures.
//!
//! Detection latency is the event's detection time minus the moment the agent's heartbeat
//! stopped (both wall clock, one machine). A false positive is an `agent_failed` for an agent
//! that was never stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use drover_agent::{
    AgentIdentity, AgentService, HeartbeatGroups, HollowHost, OperationRunner, PluginRegistry,
    RunnerConfig, hollow_agent_name,
};
use drover_bus::{AmqpBus, AmqpOptions, Bus, ConsumeOptions, Topology};
use tokio::sync::mpsc;

use crate::{MemoryHealer, Monitor, MonitorConfig};

/// The deployment the drill's agents belong to.
pub const DEPLOYMENT: &str = "drill";

/// How long the agents may take to start.
const START_LIMIT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    pub agents: usize,
    /// How many agents are stopped, spread evenly over the names.
    pub killed: usize,
    pub heartbeat: Duration,
    /// How long every agent has been heard from before the kill.
    pub warmup: Duration,
    /// How long the monitor is watched after the kill.
    pub observe: Duration,
    /// Full hollow agents (a queue and a consumer each, one channel per agent) rather than
    /// their heartbeats alone; a broker allows about 2,000 channels on one connection.
    pub services: bool,
    pub monitor: MonitorConfig,
}

impl DrillConfig {
    pub fn new(agents: usize, killed: usize) -> Self {
        Self {
            agents,
            killed,
            heartbeat: Duration::from_millis(200),
            warmup: Duration::from_secs(10),
            observe: Duration::from_secs(120),
            services: true,
            monitor: MonitorConfig {
                deployment: DEPLOYMENT.into(),
                ..MonitorConfig::default()
            },
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct DrillReport {
    pub agents: usize,
    /// Each stopped agent and, if it was detected, after how long.
    pub killed: BTreeMap<String, Option<Duration>>,
    /// Agents reported failed that were not stopped, or before they were.
    pub false_positives: BTreeSet<String>,
    /// Heals the monitor started: (instance, execution id).
    pub heals: Vec<(String, String)>,
    pub heartbeats: u64,
    /// Heartbeats the monitor consumed per second while it was watched (the agents send
    /// `agents / interval`; fewer means the broker or the monitor could not keep up).
    pub heartbeats_per_s: f64,
}

impl DrillReport {
    /// Detection latencies, sorted.
    pub fn latencies(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self.killed.values().flatten().copied().collect();
        all.sort();
        all
    }

    /// The `p`th percentile (nearest rank) of the detection latencies.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let all = self.latencies();
        let rank = ((p / 100.0) * all.len() as f64).ceil() as usize;
        all.get(rank.clamp(1, all.len().max(1)) - 1).copied()
    }

    pub fn missed(&self) -> Vec<&str> {
        self.killed
            .iter()
            .filter(|(_, found)| found.is_none())
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// The agents' side: full hollow agents or heartbeats only, on one connection as one hollow
/// process has; both send their beats batched, as a hollow host does.
enum Fleet {
    /// The runner's work directory lives as long as the agents.
    Hollow {
        host: HollowHost,
        _work: tempfile::TempDir,
    },
    Beats(HeartbeatGroups),
}

impl Fleet {
    fn start(bus: Arc<dyn Bus>, config: &DrillConfig) -> anyhow::Result<Self> {
        if !config.services {
            let agents = (0..config.agents)
                .map(|i| AgentIdentity::from(hollow_agent_name(i)))
                .collect();
            return Ok(Fleet::Beats(HeartbeatGroups::start(
                bus,
                agents,
                config.heartbeat,
            )));
        }
        let work = tempfile::tempdir()?;
        let runner = Arc::new(OperationRunner::new(
            RunnerConfig::new(work.path()),
            PluginRegistry::hollow(Duration::ZERO),
            drover_agent::discard_logs(),
        )?);
        let host = HollowHost::start(bus.clone(), config.agents, Some(config.heartbeat), |q| {
            AgentService::new(bus.clone(), runner.clone(), q)
        });
        Ok(Fleet::Hollow { host, _work: work })
    }

    fn stop(&mut self, index: usize) -> bool {
        match self {
            Fleet::Hollow { host, .. } => host.stop_heartbeat(index),
            Fleet::Beats(beats) => beats.stop(index),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Runs the drill against the broker at `url`, with `topology` (a prefix of its own).
pub async fn run(
    url: &str,
    topology: Topology,
    config: DrillConfig,
) -> anyhow::Result<DrillReport> {
    let connect = |name: &str| {
        let options = AmqpOptions::new(url.to_owned(), topology.clone()).with_connection_name(name);
        async move {
            AmqpBus::connect(options)
                .await
                .context("connecting to RabbitMQ")
        }
    };
    let monitor_bus: Arc<dyn Bus> = Arc::new(connect("drill-monitor").await?);
    let agent_bus: Arc<dyn Bus> = Arc::new(connect("drill-agents").await?);
    let mut ingest = monitor_bus
        .consume(
            &topology.ingest_queue_name(),
            ConsumeOptions::default().with_prefetch(1000),
        )
        .await?;
    // Every failure the monitor reports, from its start: (agent, detected at, ms since epoch).
    let (failures_tx, mut failures) = mpsc::unbounded_channel::<(String, u64)>();
    let collector = tokio::spawn(async move {
        loop {
            let delivery = ingest.next().await?;
            let record =
                crate::codec::decode_record(&delivery.message.body).map_err(anyhow::Error::msg)?;
            delivery.ack().await?;
            if record.event.event_type != "agent_failed" {
                continue;
            }
            let arguments = &record.event.message.arguments;
            let agent = arguments["agent"].as_str().unwrap_or_default().to_owned();
            let detected_at = arguments["detected_at_ms"].as_u64().unwrap_or_default();
            if failures_tx.send((agent, detected_at)).is_err() {
                return Ok::<(), anyhow::Error>(());
            }
        }
    });

    let healer = Arc::new(MemoryHealer::new());
    let monitor = Monitor::start(monitor_bus.clone(), healer.clone(), config.monitor.clone());
    let mut fleet = Fleet::start(agent_bus, &config)?;
    // Starting many agents takes a while (a queue and a consumer each): wait until every one
    // is heard from, then give their detectors a warm-up's worth of history.
    let started = tokio::time::Instant::now();
    loop {
        let health = monitor.health();
        if health.agents_alive + health.agents_failed == config.agents as u64 {
            break;
        }
        if started.elapsed() > START_LIMIT {
            bail!(
                "{health:?} after {START_LIMIT:?}, for {} agents",
                config.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!(after = ?started.elapsed(), "every agent tracked");
    tokio::time::sleep(config.warmup).await;

    let step = (config.agents / config.killed.max(1)).max(1);
    let victims: Vec<usize> = (0..config.killed).map(|k| k * step).collect();
    let beats = || {
        monitor
            .metrics()
            .heartbeats
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let watched = (tokio::time::Instant::now(), beats());
    let killed_at = now_ms();
    for &index in &victims {
        if !fleet.stop(index) {
            bail!("agent {index} has no heartbeat to stop");
        }
    }
    let mut report = DrillReport {
        agents: config.agents,
        killed: victims
            .iter()
            .map(|&i| (hollow_agent_name(i), None))
            .collect(),
        ..DrillReport::default()
    };
    tokio::time::sleep(config.observe).await;
    if collector.is_finished() {
        collector.await??;
        bail!("the ingest consumer stopped");
    }
    collector.abort();
    // A failure before the kill is a false alarm, whoever it was about.
    while let Ok((agent, detected_at)) = failures.try_recv() {
        match report.killed.get_mut(&agent) {
            Some(found) if detected_at >= killed_at => {
                found.get_or_insert(Duration::from_millis(detected_at - killed_at));
            }
            _ => {
                report.false_positives.insert(agent);
            }
        }
    }
    report.heartbeats = beats();
    report.heartbeats_per_s =
        (report.heartbeats - watched.1) as f64 / watched.0.elapsed().as_secs_f64();
    report.heals = healer
        .heals()
        .into_iter()
        .map(|(_, instance, id)| (instance, id))
        .collect();
    drop(fleet);
    drop(monitor);
    Ok(report)
}
