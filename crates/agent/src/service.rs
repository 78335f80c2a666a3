//! [`AgentService`]: an agent that speaks only the bus (DESIGN.md). It consumes its queue, runs
//! each task through the [`OperationRunner`], and publishes the result to the results queue of
//! the workflow replica named in the task's owner header.
//!
//! A task is acknowledged only once its result's publish is confirmed: an agent that dies
//! between the two leaves the task unacknowledged, the broker delivers it again, and the
//! runner's memory of recent task ids answers the repeat with the first result instead of
//! running the operation twice (for an agent that lives on; a restarted agent's memory is
//! empty). Bodies are `drover.bus.v1` protobuf ([`drover_proto::codec`]); a body that does
//! not decode, or has an unknown version, is dead-lettered with the reason.

use std::sync::Arc;

use drover_bus::topology::OWNER_HEADER;
use drover_bus::{Bus, BusError, ConsumeOptions, Delivery, Message};
use drover_model::TaskOutcome;
use drover_proto::codec;
use tokio::task::JoinSet;

use crate::runner::OperationRunner;
use crate::shipping::Shipper;

/// Tasks an agent runs at once unless told otherwise.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Which tasks queue an agent consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentQueue {
    /// `central`: operations of the central deployment agent, shared by every agent on it.
    Central,
    /// `agent.<name>`: the operations of one agent (a host's), declared when the agent starts.
    Agent(String),
}

impl From<&str> for AgentQueue {
    /// `central`, or the name of an agent.
    fn from(name: &str) -> Self {
        match name {
            "central" => AgentQueue::Central,
            name => AgentQueue::Agent(name.to_owned()),
        }
    }
}

/// Consumes one queue and runs its tasks, `concurrency` at a time.
pub struct AgentService {
    bus: Arc<dyn Bus>,
    runner: Arc<OperationRunner>,
    queue: AgentQueue,
    concurrency: u16,
    events: Option<Shipper>,
}

impl AgentService {
    pub fn new(bus: Arc<dyn Bus>, runner: Arc<OperationRunner>, queue: AgentQueue) -> Self {
        AgentService {
            bus,
            runner,
            queue,
            concurrency: DEFAULT_CONCURRENCY,
            events: None,
        }
    }

    /// Ships `task_started`, `task_succeeded` and `task_failed` events of every task.
    #[must_use]
    pub fn with_events(mut self, shipper: Shipper) -> Self {
        self.events = Some(shipper);
        self
    }

    /// How many tasks run at once; also the consumer's prefetch, so the broker keeps the rest
    /// for other agents on the same queue. At least 1.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Consumes until the queue fails (the broker stays unreachable, the queue is deleted).
    /// Tasks still running then are abandoned unacknowledged, so the broker delivers them again.
    pub async fn run(self) -> Result<(), BusError> {
        let topology = self.bus.topology().clone();
        let queue = match &self.queue {
            AgentQueue::Central => topology.central_queue_name(),
            AgentQueue::Agent(name) => {
                self.bus.declare_queue(topology.agent_queue(name)).await?;
                topology.agent_queue_name(name)
            }
        };
        let options = ConsumeOptions::default().with_prefetch(self.concurrency);
        let mut consumer = self.bus.consume(&queue, options).await?;
        // The prefetch bounds how many run at once; the set only owns them, so that they stop
        // when this does.
        let mut running = JoinSet::new();
        loop {
            let delivery = consumer.next().await?;
            let context = Context {
                bus: self.bus.clone(),
                runner: self.runner.clone(),
                events: self.events.clone(),
            };
            running.spawn(handle(context, delivery));
            while running.try_join_next().is_some() {}
        }
    }
}

/// Runs one task and answers it; a task that cannot be run or answered is dead-lettered with
/// the reason.
async fn handle(context: Context, delivery: Delivery) {
    let id = delivery.message.id.clone();
    let settled = match answer(&context, &delivery).await {
        Ok(()) => delivery.ack().await,
        Err(Unanswered::Malformed(reason)) => {
            tracing::warn!(?id, %reason, "dead-lettering a task");
            delivery.reject(&reason).await
        }
        // Left unacknowledged: the broker delivers it again once the bus is back.
        Err(Unanswered::Retry(error)) => Err(error),
    };
    if let Err(error) = settled {
        tracing::warn!(?id, %error, "task left unsettled; it will be delivered again");
    }
}

/// What answering a task takes.
struct Context {
    bus: Arc<dyn Bus>,
    runner: Arc<OperationRunner>,
    events: Option<Shipper>,
}

/// Why a task got no answer.
enum Unanswered {
    Malformed(String),
    Retry(BusError),
}

