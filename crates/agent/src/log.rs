//! Operation logs: script output and `ctx logger` calls, one record per line.
//!
//! The runner does not decide where logs go: the embedded mode prints or indexes them, the agent
//! (issue 4) publishes them to the bus. It hands every record to a [`LogSink`] as soon as the line
//! is complete, so a long-running script's output is visible while it runs.

use std::sync::Arc;
use std::time::SystemTime;

use drover_model::OperationTask;
use serde::{Deserialize, Serialize};

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// A line the script wrote to its standard output.
    Stdout,
    /// A line the script wrote to its standard error.
    Stderr,
    /// A `ctx logger LEVEL MSG` call.
    Ctx,
    /// A `log` line of an external plugin.
    Plugin,
    /// The runner itself (e.g. the script was killed on timeout).
    Runner,
}

/// Cloudify's log levels, as `ctx logger` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

impl LogStream {
    /// The name records carry as their `logger`.
    pub fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Ctx => "ctx",
            LogStream::Plugin => "plugin",
            LogStream::Runner => "runner",
        }
    }
}

impl LogLevel {
    /// The name records carry as their `level`.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }

    /// Parses a `ctx logger` level (`warn` and `critical` as Python's logging accepts them).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "debug" => Some(Self::Debug),
            "info" => Some(Self::Info),
            "warning" | "warn" => Some(Self::Warning),
            "error" | "critical" => Some(Self::Error),
            _ => None,
        }
    }
}

/// One log line of one operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub task_id: String,
    pub execution_id: String,
    pub deployment_id: String,
    pub node_instance_id: String,
    pub operation: String,
    pub level: LogLevel,
    pub stream: LogStream,
    pub message: String,
    /// When the line was read (shipping may be later).
    pub timestamp: SystemTime,
}

impl LogRecord {
    /// A line of `task`'s operation, read now.
    pub fn of(task: &OperationTask, stream: LogStream, level: LogLevel, message: String) -> Self {
        LogRecord {
            task_id: task.task_id.clone(),
            execution_id: task.execution_id.clone(),
            deployment_id: task.deployment_id.clone(),
            node_instance_id: task.node.node_instance_id.clone(),
            operation: task.operation.clone(),
            level,
            stream,
            message,
            timestamp: SystemTime::now(),
        }
    }
}

/// Receives log records; called from the runner's tasks, so it must not block for long
/// (forward to a channel if the destination is slow).
pub type LogSink = Arc<dyn Fn(LogRecord) + Send + Sync>;

/// A sink that drops every record.
pub fn discard_logs() -> LogSink {
    Arc::new(|_| {})
}
