//! The seam between the engine and whatever runs operations.
//!
//! The engine hands batches of [`OperationTask`]s to a [`TaskDispatcher`] and reads
//! [`TaskReport`]s for the execution from the stream it subscribed to. Reports may arrive in any
//! order, late, or twice (a task re-sent after a takeover keeps its id, and an agent that already
//! finished it answers again): the engine matches them by task id and ignores what it does not
//! expect. `drover local` uses [`InProcessDispatcher`]; [`crate::BusDispatcher`] publishes to
//! agents' queues and consumes the replica's results queue.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use drover_model::{OperationTask, TaskOutcome, TaskResult};
use tokio::sync::mpsc;

/// What an executor hears about a task it sent.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskReport {
    /// The agent took the task and started it.
    Started { task_id: String },
    /// The task ended.
    Finished(TaskResult),
}

/// The dispatcher could not send, or could not listen.
#[derive(Debug, thiserror::Error)]
#[error("dispatch: {0}")]
pub struct DispatchError(pub String);

/// Sends operation tasks and streams back their reports.
pub trait TaskDispatcher: Send + Sync {
    /// The reports of every task sent for `execution_id` from now on. Called once per run of
    /// an execution, before anything is sent.
    fn subscribe(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<mpsc::UnboundedReceiver<TaskReport>, DispatchError>> + Send;

    /// Sends a batch of tasks; returns when they are on their way, not when they ran. A task
    /// the transport loses after that (a broker that never confirms it) is reported failed.
    fn send(
        &self,
        tasks: Vec<OperationTask>,
    ) -> impl Future<Output = Result<(), DispatchError>> + Send;
}

/// Runs one operation to its result, in this process (the agent's operation runner).
pub trait OperationRunner: Send + Sync + 'static {
    fn run(&self, task: OperationTask) -> impl Future<Output = TaskResult> + Send;
}

/// A runner for runs where operations must not run: every task fails, non-recoverably.
/// Dry-run tasks never reach a runner.
pub struct NoRunner;

impl OperationRunner for NoRunner {
    async fn run(&self, task: OperationTask) -> TaskResult {
        TaskResult {
            task_id: task.task_id,
            execution_id: task.execution_id,
            outcome: TaskOutcome::Failed {
                error: "no agent in this process can run operations (use --dry-run)".into(),
                recoverable: false,
                retry_after_s: None,
            },
            runtime_properties: Default::default(),
        }
    }
}

/// Dispatches to a runner in this process, one tokio task per operation. Dry-run tasks are
/// acknowledged at once (started, then succeeded) without reaching the runner.
pub struct InProcessDispatcher<R> {
    runner: Arc<R>,
    subscribers: Mutex<HashMap<String, mpsc::UnboundedSender<TaskReport>>>,
}

impl<R: OperationRunner> InProcessDispatcher<R> {
    pub fn new(runner: R) -> Self {
        Self {
            runner: Arc::new(runner),
            subscribers: Mutex::new(HashMap::new()),
        }
    }

    fn sender(&self, execution_id: &str) -> Option<mpsc::UnboundedSender<TaskReport>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(execution_id)
            .cloned()
    }
}

impl<R: OperationRunner> TaskDispatcher for InProcessDispatcher<R> {
    async fn subscribe(
        &self,
        execution_id: &str,
    ) -> Result<mpsc::UnboundedReceiver<TaskReport>, DispatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(execution_id.to_owned(), tx);
        Ok(rx)
    }

    async fn send(&self, tasks: Vec<OperationTask>) -> Result<(), DispatchError> {
        for task in tasks {
            let tx = self.sender(&task.execution_id).ok_or_else(|| {
                DispatchError(format!("no subscriber for execution {}", task.execution_id))
            })?;
            // A closed receiver means the executor stopped listening (cancelled): drop reports.
            let _ = tx.send(TaskReport::Started {
                task_id: task.task_id.clone(),
            });
            if task.dry_run {
                let _ = tx.send(TaskReport::Finished(TaskResult {
                    task_id: task.task_id,
                    execution_id: task.execution_id,
                    outcome: TaskOutcome::Succeeded {
                        result: serde_json::Value::Null,
                    },
                    runtime_properties: Default::default(),
                }));
            } else {
                let runner = self.runner.clone();
                tokio::spawn(async move {
                    let result = runner.run(task).await;
                    let _ = tx.send(TaskReport::Finished(result));
                });
            }
        }
        Ok(())
    }
}
