//! [`BusDispatcher`]: the engine's operation tasks over a message [`Bus`], to agents that speak
//! only the bus (DESIGN.md).
//!
//! Tasks go to the `tasks` exchange, each with its task id as message id (what agents
//! deduplicate by) and this replica's name in the owner header; agents send each result to the
//! owner's `results.<owner>` queue, which this dispatcher consumes and turns into the reports the
//! executor reads. Bodies are JSON for now (versioned protobuf is issue 4's later step). The bus
//! delivers at least once and in any order; the executor already matches reports by task id and
//! ignores repeated or late ones, so this layer only decodes and hands over.
//!
//! A result for an execution that is not subscribed here (it ended, or it has not been resumed
//! yet after a restart) is acknowledged and dropped: a resumed execution sends its in-flight
//! tasks again under their ids, and the agents answer those with their first results.
//!
//! No `Started` report comes over the bus (agents publish only results), so an execution run
//! through it has no `task_started` events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use drover_bus::topology::OWNER_HEADER;
use drover_bus::{Bus, BusError, ConsumeOptions, Consumer, Delivery, Message, Route, Topology};
use drover_model::OperationTask;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::dispatch::{DispatchError, TaskDispatcher, TaskReport};

/// Results this replica may hold unacknowledged: handing one over is a channel send, so a
/// generous window only saves broker round trips.
const RESULTS_PREFETCH: u16 = 256;

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

    /// Publishes the whole batch, then awaits every confirm: one pipelined round trip.
    async fn send(&self, tasks: Vec<OperationTask>) -> Result<(), DispatchError> {
        let topology = self.bus.topology();
        let mut messages = Vec::with_capacity(tasks.len());
        for task in &tasks {
            let message = Message::new(drover_proto::codec::encode_task(task))
                .with_id(task.task_id.clone())
                .with_header(OWNER_HEADER, self.owner.clone());
            messages.push(((self.router)(topology, task), message));
        }
        self.bus.publish_batch(messages).await.map_err(bus_error)
    }
}

fn bus_error(e: BusError) -> DispatchError {
    DispatchError(e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands every result to its execution until the queue fails; then drops every report channel,
/// which fails the executions waiting on them instead of leaving them hanging.
async fn consume_results(mut consumer: Consumer, subscribers: Subscribers) {
    loop {
        match consumer.next().await {
            Ok(delivery) => {
                if let Err(error) = hand_over(delivery, &subscribers).await {
                    // Unsettled, it is delivered again (the executor ignores a repeat).
                    tracing::warn!(%error, queue = consumer.queue(), "could not settle a result");
                }
            }
            Err(error) => {
                tracing::error!(%error, queue = consumer.queue(), "results consumer stopped");
                lock(&subscribers).take();
                return;
            }
        }
    }
}

/// Decodes one result and gives it to its execution's executor, then acknowledges it; a body
/// that is no result is dead-lettered with the reason.
async fn hand_over(delivery: Delivery, subscribers: &Subscribers) -> Result<(), BusError> {
    let result = match drover_proto::codec::decode_result(&delivery.message.body) {
        Ok(result) => result,
        Err(e) => {
            return delivery
                .reject(&format!("malformed task result: {e}"))
                .await;
        }
    };
    {
        let mut guard = lock(subscribers);
        // Only this consumer's end empties the map, so it is there.
        let channels = guard.get_or_insert_with(HashMap::new);
        let execution_id = result.execution_id.clone();
        match channels.get(&execution_id) {
            Some(tx) => {
                if tx.send(TaskReport::Finished(result)).is_err() {
                    // The executor stopped listening (the run ended): a late answer.
                    channels.remove(&execution_id);
                }
            }
            None => tracing::debug!(
                task_id = %result.task_id,
                %execution_id,
                "result for an execution not running here"
            ),
        }
    }
    delivery.ack().await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use drover_bus::MemoryBus;
    use drover_bus::topology::REASON_HEADER;
    use drover_model::{TaskOutcome, TaskResult};

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
    async fn the_router_chooses_the_queue() {
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        bus.declare_queue(bus.topology().agent_queue("host_1"))
            .await
            .unwrap();
        let dispatcher = BusDispatcher::start(bus.clone(), "w1")
            .await
            .unwrap()
            .with_router(|topology, task| topology.task_to_agent(&task.node.node_instance_id));
        let mut task = OperationTask::default();
        task.node.node_instance_id = "host_1".into();
        dispatcher.send(vec![task]).await.unwrap();
        let mut agent = bus
            .consume(
                &bus.topology().agent_queue_name("host_1"),
                ConsumeOptions::default(),
            )
            .await
            .unwrap();
        assert!(agent.next().await.is_ok());
    }
}
