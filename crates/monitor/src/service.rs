//! [`Monitor`]: one replica of the monitor service.
//!
//! **Shards.** The `heartbeats` exchange hashes each agent onto one of the `monitor.<n>` queues.
//! A replica claims a shard by consuming its queue as the *exclusive* consumer; the broker
//! refuses anyone else while it holds it and lets the next claimant in the moment its channel
//! closes (the replica died or lost its connection). Every [`MonitorConfig::claim_interval`] a
//! replica tries to claim the shards it does not hold, up to [`MonitorConfig::max_shards`]
//! (so that several replicas split the shards); past that cap it only takes over a shard found
//! free on one of every [`MonitorConfig::takeover_every`] rounds: a shard no replica held for
//! that long lost its replica. A replica that takes over a shard starts without its agents'
//! history: an agent that died before the takeover and never beats again is not reported by
//! the new owner.
//!
//! **Detection.** Each heartbeat updates the agent's detector in the [`Tracker`]; a check every
//! [`MonitorConfig::check_interval`] confirms failures. A confirmed failure publishes an
//! `agent_failed` event to `ingest` and queues a heal of the agent's instance; a heartbeat from
//! a failed agent publishes `agent_recovered` and drops its heal if it has not started.
//!
//! **Healing.** A task advances the [`HealQueue`] through the [`Healer`] every
//! [`MonitorConfig::heal_interval`] and publishes `heal_started` for each heal it starts.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use drover_bus::{Bus, BusError, ConsumeOptions, Message};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::codec;
use crate::events::MonitorEvent;
use crate::heal::{HealQueue, HealRequest, Healer};
use crate::metrics::Metrics;
use crate::tracker::{AgentView, Tracker, TrackerConfig, Transition};

/// How a replica runs.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub tracker: TrackerConfig,
    /// How often failures are confirmed: adds at most this much to detection latency.
    pub check_interval: Duration,
    /// How often unheld shards are claimed.
    pub claim_interval: Duration,
    /// The most shards claimed outright; `None` for all of them.
    pub max_shards: Option<usize>,
    /// Past `max_shards`, a free shard is taken over on one claim round of this many.
    pub takeover_every: u32,
    /// How often queued heals are tried and running ones checked.
    pub heal_interval: Duration,
    /// The deployment the agents' instances belong to (heartbeats do not carry it yet).
    pub deployment: String,
    /// Heartbeats a shard consumer holds unacknowledged.
    pub prefetch: u16,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            tracker: TrackerConfig::default(),
            check_interval: Duration::from_millis(20),
            claim_interval: Duration::from_secs(1),
            max_shards: None,
            takeover_every: 3,
            heal_interval: Duration::from_millis(250),
            deployment: String::new(),
            prefetch: 1000,
        }
    }
}

/// What this replica holds and knows, for `GetHealth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub shards: Vec<u32>,
    pub agents_alive: u64,
    pub agents_failed: u64,
    pub heals_running: u64,
    pub heals_queued: u64,
}

