//! drover's agent library: runs operation tasks and answers with their results.
//!
//! [`OperationRunner`] is what both the embedded mode (`drover local`) and the `drover-agent`
//! binary call: task in, [`TaskResult`](drover_model::TaskResult) out, logs to a [`LogSink`].
//! Scripts reach their context through the [`ctx`] command. Heartbeats, the bus consumer and
//! hollow mode come with issue 4 and sit around the runner, not in it.

pub mod ctx;
pub mod log;
mod memo;
pub mod plugin;
pub mod runner;
pub mod script;

pub use log::{LogLevel, LogRecord, LogSink, LogStream, discard_logs};
pub use plugin::{DryRun, OperationEnv, Plugin, PluginFuture, PluginOutput, PluginRegistry};
pub use runner::{DEFAULT_REMEMBERED_TASKS, OperationRunner, RunnerConfig};
pub use script::ScriptPlugin;
