//! The in-process agent of `drover local`: drover_agent's `AgentService` on the embedded
//! `MemoryBus`, the same service `drover-agent` runs on RabbitMQ, with the built-in plugins and
//! the `sim` cloud as the provisioning plugin for the servers of Compute nodes.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use drover_agent::{
    AgentQueue, AgentService, LogRecord, LogSink, OperationEnv, OperationRunner, Plugin,
    PluginFuture, PluginOutput, PluginRegistry, RunnerConfig,
};
use drover_bus::Bus;
use drover_model::{Map, OperationTask, PROVISIONING_PLUGIN, TaskOutcome};
use drover_provisioning::{Provisioner, ProvisionerConfig, ServerSpec, SimCloud, SimConfig};
use tokio::task::JoinHandle;

/// Starts an agent consuming the bus's `central` queue (where `BusDispatcher` sends every task
/// by default), running `concurrency` operations at once, in `work_dir`. It stops when the
/// handle is aborted or the bus goes away.
pub fn start(
    bus: Arc<dyn Bus>,
    work_dir: PathBuf,
    concurrency: usize,
) -> std::io::Result<JoinHandle<()>> {
    let mut plugins = PluginRegistry::with_builtins();
    plugins.register(PROVISIONING_PLUGIN, Arc::new(SimProvisioning::new()));
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

/// The `sim` cloud as a plugin, instant and reliable, paced for a local run rather than a real
/// cloud's limits. It lives as long as the process: a later `drover local` command starts a new
/// one, and deleting a server it does not know succeeds.
struct SimProvisioning(Provisioner);

impl SimProvisioning {
    fn new() -> Self {
        let config = ProvisionerConfig {
            requests_per_second: NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(1_000).unwrap_or(NonZeroU32::MIN),
            concurrent_requests: 64,
            ..ProvisionerConfig::default()
        };
        SimProvisioning(Provisioner::new(
            Arc::new(SimCloud::new(SimConfig::default())),
            config,
        ))
    }

    /// Makes or frees the server of a Compute node instance.
    async fn provision(&self, task: &OperationTask) -> (TaskOutcome, Map) {
        let key = task.node.node_instance_id.clone();
        let failed = |error: String| TaskOutcome::Failed {
            error,
            recoverable: true,
            retry_after_s: None,
        };
        let succeeded = TaskOutcome::Succeeded {
            result: serde_json::Value::Null,
        };
        let mut props = task.node.runtime_properties.clone();
        if task.implementation == "create" {
            let spec = ServerSpec {
                key,
                deployment_id: task.deployment_id.clone(),
                properties: task.node.properties.clone(),
            };
            match self.0.provision(vec![spec]).await.pop() {
                Some(Ok(server)) => {
                    props.extend(server.runtime_properties());
                    (succeeded, props)
                }
                Some(Err(e)) => (failed(e.to_string()), props),
                None => (failed("the provisioner answered nothing".into()), props),
            }
        } else {
            match self.0.deprovision(vec![key]).await.pop() {
                Some(Ok(())) => {
                    props.remove("ip");
                    props.remove("external_id");
                    (succeeded, props)
                }
                Some(Err(e)) => (failed(e.to_string()), props),
                None => (failed("the provisioner answered nothing".into()), props),
            }
        }
    }
}

impl Plugin for SimProvisioning {
    fn run<'a>(&'a self, task: &'a OperationTask, _env: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async move {
            let (outcome, props) = self.provision(task).await;
            PluginOutput {
                outcome,
                runtime_properties: [(task.node.node_instance_id.clone(), props)].into(),
            }
        })
    }
}

fn short(operation: &str) -> &str {
    operation.rsplit('.').next().unwrap_or(operation)
}