struct Shared {
    tracker: Mutex<Tracker>,
    shards: Mutex<BTreeSet<u32>>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shards(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_agent_gauges(&self, tracker: &Tracker) {
        let (alive, failed) = tracker.counts();
        self.metrics
            .agents_alive
            .store(alive as u64, Ordering::Relaxed);
        self.metrics
            .agents_failed
            .store(failed as u64, Ordering::Relaxed);
    }
}

/// A running replica; dropping it stops every task and releases its shards.
pub struct Monitor {
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

impl Monitor {
    /// Starts the replica's tasks on the current Tokio runtime.
    pub fn start(bus: Arc<dyn Bus>, healer: Arc<dyn Healer>, config: MonitorConfig) -> Self {
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::new(config.tracker)),
            shards: Mutex::new(BTreeSet::new()),
            metrics: Arc::new(Metrics::default()),
        });
        let (events, events_rx) = mpsc::unbounded_channel();
        let (heals, heals_rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        tasks.spawn(publish_events(bus.clone(), events_rx));
        tasks.spawn(claim_shards(
            bus,
            shared.clone(),
            config.clone(),
            events.clone(),
            heals.clone(),
        ));
        tasks.spawn(check(shared.clone(), config.clone(), events.clone(), heals));
        tasks.spawn(heal(shared.clone(), healer, config, heals_rx, events));
        Monitor {
            shared,
            _tasks: tasks,
        }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn health(&self) -> Health {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (alive, failed) = self.shared.tracker().counts();
        let metrics = &self.shared.metrics;
        Health {
            shards: self.shared.shards().iter().copied().collect(),
            agents_alive: alive as u64,
            agents_failed: failed as u64,
            heals_running: get(&metrics.heals_running),
            heals_queued: get(&metrics.heals_queued),
        }
    }

    pub fn agents(&self) -> Vec<AgentView> {
        self.shared.tracker().agents(Instant::now())
    }
}

/// What the shard consumers and the check send the heal task.
enum HealCommand {
    Heal(HealRequest),
    Cancel(HealRequest),
}

fn apply(queue: &mut HealQueue, command: HealCommand) {
    match command {
        HealCommand::Heal(request) => queue.request(request),
        HealCommand::Cancel(request) => queue.cancel(&request),
    };
}

fn heal_request(config: &MonitorConfig, agent: &str) -> HealRequest {
    HealRequest {
        deployment: config.deployment.clone(),
        instance: agent.to_owned(),
    }
}

/// Publishes events to `ingest` in order, confirms awaited off the loop.
async fn publish_events(bus: Arc<dyn Bus>, mut events: mpsc::UnboundedReceiver<MonitorEvent>) {
    let route = bus.topology().ingest();
    while let Some(event) = events.recv().await {
        let record = event.record(SystemTime::now());
        let message = Message::new(codec::encode_record(&record)).with_id(record.id.clone());
        match bus.publish(&route, message).await {
            Ok(confirm) => {
                tokio::spawn(async move {
                    if let Err(error) = confirm.await {
                        tracing::warn!(event = %record.id, %error, "event not confirmed");
                    }
                });
            }
            Err(error) => tracing::warn!(event = %record.id, %error, "event not published"),
        }
    }
}

async fn claim_shards(
    bus: Arc<dyn Bus>,
    shared: Arc<Shared>,
    config: MonitorConfig,
    events: mpsc::UnboundedSender<MonitorEvent>,
    heals: mpsc::UnboundedSender<HealCommand>,
) {
    let shards = bus.topology().monitor_shards();
    let cap = config.max_shards.unwrap_or(shards as usize);
    let (lost_tx, mut lost) = mpsc::unbounded_channel::<u32>();
    let mut consumers = JoinSet::new();
    let mut ticker = tokio::time::interval(config.claim_interval);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(shard) = lost.recv() => {
                shared.shards().remove(&shard);
                let mut tracker = shared.tracker();
                tracker.release_shard(shard);
                shared.update_agent_gauges(&tracker);
                shared.metrics.shards_held.store(shared.shards().len() as u64, Ordering::Relaxed);
                continue;
            }
        }
        round += 1;
        let takeover = round.is_multiple_of(u64::from(config.takeover_every.max(1)));
        for shard in 0..shards {
            let held = shared.shards().len();
            if shared.shards().contains(&shard) || (held >= cap && !takeover) {
                continue;
            }
            let queue = bus.topology().monitor_queue_name(shard);
            let options = ConsumeOptions::default()
                .with_prefetch(config.prefetch)
                .exclusive();
            match bus.consume(&queue, options).await {
                Ok(consumer) => {
                    tracing::info!(shard, "claimed heartbeat shard");
                    shared.shards().insert(shard);
                    shared
                        .metrics
                        .shards_held
                        .store(shared.shards().len() as u64, Ordering::Relaxed);
                    let context = ShardContext {
                        shard,
                        shared: shared.clone(),
                        config: config.clone(),
                        events: events.clone(),
                        heals: heals.clone(),
                    };
                    let lost_tx = lost_tx.clone();
                    consumers.spawn(async move {
                        let error = consume_shard(consumer, context).await;
                        tracing::warn!(shard, %error, "heartbeat shard lost");
                        let _ = lost_tx.send(shard);
                    });
                }
                Err(BusError::Refused(_)) => {}
                Err(error) => tracing::warn!(shard, %error, "cannot claim heartbeat shard"),
            }
        }
    }
}

