//! [`Heartbeat`]: an agent's "still here", published at a fixed interval to the `heartbeats`
//! consistent-hash exchange. The routing key is the agent's name, so the exchange spreads
//! agents over the `monitor.<n>` shards and keeps each agent on one shard.
//!
//! [`HeartbeatGroups`]: the heartbeats of many agents of one process (hollow agents), a batch
//! per group of agents and tick instead of a message per agent: 10,000 agents beating every
//! 200 ms are 50,000 messages a second alone, far more than a broker on a small machine
//! delivers, and 80 batches a second together.
//!
//! Heartbeats are not persistent (a stale one is worthless), and a slow broker must never make
//! them pile up: a tick missed while a publish waits is skipped, not made up later, and a tick
//! is skipped too while [`MAX_UNCONFIRMED`] messages still wait for their confirm. Confirms are
//! pipelined: a beat goes out without waiting for the previous one's.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_bus::{Bus, BusError, Confirm, Message};
use drover_proto::codec;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// How often an agent heartbeats unless told otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// Messages that may wait for their confirm at once, per agent or group; past this the
/// broker is behind, and sending more would only queue stale beats.
const MAX_UNCONFIRMED: usize = 8;

/// The most beats one batch carries, so that no message is large (about 40 bytes a beat).
pub const MAX_BEATS_PER_BATCH: usize = 1000;

/// Groups per monitor shard a [`HeartbeatGroups`] splits its agents into at least: a
/// consistent hash spreads a handful of keys unevenly, four per shard spread them fairly.
const GROUPS_PER_SHARD: usize = 4;

/// The body of one heartbeat (`drover.bus.v1`, see [`drover_proto::codec`]).
pub use drover_model::Heartbeat as HeartbeatMessage;

/// Who an agent is, as its heartbeats tell the monitor: its name (the routing key), and the
/// deployment and node instance it serves, which the monitor heals when the agent fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentIdentity {
    pub agent: String,
    /// Empty when unknown: the monitor then falls back to its own default deployment.
    pub deployment_id: String,
    /// Empty when unknown: the monitor then heals the instance named like the agent.
    pub node_instance_id: String,
}

impl AgentIdentity {
    /// An agent serving `node_instance_id` of `deployment_id`.
    pub fn new(
        agent: impl Into<String>,
        deployment_id: impl Into<String>,
        node_instance_id: impl Into<String>,
    ) -> Self {
        Self {
            agent: agent.into(),
            deployment_id: deployment_id.into(),
            node_instance_id: node_instance_id.into(),
        }
    }
}

impl From<String> for AgentIdentity {
    fn from(agent: String) -> Self {
        Self {
            agent,
            ..Self::default()
        }
    }
}

impl From<&str> for AgentIdentity {
    fn from(agent: &str) -> Self {
        agent.to_owned().into()
    }
}

/// Measurements attached to every heartbeat, for the monitor's threshold policies.
pub trait MetricSource: Send + Sync {
    /// The current values, by metric name.
    fn sample(&self) -> BTreeMap<String, f64>;
}

/// The host's 1-minute load average as `load`, from `/proc/loadavg` (nothing where there is
/// none).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadAverage;

impl MetricSource for LoadAverage {
    fn sample(&self) -> BTreeMap<String, f64> {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
            .map(|load| BTreeMap::from([("load".to_owned(), load)]))
            .unwrap_or_default()
    }
}

/// A running heartbeat; dropping it stops the beats.
#[derive(Debug)]
pub struct Heartbeat {
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Starts beating for `agent` every `interval` on `bus`, from a task on the current Tokio
    /// runtime. The first beat goes out at once.
    pub fn start(bus: Arc<dyn Bus>, agent: impl Into<AgentIdentity>, interval: Duration) -> Self {
        Self::start_with_metrics(bus, agent, interval, None)
    }

