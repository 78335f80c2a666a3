//! The gRPC `Workflow` service (`proto/drover/workflow/v1/workflow.proto`): deployments and
//! executions as the gateway asks for them.
//!
//! The service never runs an execution itself: `StartExecution` and `ResumeExecution` store it
//! pending and publish its ticket to the `executions` queue, where a [`crate::Replica`] (in this
//! process or another) takes it. Everything it answers is read from the state store, which the
//! replicas write: `WatchExecution` polls the store, so it follows an execution whichever
//! replica runs it, across takeovers.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_bus::Bus;
use drover_model::{Execution, ExecutionStatus, Map, Plan};
use drover_proto::drover::workflow::v1 as pb;
use drover_store::StateStore;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{Engine, EngineError, TaskDispatcher, replica};

/// The `Workflow` service over an engine (for its deployment and execution bookkeeping; runs
/// happen in replicas) and the bus the tickets go to.
pub struct WorkflowService<D> {
    engine: Arc<Engine<D>>,
    bus: Arc<dyn Bus>,
    watch_poll: Duration,
}

impl<D: TaskDispatcher + 'static> WorkflowService<D> {
    pub fn new(engine: Arc<Engine<D>>, bus: Arc<dyn Bus>) -> Self {
        WorkflowService {
            engine,
            bus,
            watch_poll: Duration::from_millis(200),
        }
    }

    /// The tonic server to add to a router.
    pub fn into_server(self) -> pb::workflow_server::WorkflowServer<Self> {
        pb::workflow_server::WorkflowServer::new(self)
    }

    fn store(&self) -> &Arc<dyn StateStore> {
        self.engine.store()
    }

    fn execution(&self, id: &str) -> Result<Execution, Status> {
        self.store()
            .execution(id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no execution {id}")))
    }

    /// An execution of the deployment that has not ended, if any.
    fn running(&self, deployment_id: &str) -> Result<Option<Execution>, Status> {
        let executions = self.store().executions(deployment_id).map_err(internal)?;
        Ok(executions.into_iter().find(|e| !e.status.is_final()))
    }

    fn deployment_reply(&self, id: &str) -> Result<pb::Deployment, Status> {
        let deployment = self
            .store()
            .deployment(id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no deployment {id}")))?;
        let outputs = self.engine.outputs(id).map_err(engine_status)?;
        let instances = self.store().node_instances(id).map_err(internal)?;
        Ok(pb::Deployment {
            id: deployment.id,
            blueprint_id: deployment.blueprint_id,
            created_at: deployment.created_at,
            inputs_json: serde_json::Value::Object(deployment.inputs).to_string(),
            outputs_json: serde_json::Value::Object(outputs).to_string(),
            node_instances: u32::try_from(instances.len()).unwrap_or(u32::MAX),
        })
    }

    /// Publishes the execution's ticket; when the broker does not take it, the execution is
    /// stored failed with the reason, so it does not stay pending for ever.
    async fn queue(&self, mut execution: Execution) -> Result<Execution, Status> {
        let route = self.bus.topology().execution();
        let published = match self
            .bus
            .publish(&route, replica::ticket(&execution.id))
            .await
        {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            execution.status = ExecutionStatus::Failed;
            execution.error = format!("could not queue the execution: {e}");
            execution.ended_at = Some(crate::events::now());
            self.store().put_execution(&execution).map_err(internal)?;
            return Err(Status::unavailable(execution.error));
        }
        Ok(execution)
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Invalid(message) => Status::invalid_argument(message),
        e => Status::internal(e.to_string()),
    }
}

/// A JSON object from a request field; empty is `{}`.
fn json_object(text: &str, field: &str) -> Result<Map, Status> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_str(text)
        .map_err(|e| Status::invalid_argument(format!("{field} is not a JSON object: {e}")))
}

fn status_name(status: ExecutionStatus) -> String {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{status:?}"),
    }
}

