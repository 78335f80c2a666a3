//! drover's agent library: runs operation tasks and answers with their results.
//!
//! [`OperationRunner`] is what both the embedded mode (`drover local`) and the `drover-agent`
//! binary call: task in, [`TaskResult`](drover_model::TaskResult) out, logs to a [`LogSink`].
//! Scripts reach their context through the [`ctx`] command. [`AgentService`] feeds the runner
//! from a bus queue and publishes its results; a [`Heartbeat`] tells the monitors the agent is
//! there; a [`HollowHost`] runs many simulated agents in one process for scale tests. Both sit
//! around the runner, not in it.

pub mod ctx;
pub mod external;
mod heartbeat;
mod hollow;
pub mod log;
mod memo;
pub mod plugin;
pub mod runner;
pub mod script;
mod service;
mod shipping;

pub use external::{ExternalConfig, ExternalPlugin, PluginCommand, PluginsDir};
pub use heartbeat::{
    AgentIdentity, DEFAULT_HEARTBEAT_INTERVAL, Heartbeat, HeartbeatGroups, HeartbeatMessage,
    LoadAverage, MAX_BEATS_PER_BATCH, MetricSource,
};
pub use hollow::{Delayed, HollowHost, hollow_agent_name};
pub use log::{LogLevel, LogRecord, LogSink, LogStream, discard_logs};
pub use plugin::{DryRun, OperationEnv, Plugin, PluginFuture, PluginOutput, PluginRegistry};
pub use runner::{DEFAULT_REMEMBERED_TASKS, OperationRunner, RunnerConfig};
pub use script::ScriptPlugin;
pub use service::{AgentQueue, AgentService, DEFAULT_CONCURRENCY};
pub use shipping::{Shipper, ShipperConfig, Shipping};
