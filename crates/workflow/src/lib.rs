//! drover's workflow engine: deployment plans in, Cloudify lifecycle task graphs run.
//!
//! The boundary is [`Engine`]: it creates deployments and executions in a
//! [`StateStore`](drover_store::StateStore) and runs (or resumes) an execution, sending
//! operation tasks through a [`TaskDispatcher`] and reporting [`Event`]s and [`Progress`] to an
//! [`Observer`]. Inside:
//! - `workflows` and `scale` turn a built-in workflow and its parameters into phases;
//! - `lifecycle` turns a phase into a task graph with Cloudify's ordering rules;
//! - `executor` runs a graph with in-degree counters and a bounded number of tasks in flight,
//!   journaling task state changes in batches;
//! - `journal` is what `resume` reads back: a resumed execution rebuilds the same graphs, skips
//!   finished tasks and re-sends in-flight ones under their original ids.
//!
//! [`BusDispatcher`] sends tasks to agents over a message bus instead. The service
//! `drover-workflow` is [`WorkflowService`] (gRPC: deployments, executions) and [`Replica`] (the
//! consumer of the `executions` work queue that runs them, resuming after another replica's
//! death).
//!
//! [`testing`] builds small plans by hand for tests.

mod bus_dispatch;
mod bus_events;
mod dispatch;
mod event_sink;
mod events;
mod executor;
mod functions;
mod graph;
mod journal;
mod lifecycle;
mod provision;
mod replica;
mod scale;
mod service;
mod state;
pub mod testing;
mod workflows;
mod world;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use drover_model::{Deployment, EventContext, Execution, ExecutionStatus, Map, NodeInstance, Plan};
use drover_store::StateStore;
use tokio::sync::watch;

pub use bus_dispatch::{BusDispatcher, Router};
pub use bus_events::{IngestEvents, ShipEvents};
pub use dispatch::{
    DispatchError, InProcessDispatcher, NoRunner, OperationRunner, TaskDispatcher, TaskReport,
};
pub use event_sink::{EventSink, StoreEvents};
pub use events::{END_EVENT_QUIET, END_EVENT_TYPES, NullObserver, Observer, Progress};
pub use provision::{ProvisionConfig, ProvisioningDispatcher, remote_provisioner};
pub use replica::{HostRouter, Replica, ReplicaConfig, ticket};
pub use service::{WorkflowService, to_pb};
pub use state::State;
pub use workflows::BUILT_IN;

use executor::{Executor, PhaseOutcome};
use journal::{Entry, Replay, WorkflowPlan};
use world::World;

/// Why the engine could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] drover_store::StoreError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The execution cannot run as asked (a bad plan, workflow or parameter): running it
    /// again would fail the same way.
    #[error("{0}")]
    Invalid(String),
    /// The run stopped because what it stands on failed under it (a store or event write, the
    /// dispatcher): the execution itself is fine and is resumed from its journal.
    #[error("the run was interrupted: {0}")]
    Interrupted(String),
}

impl From<String> for EngineError {
    fn from(s: String) -> Self {
        EngineError::Invalid(s)
    }
}

/// How to cancel a running execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMode {
    /// Send nothing new, wait for the tasks in flight, then stop.
    Graceful,
    /// Stop now; tasks in flight are abandoned (a resume sends them again).
    Force,
}

/// Cancels an execution that [`Engine::run`] runs.
pub struct Canceller(watch::Sender<Option<CancelMode>>);

impl Canceller {
    /// A canceller and the receiver to pass to [`Engine::run`].
    pub fn new() -> (Canceller, watch::Receiver<Option<CancelMode>>) {
        let (tx, rx) = watch::channel(None);
        (Canceller(tx), rx)
    }

    pub fn cancel(&self, mode: CancelMode) {
        let _ = self.0.send(Some(mode));
    }
}

/// How to run an execution (not part of the execution: the same execution may be resumed with
/// other options).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Operation tasks in flight at most.
    pub parallelism: usize,
    /// Whether events are kept, in the engine's [`EventSink`] (they always go to the
    /// observer).
    pub keep_events: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallelism: 100,
            keep_events: true,
        }
    }
}

/// Execution settings the executor reads, from the execution's parameters and the run options.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub dry_run: bool,
    /// Retries of a failed operation, unless the operation sets `max_retries`; -1: unlimited.
    pub task_retries: i64,
    /// Seconds between retries, unless the operation sets `retry_interval`.
    pub task_retry_interval: f64,
    pub parallelism: usize,
    pub blueprint_dir: Option<String>,
    /// The deployment's tenant, whose secrets `get_secret` reads.
    pub tenant: String,
}

