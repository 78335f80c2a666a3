//! Hollow agents: many simulated agents in one process, for scale tests of the manager and the
//! broker without a machine per agent — like Kubernetes' kubemark hollow nodes.
//!
//! A hollow agent is a real [`AgentService`] on its own queue `agent.hollow-<i>` with its own
//! [`Heartbeat`]; only the operations are fake: every one succeeds without running, after an
//! optional delay. What they share keeps one agent cheap: one bus (one broker connection), one
//! runner (task ids are unique across agents, so one memory of recent tasks serves all), and
//! tasks on the runtime instead of a thread each.

use std::sync::Arc;
use std::time::Duration;

use drover_bus::{Bus, BusError};
use drover_model::OperationTask;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::heartbeat::Heartbeat;
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
    /// Agent `i`'s heartbeat at index `i` (none at all without heartbeats).
    heartbeats: Vec<Option<Heartbeat>>,
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
        let mut agents = JoinSet::new();
        let mut heartbeats = Vec::new();
        for index in 0..count {
            let name = hollow_agent_name(index);
            if let Some(interval) = heartbeat {
                heartbeats.push(Some(Heartbeat::start(bus.clone(), name.clone(), interval)));
            }
            agents.spawn(service(AgentQueue::Agent(name)).run());
        }
        HollowHost { agents, heartbeats }
    }

    /// Stops the heartbeat of agent `index`, which keeps serving its queue: a failure for the
    /// monitor to detect. False when it has no heartbeat (already stopped, or none started).
    pub fn stop_heartbeat(&mut self, index: usize) -> bool {
        self.heartbeats
            .get_mut(index)
            .and_then(Option::take)
            .is_some()
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
        let runner = Arc::new(
            OperationRunner::new(
                RunnerConfig::new(work.path()),
                PluginRegistry::hollow(Duration::from_millis(5)),
                crate::discard_logs(),
            )
            .unwrap(),
        );
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
}
