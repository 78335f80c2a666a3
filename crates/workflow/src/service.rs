//! The gRPC `Workflow` service (`proto/drover/workflow/v1/workflow.proto`): deployments and
//! executions as the gateway asks for them.
//!
//! The service never runs an execution itself: `StartExecution` and `ResumeExecution` store it
//! pending and publish its ticket to the `executions` queue, where a [`crate::Replica`] (in this
//! process or another) takes it. Everything it answers is read from the state store, which the
//! replicas write: `WatchExecution` polls the store, so it follows an execution whichever
//! replica runs it, across takeovers.

use std::collections::HashSet;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_bus::Bus;
use drover_model::{Execution, ExecutionStatus, Map, Plan};
use drover_proto::drover::workflow::v1 as pb;
use drover_store::StateStore;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::events::{END_EVENT_QUIET, END_EVENT_TYPES};
use crate::{Engine, EngineError, NewDeployment, TaskDispatcher, replica};

/// How long a watch waits, once the execution has ended, for its end event to be indexed.
const END_EVENT_GRACE: Duration = Duration::from_secs(15);

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
        let mut new = NewDeployment::new(r.deployment_id.clone(), blueprint_id, plan)
            .inputs(inputs)
            .blueprint_dir(blueprint_dir);
        // An empty tenant keeps NewDeployment's default one.
        if !r.tenant.is_empty() {
            new = new.tenant(r.tenant);
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.create_deployment(new))
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
/// (then its remaining events, and the final status last) or the client goes away.
///
/// Events kept through ingest trail the status: once the status is final, the final status
/// of a run that started is held back until the workflow's end event has been read and no new
/// event came for [`END_EVENT_QUIET`] (ingest replicas index side by side), or
/// [`END_EVENT_GRACE`] passed, so a watcher that stops at the final status has seen the events
/// before it.
///
/// Events are sent once each, remembered by identity rather than counted: an event shipped
/// late (an agent's, through ingest) can sort before ones already sent, and an agent's copy of
/// a task event replaces the engine's under the same [`Event::task_event_id`].
///
/// [`Event::task_event_id`]: drover_model::Event::task_event_id
async fn watch(
    store: Arc<dyn StateStore>,
    id: String,
    every: Duration,
    tx: mpsc::Sender<Result<pb::ExecutionUpdate, Status>>,
) {
    use pb::execution_update::Update;
    let mut sent_events: HashSet<String> = HashSet::new();
    let mut last_status = None;
    let (mut started_event_seen, mut end_event_seen) = (false, false);
    let mut final_since: Option<Instant> = None;
    let mut last_new_event = Instant::now();
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
        for event in &events {
            let json = serde_json::to_string(event).unwrap_or_default();
            let identity = event.task_event_id().unwrap_or_else(|| json.clone());
            if !sent_events.insert(identity) {
                continue;
            }
            last_new_event = Instant::now();
            started_event_seen |= event.event_type == "workflow_started";
            end_event_seen |= END_EVENT_TYPES.contains(&event.event_type.as_str());
            let update = pb::ExecutionUpdate {
                update: Some(Update::EventJson(json)),
            };
            if tx.send(Ok(update)).await.is_err() {
                return;
            }
        }
        if execution.status.is_final() {
            let since = *final_since.get_or_insert_with(Instant::now);
            let complete = end_event_seen && last_new_event.elapsed() >= END_EVENT_QUIET;
            if started_event_seen && !complete && since.elapsed() < END_EVENT_GRACE {
                tokio::time::sleep(every).await;
                continue;
            }
        }
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

#[cfg(test)]
mod tests {
    use drover_model::{Event, EventContext, EventMessage};
    use drover_store::MemoryStore;

    use super::*;

    fn task_event(task: &str, event_type: &str, at: &str) -> Event {
        Event {
            event_type: event_type.into(),
            context: EventContext {
                execution_id: "e1".into(),
                task_id: Some(task.into()),
                task_current_retries: Some(0),
                ..EventContext::default()
            },
            message: EventMessage::default(),
            timestamp: at.into(),
            kind: "cloudify_event".into(),
        }
    }

    fn terminated() -> Execution {
        Execution {
            id: "e1".into(),
            deployment_id: "d1".into(),
            workflow_id: "install".into(),
            parameters: Map::new(),
            status: ExecutionStatus::Terminated,
            error: String::new(),
            created_at: String::new(),
            ended_at: None,
            is_dry_run: false,
        }
    }

    /// Two copies of one task event (the engine's and an agent's) are sent once; every other
    /// event is sent, whatever its place in the list.
    #[tokio::test]
    async fn a_watch_sends_each_event_once() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        store.put_execution(&terminated()).unwrap();
        let events = [
            task_event("t1", "task_succeeded", "2026-01-01T00:00:01.000Z"),
            task_event("t2", "task_succeeded", "2026-01-01T00:00:02.000Z"),
            task_event("t1", "task_succeeded", "2026-01-01T00:00:01.500Z"),
        ];
        store.append_events("e1", &events).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        watch(store, "e1".into(), Duration::from_millis(10), tx).await;
        let mut sent = Vec::new();
        while let Some(Ok(update)) = rx.recv().await {
            if let Some(pb::execution_update::Update::EventJson(json)) = update.update {
                let event: Event = serde_json::from_str(&json).unwrap();
                sent.push(event.context.task_id.unwrap());
            }
        }
        assert_eq!(sent, ["t1", "t2"]);
    }

    /// Events through ingest trail the status: the final status waits for the end event.
    #[tokio::test]
    async fn a_watch_sends_the_final_status_after_the_end_event() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        store.put_execution(&terminated()).unwrap();
        let workflow_event = |event_type: &str| Event {
            event_type: event_type.into(),
            context: EventContext {
                execution_id: "e1".into(),
                ..EventContext::default()
            },
            message: EventMessage::default(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            kind: "cloudify_event".into(),
        };
        store
            .append_events("e1", &[workflow_event("workflow_started")])
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let watching = tokio::spawn(watch(
            store.clone(),
            "e1".into(),
            Duration::from_millis(10),
            tx,
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        store
            .append_events("e1", &[workflow_event("workflow_succeeded")])
            .unwrap();
        let mut sent = Vec::new();
        while let Some(Ok(update)) = rx.recv().await {
            sent.push(match update.update.unwrap() {
                pb::execution_update::Update::EventJson(json) => {
                    serde_json::from_str::<Event>(&json).unwrap().event_type
                }
                pb::execution_update::Update::Execution(execution) => execution.status,
            });
        }
        watching.await.unwrap();
        assert_eq!(
            sent,
            ["workflow_started", "workflow_succeeded", "terminated"]
        );
    }
}