    /// [`Heartbeat::start`], each beat carrying a sample of `metrics`.
    pub fn start_with_metrics(
        bus: Arc<dyn Bus>,
        agent: impl Into<AgentIdentity>,
        interval: Duration,
        metrics: Option<Arc<dyn MetricSource>>,
    ) -> Self {
        // A group of one: its beats go alone, routed by the agent's name.
        let group = Group {
            agents: Arc::from([agent.into()]),
            live: Arc::from([AtomicBool::new(true)]),
            members: 0..1,
        };
        Heartbeat {
            task: tokio::spawn(beat(bus, group, interval, metrics)),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The heartbeats of many agents in one process, sent in batches; dropping it stops them all.
///
/// The agents are split into fixed groups of consecutive agents, each with its own ticker that
/// sends the beats of its live agents in one message (a lone beat, as a real agent sends, when
/// only one is live). A group is routed by its first agent's name: the key never changes while
/// the group runs (a stopped agent only leaves the batches), so the consistent-hash exchange
/// keeps every agent of a group on one monitor shard, as it keeps a single agent, and a replica
/// that takes the shard over gets the whole group. Hosts whose agents have different names use
/// different keys. There are at least [`GROUPS_PER_SHARD`] groups per monitor shard (when
/// there are agents enough), so that one host's agents still spread over the shards and their
/// replicas, and none holds more than [`MAX_BEATS_PER_BATCH`].
#[derive(Debug)]
pub struct HeartbeatGroups {
    live: Arc<[AtomicBool]>,
    tasks: Vec<JoinHandle<()>>,
}

impl HeartbeatGroups {
    /// Starts beating for every agent of `agents` every `interval` on `bus`, from tasks on the
    /// current Tokio runtime; agent `i` is `agents[i]`. The first beats go out at once.
    pub fn start(bus: Arc<dyn Bus>, agents: Vec<AgentIdentity>, interval: Duration) -> Self {
        let agents: Arc<[AgentIdentity]> = agents.into();
        let live: Arc<[AtomicBool]> = agents.iter().map(|_| AtomicBool::new(true)).collect();
        let shards = bus.topology().monitor_shards() as usize;
        let tasks = group_ranges(agents.len(), shards)
            .into_iter()
            .map(|members| {
                let group = Group {
                    agents: agents.clone(),
                    live: live.clone(),
                    members,
                };
                tokio::spawn(beat(bus.clone(), group, interval, None))
            })
            .collect();
        Self { live, tasks }
    }

    /// Stops the beats of agent `index` from the next tick on. False when it was already
    /// stopped or there is no such agent.
    pub fn stop(&self, index: usize) -> bool {
        self.live
            .get(index)
            .is_some_and(|live| live.swap(false, Ordering::Relaxed))
    }
}

impl Drop for HeartbeatGroups {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Consecutive ranges covering `0..agents`: at least [`GROUPS_PER_SHARD`] per shard, at most
/// [`MAX_BEATS_PER_BATCH`] agents each, none empty.
fn group_ranges(agents: usize, shards: usize) -> Vec<Range<usize>> {
    let groups = agents
        .div_ceil(MAX_BEATS_PER_BATCH)
        .max((shards * GROUPS_PER_SHARD).min(agents));
    if groups == 0 {
        return Vec::new();
    }
    let size = agents.div_ceil(groups);
    (0..agents)
        .step_by(size)
        .map(|start| start..(start + size).min(agents))
        .collect()
}

/// The agents one ticker beats for: `members` of the host's `agents`, each beating while its
/// flag in `live` is set.
struct Group {
    agents: Arc<[AgentIdentity]>,
    live: Arc<[AtomicBool]>,
    members: Range<usize>,
}

async fn beat(
    bus: Arc<dyn Bus>,
    group: Group,
    interval: Duration,
    metrics: Option<Arc<dyn MetricSource>>,
) {
    let Some(first) = group.agents.get(group.members.start) else {
        return;
    };
    let name = first.agent.clone();
    let route = bus.topology().heartbeat(&name);
    let mut sequences = vec![0u64; group.members.len()];
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut unconfirmed = VecDeque::new();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if unconfirmed.len() >= MAX_UNCONFIRMED {
                    tracing::debug!(agent = %name, "broker behind: heartbeat skipped");
                    continue;
                }
                let sample = metrics.as_ref().map(|m| m.sample()).unwrap_or_default();
                let sent_at_ms = now_ms();
                let live: Vec<usize> = group
                    .members
                    .clone()
                    .filter(|&i| group.live.get(i).is_some_and(|l| l.load(Ordering::Relaxed)))
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let beats: Vec<HeartbeatMessage> = live
                    .iter()
                    .map(|&i| {
                        let identity = &group.agents[i];
                        HeartbeatMessage {
                            agent: identity.agent.clone(),
                            sequence: sequences[i - group.members.start],
                            sent_at_ms,
                            deployment_id: identity.deployment_id.clone(),
                            node_instance_id: identity.node_instance_id.clone(),
                            metrics: sample.clone(),
                        }
                    })
                    .collect();
                match bus.publish(&route, Message::new(codec::encode_heartbeats(&beats))).await {
                    Ok(confirm) => {
                        unconfirmed.push_back(confirm);
                        for i in live {
                            sequences[i - group.members.start] += 1;
                        }
                    }
                    Err(error) => report(&name, &mut failing, Err(error)),
                }
            }
            confirmed = oldest(&mut unconfirmed) => {
                unconfirmed.pop_front();
                report(&name, &mut failing, confirmed);
            }
        }
    }
}

/// Resolves with the oldest beat's confirm; never while none waits.
async fn oldest(unconfirmed: &mut VecDeque<Confirm>) -> Result<(), BusError> {
    match unconfirmed.front_mut() {
        Some(confirm) => confirm.await,
        None => std::future::pending().await,
    }
}

/// Logs when beats start and stop failing, not every failed beat (an agent beats 5 times a
/// second).
fn report(agent: &str, failing: &mut bool, outcome: Result<(), BusError>) {
    match outcome {
        Err(error) if !*failing => {
            tracing::warn!(%agent, %error, "heartbeats failing");
            *failing = true;
        }
        Ok(()) if *failing => {
            tracing::info!(%agent, "heartbeats confirmed again");
            *failing = false;
        }
        _ => {}
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU32, Ordering};

    use drover_bus::{ConsumeOptions, Consumer, MemoryBus, QueueSpec, Route, Topology};

    use super::*;

    async fn monitors(bus: &MemoryBus) -> Vec<Consumer> {
        let t = bus.topology().clone();
        let mut monitors = Vec::new();
        for shard in 0..t.monitor_shards() {
            let options = ConsumeOptions::default().with_prefetch(1000);
            monitors.push(
                bus.consume(&t.monitor_queue_name(shard), options)
                    .await
                    .unwrap(),
            );
        }
        monitors
    }

    /// Every message waiting in the shards: the shard it was in and its beats.
    async fn drain_messages(monitors: &mut [Consumer]) -> Vec<(usize, Vec<HeartbeatMessage>)> {
        let mut messages = Vec::new();
        for (shard, monitor) in monitors.iter_mut().enumerate() {
            let poll = Duration::from_millis(20);
            while let Ok(delivery) = tokio::time::timeout(poll, monitor.next()).await {
                let delivery = delivery.unwrap();
                messages.push((
                    shard,
                    codec::decode_heartbeats(&delivery.message.body).unwrap(),
                ));
                delivery.ack().await.unwrap();
            }
        }
        messages
    }

    /// Every heartbeat waiting in the shards, with the shard it was in.
    async fn drain(monitors: &mut [Consumer]) -> Vec<(usize, HeartbeatMessage)> {
        drain_messages(monitors)
            .await
            .into_iter()
            .flat_map(|(shard, beats)| beats.into_iter().map(move |beat| (shard, beat)))
            .collect()
    }

    #[tokio::test]
    async fn agents_beat_at_the_interval_over_several_shards_and_stop_when_dropped() {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let mut monitors = monitors(&bus).await;
        let hearts: Vec<_> = (0..8)
            .map(|i| Heartbeat::start(bus.clone(), format!("a{i}"), DEFAULT_HEARTBEAT_INTERVAL))
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(hearts);
        let beats = drain(&mut monitors).await;

        let mut by_agent: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut shards_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (shard, beat) in &beats {
            by_agent
                .entry(beat.agent.clone())
                .or_default()
                .push(beat.sequence);
            shards_of
                .entry(beat.agent.clone())
                .or_default()
                .insert(*shard);
        }
        assert_eq!(by_agent.len(), 8);
        for (agent, sequences) in &by_agent {
            // 6 beats in 1 s at 200 ms (one at once); generous bounds for a loaded machine.
            assert!((3..=8).contains(&sequences.len()), "{agent}: {sequences:?}");
            let expected: Vec<u64> = (0..sequences.len() as u64).collect();
            assert_eq!(sequences, &expected, "{agent}");
            assert_eq!(shards_of[agent].len(), 1, "{agent}: {:?}", shards_of[agent]);
        }
        let used: BTreeSet<_> = shards_of.values().flatten().collect();
        assert!(used.len() > 1, "8 agents all on shard {used:?}");

        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(drain(&mut monitors).await.is_empty(), "beats after drop");
    }

    struct Fixed;

    impl MetricSource for Fixed {
        fn sample(&self) -> BTreeMap<String, f64> {
            BTreeMap::from([("load".to_owned(), 1.5)])
        }
    }

    #[tokio::test]
    async fn beats_say_which_deployment_and_instance_and_carry_the_metrics() {
        let bus = Arc::new(MemoryBus::new(Topology::new().with_monitor_shards(1)));
        let mut monitors = monitors(&bus).await;
        let identity = AgentIdentity::new("agent-7", "d1", "host_x7");
        let heart = Heartbeat::start_with_metrics(
            bus.clone(),
            identity,
            Duration::from_millis(50),
            Some(Arc::new(Fixed)),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(heart);
        let beats = drain(&mut monitors).await;
        assert!(!beats.is_empty());
        for (_, beat) in beats {
            assert_eq!(
                (beat.agent.as_str(), beat.deployment_id.as_str()),
                ("agent-7", "d1")
            );
            assert_eq!(beat.node_instance_id, "host_x7");
            assert_eq!(beat.metrics, BTreeMap::from([("load".to_owned(), 1.5)]));
        }
    }

    #[test]
    fn the_load_average_is_read_where_there_is_one() {
        let sample = LoadAverage.sample();
        if std::path::Path::new("/proc/loadavg").exists() {
            assert!(sample["load"] >= 0.0, "{sample:?}");
        } else {
            assert!(sample.is_empty());
        }
    }

    /// A broker that takes a second over each of its first `slow` publishes.
    struct Stalling {
        inner: MemoryBus,
        slow: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Bus for Stalling {
        fn topology(&self) -> &Topology {
            self.inner.topology()
        }

        async fn declare_queue(&self, spec: QueueSpec) -> drover_bus::Result<()> {
            self.inner.declare_queue(spec).await
        }

        async fn publish(&self, route: &Route, message: Message) -> drover_bus::Result<Confirm> {
            let stall = self
                .slow
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if stall {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            self.inner.publish(route, message).await
        }

        async fn consume(
            &self,
            queue: &str,
            options: ConsumeOptions,
        ) -> drover_bus::Result<Consumer> {
            self.inner.consume(queue, options).await
        }
    }

    #[tokio::test]
    async fn ticks_missed_while_the_broker_stalls_are_skipped_not_made_up() {
        let bus = Arc::new(Stalling {
            inner: MemoryBus::new(Topology::new().with_monitor_shards(1)),
            slow: AtomicU32::new(2),
        });
        let mut monitors = monitors(&bus.inner).await;
        let heart = Heartbeat::start(bus.clone(), "a", Duration::from_millis(100));
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(heart);
        let beats = drain(&mut monitors).await.len();
        // 2 stalled beats, then about 10 in the last second. Making up the 20 ticks missed
        // during the stall gives about 25.
        assert!((5..=16).contains(&beats), "{beats} beats");
    }

    #[test]
    fn groups_cover_the_agents_in_order_spread_over_the_shards_and_stay_small() {
        for (agents, shards) in [(0, 4), (1, 4), (3, 4), (200, 4), (10_000, 4), (50_001, 2)] {
            let ranges = group_ranges(agents, shards);
            let covered: Vec<usize> = ranges.iter().cloned().flatten().collect();
            assert_eq!(covered, (0..agents).collect::<Vec<_>>(), "{agents}");
            assert!(ranges.iter().all(|r| !r.is_empty()), "{ranges:?}");
            assert!(
                ranges.iter().all(|r| r.len() <= MAX_BEATS_PER_BATCH),
                "{agents}: {}",
                ranges.iter().map(Range::len).max().unwrap_or_default()
            );
            assert!(
                ranges.len() >= agents.min(shards * GROUPS_PER_SHARD),
                "{ranges:?}"
            );
        }
        assert_eq!(group_ranges(10_000, 4).len(), 16);
        assert_eq!(group_ranges(50_001, 2).len(), 51);
    }

    #[tokio::test]
    async fn groups_send_batches_of_their_live_agents_and_leave_a_stopped_one_out() {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let mut monitors = monitors(&bus).await;
        let agents: Vec<AgentIdentity> = (0..40)
            .map(|i| AgentIdentity::new(format!("a{i}"), "d1", format!("host_{i}")))
            .collect();
        let hearts = HeartbeatGroups::start(bus.clone(), agents, Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = drain_messages(&mut monitors).await;
        assert!(hearts.stop(5));
        assert!(!hearts.stop(5), "stopped twice");
        assert!(!hearts.stop(40), "no such agent");
        // Whatever was sent before the stop took effect.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let between = drain_messages(&mut monitors).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = drain_messages(&mut monitors).await;
        drop(hearts);

        let heard = |messages: &[(usize, Vec<HeartbeatMessage>)]| -> BTreeSet<String> {
            messages
                .iter()
                .flat_map(|(_, beats)| beats.iter().map(|b| b.agent.clone()))
                .collect()
        };
        let all: BTreeSet<String> = (0..40).map(|i| format!("a{i}")).collect();
        assert_eq!(heard(&before), all);
        let mut without = all.clone();
        without.remove("a5");
        assert_eq!(heard(&after), without);

        let mut shards_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let mut sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (shard, beats) in before.iter().chain(&between).chain(&after) {
            // 40 agents in 14 groups of at most 3.
            assert!((1..=3).contains(&beats.len()), "{beats:?}");
            for beat in beats {
                assert_eq!(beat.node_instance_id, beat.agent.replace('a', "host_"));
                shards_of
                    .entry(beat.agent.clone())
                    .or_default()
                    .insert(*shard);
                sequences
                    .entry(beat.agent.clone())
                    .or_default()
                    .push(beat.sequence);
            }
        }
        let batched = before.iter().filter(|(_, beats)| beats.len() > 1).count();
        assert!(
            batched * 2 > before.len(),
            "{batched} of {} batched",
            before.len()
        );
        for (agent, shards) in &shards_of {
            assert_eq!(shards.len(), 1, "{agent} on {shards:?}");
        }
        let used: BTreeSet<_> = shards_of.values().flatten().collect();
        assert!(used.len() > 1, "40 agents all on shard {used:?}");
        // Each agent counts its own beats from 0, none skipped.
        for (agent, sequence) in &sequences {
            let expected: Vec<u64> = (0..sequence.len() as u64).collect();
            assert_eq!(sequence, &expected, "{agent}");
        }
    }
}
