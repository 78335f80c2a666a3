//! Hollow agents: many simulated agents in one process, for scale tests of the manager and the
//! broker without a machine per agent — like Kubernetes' kubemark hollow nodes.
//!
//! A hollow agent is a real [`AgentService`] on its own queue `agent.hollow-<i>` whose beats
//! go out batched with its neighbours' ([`HeartbeatGroups`]); only the operations are fake: every one succeeds without running, after an
//! optional delay. What they share keeps one agent cheap: one bus (one broker connection), one
//! runner (task ids are unique across agents, so one memory of recent tasks serves all), and
//! tasks on the runtime instead of a thread each.

use std::sync::Arc;
use std::time::Duration;

use drover_bus::{Bus, BusError};
use drover_model::OperationTask;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::heartbeat::{AgentIdentity, HeartbeatGroups};
use crate::plugin::{OperationEnv, Plugin, PluginFuture, PluginOutput, PluginRegistry};
use crate::service::{AgentQueue, AgentService};

/// The name of the `index`th hollow agent; its queue is `agent.hollow-<index>`.
pub fn hollow_agent_name(index: usize) -> String {
    format!("hollow-{index}")
}

/// Answers every operation with success after `delay` (at once when zero: a dry run).
pub struct Delayed(pub Duration);

impl Plugin for Delayed {
    fn run<'a>(&'a self, _task: &'a OperationTask, _env: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async move {
            if !self.0.is_zero() {
                tokio::time::sleep(self.0).await;
            }
            PluginOutput::succeeded(Value::Null)
        })
    }
}

impl PluginRegistry {
    /// The plugins of a hollow agent: [`Delayed`] for every plugin name.
    pub fn hollow(delay: Duration) -> Self {
        let mut plugins = PluginRegistry::empty();
        plugins.set_fallback(Arc::new(Delayed(delay)));
        plugins
    }
}

/// N hollow agents running on one bus; dropping it stops them all.
pub struct HollowHost {
    agents: JoinSet<Result<(), BusError>>,
    /// Every agent's heartbeats (none without heartbeats); agent `i` is index `i`.
    heartbeats: Option<HeartbeatGroups>,
}

impl HollowHost {
    /// Starts `count` agents `hollow-0` … `hollow-<count-1>`, each consuming its own queue
    /// through `service` (which is given the agent's name and returns its configured
    /// service), and heartbeating every `heartbeat` unless `None`. Must be called on a Tokio
    /// runtime.
    pub fn start(
        bus: Arc<dyn Bus>,
        count: usize,
        heartbeat: Option<Duration>,
        service: impl Fn(AgentQueue) -> AgentService,
    ) -> Self {
        let agents = (0..count).map(|i| hollow_agent_name(i).into()).collect();
        Self::start_agents(bus, agents, heartbeat, service)
    }

    /// Starts one agent per identity, each on the queue named after it, its heartbeats saying
    /// which deployment and instance it serves (agents named after host instances stand in for
    /// a deployment's hosts). Agent `i` is `agents[i]`.
    pub fn start_agents(
        bus: Arc<dyn Bus>,
        agents: Vec<AgentIdentity>,
        heartbeat: Option<Duration>,
        service: impl Fn(AgentQueue) -> AgentService,
    ) -> Self {
        let mut tasks = JoinSet::new();
        for identity in &agents {
            tasks.spawn(service(AgentQueue::Agent(identity.agent.clone())).run());
        }
        let heartbeats =
            heartbeat.map(|interval| HeartbeatGroups::start(bus.clone(), agents, interval));
        HollowHost {
            agents: tasks,
            heartbeats,
        }
    }

    /// Stops the heartbeat of agent `index`, which keeps serving its queue: a failure for the
    /// monitor to detect. False when it has no heartbeat (already stopped, or none started).
    pub fn stop_heartbeat(&mut self, index: usize) -> bool {
        self.heartbeats
            .as_ref()
            .is_some_and(|heartbeats| heartbeats.stop(index))
    }

