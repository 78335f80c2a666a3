//! A workflow replica: the consumer of the `executions` work queue (DESIGN.md, data flow 2).
//!
//! `StartExecution` stores an execution (pending) and publishes a ticket naming it to the
//! durable `executions` queue; replicas compete for tickets with a prefetch of their capacity.
//! A replica holds the delivery unacknowledged while it runs the execution and acknowledges it
//! once the execution ended and is stored. When a replica dies, the broker delivers the ticket
//! to another, whose engine finds the journal and resumes: finished tasks are not sent again,
//! in-flight ones are re-sent under their ids, and agents answer a repeated id with its first
//! result. A ticket of an execution that already ended (its replica died between the store and
//! the ack) is acknowledged without running. The ticket is the replica's lease: when its
//! channel closes (a broker restart, a lost connection) the broker hands it out again, so the
//! replica abandons the run as if it had died, unless the broker handed the ticket back to it.
//!
//! Cancel goes through the store: `CancelExecution` writes `cancelling` or `force_cancelling`,
//! and the replica running the execution polls its status every [`ReplicaConfig::cancel_poll`]
//! and cancels the run. A ticket of an execution already marked cancelling starts cancelled.
//! The store is the one place every replica and the service share whatever runs where; a
//! broadcast on the bus would also need the replicas to agree on who runs what. A cancel
//! written in the instant between a replica reading the status and the engine storing
//! `started` is overwritten; `CancelExecution` can be repeated.
//!
//! Replica processes sharing one `FileStore` directory: safe for executions of different
//! deployments at once (each writes its own execution's and deployment's files). Not safe for
//! two processes writing one file at once: `FileStore` replaces files through a fixed
//! `<file>.tmp` name and compacts a deployment's instance log when it reads it, under a lock
//! that is per process. So while a replica runs an execution, another process must not read that
//! deployment's node instances (`GetDeployment`, whose outputs read them) nor cancel it in the
//! same instant the run starts or ends; a store shared by processes needs the OpenSearch store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_bus::{Bus, BusError, ConsumeOptions, Delivery, Message, Route, Topology};
use drover_model::{ExecutionStatus, OperationTask};
use drover_proto::drover::workflow::v1::ExecutionTicket;
use drover_shipping::Shipper;
use drover_store::StateStore;
use prost::Message as _;
use tokio::task::JoinSet;

use crate::dispatch::TaskDispatcher;
use crate::{
    BusDispatcher, CancelMode, Canceller, Engine, EngineError, NullObserver, Observer, RunOptions,
    ShipEvents,
};

/// How a replica runs.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Executions run at once: the prefetch of the executions queue.
    pub capacity: u16,
    pub run: RunOptions,
    /// How often a running execution's status is read for a cancel request, and its ticket
    /// checked for a lost channel.
    pub cancel_poll: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            capacity: 4,
            run: RunOptions::default(),
            cancel_poll: Duration::from_millis(250),
        }
    }
}

/// The message that asks a replica to run (or resume) an execution.
pub fn ticket(execution_id: &str) -> Message {
    let body = ExecutionTicket {
        execution_id: execution_id.to_owned(),
    }
    .encode_to_vec();
    Message::new(body).with_id(execution_id.to_owned())
}

/// Consumes execution tickets and runs them on an engine that dispatches over the bus.
/// The engine's dispatcher is the bus's, or a layer over it (`ProvisioningDispatcher`).
pub struct Replica<D = BusDispatcher> {
    engine: Arc<Engine<D>>,
    bus: Arc<dyn Bus>,
    config: ReplicaConfig,
    /// Where the runs' events go besides the store (the `ingest` queue), if anywhere.
    events: Option<Shipper>,
}

impl<D: TaskDispatcher + 'static> Replica<D> {
    pub fn new(engine: Arc<Engine<D>>, bus: Arc<dyn Bus>, config: ReplicaConfig) -> Self {
        Replica {
            engine,
            bus,
            config,
            events: None,
        }
    }

    /// Ships every run's events to ingest through `shipper`.
    pub fn with_events(mut self, shipper: Shipper) -> Self {
        self.events = Some(shipper);
        self
    }

    /// Consumes until the executions queue fails (the broker stays unreachable). Executions
    /// running then are abandoned unacknowledged: the broker hands them to another replica.
    pub async fn run(self) -> Result<(), BusError> {
        let queue = self.bus.topology().executions_queue_name();
        let options = ConsumeOptions::default().with_prefetch(self.config.capacity);
        let mut consumer = self.bus.consume(&queue, options).await?;
        let running = Running::default();
        let mut tasks = JoinSet::new();
        loop {
            let delivery = consumer.next().await?;
            let engine = self.engine.clone();
            tasks.spawn(handle(
                engine,
                self.config.clone(),
                running.clone(),
                self.events.clone(),
                delivery,
            ));
            while tasks.try_join_next().is_some() {}
        }
    }
}

