//! The seam to the workflow service: what the gateway asks of it (deployments made and deleted,
//! executions started, cancelled, resumed, outputs evaluated). [`GrpcWorkflows`] calls
//! `drover-workflow` over gRPC; [`LocalWorkflows`] runs the workflow engine in this process, in
//! dry-run, for tests and for a gateway started without `--workflow-grpc`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use drover_model::{Execution, ExecutionStatus, Map, Plan};
use drover_proto::drover::workflow::v1 as pb;
use drover_store::{EventIndex, EventRecord, StateStore};
use drover_workflow::{
    CancelMode, Canceller, Engine, InProcessDispatcher, NewDeployment, NoRunner, Observer,
};

/// Why the workflow service refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done as asked (unknown workflow, bad parameters, wrong state).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// The service is not reachable, or failed.
    #[error("workflow service: {0}")]
    Unavailable(String),
}

/// What the gateway needs from the workflow service.
#[async_trait]
pub trait Workflows: Send + Sync {
    /// Stores a deployment of a plan in a tenant, its node instances `uninitialized`.
    /// `main_file` is the plan's blueprint file as the gateway unpacked it: operations read
    /// their scripts and resources beside it.
    async fn create_deployment(
        &self,
        tenant: &str,
        id: &str,
        blueprint_id: &str,
        plan: &Plan,
        main_file: &Path,
        inputs: &Map,
    ) -> Result<(), WorkflowError>;
    async fn delete_deployment(&self, id: &str) -> Result<(), WorkflowError>;
    /// The deployment's outputs, evaluated against its node instances now.
    async fn outputs(&self, deployment_id: &str) -> Result<Map, WorkflowError>;
    /// Stores a pending execution and has it run; returns at once.
    async fn start_execution(
        &self,
        deployment_id: &str,
        workflow_id: &str,
        parameters: Map,
        dry_run: bool,
    ) -> Result<Execution, WorkflowError>;
    async fn cancel_execution(&self, id: &str, force: bool) -> Result<Execution, WorkflowError>;
    async fn resume_execution(&self, id: &str) -> Result<Execution, WorkflowError>;
}

type Client = pb::workflow_client::WorkflowClient<tonic::transport::Channel>;

/// The workflow service over gRPC.
pub struct GrpcWorkflows {
    client: Client,
}

impl GrpcWorkflows {
    /// Connects lazily: the gateway starts even when the service is not up yet.
    pub fn connect_lazy(url: &str) -> Result<GrpcWorkflows, WorkflowError> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| WorkflowError::Unavailable(format!("bad URL {url:?}: {e}")))?;
        Ok(GrpcWorkflows {
            client: Client::new(endpoint.connect_lazy()),
        })
    }

    /// One call on a copy of the client (tonic's calls take it mutably; copies share the
    /// channel): the answer, or its status as a [`WorkflowError`].
    async fn call<T, F>(&self, call: impl FnOnce(Client) -> F) -> Result<T, WorkflowError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        call(self.client.clone())
            .await
            .map(tonic::Response::into_inner)
            .map_err(from_status)
    }
}

fn from_status(status: tonic::Status) -> WorkflowError {
    use tonic::Code;
    let message = status.message().to_owned();
    match status.code() {
        Code::NotFound => WorkflowError::NotFound(message),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            WorkflowError::Invalid(message)
        }
        Code::AlreadyExists | Code::Aborted => WorkflowError::Conflict(message),
        _ => WorkflowError::Unavailable(format!("{:?}: {message}", status.code())),
    }
}

fn json_map(text: &str, what: &str) -> Result<Map, WorkflowError> {
    if text.is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_str(text)
        .map_err(|e| WorkflowError::Unavailable(format!("{what} is not a JSON object: {e}")))
}

fn execution_from_pb(e: pb::Execution) -> Result<Execution, WorkflowError> {
    let status: ExecutionStatus =
        serde_json::from_value(serde_json::Value::String(e.status.clone())).map_err(|_| {
            WorkflowError::Unavailable(format!("unknown execution status {:?}", e.status))
        })?;
    Ok(Execution {
        parameters: json_map(&e.parameters_json, "parameters_json")?,
        id: e.id,
        deployment_id: e.deployment_id,
        workflow_id: e.workflow_id,
        status,
        error: e.error,
        created_at: e.created_at,
        ended_at: (!e.ended_at.is_empty()).then_some(e.ended_at),
        is_dry_run: e.is_dry_run,
    })
}

