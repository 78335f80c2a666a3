//! [`BusDispatcher`]: the engine's operation tasks over a message [`Bus`], to agents that speak
//! only the bus (DESIGN.md).
//!
//! Tasks go to the `tasks` exchange with this replica's name in the owner header; the tasks of one
//! send bound for the same queue travel together, up to [`MAX_TASKS_PER_MESSAGE`] in one
//! message (a `TaskBatch`), so that the broker stores, delivers and has acknowledged one message
//! for many tasks — on a 2-core machine the broker's messages per second, not the engine, bound
//! a large install. Agents answer each task by its id (what they deduplicate by) and send the
//! results to the owner's `results.<owner>` queue, alone or batched, which this dispatcher
//! consumes and turns into the reports the executor reads. The bus delivers at least once and in
//! any order; the executor already matches reports by task id and ignores repeated or late ones,
//! so this layer only decodes and hands over.
//!
//! A result for an execution that is not subscribed here (it ended, or it has not been resumed
//! yet after a restart) is acknowledged and dropped: a resumed execution sends its in-flight
//! tasks again under their ids, and the agents answer those with their first results.
//!
//! No `Started` report comes over the bus (agents publish only results), so an execution run
//! through it has no `task_started` events.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use drover_bus::topology::OWNER_HEADER;
use drover_bus::{
    Bus, BusError, Confirm, ConsumeOptions, Consumer, Delivery, Message, Route, Topology,
};
use drover_model::{OperationTask, TaskOutcome, TaskResult};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::dispatch::{DispatchError, TaskDispatcher, TaskReport};

/// Results this replica may hold unacknowledged: handing one over is a channel send, so a
/// generous window only saves broker round trips.
const RESULTS_PREFETCH: u16 = 256;

/// Tasks in one message at most: enough that a wave of an install's tasks for one agent is a
/// few messages, few enough that a message stays far below the broker's size limits.
pub const MAX_TASKS_PER_MESSAGE: usize = 128;

/// Chooses the route of a task: the `central` queue, or the queue of the agent that must run
/// it.
pub type Router = Arc<dyn Fn(&Topology, &OperationTask) -> Route + Send + Sync>;

/// Report channels by execution id; `None` once the results consumer has stopped, so that no
/// execution waits for reports that cannot come.
type Subscribers = Arc<Mutex<Option<HashMap<String, mpsc::UnboundedSender<TaskReport>>>>>;

/// A [`TaskDispatcher`] over any [`Bus`]: `MemoryBus` in process, `AmqpBus` on RabbitMQ.
pub struct BusDispatcher {
    bus: Arc<dyn Bus>,
    owner: String,
    router: Router,
    subscribers: Subscribers,
    results: JoinHandle<()>,
    /// Agents whose queues this dispatcher declared.
    declared: Mutex<HashSet<String>>,
}

impl BusDispatcher {
    /// Declares this replica's results queue and starts consuming it. `owner` names the
    /// replica: unique among those sharing a broker, and stable across its restarts so that
    /// results sent while it was away still reach it. Every task goes to `central` until
    /// [`BusDispatcher::with_router`] says otherwise.
    pub async fn start(bus: Arc<dyn Bus>, owner: impl Into<String>) -> Result<Self, DispatchError> {
        let owner = owner.into();
        let topology = bus.topology().clone();
        bus.declare_queue(topology.results_queue(&owner))
            .await
            .map_err(bus_error)?;
        let consumer = bus
            .consume(
                &topology.results_queue_name(&owner),
                ConsumeOptions::default().with_prefetch(RESULTS_PREFETCH),
            )
            .await
            .map_err(bus_error)?;
        let subscribers = Subscribers::new(Mutex::new(Some(HashMap::new())));
        let results = tokio::spawn(consume_results(consumer, subscribers.clone()));
        Ok(BusDispatcher {
            bus,
            owner,
            router: Arc::new(|topology, _| topology.task_to_central()),
            subscribers,
            results,
            declared: Mutex::default(),
        })
    }

    /// Routes tasks with `router` (e.g. a `host_agent` operation to its host's agent queue).
    #[must_use]
    pub fn with_router(
        mut self,
        router: impl Fn(&Topology, &OperationTask) -> Route + Send + Sync + 'static,
    ) -> Self {
        self.router = Arc::new(router);
        self
    }

