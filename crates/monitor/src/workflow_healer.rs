//! [`WorkflowHealer`]: the [`Healer`] over the workflow service's gRPC API
//! (`drover.workflow.v1.Workflow`: `ListExecutions`, `StartExecution` of `heal` and `scale`).

use async_trait::async_trait;
use drover_proto::drover::workflow::v1 as pb;
use pb::workflow_client::WorkflowClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::heal::{ActiveExecution, HealError, Healer};

/// Statuses of an execution that has ended (Cloudify's names).
const ENDED: [&str; 3] = ["terminated", "failed", "cancelled"];

/// Heals through a workflow service replica (or nginx in front of several).
#[derive(Clone)]
pub struct WorkflowHealer {
    client: WorkflowClient<Channel>,
}

impl WorkflowHealer {
    /// A client for `url` (`http://host:port`); connects lazily, so a workflow service that is
    /// not up yet only delays heals.
    pub fn new(url: &str) -> Result<Self, HealError> {
        let endpoint = Channel::from_shared(url.to_owned())
            .map_err(|e| HealError(format!("bad workflow URL {url:?}: {e}")))?;
        Ok(Self {
            client: WorkflowClient::new(endpoint.connect_lazy()),
        })
    }
}

impl WorkflowHealer {
    async fn start(
        &self,
        deployment: &str,
        workflow: &str,
        parameters: serde_json::Value,
    ) -> Result<String, HealError> {
        let response = self
            .client
            .clone()
            .start_execution(pb::StartExecutionRequest {
                deployment_id: deployment.to_owned(),
                workflow_id: workflow.to_owned(),
                parameters_json: parameters.to_string(),
                dry_run: false,
            })
            .await
            .map_err(status)?;
        Ok(response.into_inner().id)
    }
}

impl WorkflowHealer {
    async fn executions(&self, deployment: &str) -> Result<Vec<pb::Execution>, HealError> {
        let response = self
            .client
            .clone()
            .list_executions(pb::ListExecutionsRequest {
                deployment_id: deployment.to_owned(),
            })
            .await
            .map_err(status)?;
        Ok(response.into_inner().executions)
    }
}

fn status(error: tonic::Status) -> HealError {
    HealError(format!("{}: {}", error.code(), error.message()))
}

#[async_trait]
impl Healer for WorkflowHealer {
    async fn active_executions(&self, deployment: &str) -> Result<Vec<ActiveExecution>, HealError> {
        Ok(self
            .executions(deployment)
            .await?
            .into_iter()
            .filter(|e| !ENDED.contains(&e.status.as_str()))
            .map(|e| ActiveExecution {
                id: e.id,
                workflow_id: e.workflow_id,
            })
            .collect())
    }

    async fn uninstalled(&self, deployment: &str) -> Result<bool, HealError> {
        let mut executions = self.executions(deployment).await?;
        executions.retain(|e| {
            !e.is_dry_run && (e.workflow_id == "install" || e.workflow_id == "uninstall")
        });
        // RFC 3339 in UTC: in creation order as strings.
        let latest = executions
            .iter()
            .max_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(latest.is_some_and(|e| e.workflow_id == "uninstall"))
    }

    async fn start_heal(&self, deployment: &str, instance: &str) -> Result<String, HealError> {
        let parameters = json!({ "node_instance_id": instance });
        self.start(deployment, "heal", parameters).await
    }

    async fn start_scale(
        &self,
        deployment: &str,
        group: &str,
        delta: u32,
    ) -> Result<String, HealError> {
        let parameters = json!({ "scalable_entity_name": group, "delta": delta });
        self.start(deployment, "scale", parameters).await
    }
}
