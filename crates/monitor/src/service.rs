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
//! **Detection.** Each heartbeat updates the agent's detector in the [`Tracker`] (a batch from a
//! hollow host: each of its beats, as if it had come alone); a check every
//! [`MonitorConfig::check_interval`] confirms failures. A confirmed failure publishes an
//! `agent_failed` event to `ingest` and queues a heal of the agent's instance; a heartbeat from
//! a failed agent publishes `agent_recovered` and drops its heal if it has not started.
//!
//! **Healing.** A failure is healed when the deployment's policies cover its instance's node
//! (the blueprint's `host_failure` policies, or the default auto-heal policy; read through a
//! [`PolicySource`], cached for [`MonitorConfig::policy_refresh`]). A task advances the
//! [`HealQueue`] through the [`Healer`] every [`MonitorConfig::heal_interval`] and publishes
//! `heal_started` for each heal it starts.
//!
//! **Scaling.** Every [`MonitorConfig::scale_interval`] the deployments' threshold policies
//! see the average of their metric over the live agents of their nodes (the metrics of each
//! agent's latest heartbeat); a decision starts a `scale` execution unless an install,
//! uninstall or scale runs on the deployment, and publishes `scale_started`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use drover_bus::{Bus, BusError, ConsumeOptions, Message};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::codec;
use crate::events::MonitorEvent;
use crate::heal::{BLOCKING_WORKFLOWS, HealQueue, HealRequest, Healer};
use crate::metrics::Metrics;
use crate::policy::{DefaultPolicies, Loaded, PolicySource, ScaleState};
use crate::tracker::{AgentView, Serves, Tracker, TrackerConfig, Transition};

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
    /// The deployment of agents whose heartbeats do not name one (agents that predate the
    /// field, or were not told).
    pub deployment: String,
    /// Heartbeats a shard consumer holds unacknowledged.
    pub prefetch: u16,
    /// How long a deployment's policies are used before they are read again.
    pub policy_refresh: Duration,
    /// How often threshold policies are evaluated.
    pub scale_interval: Duration,
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
            policy_refresh: Duration::from_secs(10),
            scale_interval: Duration::from_secs(1),
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
    policies: Policies,
}

/// Each deployment's policies, read through the source at most once per refresh period.
struct Policies {
    source: Arc<dyn PolicySource>,
    refresh: Duration,
    cache: Mutex<HashMap<String, (Instant, Arc<Loaded>)>>,
}

impl Policies {
    fn cache(&self) -> MutexGuard<'_, HashMap<String, (Instant, Arc<Loaded>)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The deployment's policies; when they cannot be read, the last ones read, else the
    /// default auto-heal policy.
    async fn get(&self, deployment: &str) -> Arc<Loaded> {
        let cached = self.cache().get(deployment).cloned();
        if let Some((read, loaded)) = &cached
            && read.elapsed() < self.refresh
        {
            return loaded.clone();
        }
        let source = self.source.clone();
        let name = deployment.to_owned();
        let read = tokio::task::spawn_blocking(move || source.load(&name)).await;
        let loaded = match read {
            Ok(Ok(loaded)) => {
                for reason in &loaded.policies.unsupported {
                    tracing::warn!(%deployment, %reason, "policy not applied");
                }
                Arc::new(loaded)
            }
            Ok(Err(error)) => {
                tracing::warn!(%deployment, %error, "cannot read the policies");
                cached.map(|(_, loaded)| loaded).unwrap_or_default()
            }
            Err(error) => {
                tracing::warn!(%deployment, %error, "reading the policies failed");
                cached.map(|(_, loaded)| loaded).unwrap_or_default()
            }
        };
        self.cache()
            .insert(deployment.to_owned(), (Instant::now(), loaded.clone()));
        loaded
    }
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
    /// Starts the replica's tasks on the current Tokio runtime, with the default auto-heal
    /// policy for every deployment.
    pub fn start(bus: Arc<dyn Bus>, healer: Arc<dyn Healer>, config: MonitorConfig) -> Self {
        Self::start_with_policies(bus, healer, Arc::new(DefaultPolicies), config)
    }

