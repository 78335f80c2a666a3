//! The in-process agent of `drover local`: drover_agent's `AgentService` on the embedded
//! `MemoryBus`, the same service `drover-agent` runs on RabbitMQ, with the built-in plugins.
//! (The servers of Compute nodes come from the provisioner, not from this agent: see
//! `drover_workflow::ProvisioningDispatcher`.)

use std::path::PathBuf;
use std::sync::Arc;

use drover_agent::{
    AgentQueue, AgentService, LogRecord, LogSink, OperationRunner, PluginRegistry, RunnerConfig,
};
use drover_bus::Bus;
use tokio::task::JoinHandle;

/// Starts an agent consuming the bus's `central` queue (where `BusDispatcher` sends every task
/// by default), running `concurrency` operations at once, in `work_dir`. It stops when the
/// handle is aborted or the bus goes away.
pub fn start(
    bus: Arc<dyn Bus>,
    work_dir: PathBuf,
    concurrency: usize,
) -> std::io::Result<JoinHandle<()>> {
    let plugins = PluginRegistry::with_builtins();
    let logs: LogSink = Arc::new(|record: LogRecord| {
        eprintln!(
            "{} [{}] {}",
            record.node_instance_id,
            short(&record.operation),
            record.message
        );
    });
    let runner = OperationRunner::new(RunnerConfig::new(work_dir), plugins, logs)?;
    let concurrency = u16::try_from(concurrency).unwrap_or(u16::MAX);
    let service =
        AgentService::new(bus, Arc::new(runner), AgentQueue::Central).with_concurrency(concurrency);
    Ok(tokio::spawn(async move {
        if let Err(error) = service.run().await {
            eprintln!("the in-process agent stopped: {error}");
        }
    }))
}

fn short(operation: &str) -> &str {
    operation.rsplit('.').next().unwrap_or(operation)
}