/// The protobuf shape of an execution.
pub fn to_pb(e: &Execution) -> pb::Execution {
    pb::Execution {
        id: e.id.clone(),
        deployment_id: e.deployment_id.clone(),
        workflow_id: e.workflow_id.clone(),
        status: status_name(e.status),
        parameters_json: serde_json::Value::Object(e.parameters.clone()).to_string(),
        created_at: e.created_at.clone(),
        ended_at: e.ended_at.clone().unwrap_or_default(),
        error: e.error.clone(),
        is_dry_run: e.is_dry_run,
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::ExecutionUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl<D: TaskDispatcher + 'static> pb::workflow_server::Workflow for WorkflowService<D> {
    async fn create_deployment(
        &self,
        request: Request<pb::CreateDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let r = request.into_inner();
        if r.deployment_id.is_empty() {
            return Err(Status::invalid_argument("deployment_id is empty"));
        }
        if let Some(e) = self.running(&r.deployment_id)? {
            return Err(Status::failed_precondition(format!(
                "deployment {} has a running execution ({} of {})",
                r.deployment_id, e.id, e.workflow_id
            )));
        }
        let inputs = json_object(&r.inputs_json, "inputs_json")?;
        let (plan, blueprint_dir) = match r.source {
            Some(pb::create_deployment_request::Source::PlanJson(json)) => {
                let plan: Plan = serde_json::from_str(&json)
                    .map_err(|e| Status::invalid_argument(format!("plan_json: {e}")))?;
                (plan, None)
            }
            Some(pb::create_deployment_request::Source::BlueprintPath(path)) => {
                let options = drover_dsl::Options {
                    inputs: inputs.clone(),
                    ..Default::default()
                };
                let file = Path::new(&path).to_owned();
                let plan =
                    tokio::task::spawn_blocking(move || drover_dsl::plan_file(&file, &options))
                        .await
                        .map_err(internal)?
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let dir = Path::new(&path)
                    .parent()
                    .and_then(|d| std::path::absolute(d).ok())
                    .map(|d| d.display().to_string());
                (plan, dir)
            }
            None => {
                return Err(Status::invalid_argument(
                    "neither blueprint_path nor plan_json",
                ));
            }
        };
        let blueprint_id = if r.blueprint_id.is_empty() {
            r.deployment_id.clone()
        } else {
            r.blueprint_id
        };
        let engine = self.engine.clone();
        let id = r.deployment_id.clone();
        tokio::task::spawn_blocking(move || {
            engine.create_deployment(&id, &blueprint_id, plan, inputs, blueprint_dir)
        })
        .await
        .map_err(internal)?
        .map_err(engine_status)?;
        Ok(Response::new(self.deployment_reply(&r.deployment_id)?))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        Ok(Response::new(
            self.deployment_reply(&request.into_inner().deployment_id)?,
        ))
    }

    async fn delete_deployment(
        &self,
        request: Request<pb::DeleteDeploymentRequest>,
    ) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        let id = request.into_inner().deployment_id;
        if self.store().deployment(&id).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("no deployment {id}")));
        }
        if let Some(e) = self.running(&id)? {
            return Err(Status::failed_precondition(format!(
                "deployment {id} has a running execution ({} of {})",
                e.id, e.workflow_id
            )));
        }
        self.store().delete_deployment(&id).map_err(internal)?;
        Ok(Response::new(pb::DeleteDeploymentResponse {}))
    }

    async fn start_execution(
        &self,
        request: Request<pb::StartExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let r = request.into_inner();
        if self
            .store()
            .deployment(&r.deployment_id)
            .map_err(internal)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "no deployment {}",
                r.deployment_id
            )));
        }
        if let Some(e) = self.running(&r.deployment_id)? {
            return Err(Status::failed_precondition(format!(
                "deployment {} has a running execution ({} of {})",
                r.deployment_id, e.id, e.workflow_id
            )));
        }
        let parameters = json_object(&r.parameters_json, "parameters_json")?;
        let execution = self
            .engine
            .create_execution(&r.deployment_id, &r.workflow_id, parameters, r.dry_run)
            .map_err(engine_status)?;
        let execution = self.queue(execution).await?;
        Ok(Response::new(to_pb(&execution)))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let execution = self.execution(&request.into_inner().execution_id)?;
        Ok(Response::new(to_pb(&execution)))
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let deployment_id = request.into_inner().deployment_id;
        let deployments = if deployment_id.is_empty() {
            self.store().deployments().map_err(internal)?
        } else {
            vec![deployment_id]
        };
        let mut executions = Vec::new();
        for id in deployments {
            let found = self.store().executions(&id).map_err(internal)?;
            executions.extend(found.iter().map(to_pb));
        }
        Ok(Response::new(pb::ListExecutionsResponse { executions }))
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let r = request.into_inner();
        let mut execution = self.execution(&r.execution_id)?;
        if execution.status.is_final() {
            return Err(Status::failed_precondition(format!(
                "execution {} has ended ({})",
                execution.id,
                status_name(execution.status)
            )));
        }
        execution.status = if r.force {
            ExecutionStatus::ForceCancelling
        } else {
            ExecutionStatus::Cancelling
        };
        self.store().put_execution(&execution).map_err(internal)?;
        Ok(Response::new(to_pb(&execution)))
    }

    async fn resume_execution(
        &self,
        request: Request<pb::ResumeExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let mut execution = self.execution(&request.into_inner().execution_id)?;
        if !matches!(
            execution.status,
            ExecutionStatus::Failed | ExecutionStatus::Cancelled
        ) {
            return Err(Status::failed_precondition(format!(
                "execution {} is {}: only a failed or cancelled execution is resumed",
                execution.id,
                status_name(execution.status)
            )));
        }
        if let Some(e) = self.running(&execution.deployment_id)? {
            return Err(Status::failed_precondition(format!(
                "deployment {} has a running execution ({} of {})",
                execution.deployment_id, e.id, e.workflow_id
            )));
        }
        execution.status = ExecutionStatus::Pending;
        execution.error.clear();
        execution.ended_at = None;
        self.store().put_execution(&execution).map_err(internal)?;
        let execution = self.queue(execution).await?;
        Ok(Response::new(to_pb(&execution)))
    }

    type WatchExecutionStream = UpdateStream;

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let id = request.into_inner().execution_id;
        self.execution(&id)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(watch(self.store().clone(), id, self.watch_poll, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the execution's events, oldest first, and its status on each change, until it ends
/// (then the events written before its end, and the final status) or the client goes away.
async fn watch(
    store: Arc<dyn StateStore>,
    id: String,
    every: Duration,
    tx: mpsc::Sender<Result<pb::ExecutionUpdate, Status>>,
) {
    use pb::execution_update::Update;
    let mut sent_events = 0;
    let mut last_status = None;
    loop {
        // The status first: events read after a final status include the last ones.
        let execution = match store.execution(&id) {
            Ok(Some(execution)) => execution,
            Ok(None) => {
                let _ = tx
                    .send(Err(Status::not_found(format!("no execution {id}"))))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(internal(e))).await;
                return;
            }
        };
        let events = match store.events(&id) {
            Ok(events) => events,
            Err(e) => {
                let _ = tx.send(Err(internal(e))).await;
                return;
            }
        };
        for event in events.iter().skip(sent_events) {
            let json = serde_json::to_string(event).unwrap_or_default();
            let update = pb::ExecutionUpdate {
                update: Some(Update::EventJson(json)),
            };
            if tx.send(Ok(update)).await.is_err() {
                return;
            }
        }
        sent_events = sent_events.max(events.len());
        if last_status != Some(execution.status) {
            last_status = Some(execution.status);
            let update = pb::ExecutionUpdate {
                update: Some(Update::Execution(to_pb(&execution))),
            };
            if tx.send(Ok(update)).await.is_err() {
                return;
            }
        }
        if execution.status.is_final() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}