#[async_trait]
impl Workflows for GrpcWorkflows {
    /// Sends the blueprint's path, not the plan: the service plans it again there (same inputs),
    /// and so knows the directory its agents read scripts from. The gateway's data directory
    /// must be readable at that path by the service and the agents (one machine, or a shared
    /// volume).
    async fn create_deployment(
        &self,
        tenant: &str,
        id: &str,
        blueprint_id: &str,
        _plan: &Plan,
        main_file: &Path,
        inputs: &Map,
    ) -> Result<(), WorkflowError> {
        let path = std::path::absolute(main_file)
            .map_err(|e| WorkflowError::Invalid(format!("{}: {e}", main_file.display())))?;
        let request = pb::CreateDeploymentRequest {
            deployment_id: id.to_owned(),
            blueprint_id: blueprint_id.to_owned(),
            source: Some(pb::create_deployment_request::Source::BlueprintPath(
                path.display().to_string(),
            )),
            inputs_json: serde_json::Value::Object(inputs.clone()).to_string(),
            tenant: tenant.to_owned(),
        };
        self.call(|mut c| async move { c.create_deployment(request).await })
            .await?;
        Ok(())
    }

    async fn delete_deployment(&self, id: &str) -> Result<(), WorkflowError> {
        let request = pb::DeleteDeploymentRequest {
            deployment_id: id.to_owned(),
        };
        self.call(|mut c| async move { c.delete_deployment(request).await })
            .await?;
        Ok(())
    }

    async fn outputs(&self, deployment_id: &str) -> Result<Map, WorkflowError> {
        let request = pb::GetDeploymentRequest {
            deployment_id: deployment_id.to_owned(),
        };
        let deployment = self
            .call(|mut c| async move { c.get_deployment(request).await })
            .await?;
        json_map(&deployment.outputs_json, "outputs_json")
    }

    async fn start_execution(
        &self,
        deployment_id: &str,
        workflow_id: &str,
        parameters: Map,
        dry_run: bool,
    ) -> Result<Execution, WorkflowError> {
        let request = pb::StartExecutionRequest {
            deployment_id: deployment_id.to_owned(),
            workflow_id: workflow_id.to_owned(),
            parameters_json: serde_json::Value::Object(parameters).to_string(),
            dry_run,
        };
        let e = self
            .call(|mut c| async move { c.start_execution(request).await })
            .await?;
        execution_from_pb(e)
    }

    async fn cancel_execution(&self, id: &str, force: bool) -> Result<Execution, WorkflowError> {
        let request = pb::CancelExecutionRequest {
            execution_id: id.to_owned(),
            force,
        };
        let e = self
            .call(|mut c| async move { c.cancel_execution(request).await })
            .await?;
        execution_from_pb(e)
    }

    async fn resume_execution(&self, id: &str) -> Result<Execution, WorkflowError> {
        let request = pb::ResumeExecutionRequest {
            execution_id: id.to_owned(),
        };
        let e = self
            .call(|mut c| async move { c.resume_execution(request).await })
            .await?;
        execution_from_pb(e)
    }
}

type LocalEngine = Engine<InProcessDispatcher<NoRunner>>;

/// The workflow engine in this process. Every execution runs in dry-run (no operation runs:
/// there are no agents here); its events go to the event index.
pub struct LocalWorkflows {
    engine: Arc<LocalEngine>,
    events: Arc<dyn EventIndex>,
    running: Arc<Mutex<HashMap<String, Canceller>>>,
}

impl LocalWorkflows {
    pub fn new(store: Arc<dyn StateStore>, events: Arc<dyn EventIndex>) -> LocalWorkflows {
        LocalWorkflows {
            engine: Arc::new(Engine::new(store, InProcessDispatcher::new(NoRunner))),
            events,
            running: Arc::default(),
        }
    }

    fn store(&self) -> &Arc<dyn StateStore> {
        self.engine.store()
    }

    fn execution(&self, id: &str) -> Result<Execution, WorkflowError> {
        self.store()
            .execution(id)
            .map_err(|e| WorkflowError::Unavailable(e.to_string()))?
            .ok_or_else(|| WorkflowError::NotFound(format!("no execution {id}")))
    }

    /// Runs (or resumes) an execution on a task of its own.
    fn spawn(&self, execution_id: String) {
        let (canceller, cancel) = Canceller::new();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(execution_id.clone(), canceller);
        let engine = self.engine.clone();
        let running = self.running.clone();
        let mut observer = IndexObserver::new(self.events.clone(), &execution_id);
        tokio::spawn(async move {
            let options = drover_workflow::RunOptions {
                keep_events: false,
                ..Default::default()
            };
            if let Err(e) = engine
                .run(&execution_id, &options, &mut observer, cancel)
                .await
            {
                tracing::error!(execution = %execution_id, error = %e, "execution failed to run");
            }
            observer.flush();
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&execution_id);
        });
    }
}

