//! The operation runner: task in, result out.
//!
//! It is the one entry point for both the embedded mode (`drover local` calls it in-process)
//! and the agent (for each task consumed from the bus). Layers, outermost first: dry run
//! (answered at once: it runs nothing, so a repeat needs no memory of it), deduplication of
//! re-sent tasks (`TaskMemo`), then the plugin the task names.

use std::io;
use std::path::PathBuf;

use drover_model::{OperationTask, TaskResult};

use crate::log::LogSink;
use crate::memo::TaskMemo;
use crate::plugin::{DryRun, OperationEnv, PluginOutput, PluginRegistry};

/// How many task results a runner remembers unless told otherwise.
pub const DEFAULT_REMEMBERED_TASKS: usize = 10_000;

/// What a runner needs to know.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Default working directory of scripts and home of downloaded resources; created if
    /// missing.
    pub work_dir: PathBuf,
    /// The executable that acts as `ctx` (see [`crate::ctx`]); `None` for the current one,
    /// which is right for any binary that calls `main_if_invoked_as_ctx`.
    pub ctx_executable: Option<PathBuf>,
    /// How many recent tasks are remembered for deduplication.
    pub remembered_tasks: usize,
}

impl RunnerConfig {
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        RunnerConfig {
            work_dir: work_dir.into(),
            ctx_executable: None,
            remembered_tasks: DEFAULT_REMEMBERED_TASKS,
        }
    }
}

/// Runs operation tasks; cheap to share (`Arc`) between concurrent tasks.
pub struct OperationRunner {
    env: OperationEnv,
    plugins: PluginRegistry,
    memo: TaskMemo,
}

impl OperationRunner {
    /// A runner with the given plugins; logs of every operation go to `logs`.
    pub fn new(config: RunnerConfig, plugins: PluginRegistry, logs: LogSink) -> io::Result<Self> {
        std::fs::create_dir_all(&config.work_dir)?;
        let work_dir = std::path::absolute(&config.work_dir)?;
        let ctx_executable = match config.ctx_executable {
            Some(path) if path.is_file() => path,
            Some(path) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the ctx executable {} does not exist", path.display()),
                ));
            }
            None => std::env::current_exe()?,
        };
        Ok(OperationRunner {
            env: OperationEnv {
                work_dir,
                ctx_executable,
                logs,
            },
            plugins,
            memo: TaskMemo::new(config.remembered_tasks),
        })
    }

    /// Runs `task`, or answers with the first result when the same task (id and attempt) was
    /// already run or is running.
    pub async fn run(&self, task: OperationTask) -> TaskResult {
        if let Some(result) = Self::answer_now(&task) {
            return result;
        }
        let slot = self.memo.slot((task.task_id.clone(), task.attempt));
        slot.get_or_init(|| self.execute(&task)).await.clone()
    }

    /// The result of a task that runs nothing (a dry run), without waiting or remembering it:
    /// what lets the agent answer such tasks in its consuming loop.
    pub fn answer_now(task: &OperationTask) -> Option<TaskResult> {
        task.dry_run.then(|| result_of(task, DryRun::output()))
    }

    async fn execute(&self, task: &OperationTask) -> TaskResult {
        let name = PluginRegistry::plugin_name(task);
        let output = match self.plugins.get(name) {
            Some(plugin) => plugin.run(task, &self.env).await,
            None => PluginOutput::failed(
                format!(
                    "no plugin named {name:?} on this agent (operation {}, implementation {:?})",
                    task.operation, task.implementation
                ),
                false,
            ),
        };
        result_of(task, output)
    }
}

fn result_of(task: &OperationTask, output: PluginOutput) -> TaskResult {
    TaskResult {
        task_id: task.task_id.clone(),
        execution_id: task.execution_id.clone(),
        outcome: output.outcome,
        runtime_properties: output.runtime_properties,
    }
}
