//! [`AgentService`]: an agent that speaks only the bus (DESIGN.md). It consumes its queue, runs
//! each task through the [`OperationRunner`], and publishes the result to the results queue of
//! the workflow replica named in the task's owner header.
//!
//! A message holds one task or a batch of them (the dispatcher groups the tasks it sends to
//! one queue). It is acknowledged only once the results of all its tasks are confirmed: an
//! agent that dies before leaves it unacknowledged, the broker delivers it again, and the
//! runner's memory of recent task ids answers the tasks that ran with their first results
//! instead of running them twice (for an agent that lives on; a restarted agent's memory is
//! empty). Bodies are `drover.bus.v1` protobuf ([`drover_proto::codec`]); a body that does
//! not decode, or has an unknown version, is dead-lettered with the reason.

use std::sync::Arc;

use drover_bus::topology::OWNER_HEADER;
use drover_bus::{Bus, BusError, Confirm, ConsumeOptions, Delivery, Message};
use drover_model::{OperationTask, TaskResult};
use drover_proto::codec;
use futures_util::future::join_all;
use tokio::sync::{Semaphore, mpsc};
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

    /// Ships the `task_started` event of every task. How a task ended is the workflow engine's
    /// to record: it writes `task_succeeded` or `task_failed` in order with its journal, so the
    /// event is never lost, and an agent's copy would only cost the index a second write.
    #[must_use]
    pub fn with_events(mut self, shipper: Shipper) -> Self {
        self.events = Some(shipper);
        self
    }

    /// How many tasks run at once; also the consumer's prefetch (in messages, which may hold
    /// several tasks each), so the broker keeps the rest for other agents on the same queue.
    /// At least 1.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Consumes until the queue fails (the broker stays unreachable, the queue is deleted).
    /// Tasks still running then are abandoned unacknowledged, so the broker delivers them again.
    ///
    /// Tasks that run nothing (dry runs) are answered in this loop: the results of a message's
    /// such tasks are published at once, in one message, and a task of its own settles the
    /// deliveries once confirmed, in batches, so that a stream of such tasks costs no task, no
    /// memory entry and no round trip each. A message with other tasks is handled by a task of
    /// its own, which runs them (`concurrency` at a time across the agent) and publishes each
    /// result as soon as it is known.
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
        let context = Arc::new(Context {
            bus: self.bus,
            runner: self.runner,
            events: self.events,
            slots: Semaphore::new(self.concurrency.into()),
        });
        // Ends once this loop drops the sender and what it holds is settled.
        let (answered, to_settle) = mpsc::unbounded_channel();
        tokio::spawn(settle_answered(to_settle));
        // The prefetch bounds how many run at once; the set only owns them, so that they stop
        // when this does.
        let mut running = JoinSet::new();
        loop {
            let delivery = consumer.next().await?;
            let (tasks, owner) = match read(&delivery) {
                Ok(read) => read,
                Err(reason) => {
                    let _ = answered.send((delivery, vec![Err(Unanswered::Malformed(reason))]));
                    continue;
                }
            };
            let mut now = Vec::new();
            let mut later = Vec::new();
            for task in tasks {
                match OperationRunner::answer_now(&task) {
                    Some(result) => {
                        context.started(&task);
                        now.push(result);
                    }
                    None => later.push(task),
                }
            }
            let mut confirms = Vec::new();
            if !now.is_empty() {
                confirms.push(context.publish(&owner, &now).await);
            }
            if later.is_empty() {
                let _ = answered.send((delivery, confirms));
            } else {
                running.spawn(handle(context.clone(), delivery, later, owner, confirms));
            }
            while running.try_join_next().is_some() {}
        }
    }
}

/// What answering a task takes.
struct Context {
    bus: Arc<dyn Bus>,
    runner: Arc<OperationRunner>,
    events: Option<Shipper>,
    /// One permit per task that may run at once.
    slots: Semaphore,
}

impl Context {
    /// Ships the task's `task_started` event.
    fn started(&self, task: &OperationTask) {
        if let Some(events) = &self.events {
            let text = format!("Task started '{}'", task.operation);
            events.task_event(task, "task_started", text);
        }
    }

    /// Publishes results (at least one) to their owner's queue in one message; the confirm is
    /// awaited by whoever settles.
    async fn publish(&self, owner: &str, results: &[TaskResult]) -> Result<Confirm, Unanswered> {
        let bus = self.bus.as_ref();
        let message =
            Message::new(codec::encode_results(results)).with_id(results[0].task_id.clone());
        bus.publish(&bus.topology().result_to(owner), message)
            .await
            .map_err(unanswered)
    }
}

