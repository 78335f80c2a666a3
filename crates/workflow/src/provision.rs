//! [`ProvisioningDispatcher`]: the servers of Compute node instances come from the provisioner,
//! in batches (DESIGN.md, data flow 4), while every other task goes on to the agents.
//!
//! It wraps any [`TaskDispatcher`]. The tasks of [`PROVISIONING_PLUGIN`] (a Compute node
//! without a create/delete of its own, see `lifecycle`) that are not dry runs wait up to
//! [`ProvisionConfig::window`] for others to join them, up to [`ProvisionConfig::batch_size`],
//! and go to a [`Provisioner`] as one provision (create) and one deprovision (delete) request;
//! over [`RemoteCloud`] that is one `Provision` or `Deprovision` call to `drover-provisioner`
//! per batch. Each task is then answered on its execution's report stream with its own result:
//! the server's runtime properties (`ip`, `external_id`), or the error of that instance alone
//! (quota exhausted, …), non-recoverable when the provisioner says retrying will not help.
//!
//! Idempotency is the provisioner's: a server carries its deployment and node instance id, so
//! a task the engine sends again after a takeover (same id, same instance) adopts the server
//! the first try made. Uninstall and scale-in delete through the same path; heal is a delete
//! then a create of the healed instance.
//!
//! Without a provisioner the layer is transparent: provisioning tasks go to the wrapped
//! dispatcher like any central operation (for `drover-workflow` without `--provisioner-url`,
//! to the `central` queue, where an agent must have a `drover_provisioning` plugin).

use std::collections::{HashMap, hash_map::Entry};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_model::{Map, OperationTask, PROVISIONING_PLUGIN, TaskOutcome, TaskResult};
use drover_provisioning::{
    CloudError, ProvisionError, Provisioner, ProvisionerConfig, RemoteCloud, ServerKey, ServerSpec,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::dispatch::{DispatchError, TaskDispatcher, TaskReport};

/// How provisioning tasks are batched.
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    /// Instances per provisioner request at most.
    pub batch_size: usize,
    /// How long the first task of a batch waits for others.
    pub window: Duration,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionConfig {
            batch_size: 100,
            window: Duration::from_millis(50),
        }
    }
}

/// A provisioner that calls `drover-provisioner` at `url` (`http://host:port`), one gRPC call
/// per batch of up to `batch_size`. The service paces, retries and adopts; this side only
/// repeats calls that failed as a whole (the service was unreachable), with backoff.
pub fn remote_provisioner(url: &str, batch_size: usize) -> Result<Provisioner, CloudError> {
    let cloud = RemoteCloud::connect_lazy(url, batch_size)?;
    let config = ProvisionerConfig {
        batch_size: batch_size.max(1),
        // The service holds the cloud's pace; calls to it are limited by the batches only.
        requests_per_second: NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN),
        burst: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
        concurrent_requests: 16,
        // A service down for long fails the tasks (recoverable) within about a minute.
        max_attempts: 4,
        max_backoff: Duration::from_secs(5),
        ..ProvisionerConfig::default()
    };
    Ok(Provisioner::new(Arc::new(cloud), config))
}

/// Report channels by execution id.
type Subscribers = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<TaskReport>>>>;

/// A [`TaskDispatcher`] that provisions Compute servers itself and passes every other task to
/// `D`.
pub struct ProvisioningDispatcher<D> {
    inner: D,
    /// `None`: no provisioner, every task goes to `inner`.
    batches: Option<Batches>,
}

/// The batching side: tasks in, the batcher's handle, the executions' report channels.
struct Batches {
    queue: mpsc::UnboundedSender<OperationTask>,
    subscribers: Subscribers,
    batcher: JoinHandle<()>,
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.batcher.abort();
    }
}

impl<D: TaskDispatcher> ProvisioningDispatcher<D> {
    /// Provisions through `provisioner` when there is one; must be called within a tokio
    /// runtime (it starts the batcher).
    pub fn new(inner: D, provisioner: Option<Provisioner>, config: ProvisionConfig) -> Self {
        let batches = provisioner.map(|provisioner| {
            let (queue, tasks) = mpsc::unbounded_channel();
            let subscribers = Subscribers::default();
            let batcher = tokio::spawn(batch(tasks, provisioner, config, subscribers.clone()));
            Batches {
                queue,
                subscribers,
                batcher,
            }
        });
        ProvisioningDispatcher { inner, batches }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<D: TaskDispatcher> TaskDispatcher for ProvisioningDispatcher<D> {
    /// The wrapped dispatcher's reports, forwarded into a stream this layer can also answer
    /// on. The forwarder ends when the executor stops listening or the wrapped stream ends (so
    /// the executor sees the end too).
    async fn subscribe(
        &self,
        execution_id: &str,
    ) -> Result<mpsc::UnboundedReceiver<TaskReport>, DispatchError> {
        let mut reports = self.inner.subscribe(execution_id).await?;
        let Some(batches) = &self.batches else {
            return Ok(reports);
        };
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&batches.subscribers).insert(execution_id.to_owned(), tx.clone());
        let subscribers = batches.subscribers.clone();
        let id = execution_id.to_owned();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    report = reports.recv() => {
                        let Some(report) = report else { break };
                        if tx.send(report).is_err() {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                }
            }
            // Unless a later run of the execution subscribed again meanwhile.
            if let Entry::Occupied(entry) = lock(&subscribers).entry(id)
                && entry.get().same_channel(&tx)
            {
                entry.remove();
            }
        });
        Ok(rx)
    }

    async fn send(&self, tasks: Vec<OperationTask>) -> Result<(), DispatchError> {
        let Some(batches) = &self.batches else {
            return self.inner.send(tasks).await;
        };
        let (mine, others): (Vec<_>, Vec<_>) = tasks
            .into_iter()
            .partition(|t| t.plugin == PROVISIONING_PLUGIN && !t.dry_run);
        for task in mine {
            let reports = lock(&batches.subscribers)
                .get(&task.execution_id)
                .cloned()
                .ok_or_else(|| {
                    DispatchError(format!("no subscriber for execution {}", task.execution_id))
                })?;
            // A closed receiver means the executor stopped listening: nothing to tell.
            let _ = reports.send(TaskReport::Started {
                task_id: task.task_id.clone(),
            });
            batches
                .queue
                .send(task)
                .map_err(|_| DispatchError("the provisioning batcher stopped".into()))?;
        }
        if others.is_empty() {
            return Ok(());
        }
        self.inner.send(others).await
    }
}