fn engine_error(e: drover_workflow::EngineError) -> WorkflowError {
    match e {
        drover_workflow::EngineError::Invalid(m) if m.starts_with("no deployment") => {
            WorkflowError::NotFound(m)
        }
        drover_workflow::EngineError::Invalid(m) => WorkflowError::Invalid(m),
        other => WorkflowError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl Workflows for LocalWorkflows {
    async fn create_deployment(
        &self,
        tenant: &str,
        id: &str,
        blueprint_id: &str,
        plan: &Plan,
        main_file: &Path,
        inputs: &Map,
    ) -> Result<(), WorkflowError> {
        let dir = main_file.parent().map(|d| d.display().to_string());
        let new = NewDeployment::new(id, blueprint_id, plan.clone())
            .inputs(inputs.clone())
            .blueprint_dir(dir)
            .tenant(tenant);
        self.engine
            .create_deployment(new)
            .map(|_| ())
            .map_err(engine_error)
    }

    async fn delete_deployment(&self, id: &str) -> Result<(), WorkflowError> {
        self.store()
            .delete_deployment(id)
            .map_err(|e| WorkflowError::Unavailable(e.to_string()))
    }

    async fn outputs(&self, deployment_id: &str) -> Result<Map, WorkflowError> {
        self.engine.outputs(deployment_id).map_err(engine_error)
    }

    async fn start_execution(
        &self,
        deployment_id: &str,
        workflow_id: &str,
        parameters: Map,
        _dry_run: bool,
    ) -> Result<Execution, WorkflowError> {
        let execution = self
            .engine
            .create_execution(deployment_id, workflow_id, parameters, true)
            .map_err(engine_error)?;
        self.spawn(execution.id.clone());
        Ok(execution)
    }

    async fn cancel_execution(&self, id: &str, force: bool) -> Result<Execution, WorkflowError> {
        let execution = self.execution(id)?;
        if execution.status.is_final() {
            return Err(WorkflowError::Invalid(format!(
                "execution {id} has ended ({})",
                status_name(execution.status)
            )));
        }
        let mode = if force {
            CancelMode::Force
        } else {
            CancelMode::Graceful
        };
        if let Some(c) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            c.cancel(mode);
        }
        Ok(Execution {
            status: if force {
                ExecutionStatus::ForceCancelling
            } else {
                ExecutionStatus::Cancelling
            },
            ..execution
        })
    }

    async fn resume_execution(&self, id: &str) -> Result<Execution, WorkflowError> {
        let execution = self.execution(id)?;
        if !matches!(
            execution.status,
            ExecutionStatus::Failed | ExecutionStatus::Cancelled
        ) {
            return Err(WorkflowError::Invalid(format!(
                "only failed or cancelled executions can be resumed; {id} is {}",
                status_name(execution.status)
            )));
        }
        self.spawn(id.to_owned());
        Ok(execution)
    }
}

/// Cloudify's name of a status (`force_cancelling`, …).
pub fn status_name(status: ExecutionStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sends an execution's events to the event index, in batches; a workflow event (start and
/// end) flushes at once, so the end event is indexed before the execution is stored as ended.
struct IndexObserver {
    index: Arc<dyn EventIndex>,
    execution_id: String,
    next: u64,
    batch: Vec<EventRecord>,
}

impl IndexObserver {
    const BATCH: usize = 256;

    fn new(index: Arc<dyn EventIndex>, execution_id: &str) -> Self {
        IndexObserver {
            index,
            // A resumed run starts a new series of ids, so it adds to the first run's records.
            execution_id: format!("{execution_id}-{}", fastrand::u32(..)),
            next: 0,
            batch: Vec::new(),
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Err(e) = self.index.append(&self.batch) {
            tracing::error!(error = %e, "indexing events failed");
        }
        self.batch.clear();
    }
}

impl Observer for IndexObserver {
    fn event(&mut self, event: &drover_model::Event) {
        self.next += 1;
        self.batch.push(EventRecord {
            id: format!("{}-{:08}", self.execution_id, self.next),
            level: None,
            logger: None,
            event: event.clone(),
        });
        if self.batch.len() >= Self::BATCH || event.event_type.starts_with("workflow_") {
            self.flush();
        }
    }
}
