//! The in-process agent: drover_agent's operation runner behind the engine's runner seam, and
//! the `sim` cloud for the servers of Compute nodes.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use drover_model::{Map, OperationTask, PROVISIONING_PLUGIN, TaskOutcome, TaskResult};
use drover_provisioning::{Provisioner, ProvisionerConfig, ServerSpec, SimCloud, SimConfig};

/// Runs operations in this process with the agent's built-in plugins (the script plugin), logs
/// to stderr; provisioning tasks go to an in-memory `sim` cloud. The runner is made on first
/// use, so commands that run nothing never create its work directory.
pub struct InProcessAgent {
    work_dir: Option<PathBuf>,
    runner: OnceLock<Result<drover_agent::OperationRunner, String>>,
    provisioner: Provisioner,
}

impl InProcessAgent {
    pub fn new(work_dir: PathBuf) -> Self {
        InProcessAgent {
            work_dir: Some(work_dir),
            runner: OnceLock::new(),
            provisioner: sim_provisioner(),
        }
    }

    /// An agent for commands that never run operations.
    pub fn lazy() -> Self {
        InProcessAgent {
            work_dir: None,
            runner: OnceLock::new(),
            provisioner: sim_provisioner(),
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

/// The `sim` cloud, instant and reliable, paced for a local run rather than a real cloud's
/// limits. It lives as long as the process: a later `drover local` command starts a new one, and
/// deleting a server it does not know succeeds.
fn sim_provisioner() -> Provisioner {
    let config = ProvisionerConfig {
        requests_per_second: NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN),
        burst: NonZeroU32::new(1_000).unwrap_or(NonZeroU32::MIN),
        concurrent_requests: 64,
        ..ProvisionerConfig::default()
    };
    Provisioner::new(Arc::new(SimCloud::new(SimConfig::default())), config)
}

impl InProcessAgent {
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
            match self.provisioner.provision(vec![spec]).await.pop() {
                Some(Ok(server)) => {
                    props.extend(server.runtime_properties());
                    (succeeded, props)
                }
                Some(Err(e)) => (failed(e.to_string()), props),
                None => (failed("the provisioner answered nothing".into()), props),
            }
        } else {
            match self.provisioner.deprovision(vec![key]).await.pop() {
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

fn short(operation: &str) -> &str {
    operation.rsplit('.').next().unwrap_or(operation)
}

impl drover_workflow::OperationRunner for InProcessAgent {
    async fn run(&self, task: OperationTask) -> TaskResult {
        if task.plugin == PROVISIONING_PLUGIN {
            let (outcome, props) = self.provision(&task).await;
            return TaskResult {
                runtime_properties: [(task.node.node_instance_id.clone(), props)].into(),
                task_id: task.task_id,
                execution_id: task.execution_id,
                outcome,
            };
        }
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