/// Collects tasks into batches (the first waits `window` for the rest, up to `batch_size`)
/// and runs each batch on its own task, so the next batch collects meanwhile; the provisioner
/// bounds the calls in flight.
async fn batch(
    mut tasks: mpsc::UnboundedReceiver<OperationTask>,
    provisioner: Provisioner,
    config: ProvisionConfig,
    subscribers: Subscribers,
) {
    let size = config.batch_size.max(1);
    while let Some(first) = tasks.recv().await {
        let deadline = Instant::now() + config.window;
        let mut batch = vec![first];
        while batch.len() < size {
            match tokio::time::timeout_at(deadline, tasks.recv()).await {
                Ok(Some(task)) => batch.push(task),
                Ok(None) | Err(_) => break,
            }
        }
        let (creates, deletes): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|t| t.implementation == "create");
        if !creates.is_empty() {
            tokio::spawn(create(provisioner.clone(), creates, subscribers.clone()));
        }
        if !deletes.is_empty() {
            tokio::spawn(delete(provisioner.clone(), deletes, subscribers.clone()));
        }
    }
}

/// The servers of the tasks' instances, one request for the batch; a node instance asked for
/// twice in one batch is asked for once.
async fn create(provisioner: Provisioner, tasks: Vec<OperationTask>, subscribers: Subscribers) {
    let (specs, slots) = unique(&tasks, |t| ServerSpec {
        key: t.node.node_instance_id.clone(),
        deployment_id: t.deployment_id.clone(),
        properties: t.node.properties.clone(),
    });
    let results = provisioner.provision(specs).await;
    for (task, slot) in tasks.into_iter().zip(slots) {
        let result = match results.get(slot) {
            Some(Ok(server)) => Ok(|p: &mut Map| p.extend(server.runtime_properties())),
            Some(Err(error)) => Err(error.clone()),
            None => Err(lost()),
        };
        report(&subscribers, answer(task, result));
    }
}

/// Frees the servers of the tasks' instances, one request for the batch (per deployment,
/// over [`RemoteCloud`]): each in its own deployment only.
async fn delete(provisioner: Provisioner, tasks: Vec<OperationTask>, subscribers: Subscribers) {
    let (keys, slots) = unique(&tasks, |t| {
        ServerKey::new(&t.node.node_instance_id, &t.deployment_id)
    });
    let results = provisioner.deprovision(keys).await;
    for (task, slot) in tasks.into_iter().zip(slots) {
        let result = match results.get(slot) {
            Some(Ok(())) => Ok(|p: &mut Map| {
                p.remove("ip");
                p.remove("external_id");
            }),
            Some(Err(error)) => Err(error.clone()),
            None => Err(lost()),
        };
        report(&subscribers, answer(task, result));
    }
}

/// The distinct requests of `tasks` (by deployment and node instance), and for each task the
/// index of its request.
fn unique<R>(
    tasks: &[OperationTask],
    request: impl Fn(&OperationTask) -> R,
) -> (Vec<R>, Vec<usize>) {
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut requests = Vec::new();
    let slots = tasks
        .iter()
        .map(|t| {
            let key = (t.deployment_id.as_str(), t.node.node_instance_id.as_str());
            *index.entry(key).or_insert_with(|| {
                requests.push(request(t));
                requests.len() - 1
            })
        })
        .collect();
    (requests, slots)
}

fn lost() -> ProvisionError {
    ProvisionError {
        attempts: 0,
        error: CloudError::Transient("the provisioner answered nothing for it".into()),
    }
}

/// A task's result: on success, its instance's runtime properties as `change` leaves them;
/// on failure, the error, recoverable when a later try may succeed.
fn answer(
    task: OperationTask,
    result: Result<impl FnOnce(&mut Map), ProvisionError>,
) -> TaskResult {
    let mut runtime_properties = std::collections::BTreeMap::new();
    let outcome = match result {
        Ok(change) => {
            let mut properties = task.node.runtime_properties;
            change(&mut properties);
            runtime_properties.insert(task.node.node_instance_id, properties);
            TaskOutcome::Succeeded {
                result: serde_json::Value::Null,
            }
        }
        Err(error) => TaskOutcome::Failed {
            recoverable: error.error.is_retryable(),
            error: error.to_string(),
            retry_after_s: None,
        },
    };
    TaskResult {
        task_id: task.task_id,
        execution_id: task.execution_id,
        outcome,
        runtime_properties,
    }
}

fn report(subscribers: &Subscribers, result: TaskResult) {
    let reports = lock(subscribers).get(&result.execution_id).cloned();
    match reports {
        // A closed receiver: the run ended meanwhile; a resume sends the task again.
        Some(reports) => {
            let _ = reports.send(TaskReport::Finished(result));
        }
        None => tracing::debug!(
            task_id = %result.task_id,
            execution_id = %result.execution_id,
            "provisioning result for an execution no longer running here"
        ),
    }
}
