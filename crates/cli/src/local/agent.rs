//! The in-process agent: drover_agent's operation runner behind the engine's runner seam.

use std::path::PathBuf;
use std::sync::OnceLock;

use drover_model::{OperationTask, TaskOutcome, TaskResult};

/// Runs operations in this process with the agent's built-in plugins (the script plugin), logs
/// to stderr. Made on first use, so commands that run nothing never create its work directory.
pub struct InProcessAgent {
    work_dir: Option<PathBuf>,
    runner: OnceLock<Result<drover_agent::OperationRunner, String>>,
}

impl InProcessAgent {
    pub fn new(work_dir: PathBuf) -> Self {
        InProcessAgent {
            work_dir: Some(work_dir),
            runner: OnceLock::new(),
        }
    }

    /// An agent for commands that never run operations.
    pub fn lazy() -> Self {
        InProcessAgent {
            work_dir: None,
            runner: OnceLock::new(),
        }
    }

    fn runner(&self) -> &Result<drover_agent::OperationRunner, String> {
        self.runner.get_or_init(|| {
            let work_dir = self
                .work_dir
                .clone()
                .ok_or_else(|| "this command runs no operations".to_owned())?;
            let logs: drover_agent::LogSink =
                std::sync::Arc::new(|record: drover_agent::LogRecord| {
                    eprintln!(
                        "{} [{}] {}",
                        record.node_instance_id,
                        short(&record.operation),
                        record.message
                    );
                });
            drover_agent::OperationRunner::new(
                drover_agent::RunnerConfig::new(work_dir),
                drover_agent::PluginRegistry::with_builtins(),
                logs,
            )
            .map_err(|e| format!("starting the in-process agent: {e}"))
        })
    }
}

fn short(operation: &str) -> &str {
    operation.rsplit('.').next().unwrap_or(operation)
}

impl drover_workflow::OperationRunner for InProcessAgent {
    async fn run(&self, task: OperationTask) -> TaskResult {
        match self.runner() {
            Ok(runner) => runner.run(task).await,
            Err(e) => TaskResult {
                task_id: task.task_id,
                execution_id: task.execution_id,
                outcome: TaskOutcome::Failed {
                    error: e.clone(),
                    recoverable: false,
                    retry_after_s: None,
                },
                runtime_properties: Default::default(),
            },
        }
    }
}