/// What a deployment is made of: a plan and what goes with it. `NewDeployment::new` gives no
/// inputs, no blueprint directory and the default tenant; the builder methods set them.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub id: String,
    pub blueprint_id: String,
    pub plan: Plan,
    pub inputs: Map,
    pub blueprint_dir: Option<String>,
    pub tenant: String,
}

impl NewDeployment {
    pub fn new(id: impl Into<String>, blueprint_id: impl Into<String>, plan: Plan) -> Self {
        NewDeployment {
            id: id.into(),
            blueprint_id: blueprint_id.into(),
            plan,
            inputs: Map::new(),
            blueprint_dir: None,
            tenant: drover_model::DEFAULT_TENANT.to_owned(),
        }
    }

    pub fn inputs(self, inputs: Map) -> Self {
        NewDeployment { inputs, ..self }
    }

    pub fn blueprint_dir(self, blueprint_dir: Option<String>) -> Self {
        NewDeployment {
            blueprint_dir,
            ..self
        }
    }

    pub fn tenant(self, tenant: impl Into<String>) -> Self {
        NewDeployment {
            tenant: tenant.into(),
            ..self
        }
    }
}

/// The workflow engine over a state store and a dispatcher.
pub struct Engine<D> {
    store: Arc<dyn StateStore>,
    dispatcher: D,
    /// Where executions' events are kept: the store's event index unless told otherwise.
    events: Arc<dyn EventSink>,
}

impl<D: TaskDispatcher> Engine<D> {
    pub fn new(store: Arc<dyn StateStore>, dispatcher: D) -> Self {
        Engine {
            events: Arc::new(StoreEvents::new(store.clone())),
            store,
            dispatcher,
        }
    }