    /// This replica's name, which agents route results by.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

impl Drop for BusDispatcher {
    fn drop(&mut self) {
        // Unacknowledged results go back to the broker, for whoever consumes the queue next.
        self.results.abort();
    }
}

impl TaskDispatcher for BusDispatcher {
    async fn subscribe(
        &self,
        execution_id: &str,
    ) -> Result<mpsc::UnboundedReceiver<TaskReport>, DispatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.subscribers)
            .as_mut()
            .ok_or_else(|| DispatchError(format!("results.{} is no longer consumed", self.owner)))?
            .insert(execution_id.to_owned(), tx);
        Ok(rx)
    }

    /// Publishes the whole batch, its tasks grouped by route, and returns; the broker's
    /// confirms are awaited out of line, so the executor goes on handling results meanwhile
    /// instead of waiting a round trip per batch. A task whose message is not confirmed is
    /// reported failed.
    async fn send(&self, tasks: Vec<OperationTask>) -> Result<(), DispatchError> {
        let topology = self.bus.topology();
        let tasks_exchange = topology.tasks_exchange();
        let mut groups: Vec<(Route, Vec<OperationTask>)> = Vec::new();
        let mut group_of: HashMap<Route, usize> = HashMap::new();
        for task in tasks {
            let route = (self.router)(topology, &task);
            let open = group_of
                .get(&route)
                .copied()
                .filter(|&g| groups[g].1.len() < MAX_TASKS_PER_MESSAGE);
            match open {
                Some(g) => groups[g].1.push(task),
                None => {
                    self.declare_agent_queue(&route, &tasks_exchange).await?;
                    group_of.insert(route.clone(), groups.len());
                    groups.push((route, vec![task]));
                }
            }
        }
        let messages = groups
            .iter()
            .map(|(route, tasks)| {
                // The first task's id names the message in the broker's tools and logs.
                let message = Message::new(drover_proto::codec::encode_tasks(tasks))
                    .with_id(tasks[0].task_id.clone())
                    .with_header(OWNER_HEADER, self.owner.clone());
                (route.clone(), message)
            })
            .collect();
        let confirms = self.bus.publish_each(messages).await.map_err(bus_error)?;
        let unconfirmed = groups
            .into_iter()
            .map(|(_, tasks)| tasks)
            .zip(confirms)
            .collect();
        tokio::spawn(await_confirms(unconfirmed, self.subscribers.clone()));
        Ok(())
    }
}

/// Awaits the confirms of sent messages; the tasks of one the broker did not take
/// (unroutable, or the broker unreachable past the bus's retries) are reported failed, not
/// recoverable, as a failed send fails its phase.
async fn await_confirms(unconfirmed: Vec<(Vec<OperationTask>, Confirm)>, subscribers: Subscribers) {
    for (tasks, confirm) in unconfirmed {
        let Err(error) = confirm.await else { continue };
        tracing::warn!(%error, task_id = %tasks[0].task_id, tasks = tasks.len(),
            "a task message was not confirmed by the broker");
        for task in tasks {
            let failed = TaskResult {
                task_id: task.task_id,
                execution_id: task.execution_id,
                outcome: TaskOutcome::Failed {
                    error: format!("dispatch: {error}"),
                    recoverable: false,
                    retry_after_s: None,
                },
                runtime_properties: Default::default(),
            };
            report_to(&subscribers, failed);
        }
    }
}

impl BusDispatcher {
    /// Declares the queue of the agent a route leads to, once per agent: a host's agent may
    /// not have started (and declared it) when its first task goes out, and the task waits in
    /// its queue instead of being unroutable.
    async fn declare_agent_queue(
        &self,
        route: &Route,
        tasks_exchange: &str,
    ) -> Result<(), DispatchError> {
        let Some(agent) = route
            .routing_key
            .strip_prefix(AGENT_KEY_PREFIX)
            .filter(|_| route.exchange == tasks_exchange)
        else {
            return Ok(());
        };
        if lock(&self.declared).contains(agent) {
            return Ok(());
        }
        self.bus
            .declare_queue(self.bus.topology().agent_queue(agent))
            .await
            .map_err(bus_error)?;
        lock(&self.declared).insert(agent.to_owned());
        Ok(())
    }
}

/// The routing key of an agent's queue on the tasks exchange is this and the agent's name
/// (`Topology::task_to_agent`).
const AGENT_KEY_PREFIX: &str = "agent.";