/// Why a task got no answer.
enum Unanswered {
    Malformed(String),
    Retry(BusError),
}

fn unanswered(error: BusError) -> Unanswered {
    match error {
        BusError::Unavailable(_) | BusError::StaleDelivery => Unanswered::Retry(error),
        e => Unanswered::Malformed(format!("cannot publish the result: {e}")),
    }
}

/// The tasks a delivery carries and the owner their results go to, or why they cannot be run.
fn read(delivery: &Delivery) -> Result<(Vec<OperationTask>, String), String> {
    let tasks =
        codec::decode_tasks(&delivery.message.body).map_err(|e| format!("malformed task: {e}"))?;
    let owner = delivery
        .message
        .headers
        .get(OWNER_HEADER)
        .ok_or_else(|| format!("no {OWNER_HEADER} header: nowhere to send the result"))?;
    Ok((tasks, owner.clone()))
}

/// Runs a delivery's tasks that run something, then settles the delivery with their answers
/// and `confirms` (of its tasks answered already). A result is published as soon as its task
/// ends; results that end while a publish is under way go out together in the next message
/// (up to [`MAX_RESULTS_PER_MESSAGE`]), so a slow task's answer never waits for others and a
/// wave of quick ones costs the broker a message, not one each.
async fn handle(
    context: Arc<Context>,
    delivery: Delivery,
    tasks: Vec<OperationTask>,
    owner: String,
    mut confirms: Vec<Result<Confirm, Unanswered>>,
) {
    let (ended, mut to_publish) = mpsc::unbounded_channel();
    let runs: Vec<_> = tasks
        .into_iter()
        .map(|task| {
            let (context, ended) = (&context, ended.clone());
            async move {
                // The semaphore is never closed.
                let _slot = context.slots.acquire().await.ok();
                context.started(&task);
                let result = context.runner.run(task.clone()).await;
                let _ = ended.send(result);
            }
        })
        .collect();
    // The publishing loop ends once every run has dropped its sender.
    drop(ended);
    let publishing = async {
        let mut published = Vec::new();
        let mut results = Vec::new();
        while to_publish
            .recv_many(&mut results, MAX_RESULTS_PER_MESSAGE)
            .await
            > 0
        {
            published.push(context.publish(&owner, &results).await);
            results.clear();
        }
        published
    };
    let (_, published) = tokio::join!(join_all(runs), publishing);
    confirms.extend(published);
    settle(delivery, confirms).await;
}

/// Results in one message at most, as the dispatcher sends tasks: far below the broker's
/// message size limits.
const MAX_RESULTS_PER_MESSAGE: usize = 128;

/// Settles the answered deliveries as they come, a batch at a time (their confirms awaited
/// together).
async fn settle_answered(mut answered: mpsc::UnboundedReceiver<Answered>) {
    let mut batch = Vec::new();
    while answered.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        join_all(
            batch
                .drain(..)
                .map(|(delivery, confirms)| settle(delivery, confirms)),
        )
        .await;
    }
}

/// A delivery and the publishes of its tasks' answers.
type Answered = (Delivery, Vec<Result<Confirm, Unanswered>>);

/// Tasks settled together at most.
const SETTLE_BATCH: usize = 1024;