    /// Keeps executions' events in `events` instead of the store.
    pub fn with_events(self, events: Arc<dyn EventSink>) -> Self {
        Engine { events, ..self }
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Stores a deployment of a plan, with its node instances `uninitialized`.
    pub fn create_deployment(&self, new: NewDeployment) -> Result<Deployment, EngineError> {
        let NewDeployment {
            id,
            blueprint_id,
            plan,
            inputs,
            blueprint_dir,
            tenant,
        } = new;
        let id = id.as_str();
        let instances: Vec<NodeInstance> = plan
            .node_instances
            .iter()
            .map(|pi| NodeInstance {
                id: pi.id.clone(),
                deployment_id: id.to_owned(),
                node_id: pi.node_id.clone(),
                host_id: pi.host_id.clone(),
                state: State::Uninitialized.as_str().to_owned(),
                runtime_properties: Map::new(),
                relationships: pi.relationships.clone(),
                scaling_groups: pi.scaling_groups.clone(),
                version: 1,
            })
            .collect();
        // Index it once now, so a plan the engine cannot run is refused before it is stored.
        World::new(plan.clone(), instances.clone())?;
        let deployment = Deployment {
            id: id.to_owned(),
            blueprint_id,
            plan,
            inputs,
            blueprint_dir,
            created_at: events::now(),
            tenant,
        };
        self.store.delete_deployment(id)?;
        self.store.put_deployment(&deployment)?;
        self.store.put_node_instances(id, &instances)?;
        Ok(deployment)
    }

    /// Stores a new, pending execution of a workflow. Fails when the deployment does not have
    /// the workflow; parameter errors show when it runs.
    pub fn create_execution(
        &self,
        deployment_id: &str,
        workflow_id: &str,
        parameters: Map,
        dry_run: bool,
    ) -> Result<Execution, EngineError> {
        let deployment = self.deployment(deployment_id)?;
        workflows::built_in(&deployment.plan, workflow_id)?;
        let execution = Execution {
            id: new_id(),
            deployment_id: deployment_id.to_owned(),
            workflow_id: workflow_id.to_owned(),
            parameters,
            status: ExecutionStatus::Pending,
            error: String::new(),
            created_at: events::now(),
            ended_at: None,
            is_dry_run: dry_run,
        };
        self.store.put_execution(&execution)?;
        Ok(execution)
    }

    fn deployment(&self, id: &str) -> Result<Deployment, EngineError> {
        self.store
            .deployment(id)?
            .ok_or_else(|| EngineError::Invalid(format!("no deployment {id}")))
    }

    /// The deployment's outputs, with `get_attribute` evaluated against its instances now (and
    /// `get_secret` against the secrets now).
    pub fn outputs(&self, deployment_id: &str) -> Result<Map, EngineError> {
        let deployment = self.deployment(deployment_id)?;
        let world = World::new(deployment.plan, self.store.node_instances(deployment_id)?)?;
        Ok(functions::outputs(functions::Env {
            world: &world,
            store: self.store.as_ref(),
            tenant: &deployment.tenant,
        }))
    }

    /// Runs an execution to its end, or resumes it: what its journal says finished is not run
    /// again. Returns the execution as it ended (terminated, failed or cancelled).
    pub async fn run(
        &self,
        execution_id: &str,
        options: &RunOptions,
        observer: &mut dyn Observer,
        cancel: watch::Receiver<Option<CancelMode>>,
    ) -> Result<Execution, EngineError> {
        let mut execution = self
            .store
            .execution(execution_id)?
            .ok_or_else(|| EngineError::Invalid(format!("no execution {execution_id}")))?;
        if execution.status == ExecutionStatus::Terminated {
            return Err(EngineError::Invalid(format!(
                "execution {execution_id} already terminated"
            )));
        }
        let mut deployment = self.deployment(&execution.deployment_id)?;
        let replay = Replay::read(&self.store.journal(execution_id)?)?;
        let resuming = replay.plan.is_some();
        let world = World::new(
            deployment.plan.clone(),
            self.store.node_instances(&deployment.id)?,
        )?;
        let (builtin, params) =
            workflows::resolve(&world.plan, &execution.workflow_id, &execution.parameters)?;
        let base = EventContext {
            deployment_id: deployment.id.clone(),
            execution_id: execution.id.clone(),
            workflow_id: execution.workflow_id.clone(),
            ..EventContext::default()
        };
        let run_params = Params {
            dry_run: execution.is_dry_run,
            task_retries: workflows::int(&params, "task_retries", 0)?,
            task_retry_interval: workflows::float(&params, "task_retry_interval", 1.0)?,
            parallelism: options.parallelism.max(1),
            blueprint_dir: deployment.blueprint_dir.clone(),
            tenant: deployment.tenant.clone(),
        };
        let planned = match replay.plan.clone() {
            Some(plan) => Ok(plan),
            None => workflows::plan(&world, builtin, &params),
        };
        let reports = self.dispatcher.subscribe(execution_id).await?;
        let mut ex = Executor::new(
            self.store.clone(),
            &self.dispatcher,
            reports,
            observer,
            cancel,
            world,
            run_params,
            base.clone(),
            options.keep_events.then(|| self.events.clone()),
        );
        execution.status = ExecutionStatus::Started;
        execution.error.clear();
        execution.ended_at = None;
        self.store.put_execution(&execution)?;
        let verb = if resuming { "Resuming" } else { "Starting" };
        ex.emit(events::event(
            "workflow_started",
            base.clone(),
            format!("{verb} '{}' workflow execution", execution.workflow_id),
        ));
        let outcome = match planned {
            Ok(plan) => {
                if !resuming {
                    ex.journal(&Entry::Planned { plan: plan.clone() });
                    ex.flush().await?;
                }
                self.run_plan(&mut ex, &mut deployment, &plan, &replay)
                    .await?
            }
            Err(e) => PhaseOutcome::Failed(e),
        };
        let (status, event_type, text) = match &outcome {
            PhaseOutcome::Succeeded => (
                ExecutionStatus::Terminated,
                "workflow_succeeded",
                format!("'{}' workflow execution succeeded", execution.workflow_id),
            ),
            PhaseOutcome::Failed(e) => (
                ExecutionStatus::Failed,
                "workflow_failed",
                format!("'{}' workflow execution failed: {e}", execution.workflow_id),
            ),
            PhaseOutcome::Cancelled(_) => (
                ExecutionStatus::Cancelled,
                "workflow_cancelled",
                format!("'{}' workflow execution cancelled", execution.workflow_id),
            ),
        };
        ex.emit(events::event(event_type, base, text));
        ex.flush().await?;
        execution.status = status;
        if let PhaseOutcome::Failed(e) = outcome {
            execution.error = e;
        }
        execution.ended_at = Some(events::now());
        self.store.put_execution(&execution)?;
        Ok(execution)
    }

    /// Applies a workflow plan's instance changes and runs its phases (and rollback).
    async fn run_plan(
        &self,
        ex: &mut Executor<'_, D>,
        deployment: &mut Deployment,
        plan: &WorkflowPlan,
        replay: &Replay,
    ) -> Result<PhaseOutcome, EngineError> {
        if !plan.added.is_empty() {
            let existing = &ex.world.instance_index;
            let mut changed: Vec<NodeInstance> = plan
                .added
                .iter()
                .filter(|i| !existing.contains_key(&i.id))
                .cloned()
                .collect();
            for (id, rels) in &plan.relinked {
                let Some(&i) = existing.get(id) else {
                    continue;
                };
                let mut ni = ex.world.instances[i as usize].clone();
                let before = ni.relationships.len();
                for rel in rels {
                    if !ni.relationships.contains(rel) {
                        ni.relationships.push(rel.clone());
                    }
                }
                if ni.relationships.len() != before {
                    changed.push(ni);
                }
            }
            self.store.put_node_instances(&deployment.id, &changed)?;
            self.reindex(ex, deployment).await?;
        }
        ex.phases_total = plan.phases.len() as u32;
        let mut outcome = PhaseOutcome::Succeeded;
        for (p, phase) in plan.phases.iter().enumerate() {
            outcome = self.run_phase(ex, p as u32, phase, replay).await?;
            if outcome != PhaseOutcome::Succeeded {
                break;
            }
        }
        match &outcome {
            PhaseOutcome::Succeeded if !plan.removed.is_empty() => {
                self.remove_instances(ex, deployment, &plan.removed).await?;
            }
            PhaseOutcome::Failed(_) if !plan.rollback.is_empty() => {
                let first = plan.phases.len() as u32;
                for (k, phase) in plan.rollback.iter().enumerate() {
                    self.run_phase(ex, first + k as u32, phase, replay).await?;
                }
                let added: Vec<String> = plan.added.iter().map(|i| i.id.clone()).collect();
                self.remove_instances(ex, deployment, &added).await?;
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Deletes instances, and the relationships other instances have to them.
    async fn remove_instances(
        &self,
        ex: &mut Executor<'_, D>,
        deployment: &mut Deployment,
        ids: &[String],
    ) -> Result<(), EngineError> {
        ex.flush().await?;
        let gone: std::collections::HashSet<&String> = ids.iter().collect();
        let relinked: Vec<NodeInstance> = ex
            .world
            .instances
            .iter()
            .filter(|i| !gone.contains(&i.id))
            .filter(|i| i.relationships.iter().any(|r| gone.contains(&r.target_id)))
            .map(|i| {
                let mut i = i.clone();
                i.relationships.retain(|r| !gone.contains(&r.target_id));
                i
            })
            .collect();
        self.store.put_node_instances(&deployment.id, &relinked)?;
        self.store.delete_node_instances(&deployment.id, ids)?;
        self.reindex(ex, deployment).await
    }

    /// Re-reads the instances after the workflow added or removed some, and recounts the plan.
    async fn reindex(
        &self,
        ex: &mut Executor<'_, D>,
        deployment: &mut Deployment,
    ) -> Result<(), EngineError> {
        ex.flush().await?;
        let instances = self.store.node_instances(&deployment.id)?;
        scale::recount(&mut deployment.plan, &instances);
        self.store.put_deployment(deployment)?;
        ex.world = World::new(deployment.plan.clone(), instances)?;
        Ok(())
    }

    async fn run_phase(
        &self,
        ex: &mut Executor<'_, D>,
        p: u32,
        phase: &lifecycle::Phase,
        replay: &Replay,
    ) -> Result<PhaseOutcome, EngineError> {
        let record = replay.phases.get(&p);
        if record.and_then(|r| r.ended) == Some(true) {
            return Ok(PhaseOutcome::Succeeded);
        }
        let states: Vec<State> = match record.and_then(|r| r.states.as_ref()) {
            Some(recorded) => ex
                .world
                .instances
                .iter()
                .map(|i| State::parse(recorded.get(&i.id).map_or(i.state.as_str(), String::as_str)))
                .collect(),
            None => {
                let states: HashMap<String, String> = ex
                    .world
                    .instances
                    .iter()
                    .zip(&ex.world.states)
                    .map(|(i, s)| (i.id.clone(), s.as_str().to_owned()))
                    .collect();
                ex.journal(&Entry::Phase { p, states });
                ex.world.states.clone()
            }
        };
        let graph = lifecycle::build(phase, &ex.world, &states)?;
        let mut done = vec![false; graph.len()];
        let mut attempts = HashMap::new();
        if let Some(record) = record {
            for &t in &record.done {
                if let Some(d) = done.get_mut(t as usize) {
                    *d = true;
                }
            }
            attempts = record.attempts.clone();
            ex.replay_states(&graph, &record.done);
        }
        let outcome = ex.run_phase(p, phase, &graph, done, attempts).await?;
        if !matches!(outcome, PhaseOutcome::Cancelled(_)) {
            ex.journal(&Entry::PhaseEnd {
                p,
                ok: outcome == PhaseOutcome::Succeeded,
            });
            ex.hand_over().await?;
        }
        Ok(outcome)
    }
}

fn new_id() -> String {
    let mut s = String::with_capacity(36);
    for (i, n) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        if i > 0 {
            s.push('-');
        }
        for _ in 0..n {
            s.push(fastrand::choice(b"0123456789abcdef").map_or('0', |&c| c as char));
        }
    }
    s
}