fn bus_error(e: BusError) -> DispatchError {
    DispatchError(e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands every result to its execution until the queue fails; then drops every report channel,
/// which fails the executions waiting on them instead of leaving them hanging.
async fn consume_results(mut consumer: Consumer, subscribers: Subscribers) {
    let queue: Arc<str> = consumer.queue().into();
    loop {
        match consumer.next().await {
            Ok(delivery) => {
                // Settled out of line: the next result need not wait for this one's ack to be
                // written (the prefetch bounds how many wait).
                let queue = queue.clone();
                let settling = hand_over(delivery, &subscribers);
                tokio::spawn(async move {
                    if let Err(error) = settling.await {
                        // Unsettled, it is delivered again (the executor ignores a repeat).
                        tracing::warn!(%error, %queue, "could not settle a result");
                    }
                });
            }
            Err(error) => {
                tracing::error!(%error, queue = consumer.queue(), "results consumer stopped");
                lock(&subscribers).take();
                return;
            }
        }
    }
}

/// Decodes one result (or a batch) and gives it to its execution's executor at once; the
/// future that is returned acknowledges it. A body that is no result is dead-lettered with the
/// reason.
fn hand_over(
    delivery: Delivery,
    subscribers: &Subscribers,
) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
    let malformed = match drover_proto::codec::decode_results(&delivery.message.body) {
        Ok(results) => {
            for result in results {
                report_to(subscribers, result);
            }
            None
        }
        Err(e) => Some(format!("malformed task result: {e}")),
    };
    async move {
        match malformed {
            None => delivery.ack().await,
            Some(reason) => delivery.reject(&reason).await,
        }
    }
}

/// Gives a result to the executor of its execution, if one runs here.
fn report_to(subscribers: &Subscribers, result: TaskResult) {
    let mut guard = lock(subscribers);
    let Some(channels) = guard.as_mut() else {
        // The results consumer stopped: the executions here failed already.
        return;
    };
    match channels.get(&result.execution_id) {
        Some(tx) => {
            let execution_id = result.execution_id.clone();
            if tx.send(TaskReport::Finished(result)).is_err() {
                // The executor stopped listening (the run ended): a late answer.
                channels.remove(&execution_id);
            }
        }
        None => tracing::debug!(
            task_id = %result.task_id,
            execution_id = %result.execution_id,
            "result for an execution not running here"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use drover_bus::MemoryBus;
    use drover_bus::topology::REASON_HEADER;

    use super::*;

    fn result(task_id: &str, execution_id: &str) -> TaskResult {
        TaskResult {
            task_id: task_id.into(),
            execution_id: execution_id.into(),
            outcome: TaskOutcome::Succeeded {
                result: serde_json::Value::Null,
            },
            runtime_properties: Default::default(),
        }
    }

    async fn publish(bus: &MemoryBus, route: Route, body: Vec<u8>) {
        bus.publish(&route, Message::new(body))
            .await
            .unwrap()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn tasks_go_out_with_id_and_owner_and_results_come_back() {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let dispatcher = BusDispatcher::start(bus.clone(), "w1").await.unwrap();
        let mut reports = dispatcher.subscribe("e1").await.unwrap();
        let mut central = bus
            .consume(
                &bus.topology().central_queue_name(),
                ConsumeOptions::default(),
            )
            .await
            .unwrap();
        let task = OperationTask {
            task_id: "e1-0-0-0".into(),
            execution_id: "e1".into(),
            ..OperationTask::default()
        };
        dispatcher.send(vec![task.clone()]).await.unwrap();
        let delivery = central.next().await.unwrap();
        assert_eq!(delivery.message.id.as_deref(), Some("e1-0-0-0"));
        assert_eq!(delivery.message.headers[OWNER_HEADER], "w1");
        let sent = drover_proto::codec::decode_task(&delivery.message.body).unwrap();
        assert_eq!(sent, task);
        delivery.ack().await.unwrap();

        let route = bus.topology().result_to("w1");
        let body = drover_proto::codec::encode_result(&result("e1-0-0-0", "e1"));
        publish(&bus, route.clone(), body).await;
        // Another execution's result is acknowledged and dropped, not handed to e1.
        publish(
            &bus,
            route,
            drover_proto::codec::encode_result(&result("x", "e2")),
        )
        .await;
        let report = tokio::time::timeout(Duration::from_secs(5), reports.recv()).await;
        assert_eq!(
            report.unwrap(),
            Some(TaskReport::Finished(result("e1-0-0-0", "e1")))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(reports.try_recv().is_err());
    }

    #[tokio::test]
    async fn tasks_for_one_queue_travel_together_and_batched_results_come_back() {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let dispatcher = BusDispatcher::start(bus.clone(), "w1")
            .await
            .unwrap()
            .with_router(|topology, task| topology.task_to_agent(&task.node.node_instance_id));
        let mut reports = dispatcher.subscribe("e1").await.unwrap();
        let task = |i: usize, host: &str| {
            let mut task = OperationTask {
                task_id: format!("e1-{i}"),
                execution_id: "e1".into(),
                ..OperationTask::default()
            };
            task.node.node_instance_id = host.into();
            task
        };
        let on_a = MAX_TASKS_PER_MESSAGE + 2;
        let mut tasks: Vec<OperationTask> = (0..on_a).map(|i| task(i, "a")).collect();
        tasks.insert(1, task(on_a, "b"));
        dispatcher.send(tasks.clone()).await.unwrap();
        let messages = |host: &'static str, count: usize| {
            let bus = bus.clone();
            async move {
                let queue = bus.topology().agent_queue_name(host);
                let mut consumer = bus
                    .consume(&queue, ConsumeOptions::default())
                    .await
                    .unwrap();
                let mut batches = Vec::new();
                for _ in 0..count {
                    let delivery = consumer.next().await.unwrap();
                    assert_eq!(delivery.message.headers[OWNER_HEADER], "w1");
                    let sent = drover_proto::codec::decode_tasks(&delivery.message.body).unwrap();
                    assert_eq!(delivery.message.id.as_ref(), Some(&sent[0].task_id));
                    batches.push(sent);
                    delivery.ack().await.unwrap();
                }
                batches
            }
        };
        let on_b = messages("b", 1).await;
        assert_eq!(on_b, [vec![tasks.remove(1)]]);
        let on_a = messages("a", 2).await;
        let (first, rest) = tasks.split_at(MAX_TASKS_PER_MESSAGE);
        assert_eq!(
            on_a,
            [first.to_vec(), rest.to_vec()],
            "in order, split at the cap"
        );

        let answers = [result("e1-0", "e1"), result("e1-1", "e1")];
        let body = drover_proto::codec::encode_results(&answers);
        publish(&bus, bus.topology().result_to("w1"), body).await;
        for answer in answers {
            let report = tokio::time::timeout(Duration::from_secs(5), reports.recv()).await;
            assert_eq!(report.unwrap(), Some(TaskReport::Finished(answer)));
        }
    }

    #[tokio::test]
    async fn a_malformed_result_is_dead_lettered_with_a_reason() {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let _dispatcher = BusDispatcher::start(bus.clone(), "w1").await.unwrap();
        let mut dead = bus
            .consume(
                &bus.topology().dead_letter_queue_name(),
                ConsumeOptions::default(),
            )
            .await
            .unwrap();
        publish(&bus, bus.topology().result_to("w1"), b"{not json".to_vec()).await;
        let delivery = tokio::time::timeout(Duration::from_secs(5), dead.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            delivery.message.headers[REASON_HEADER].starts_with("malformed task result"),
            "{:?}",
            delivery.message.headers
        );
    }

    #[tokio::test]
    async fn the_router_chooses_the_queue_and_it_need_not_exist_yet() {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let dispatcher = BusDispatcher::start(bus.clone(), "w1")
            .await
            .unwrap()
            .with_router(|topology, task| topology.task_to_agent(&task.node.node_instance_id));
        let mut task = OperationTask::default();
        task.node.node_instance_id = "host_1".into();
        // The agent of host_1 has not started: its queue holds the tasks until it does.
        dispatcher.send(vec![task.clone()]).await.unwrap();
        dispatcher.send(vec![task]).await.unwrap();
        let mut agent = bus
            .consume(
                &bus.topology().agent_queue_name("host_1"),
                ConsumeOptions::default(),
            )
            .await
            .unwrap();
        for _ in 0..2 {
            agent.next().await.unwrap().ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_task_the_broker_does_not_take_is_reported_failed() {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        // A route no queue is bound to: the publish is accepted, its confirm fails.
        let dispatcher = BusDispatcher::start(bus.clone(), "w1")
            .await
            .unwrap()
            .with_router(|topology, _| Route {
                exchange: topology.tasks_exchange(),
                routing_key: "nobody".into(),
                persistent: true,
            });
        let mut reports = dispatcher.subscribe("e1").await.unwrap();
        let task = OperationTask {
            task_id: "e1-0-0-0".into(),
            execution_id: "e1".into(),
            ..OperationTask::default()
        };
        dispatcher.send(vec![task]).await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(5), reports.recv())
            .await
            .unwrap();
        let Some(TaskReport::Finished(result)) = report else {
            panic!("no failure reported: {report:?}");
        };
        assert_eq!(result.task_id, "e1-0-0-0");
        match result.outcome {
            TaskOutcome::Failed {
                error, recoverable, ..
            } => {
                assert!(!recoverable);
                assert!(error.contains("nobody"), "{error}");
            }
            other => panic!("not failed: {other:?}"),
        }
    }
}
