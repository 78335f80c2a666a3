//! [`Heartbeat`]: an agent's "still here", published at a fixed interval to the `heartbeats`
//! consistent-hash exchange. The routing key is the agent's name, so the exchange spreads
//! agents over the `monitor.<n>` shards and keeps each agent on one shard.
//!
//! Heartbeats are not persistent (a stale one is worthless), and a slow broker must never make
//! them pile up: a tick missed while a publish waits is skipped, not made up later, and a tick
//! is skipped too while [`MAX_UNCONFIRMED`] beats still wait for their confirm. Confirms are
//! pipelined: a beat goes out without waiting for the previous one's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_bus::{Bus, BusError, Confirm, Message};
use drover_proto::codec;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// How often an agent heartbeats unless told otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// Beats that may wait for their confirm at once; past this the broker is behind, and
/// sending more would only queue stale beats.
const MAX_UNCONFIRMED: usize = 8;

/// The body of one heartbeat (`drover.bus.v1`, see [`drover_proto::codec`]).
pub use drover_model::Heartbeat as HeartbeatMessage;

/// A running heartbeat; dropping it stops the beats.
#[derive(Debug)]
pub struct Heartbeat {
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Starts beating for `agent` every `interval` on `bus`, from a task on the current Tokio
    /// runtime. The first beat goes out at once.
    pub fn start(bus: Arc<dyn Bus>, agent: impl Into<String>, interval: Duration) -> Self {
        Heartbeat {
            task: tokio::spawn(beat(bus, agent.into(), interval)),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beat(bus: Arc<dyn Bus>, agent: String, interval: Duration) {
    let route = bus.topology().heartbeat(&agent);
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut unconfirmed = VecDeque::new();
    let mut sequence = 0;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if unconfirmed.len() >= MAX_UNCONFIRMED {
                    tracing::debug!(%agent, "broker behind: heartbeat skipped");
                    continue;
                }
                let body = codec::encode_heartbeat(&HeartbeatMessage {
                    agent: agent.clone(),
                    sequence,
                    sent_at_ms: now_ms(),
                });
                match bus.publish(&route, Message::new(body)).await {
                    Ok(confirm) => {
                        unconfirmed.push_back(confirm);
                        sequence += 1;
                    }
                    Err(error) => report(&agent, &mut failing, Err(error)),
                }
            }
            confirmed = oldest(&mut unconfirmed) => {
                unconfirmed.pop_front();
                report(&agent, &mut failing, confirmed);
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
    use std::collections::{BTreeMap, BTreeSet};
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

    /// Every heartbeat waiting in the shards, with the shard it was in.
    async fn drain(monitors: &mut [Consumer]) -> Vec<(usize, HeartbeatMessage)> {
        let mut beats = Vec::new();
        for (shard, monitor) in monitors.iter_mut().enumerate() {
            let poll = Duration::from_millis(20);
            while let Ok(delivery) = tokio::time::timeout(poll, monitor.next()).await {
                let delivery = delivery.unwrap();
                beats.push((
                    shard,
                    codec::decode_heartbeat(&delivery.message.body).unwrap(),
                ));
                delivery.ack().await.unwrap();
            }
        }
        beats
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
}