struct ShardContext {
    shard: u32,
    shared: Arc<Shared>,
    config: MonitorConfig,
    events: mpsc::UnboundedSender<MonitorEvent>,
    heals: mpsc::UnboundedSender<HealCommand>,
}

/// Feeds one shard's heartbeats to the tracker until the consumer fails; returns why.
async fn consume_shard(mut consumer: drover_bus::Consumer, context: ShardContext) -> BusError {
    let metrics = &context.shared.metrics;
    loop {
        let delivery = match consumer.next().await {
            Ok(delivery) => delivery,
            Err(error) => return error,
        };
        let beat = match codec::decode_heartbeat(&delivery.message.body) {
            Ok(beat) => beat,
            Err(reason) => {
                metrics.malformed.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = delivery.reject(&reason).await {
                    tracing::warn!(%error, "cannot dead-letter a malformed heartbeat");
                }
                continue;
            }
        };
        metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        let recovered = {
            let mut tracker = context.shared.tracker();
            let transition = tracker.heartbeat(&beat.agent, context.shard, Instant::now());
            if transition.is_some() {
                context.shared.update_agent_gauges(&tracker);
            }
            transition
        };
        if let Some(Transition::Recovered { agent, down, .. }) = recovered {
            tracing::info!(%agent, ?down, "agent recovered");
            metrics.recoveries.fetch_add(1, Ordering::Relaxed);
            let _ = context
                .heals
                .send(HealCommand::Cancel(heal_request(&context.config, &agent)));
            let _ = context.events.send(MonitorEvent::AgentRecovered {
                deployment: context.config.deployment.clone(),
                agent,
                down,
            });
        }
        if let Err(error) = delivery.ack().await {
            // A stale delivery: the consumer is gone and the next call says why.
            tracing::debug!(%error, "heartbeat not acknowledged");
        }
    }
}

async fn check(
    shared: Arc<Shared>,
    config: MonitorConfig,
    events: mpsc::UnboundedSender<MonitorEvent>,
    heals: mpsc::UnboundedSender<HealCommand>,
) {
    let mut ticker = tokio::time::interval(config.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let failed = {
            let mut tracker = shared.tracker();
            let failed = tracker.check(Instant::now());
            shared.update_agent_gauges(&tracker);
            failed
        };
        for transition in failed {
            let Transition::Failed {
                agent,
                shard,
                silent,
                phi,
            } = transition
            else {
                continue;
            };
            tracing::warn!(%agent, shard, ?silent, phi, "agent failed");
            shared.metrics.failures.fetch_add(1, Ordering::Relaxed);
            shared.metrics.observe_detection(silent);
            let _ = heals.send(HealCommand::Heal(heal_request(&config, &agent)));
            let _ = events.send(MonitorEvent::AgentFailed {
                deployment: config.deployment.clone(),
                agent,
                shard,
                silent,
                phi,
            });
        }
    }
}

async fn heal(
    shared: Arc<Shared>,
    healer: Arc<dyn Healer>,
    config: MonitorConfig,
    mut commands: mpsc::UnboundedReceiver<HealCommand>,
    events: mpsc::UnboundedSender<MonitorEvent>,
) {
    let mut queue = HealQueue::default();
    let mut ticker = tokio::time::interval(config.heal_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(command) = commands.recv() => {
                apply(&mut queue, command);
                // Take whatever else is waiting, then try at once.
                while let Ok(command) = commands.try_recv() {
                    apply(&mut queue, command);
                }
            }
        }
        for started in queue.advance(healer.as_ref()).await {
            tracing::info!(instance = %started.request.instance,
                execution = %started.execution_id, "heal started");
            shared.metrics.heals_started.fetch_add(1, Ordering::Relaxed);
            let _ = events.send(MonitorEvent::HealStarted {
                deployment: started.request.deployment,
                instance: started.request.instance,
                execution_id: started.execution_id,
            });
        }
        let (running, queued) = queue.counts();
        shared
            .metrics
            .heals_running
            .store(running as u64, Ordering::Relaxed);
        shared
            .metrics
            .heals_queued
            .store(queued as u64, Ordering::Relaxed);
    }
}