async fn answer(context: &Context, delivery: &Delivery) -> Result<(), Unanswered> {
    let bus = context.bus.as_ref();
    let task = codec::decode_task(&delivery.message.body)
        .map_err(|e| Unanswered::Malformed(format!("malformed task: {e}")))?;
    let owner = delivery.message.headers.get(OWNER_HEADER).ok_or_else(|| {
        Unanswered::Malformed(format!(
            "no {OWNER_HEADER} header: nowhere to send the result"
        ))
    })?;
    let event = |event_type: &str, text: String| {
        if let Some(events) = &context.events {
            events.task_event(&task, event_type, text);
        }
    };
    event("task_started", format!("Task started '{}'", task.operation));
    let result = context.runner.run(task.clone()).await;
    match &result.outcome {
        TaskOutcome::Succeeded { .. } => event(
            "task_succeeded",
            format!("Task succeeded '{}'", task.operation),
        ),
        TaskOutcome::Failed { error, .. } => event(
            "task_failed",
            format!("Task failed '{}' -> {error}", task.operation),
        ),
    }
    let message = Message::new(codec::encode_result(&result)).with_id(result.task_id);
    let published = match bus.publish(&bus.topology().result_to(owner), message).await {
        Ok(confirm) => confirm.await,
        Err(e) => Err(e),
    };
    published.map_err(|e| match e {
        BusError::Unavailable(_) | BusError::StaleDelivery => Unanswered::Retry(e),
        e => Unanswered::Malformed(format!("cannot publish the result: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use drover_bus::topology::REASON_HEADER;
    use drover_bus::{Consumer, MemoryBus, Topology};
    use drover_model::{OperationTask, TaskOutcome};

    use super::*;
    use crate::plugin::{OperationEnv, Plugin, PluginFuture, PluginOutput, PluginRegistry};
    use crate::runner::RunnerConfig;

    /// Counts the operations it really ran.
    struct Counting(Arc<AtomicU32>);

    impl Plugin for Counting {
        fn run<'a>(&'a self, _: &'a OperationTask, _: &'a OperationEnv) -> PluginFuture<'a> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move { PluginOutput::succeeded(n.into()) })
        }
    }

    struct Setup {
        bus: Arc<MemoryBus>,
        ran: Arc<AtomicU32>,
        results: Consumer,
        dead: Consumer,
        _work: tempfile::TempDir,
        agent: tokio::task::JoinHandle<Result<(), BusError>>,
    }

    async fn setup() -> Setup {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let t = bus.topology().clone();
        bus.declare_queue(t.results_queue("w1")).await.unwrap();
        let results = bus
            .consume(&t.results_queue_name("w1"), ConsumeOptions::default())
            .await
            .unwrap();
        let dead = bus
            .consume(&t.dead_letter_queue_name(), ConsumeOptions::default())
            .await
            .unwrap();
        let ran = Arc::new(AtomicU32::new(0));
        let mut plugins = PluginRegistry::empty();
        plugins.register("count", Arc::new(Counting(ran.clone())));
        let work = tempfile::tempdir().unwrap();
        let runner = OperationRunner::new(
            RunnerConfig::new(work.path()),
            plugins,
            crate::discard_logs(),
        )
        .unwrap();
        let service = AgentService::new(bus.clone(), Arc::new(runner), AgentQueue::from("web_1"))
            .with_concurrency(2);
        let agent = tokio::spawn(service.run());
        // The agent declares its queue before tasks can be routed to it.
        for _ in 0..100 {
            let probe = bus
                .publish(&t.task_to_agent("web_1"), Message::new("probe"))
                .await
                .unwrap();
            if probe.await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut setup = Setup {
            bus,
            ran,
            results,
            dead,
            _work: work,
            agent,
        };
        assert!(
            next(&mut setup.dead).await.message.headers[REASON_HEADER]
                .starts_with("malformed task")
        );
        setup
    }

    async fn next(consumer: &mut Consumer) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("a delivery in time")
            .unwrap()
    }

    fn task(id: &str) -> Message {
        let task = OperationTask {
            task_id: id.into(),
            execution_id: "e1".into(),
            plugin: "count".into(),
            ..OperationTask::default()
        };
        Message::new(codec::encode_task(&task))
            .with_id(id)
            .with_header(OWNER_HEADER, "w1")
    }

    async fn send(bus: &MemoryBus, message: Message) {
        let route = bus.topology().task_to_agent("web_1");
        bus.publish(&route, message).await.unwrap().await.unwrap();
    }

    #[tokio::test]
    async fn a_task_is_answered_to_its_owner_and_a_repeat_gets_the_first_result() {
        let mut s = setup().await;
        send(&s.bus, task("t1")).await;
        send(&s.bus, task("t1")).await;
        for _ in 0..2 {
            let delivery = next(&mut s.results).await;
            assert_eq!(delivery.message.id.as_deref(), Some("t1"));
            let result = codec::decode_result(&delivery.message.body).unwrap();
            assert_eq!(result.outcome, TaskOutcome::Succeeded { result: 1.into() });
            delivery.ack().await.unwrap();
        }
        assert_eq!(s.ran.load(Ordering::SeqCst), 1);
        s.agent.abort();
    }

    #[tokio::test]
    async fn malformed_tasks_are_dead_lettered_and_the_agent_goes_on() {
        let mut s = setup().await;
        send(&s.bus, task("t1").with_header(OWNER_HEADER, "")).await;
        let mut anonymous = task("t2");
        anonymous.headers.clear();
        send(&s.bus, anonymous).await;
        let reasons = [next(&mut s.dead).await, next(&mut s.dead).await]
            .map(|d| d.message.headers[REASON_HEADER].clone());
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("cannot publish the result")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("no x-drover-owner header")),
            "{reasons:?}"
        );
        // A body of a version this agent does not know.
        let mut future = task("t2");
        let mut body = future.body.to_vec();
        assert_eq!(
            body[..2],
            [0x08, 0x01],
            "the envelope starts with version 1"
        );
        body[1] = 0x02;
        future.body = body.into();
        send(&s.bus, future).await;
        let reason = next(&mut s.dead).await.message.headers[REASON_HEADER].clone();
        assert_eq!(
            reason,
            "malformed task: body version 2 is unknown (this build reads version 1)"
        );
        send(&s.bus, task("t3")).await;
        assert_eq!(next(&mut s.results).await.message.id.as_deref(), Some("t3"));
        assert!(!s.agent.is_finished());
        s.agent.abort();
    }
}