/// Acknowledges a delivery once the results of all its tasks are confirmed; one with a task
/// that cannot be answered is dead-lettered with the reason, one with a task that may be
/// answered later is handed back to the broker (requeued), which delivers it again (its tasks
/// that ran are then answered from the runner's memory).
///
/// Handing it back matters when the delivery's channel outlives the failure (a publish that
/// gave up on a connection that came back, a confirm the broker refused): a delivery left
/// unsettled there holds one of the consumer's prefetch slots for good, and once all of them
/// are held the agent receives nothing more. On a channel that died, the nack fails and the
/// broker has requeued the task already.
async fn settle(delivery: Delivery, confirms: Vec<Result<Confirm, Unanswered>>) {
    let mut confirmed = Ok(());
    for confirm in confirms {
        let this = match confirm {
            Ok(confirm) => confirm.await.map_err(unanswered),
            Err(e) => Err(e),
        };
        // What cannot be answered ever wins over what may be later.
        confirmed = match (confirmed, this) {
            (Err(Unanswered::Malformed(reason)), _) | (_, Err(Unanswered::Malformed(reason))) => {
                Err(Unanswered::Malformed(reason))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        };
    }
    let id = delivery.message.id.clone();
    let settled = match confirmed {
        Ok(()) => delivery.ack().await,
        Err(Unanswered::Malformed(reason)) => {
            tracing::warn!(?id, %reason, "dead-lettering a task");
            delivery.reject(&reason).await
        }
        Err(Unanswered::Retry(error)) => {
            tracing::warn!(?id, %error, "result not published; handing the task back");
            delivery.nack(true).await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(?id, %error, "task not settled; the broker delivers it again");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use drover_bus::topology::REASON_HEADER;
    use drover_bus::{Consumer, MemoryBus, QueueSpec, Route, Topology};
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

    /// The memory bus, except that the first `failures` results published fail as they do
    /// while the broker is away.
    struct FlakyResults {
        bus: Arc<MemoryBus>,
        failures: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Bus for FlakyResults {
        fn topology(&self) -> &Topology {
            self.bus.topology()
        }

        async fn declare_queue(&self, spec: QueueSpec) -> Result<(), BusError> {
            self.bus.declare_queue(spec).await
        }

        async fn publish(&self, route: &Route, message: Message) -> Result<Confirm, BusError> {
            let result = *route == self.topology().result_to("w1");
            let fail = |n: u32| n.checked_sub(1);
            if result && self.failures.fetch_update(SeqCst, SeqCst, fail).is_ok() {
                return Err(BusError::Unavailable("the broker is away".into()));
            }
            self.bus.publish(route, message).await
        }

        async fn consume(
            &self,
            queue: &str,
            options: ConsumeOptions,
        ) -> Result<Consumer, BusError> {
            self.bus.consume(queue, options).await
        }
    }

    async fn setup() -> Setup {
        setup_failing(0).await
    }

    /// An agent on `web_1` with concurrency 2 whose first `failures` results cannot be
    /// published.
    async fn setup_failing(failures: u32) -> Setup {
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
        let flaky = Arc::new(FlakyResults {
            bus: bus.clone(),
            failures: AtomicU32::new(failures),
        });
        let service = AgentService::new(flaky, Arc::new(runner), AgentQueue::from("web_1"))
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

    /// One message holding a task per id.
    fn batch(ids: &[&str], dry_run: bool) -> Message {
        let tasks: Vec<OperationTask> = ids
            .iter()
            .map(|id| OperationTask {
                task_id: (*id).into(),
                execution_id: "e1".into(),
                plugin: "count".into(),
                dry_run,
                ..OperationTask::default()
            })
            .collect();
        Message::new(codec::encode_tasks(&tasks))
            .with_id(ids[0])
            .with_header(OWNER_HEADER, "w1")
    }

    /// The ids of the results in the next `messages` result messages, sorted.
    async fn answered(results: &mut Consumer, messages: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..messages {
            let delivery = next(results).await;
            let answers = codec::decode_results(&delivery.message.body).unwrap();
            ids.extend(answers.into_iter().map(|r| r.task_id));
            delivery.ack().await.unwrap();
        }
        ids.sort();
        ids
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

    /// The agent's prefetch is 2: the third message comes only once a batch is acknowledged.
    /// Tasks that end together are answered in one message.
    #[tokio::test]
    async fn a_batch_is_answered_and_a_repeat_runs_nothing_again() {
        let mut s = setup().await;
        send(&s.bus, batch(&["b1", "b2", "b3"], false)).await;
        assert_eq!(answered(&mut s.results, 1).await, ["b1", "b2", "b3"]);
        assert_eq!(s.ran.load(Ordering::SeqCst), 3);
        send(&s.bus, batch(&["b1", "b2", "b3"], false)).await;
        assert_eq!(answered(&mut s.results, 1).await, ["b1", "b2", "b3"]);
        assert_eq!(s.ran.load(Ordering::SeqCst), 3, "answered from memory");
        // Dry runs are answered together, in one message.
        send(&s.bus, batch(&["d1", "d2", "d3"], true)).await;
        assert_eq!(answered(&mut s.results, 1).await, ["d1", "d2", "d3"]);
        assert_eq!(s.ran.load(Ordering::SeqCst), 3);
        s.agent.abort();
    }

    /// Two results that could not be published must not keep the agent's two prefetch slots:
    /// their tasks come back and are answered (from memory, not run again), and the agent
    /// takes the next task.
    #[tokio::test]
    async fn tasks_whose_results_failed_are_answered_later_and_the_agent_goes_on() {
        let mut s = setup_failing(2).await;
        for id in ["t1", "t2", "t3"] {
            send(&s.bus, task(id)).await;
        }
        let mut answered = Vec::new();
        for _ in 0..3 {
            let delivery = next(&mut s.results).await;
            answered.push(delivery.message.id.clone().unwrap());
            delivery.ack().await.unwrap();
        }
        answered.sort();
        assert_eq!(answered, ["t1", "t2", "t3"]);
        assert_eq!(s.ran.load(Ordering::SeqCst), 3);
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