    /// Starts the replica's tasks on the current Tokio runtime, with each deployment's
    /// policies from `policies`.
    pub fn start_with_policies(
        bus: Arc<dyn Bus>,
        healer: Arc<dyn Healer>,
        policies: Arc<dyn PolicySource>,
        config: MonitorConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::new(config.tracker)),
            shards: Mutex::new(BTreeSet::new()),
            metrics: Arc::new(Metrics::default()),
            policies: Policies {
                source: policies,
                refresh: config.policy_refresh,
                cache: Mutex::new(HashMap::new()),
            },
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
        tasks.spawn(scale(
            shared.clone(),
            healer.clone(),
            config.clone(),
            events.clone(),
        ));
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

/// Queues a heal the deployment's policies allow, or drops a queued one.
async fn apply(shared: &Shared, queue: &mut HealQueue, command: HealCommand) {
    match command {
        HealCommand::Heal(request) if request.deployment.is_empty() => {
            // An agent that named no deployment (the central agent, one started without its
            // identity) and no configured default: there is nothing to heal it in.
            tracing::info!(instance = %request.instance, "not healed: no deployment known");
            shared.metrics.heals_skipped.fetch_add(1, Ordering::Relaxed);
        }
        HealCommand::Heal(request) => {
            let loaded = shared.policies.get(&request.deployment).await;
            let node = loaded.node(&request.instance);
            if loaded.policies.heals(node) {
                queue.request(request);
            } else {
                tracing::info!(instance = %request.instance, ?node,
                    "not healed: no host_failure policy of the blueprint covers its node");
                shared.metrics.heals_skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        HealCommand::Cancel(request) => {
            queue.cancel(&request);
        }
    }
}

/// What to heal when `agent` fails: the instance its heartbeats named, else the one named like
/// the agent (agents named after their host instance), in the deployment they named, else the
/// configured one.
fn heal_request(config: &MonitorConfig, agent: &str, serves: &Serves) -> HealRequest {
    let or = |named: &str, default: &str| {
        if named.is_empty() {
            default.to_owned()
        } else {
            named.to_owned()
        }
    };
    HealRequest {
        deployment: or(&serves.deployment_id, &config.deployment),
        instance: or(&serves.node_instance_id, agent),
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

/// Feeds one shard's heartbeats to the tracker until the consumer fails; returns why. Each beat
/// of a batch is recorded for its agent as if it had come alone, all under one lock.
async fn consume_shard(mut consumer: drover_bus::Consumer, context: ShardContext) -> BusError {
    let metrics = &context.shared.metrics;
    loop {
        let delivery = match consumer.next().await {
            Ok(delivery) => delivery,
            Err(error) => return error,
        };
        let beats = match codec::decode_heartbeats(&delivery.message.body) {
            Ok(beats) => beats,
            Err(reason) => {
                metrics.malformed.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = delivery.reject(&reason).await {
                    tracing::warn!(%error, "cannot dead-letter a malformed heartbeat");
                }
                continue;
            }
        };
        metrics
            .heartbeats
            .fetch_add(beats.len() as u64, Ordering::Relaxed);
        let recovered: Vec<Transition> = {
            let mut tracker = context.shared.tracker();
            let now = Instant::now();
            let recovered: Vec<Transition> = beats
                .into_iter()
                .filter_map(|beat| tracker.heartbeat(beat, context.shard, now))
                .collect();
            if !recovered.is_empty() {
                context.shared.update_agent_gauges(&tracker);
            }
            recovered
        };
        for transition in recovered {
            let Transition::Recovered {
                agent,
                serves,
                down,
                ..
            } = transition
            else {
                continue;
            };
            tracing::info!(%agent, ?down, "agent recovered");
            metrics.recoveries.fetch_add(1, Ordering::Relaxed);
            let request = heal_request(&context.config, &agent, &serves);
            let _ = context.events.send(MonitorEvent::AgentRecovered {
                deployment: request.deployment.clone(),
                instance: request.instance.clone(),
                agent,
                down,
            });
            let _ = context.heals.send(HealCommand::Cancel(request));
        }
        // Not awaited here: an ack resolves once the broker connection has written it, and one
        // write per heartbeat in turn would bound the shard's rate by the connection's round
        // trips, not by the broker.
        tokio::spawn(async move {
            if let Err(error) = delivery.ack().await {
                // A stale delivery: the consumer is gone and the next call says why.
                tracing::debug!(%error, "heartbeat not acknowledged");
            }
        });
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
                serves,
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
            let request = heal_request(&config, &agent, &serves);
            let _ = events.send(MonitorEvent::AgentFailed {
                deployment: request.deployment.clone(),
                instance: request.instance.clone(),
                agent,
                shard,
                silent,
                phi,
            });
            let _ = heals.send(HealCommand::Heal(request));
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
                apply(&shared, &mut queue, command).await;
                // Take whatever else is waiting, then try at once.
                while let Ok(command) = commands.try_recv() {
                    apply(&shared, &mut queue, command).await;
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

/// Evaluates the deployments' threshold policies on the live agents' latest metrics.
async fn scale(
    shared: Arc<Shared>,
    healer: Arc<dyn Healer>,
    config: MonitorConfig,
    events: mpsc::UnboundedSender<MonitorEvent>,
) {
    let mut states: HashMap<(String, String), ScaleState> = HashMap::new();
    let mut ticker = tokio::time::interval(config.scale_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deployment_of = |serves: &Serves| {
        if serves.deployment_id.is_empty() {
            config.deployment.clone()
        } else {
            serves.deployment_id.clone()
        }
    };
    loop {
        ticker.tick().await;
        let deployments: BTreeSet<String> = shared
            .tracker()
            .live_metrics()
            .map(|(serves, _)| deployment_of(serves))
            .filter(|deployment| !deployment.is_empty())
            .collect();
        for deployment in deployments {
            let loaded = shared.policies.get(&deployment).await;
            for rule in &loaded.policies.scale {
                let (sum, count) = shared
                    .tracker()
                    .live_metrics()
                    .filter(|(serves, _)| {
                        deployment_of(serves) == deployment
                            && loaded
                                .node(&serves.node_instance_id)
                                .is_some_and(|node| rule.nodes.contains(node))
                    })
                    .filter_map(|(_, metrics)| metrics.get(&rule.metric))
                    .fold((0.0, 0u32), |(sum, n), value| (sum + value, n + 1));
                let average = if count == 0 {
                    f64::NAN
                } else {
                    sum / f64::from(count)
                };
                let state = states
                    .entry((deployment.clone(), rule.name.clone()))
                    .or_default();
                let Some(decision) = rule.policy.observe(state, average, Instant::now()) else {
                    continue;
                };
                let blocked = match healer.active_executions(&deployment).await {
                    Ok(active) => active
                        .into_iter()
                        .find(|e| BLOCKING_WORKFLOWS.contains(&e.workflow_id.as_str()))
                        .map(|e| e.id),
                    Err(error) => Some(error.to_string()),
                };
                if let Some(reason) = blocked {
                    tracing::info!(%deployment, policy = %rule.name, %reason,
                        "scale not started: another execution runs, or none can be listed");
                    continue;
                }
                match healer
                    .start_scale(&deployment, &decision.group, decision.delta)
                    .await
                {
                    Ok(execution_id) => {
                        tracing::info!(%deployment, policy = %rule.name, group = %decision.group,
                            delta = decision.delta, average, %execution_id, "scale started");
                        shared
                            .metrics
                            .scales_started
                            .fetch_add(1, Ordering::Relaxed);
                        let _ = events.send(MonitorEvent::ScaleStarted {
                            deployment: deployment.clone(),
                            policy: rule.name.clone(),
                            group: decision.group,
                            delta: decision.delta,
                            value: average,
                            execution_id,
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%deployment, policy = %rule.name, %error,
                            "cannot start a scale");
                    }
                }
            }
        }
    }
}