/// The executions this replica runs, with the tickets delivered for each while it runs. The
/// ticket is the run's lease: when its channel closes (a lost connection, a broker restart) the
/// broker gives it out again, maybe to another replica, so a run whose tickets are all stale
/// is abandoned (within one [`ReplicaConfig::cancel_poll`]; the broker is seldom back sooner).
/// A copy delivered here again while the run goes on (this replica reconnected first) is
/// kept, to be acknowledged when the run ends, rather than run a second time.
#[derive(Clone, Default)]
struct Running(Arc<Mutex<HashMap<String, Vec<Delivery>>>>);

impl Running {
    /// Registers a run and its ticket; false when the execution runs here already (the
    /// ticket is kept with the run's).
    fn start(&self, id: &str, delivery: Delivery) -> bool {
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match running.get_mut(id) {
            Some(copies) => {
                copies.push(delivery);
                false
            }
            None => {
                running.insert(id.to_owned(), vec![delivery]);
                true
            }
        }
    }

    /// Returns once every ticket held for the run is stale (checked `every`): the broker
    /// has given the execution back to the queue, and another replica may be resuming it.
    async fn lost(&self, id: &str, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let running = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if running
                .get(id)
                .is_none_or(|tickets| tickets.iter().all(Delivery::is_stale))
            {
                return;
            }
        }
    }

    /// Ends a run: every ticket delivered for it.
    fn end(&self, id: &str) -> Vec<Delivery> {
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(id).unwrap_or_default()
    }
}

async fn handle<D: TaskDispatcher + 'static>(
    engine: Arc<Engine<D>>,
    config: ReplicaConfig,
    running: Running,
    events: Option<Shipper>,
    delivery: Delivery,
) {
    let ticket = match ExecutionTicket::decode(delivery.message.body.as_ref()) {
        Ok(ticket) if !ticket.execution_id.is_empty() => ticket,
        Ok(_) => return settle(delivery.reject("execution ticket without an id").await),
        Err(e) => {
            return settle(
                delivery
                    .reject(&format!("malformed execution ticket: {e}"))
                    .await,
            );
        }
    };
    let id = ticket.execution_id;
    let store = engine.store().clone();
    let status = match store.execution(&id) {
        Ok(Some(execution)) => execution.status,
        Ok(None) => return settle(delivery.reject(&format!("no execution {id}")).await),
        Err(error) => {
            // The store is the replica's footing: give the ticket back for a later try.
            tracing::error!(%error, execution = %id, "cannot read the execution");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return settle(delivery.nack(true).await);
        }
    };
    if status.is_final() {
        tracing::info!(execution = %id, ?status, "the execution already ended");
        return settle(delivery.ack().await);
    }
    let redelivered = delivery.redelivered;
    if !running.start(&id, delivery) {
        tracing::info!(execution = %id, "ticket delivered again while it runs here; kept");
        return;
    }
    let (canceller, cancel) = Canceller::new();
    if let Some(mode) = cancel_mode(status) {
        canceller.cancel(mode);
    }
    let watcher = tokio::spawn(watch_cancel(
        store,
        id.clone(),
        canceller,
        config.cancel_poll,
    ));
    tracing::info!(execution = %id, redelivered, "running");
    let mut observer: Box<dyn Observer> = match events {
        Some(shipper) => Box::new(ShipEvents::new(shipper)),
        None => Box::new(NullObserver),
    };
    let run = engine.run(&id, &config.run, observer.as_mut(), cancel);
    let result = tokio::select! {
        result = run => Some(result),
        () = running.lost(&id, config.cancel_poll) => None,
    };
    watcher.abort();
    let tickets = running.end(&id);
    let Some(result) = result else {
        // The run was dropped mid-way, as a kill -9 would: whoever gets the ticket resumes
        // from the journal, and the agents answer the tasks in flight from memory. The stale
        // tickets are dropped unsettled.
        tracing::warn!(execution = %id, "the ticket went back to the broker with its channel; run abandoned");
        return;
    };
    let ack = match result {
        Ok(execution) => {
            tracing::info!(execution = %id, status = ?execution.status, "ended");
            true
        }
        Err(EngineError::Invalid(error)) => {
            tracing::warn!(execution = %id, %error, "cannot run the execution");
            mark_failed(engine.store().as_ref(), &id, &error);
            true
        }
        Err(error) => {
            // The store or the bus failed under the run: another replica (or this one, later)
            // resumes it from the journal.
            tracing::error!(execution = %id, %error, "run interrupted; the ticket goes back");
            tokio::time::sleep(Duration::from_secs(1)).await;
            false
        }
    };
    for ticket in tickets {
        // A stale copy fails to settle, harmlessly: its channel is gone.
        let _stale = if ack {
            ticket.ack().await
        } else {
            ticket.nack(true).await
        };
    }
}