    /// Runs until one agent's queue fails (the broker stays unreachable), with that error.
    pub async fn run(mut self) -> Result<(), BusError> {
        match self.agents.join_next().await {
            Some(Ok(result)) => result,
            // A panicking agent is a bug: let it surface as one.
            Some(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Cancelled only when the runtime shuts down; no agents at all when `count` was 0.
            Some(Err(_)) | None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use drover_bus::topology::OWNER_HEADER;
    use drover_bus::{ConsumeOptions, MemoryBus, Message, Topology};
    use drover_model::TaskOutcome;

    use super::*;
    use crate::runner::{OperationRunner, RunnerConfig};

    /// A runner whose every operation succeeds after `delay`, as hollow agents' do.
    fn hollow_runner(work: &std::path::Path, delay: Duration) -> Arc<OperationRunner> {
        Arc::new(
            OperationRunner::new(
                RunnerConfig::new(work),
                PluginRegistry::hollow(delay),
                crate::discard_logs(),
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn fifty_hollow_agents_answer_their_tasks_to_the_owner() {
        let agents = 50;
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let t = bus.topology().clone();
        bus.declare_queue(t.results_queue("w1")).await.unwrap();
        let mut results = bus
            .consume(&t.results_queue_name("w1"), ConsumeOptions::default())
            .await
            .unwrap();
        let work = tempfile::tempdir().unwrap();
        let runner = hollow_runner(work.path(), Duration::from_millis(5));
        let shared: Arc<dyn Bus> = bus.clone();
        let host = HollowHost::start(shared.clone(), agents, None, |queue| {
            AgentService::new(shared.clone(), runner.clone(), queue)
        });

        for index in 0..agents {
            let task = OperationTask {
                task_id: format!("t{index}"),
                execution_id: "e1".into(),
                plugin: "anything".into(),
                ..OperationTask::default()
            };
            let message = Message::new(drover_proto::codec::encode_task(&task))
                .with_id(task.task_id.clone())
                .with_header(OWNER_HEADER, "w1");
            let route = t.task_to_agent(&hollow_agent_name(index));
            drover_bus::suite::publish_when_routable(
                &*bus,
                &route,
                message,
                Duration::from_millis(10),
            )
            .await;
        }

        let mut answered = BTreeSet::new();
        while answered.len() < agents {
            let delivery = tokio::time::timeout(Duration::from_secs(5), results.next())
                .await
                .expect("every task answered in time")
                .unwrap();
            let result = drover_proto::codec::decode_result(&delivery.message.body).unwrap();
            assert_eq!(
                result.outcome,
                TaskOutcome::Succeeded {
                    result: Value::Null
                }
            );
            answered.insert(result.task_id);
            delivery.ack().await.unwrap();
        }
        let expected: BTreeSet<_> = (0..agents).map(|i| format!("t{i}")).collect();
        assert_eq!(answered, expected);
        drop(host);
    }

    #[tokio::test]
    async fn a_hollow_host_beats_in_batches_without_its_stopped_agent() {
        let agents = 20;
        let bus = Arc::new(MemoryBus::new(Topology::new().with_monitor_shards(1)));
        let t = bus.topology().clone();
        let mut shard = bus
            .consume(
                &t.monitor_queue_name(0),
                ConsumeOptions::default().with_prefetch(1000),
            )
            .await
            .unwrap();
        let work = tempfile::tempdir().unwrap();
        let runner = hollow_runner(work.path(), Duration::ZERO);
        let shared: Arc<dyn Bus> = bus.clone();
        let mut host = HollowHost::start(
            shared.clone(),
            agents,
            Some(Duration::from_millis(50)),
            |queue| AgentService::new(shared.clone(), runner.clone(), queue),
        );
        // Every message in the shard until it stays empty a while: each one's beats.
        let mut drain = async || {
            let mut messages = Vec::new();
            while let Ok(delivery) =
                tokio::time::timeout(Duration::from_millis(20), shard.next()).await
            {
                let delivery = delivery.unwrap();
                let beats = drover_proto::codec::decode_heartbeats(&delivery.message.body);
                let agents: BTreeSet<String> =
                    beats.unwrap().into_iter().map(|b| b.agent).collect();
                messages.push(agents);
                delivery.ack().await.unwrap();
            }
            messages
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = drain().await;
        assert!(host.stop_heartbeat(3));
        assert!(!host.stop_heartbeat(3), "stopped twice");
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = drain().await;
        drop(host);

        let all: BTreeSet<String> = (0..agents).map(hollow_agent_name).collect();
        let heard = |messages: &[BTreeSet<String>]| -> BTreeSet<String> {
            messages.iter().flatten().cloned().collect()
        };
        assert_eq!(heard(&before), all);
        let mut without = all;
        without.remove("hollow-3");
        assert_eq!(heard(&after), without);
        // One shard, so 4 groups of 5: a message per group and tick, not per agent.
        assert!(before.iter().all(|beats| beats.len() == 5), "{before:?}");
        assert!(
            after.iter().all(|beats| (4..=5).contains(&beats.len())),
            "{after:?}"
        );
    }
}