fn cancel_mode(status: ExecutionStatus) -> Option<CancelMode> {
    match status {
        ExecutionStatus::Cancelling => Some(CancelMode::Graceful),
        ExecutionStatus::ForceCancelling => Some(CancelMode::Force),
        _ => None,
    }
}

/// Cancels the run once the stored status asks for it (graceful, then force if asked again).
async fn watch_cancel(
    store: Arc<dyn StateStore>,
    id: String,
    canceller: Canceller,
    every: Duration,
) {
    let mut asked = None;
    loop {
        tokio::time::sleep(every).await;
        let mode = match store.execution(&id) {
            Ok(Some(execution)) => cancel_mode(execution.status),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, execution = %id, "cannot read the execution's status");
                None
            }
        };
        if mode.is_some() && mode != asked {
            canceller.cancel(mode.unwrap_or(CancelMode::Graceful));
            asked = mode;
        }
    }
}

fn mark_failed(store: &dyn StateStore, id: &str, error: &str) {
    let stored = store.execution(id).and_then(|execution| match execution {
        Some(mut execution) => {
            execution.status = ExecutionStatus::Failed;
            execution.error = error.to_owned();
            execution.ended_at = Some(crate::events::now());
            store.put_execution(&execution)
        }
        None => Ok(()),
    });
    if let Err(error) = stored {
        tracing::error!(%error, execution = %id, "cannot store the execution's failure");
    }
}

fn settle(result: Result<(), BusError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "execution ticket left unsettled; it will be delivered again");
    }
}

/// Routes each operation to the agent of the instance it runs on: the host of the node
/// instance (for a relationship's target side, of the target), named by the host instance's id;
/// instances without a host, and `central_deployment_agent` operations, go to `central`.
/// Hosts are read from the store per deployment, and read again for an instance not seen yet
/// (a scale added it).
pub struct HostRouter {
    store: Arc<dyn StateStore>,
    /// Per deployment: each instance's host, if it has one.
    hosts: Mutex<HashMap<String, Hosts>>,
}

type Hosts = HashMap<String, Option<String>>;

impl HostRouter {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        HostRouter {
            store,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub fn route(&self, topology: &Topology, task: &OperationTask) -> Route {
        if task.executor.as_deref() == Some("central_deployment_agent") {
            return topology.task_to_central();
        }
        let instance = match &task.relationship {
            Some(r) if r.side == "target" => &r.target.node_instance_id,
            _ => &task.node.node_instance_id,
        };
        match self.host(&task.deployment_id, instance) {
            Some(host) => topology.task_to_agent(&host),
            None => topology.task_to_central(),
        }
    }

    fn host(&self, deployment_id: &str, instance: &str) -> Option<String> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = hosts.get(deployment_id).and_then(|d| d.get(instance)) {
            return known.clone();
        }
        let instances = match self.store.node_instances(deployment_id) {
            Ok(instances) => instances,
            Err(error) => {
                tracing::warn!(%error, deployment_id, "cannot read the hosts; task to central");
                return None;
            }
        };
        let map: Hosts = instances.into_iter().map(|i| (i.id, i.host_id)).collect();
        let host = map.get(instance).cloned().flatten();
        hosts.insert(deployment_id.to_owned(), map);
        host
    }
}
