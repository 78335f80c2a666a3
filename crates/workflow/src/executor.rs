//! Runs one phase's graph: in-degree counters and a ready queue (no scan of the graph per
//! step), at most `parallelism` operations in flight, retries on a timer heap, journal and
//! instance changes flushed to the store in batches.
//!
//! Flushing: task completions are journaled in batches of up to [`BATCH`] entries or every
//! [`FLUSH_EVERY`]. Completions of operations that really ran are handed to the store writer
//! as soon as the reports that arrived together are handled, so a crash re-sends little more
//! than what was in flight (and what still waited in the writer's queue). Dry-run completions
//! are only batched: re-sending those after a crash runs nothing. The writes themselves happen
//! behind the executor ([`StoreWriter`]); [`Executor::flush`] waits for them; a phase's end
//! only hands its state changes over.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use drover_model::{
    Event, EventContext, Operation, OperationTask, PROVISIONING_PLUGIN, TaskNode, TaskOutcome,
    TaskRelationship, TaskResult,
};
use drover_store::{JournalEntry, StateStore};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::dispatch::{TaskDispatcher, TaskReport};
use crate::event_sink::EventSink;
use crate::events::{self, Observer, Progress};
use crate::functions::{self, Scope};
use crate::graph::{Graph, Kind, Side, TaskId};
use crate::journal::Entry;
use crate::lifecycle::{self, Phase};
use crate::state::State;
use crate::world::World;
use crate::writer::{Batch, StoreWriter};
use crate::{CancelMode, EngineError, Params};

const BATCH: usize = 32_768;
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// The operations of [`Kind::Provision`] tasks: the provisioner's, run centrally.
static PROVISION_CREATE: LazyLock<Operation> = LazyLock::new(|| provision_operation("create"));
static PROVISION_DELETE: LazyLock<Operation> = LazyLock::new(|| provision_operation("delete"));

fn provision_operation(implementation: &str) -> Operation {
    Operation {
        plugin: PROVISIONING_PLUGIN.to_owned(),
        operation: implementation.to_owned(),
        executor: Some("central_deployment_agent".to_owned()),
        ..Operation::default()
    }
}

/// How a phase ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PhaseOutcome {
    Succeeded,
    Failed(String),
    Cancelled(CancelMode),
}

/// Everything a run of an execution shares across its phases.
pub(crate) struct Executor<'a, D> {
    /// For reads (secrets); writes go through `writer`.
    store: Arc<dyn StateStore>,
    writer: StoreWriter,
    pub dispatcher: &'a D,
    pub reports: mpsc::UnboundedReceiver<TaskReport>,
    pub observer: &'a mut dyn Observer,
    pub cancel: watch::Receiver<Option<CancelMode>>,
    pub world: World,
    pub params: Params,
    /// Context fields every event of this execution carries.
    pub base: EventContext,
    /// Whether events are kept (in the engine's event sink); the observer gets them anyway.
    pub keep_events: bool,
    pub phases_total: u32,
    journal: Vec<JournalEntry>,
    /// Tasks finished since the last flush, of phase `.0`: journaled as one entry.
    done: (u32, Vec<u32>),
    events: Vec<Event>,
    last_flush: Instant,
    /// Completions of operations that really ran, not yet flushed.
    unflushed_runs: bool,
}

/// The per-phase state of a run.
struct PhaseState<'g> {
    p: u32,
    graph: &'g Graph,
    phase: &'g Phase,
    indegree: Vec<u32>,
    done: Vec<bool>,
    attempts: HashMap<u32, u32>,
    ready: VecDeque<TaskId>,
    /// Tasks sent and not settled, with the attempt that was sent.
    in_flight: HashMap<TaskId, u32>,
    retries: BinaryHeap<Reverse<(Instant, TaskId)>>,
    remaining: usize,
    failed: Option<String>,
    stopping: Option<CancelMode>,
    progress: Progress,
}

impl<'a, D: TaskDispatcher> Executor<'a, D> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn StateStore>,
        dispatcher: &'a D,
        reports: mpsc::UnboundedReceiver<TaskReport>,
        observer: &'a mut dyn Observer,
        cancel: watch::Receiver<Option<CancelMode>>,
        world: World,
        params: Params,
        base: EventContext,
        events: Option<Arc<dyn EventSink>>,
    ) -> Self {
        Executor {
            writer: StoreWriter::start(
                store.clone(),
                events.clone(),
                base.deployment_id.clone(),
                base.execution_id.clone(),
            ),
            store,
            dispatcher,
            reports,
            observer,
            cancel,
            world,
            params,
            base,
            keep_events: events.is_some(),
            phases_total: 1,
            journal: Vec::new(),
            done: (0, Vec::new()),
            events: Vec::new(),
            last_flush: Instant::now(),
            unflushed_runs: false,
        }
    }

    pub fn journal(&mut self, entry: &Entry) {
        self.journal.push(entry.to_raw());
    }

    /// Whether routine task events are made at all (someone wants them).
    fn task_events(&self) -> bool {
        self.keep_events || self.observer.wants_task_events()
    }

    pub fn emit(&mut self, event: Event) {
        self.observer.event(&event);
        if self.keep_events {
            self.events.push(event);
        }
    }

    /// Writes every changed instance, the events and the journal, and waits until everything
    /// handed to the writer before is in the store too.
    pub async fn flush(&mut self) -> Result<(), EngineError> {
        self.write(true).await?;
        self.writer.flush().await.map_err(EngineError::Interrupted)
    }

    /// Hands everything to the writer, state changes included, without waiting for the store
    /// (a phase's end): the writer keeps the order, so nothing of the next phase is durable
    /// before this is, and the next phase need not wait for a store that lags behind.
    pub async fn hand_over(&mut self) -> Result<(), EngineError> {
        self.write(true).await
    }

    /// Hands a batch to the writer: instances whose runtime properties changed, events and
    /// journal entries (the writer makes an entry durable only after the runtime properties
    /// and events it stands for). State changes alone wait for the end of the phase: the
    /// journal has them.
    async fn write(&mut self, all: bool) -> Result<(), EngineError> {
        if !self.done.1.is_empty() {
            let t = std::mem::take(&mut self.done.1);
            self.journal(&Entry::Done { p: self.done.0, t });
        }
        let batch = Batch {
            instances: self.world.take_dirty(all),
            journal: std::mem::take(&mut self.journal),
            events: std::mem::take(&mut self.events),
        };
        self.last_flush = Instant::now();
        self.unflushed_runs = false;
        self.writer
            .write(batch)
            .await
            .map_err(EngineError::Interrupted)
    }

    /// Sets the states the journal says the phase already reached: the done set-state tasks,
    /// in the order they were done.
    pub fn replay_states(&mut self, graph: &Graph, done_in_order: &[u32]) {
        for &t in done_in_order {
            if let Some(task) = graph.tasks.get(t as usize)
                && let Kind::SetState(state) = task.kind
            {
                self.world.set_state(task.instance, state);
            }
        }
    }

    /// Runs a phase's graph to its end. `done` and `attempts` come from the journal on resume.
    pub async fn run_phase(
        &mut self,
        p: u32,
        phase: &Phase,
        graph: &Graph,
        done: Vec<bool>,
        attempts: HashMap<u32, u32>,
    ) -> Result<PhaseOutcome, EngineError> {
        let mut st = PhaseState::new(
            p,
            phase,
            graph,
            done,
            attempts,
            &self.world,
            self.phases_total,
        );
        loop {
            let batch = self.fill(&mut st);
            if !batch.is_empty()
                && let Err(e) = self.dispatcher.send(batch).await
            {
                st.failed.get_or_insert(e.to_string());
                st.in_flight.clear();
            }
            if self.done.1.len() + self.journal.len() >= BATCH
                || self.last_flush.elapsed() >= FLUSH_EVERY
            {
                self.write(false).await?;
                self.observer.progress(&st.progress);
            }
            if st.remaining == 0 {
                return self.finish(&st, PhaseOutcome::Succeeded).await;
            }
            if st.in_flight.is_empty() {
                if let Some(e) = st.failed.clone() {
                    return self.finish(&st, PhaseOutcome::Failed(e)).await;
                }
                if let Some(mode) = st.stopping {
                    return self.finish(&st, PhaseOutcome::Cancelled(mode)).await;
                }
                if st.ready.is_empty() && st.retries.is_empty() {
                    let e = "the task graph cannot go on (a dependency cycle)".to_owned();
                    return self.finish(&st, PhaseOutcome::Failed(e)).await;
                }
            }
            let next_retry = st.retries.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                report = self.reports.recv() => {
                    let Some(report) = report else {
                        return Err(EngineError::Interrupted(
                            "the dispatcher stopped reporting".into(),
                        ));
                    };
                    self.on_report(&mut st, report);
                    while let Ok(report) = self.reports.try_recv() {
                        self.on_report(&mut st, report);
                    }
                    // Operations that ran are journaled as soon as they are known to be done:
                    // a crash then re-sends only what was really in flight.
                    if self.unflushed_runs {
                        self.write(false).await?;
                    }
                }
                _ = sleep_until(next_retry), if next_retry.is_some() && st.ready.is_empty() => {
                    st.release_due_retries();
                }
                changed = self.cancel.changed() => {
                    let mode = if changed.is_ok() { *self.cancel.borrow_and_update() } else { None };
                    match mode {
                        Some(CancelMode::Force) => {
                            return self
                                .finish(&st, PhaseOutcome::Cancelled(CancelMode::Force))
                                .await;
                        }
                        Some(CancelMode::Graceful) => st.stopping = Some(CancelMode::Graceful),
                        // The handle was dropped: nobody can cancel any more.
                        None => self.cancel = watch::channel(None).1,
                    }
                }
            }
        }
    }

    async fn finish(
        &mut self,
        st: &PhaseState<'_>,
        outcome: PhaseOutcome,
    ) -> Result<PhaseOutcome, EngineError> {
        self.hand_over().await?;
        self.observer.progress(&st.progress);
        Ok(outcome)
    }

    /// Takes ready tasks: runs local ones at once, turns operations into a batch to send.
    fn fill(&mut self, st: &mut PhaseState<'_>) -> Vec<OperationTask> {
        let mut batch = Vec::new();
        if st.failed.is_some() || st.stopping.is_some() {
            return batch;
        }
        // Retries that came due while operations kept the loop busy.
        st.release_due_retries();
        while st.in_flight.len() < self.params.parallelism {
            let Some(t) = st.ready.pop_front() else {
                break;
            };
            let task = st.graph.tasks[t as usize];
            match task.kind {
                Kind::SetState(state) => {
                    self.world.set_state(task.instance, state);
                    if st.phase.final_state() == Some(state) {
                        st.progress.instances_done += 1;
                    }
                    if self.task_events() {
                        let task_id = self.task_id(st.p, t, 0);
                        self.node_event(task.instance, state, task_id);
                    }
                    self.complete(st, t);
                }
                Kind::Barrier => self.complete(st, t),
                Kind::Op { .. } | Kind::RelOp { .. } | Kind::Provision { .. } => {
                    let attempt = st.attempts.get(&t).copied().unwrap_or(0);
                    match self.operation_task(st, t, attempt) {
                        Ok(op_task) => {
                            if self.task_events() {
                                let context = self.task_context(st, t, &op_task.task_id);
                                let text = format!("Sending task '{}'", op_task.implementation);
                                self.emit(events::event("sending_task", context, text));
                            }
                            st.in_flight.insert(t, attempt);
                            batch.push(op_task);
                        }
                        Err(e) => {
                            // The task could not be made (a runtime function failed): it fails
                            // as if it had run, under the id it would have had.
                            let task_id = self.task_id(st.p, t, attempt);
                            let context = self.task_context(st, t, &task_id);
                            st.progress.failures += 1;
                            self.journal(&Entry::Failed {
                                p: st.p,
                                t,
                                a: attempt,
                            });
                            if st.phase.ignores_failure() {
                                let text = format!("{e} (ignored)");
                                self.emit(events::event("task_failed", context, text));
                                self.complete(st, t);
                            } else {
                                self.emit(events::event("task_failed", context, e.clone()));
                                st.failed.get_or_insert(e);
                                break;
                            }
                        }
                    }
                }
            }
        }
        batch
    }

    /// Cloudify's `workflow_node_event` for a state change ("Creating node instance" …).
    ///
    /// The change is a (local) task of the graph, and the event carries that task's id and
    /// attempt 0: its [`Event::task_event_id`] is then the same when a resumed execution makes
    /// the change again, so the event index holds the event once.
    ///
    /// [`Event::task_event_id`]: drover_model::Event::task_event_id
    fn node_event(&mut self, instance: u32, state: State, task_id: String) {
        let text = match state {
            State::Creating => "Creating node instance",
            State::Created => "Node instance created",
            State::Configuring => "Configuring node instance",
            State::Configured => "Node instance configured",
            State::Starting => "Starting node instance",
            State::Started => "Node instance started",
            State::Stopping => "Stopping node instance",
            State::Stopped => "Stopped node instance",
            State::Deleting => "Deleting node instance",
            State::Deleted => "Deleted node instance",
            State::Uninitialized | State::Initializing => return,
        };
        let ni = &self.world.instances[instance as usize];
        let mut context = self.base.clone();
        context.task_id = Some(task_id);
        context.task_current_retries = Some(0);
        context.node_id = Some(ni.id.clone());
        context.node_name = Some(ni.node_id.clone());
        self.emit(events::event(
            "workflow_node_event",
            context,
            text.to_owned(),
        ));
    }

    fn complete(&mut self, st: &mut PhaseState<'_>, t: TaskId) {
        st.done[t as usize] = true;
        st.remaining -= 1;
        st.progress.tasks_done += 1;
        if self.done.0 != st.p && !self.done.1.is_empty() {
            let t = std::mem::take(&mut self.done.1);
            self.journal(&Entry::Done { p: self.done.0, t });
        }
        self.done.0 = st.p;
        self.done.1.push(t);
        for &s in st.graph.successors(t) {
            let d = &mut st.indegree[s as usize];
            *d -= 1;
            if *d == 0 {
                st.ready.push_back(s);
            }
        }
    }

    fn on_report(&mut self, st: &mut PhaseState<'_>, report: TaskReport) {
        match report {
            TaskReport::Started { task_id } => {
                if let Some(t) = self.in_flight_task(st, &task_id)
                    && self.task_events()
                {
                    let context = self.task_context(st, t, &task_id);
                    let text = format!("Task started '{}'", self.implementation(st, t));
                    self.emit(events::event("task_started", context, text));
                }
            }
            TaskReport::Finished(result) => self.on_result(st, result),
        }
    }

    fn on_result(&mut self, st: &mut PhaseState<'_>, result: TaskResult) {
        // Unknown ids are late or repeated answers: the task was already settled.
        let Some(t) = self.in_flight_task(st, &result.task_id) else {
            return;
        };
        let attempt = st.in_flight.remove(&t).unwrap_or_default();
        for (id, props) in result.runtime_properties {
            if let Some(&i) = self.world.instance_index.get(&id) {
                self.world.set_runtime_properties(i, props);
            }
        }
        st.progress.operations_done += 1;
        if !self.params.dry_run {
            self.unflushed_runs = true;
        }
        match result.outcome {
            TaskOutcome::Succeeded { .. } => {
                if st.phase.final_state().is_none() {
                    st.progress.instances_done += 1;
                }
                if self.task_events() {
                    let context = self.task_context(st, t, &result.task_id);
                    let text = format!("Task succeeded '{}'", self.implementation(st, t));
                    self.emit(events::event("task_succeeded", context, text));
                }
                self.complete(st, t);
            }
            TaskOutcome::Failed {
                error,
                recoverable,
                retry_after_s,
            } => {
                let context = self.task_context(st, t, &result.task_id);
                let name = self.implementation(st, t).to_owned();
                let (max_retries, interval) = self.retry_policy(st, t);
                let may_retry = recoverable
                    && (max_retries < 0 || i64::from(attempt) < max_retries)
                    && st.failed.is_none()
                    && st.stopping.is_none();
                if may_retry {
                    let wait = retry_after_s.unwrap_or(interval).max(0.0);
                    let next = attempt + 1;
                    st.attempts.insert(t, next);
                    self.journal(&Entry::Retry {
                        p: st.p,
                        t,
                        a: next,
                    });
                    self.emit(events::event(
                        "task_rescheduled",
                        context,
                        format!(
                            "Task rescheduled '{name}' -> {error} [retry {next}/{max_retries}]"
                        ),
                    ));
                    let at = Instant::now() + Duration::from_secs_f64(wait.min(86_400.0));
                    st.retries.push(Reverse((at, t)));
                    return;
                }
                st.progress.failures += 1;
                self.journal(&Entry::Failed {
                    p: st.p,
                    t,
                    a: attempt,
                });
                if st.phase.ignores_failure() {
                    self.emit(events::event(
                        "task_failed",
                        context,
                        format!("Task failed '{name}' -> {error} (ignored)"),
                    ));
                    self.complete(st, t);
                } else {
                    self.emit(events::event(
                        "task_failed",
                        context,
                        format!("Task failed '{name}' -> {error}"),
                    ));
                    let instance =
                        &self.world.instances[st.graph.tasks[t as usize].instance as usize].id;
                    let op = self.operation_name(st, t);
                    st.failed
                        .get_or_insert(format!("{op} on {instance} failed: {error}"));
                }
            }
        }
    }

    /// Maximum retries (-1: unlimited) and seconds between them, for a task's operation.
    fn retry_policy(&self, st: &PhaseState<'_>, t: TaskId) -> (i64, f64) {
        let op = self.operation(st, t);
        let max = op
            .and_then(|o| o.max_retries.as_ref())
            .and_then(Value::as_i64)
            .unwrap_or(self.params.task_retries);
        let interval = op
            .and_then(|o| o.retry_interval.as_ref())
            .and_then(Value::as_f64)
            .unwrap_or(self.params.task_retry_interval);
        (max, interval)
    }

    fn operation_name<'g>(&self, st: &PhaseState<'g>, t: TaskId) -> &'g str {
        match st.graph.tasks[t as usize].kind {
            Kind::Op { op } | Kind::RelOp { op, .. } => st.graph.op_name(op),
            Kind::Provision { create: true } => lifecycle::CREATE,
            Kind::Provision { create: false } => lifecycle::DELETE,
            _ => "",
        }
    }

    /// The plan's operation a task runs.
    fn operation(&self, st: &PhaseState<'_>, t: TaskId) -> Option<&drover_model::Operation> {
        let task = st.graph.tasks[t as usize];
        let name = self.operation_name(st, t);
        match task.kind {
            Kind::Op { .. } => self.world.node(task.instance).operations.get(name),
            Kind::RelOp { rel, side, .. } => {
                let pr = self.world.plan_rel(task.instance, rel);
                match side {
                    Side::Source => pr.source_operations.get(name),
                    Side::Target => pr.target_operations.get(name),
                }
            }
            Kind::Provision { create: true } => Some(&PROVISION_CREATE),
            Kind::Provision { create: false } => Some(&PROVISION_DELETE),
            _ => None,
        }
    }

    fn implementation(&self, st: &PhaseState<'_>, t: TaskId) -> &str {
        self.operation(st, t)
            .map(|o| o.operation.as_str())
            .unwrap_or_default()
    }

    /// The (source, target) instances of a relationship task.
    fn sides(&self, st: &PhaseState<'_>, t: TaskId) -> Option<(u32, u32)> {
        let task = st.graph.tasks[t as usize];
        match task.kind {
            Kind::RelOp { rel, .. } => Some((
                task.instance,
                self.world.rels[task.instance as usize][rel as usize].target,
            )),
            _ => None,
        }
    }

    fn task_context(&self, st: &PhaseState<'_>, t: TaskId, task_id: &str) -> EventContext {
        let task = st.graph.tasks[t as usize];
        let ni = &self.world.instances[task.instance as usize];
        let mut c = self.base.clone();
        c.task_id = Some(task_id.to_owned());
        c.operation = Some(self.operation_name(st, t).to_owned());
        c.plugin = self.operation(st, t).map(|o| o.plugin.clone());
        c.task_current_retries = Some(st.attempts.get(&t).copied().unwrap_or(0));
        c.task_total_retries = Some(self.retry_policy(st, t).0);
        c.node_id = Some(ni.id.clone());
        c.node_name = Some(ni.node_id.clone());
        if let Some((s, tg)) = self.sides(st, t) {
            let (s, tg) = (
                &self.world.instances[s as usize],
                &self.world.instances[tg as usize],
            );
            c.source_id = Some(s.id.clone());
            c.source_name = Some(s.node_id.clone());
            c.target_id = Some(tg.id.clone());
            c.target_name = Some(tg.node_id.clone());
        }
        c
    }

    /// A task's id: `<execution>-<phase>-<task>-<attempt>`, the same when a resumed execution
    /// sends it again.
    fn task_id(&self, p: u32, t: TaskId, attempt: u32) -> String {
        format!("{}-{p}-{t}-{attempt}", self.base.execution_id)
    }

    /// The task an id names, when it is one this phase sent and has not settled (parsed from
    /// the id, so no map from ids is kept).
    fn in_flight_task(&self, st: &PhaseState<'_>, task_id: &str) -> Option<TaskId> {
        let rest = task_id
            .strip_prefix(self.base.execution_id.as_str())?
            .strip_prefix('-')?;
        let mut numbers = rest.split('-').map(|n| n.parse::<u32>().ok());
        let (Some(Some(p)), Some(Some(t)), Some(Some(a)), None) = (
            numbers.next(),
            numbers.next(),
            numbers.next(),
            numbers.next(),
        ) else {
            return None;
        };
        (p == st.p && st.in_flight.get(&t) == Some(&a)).then_some(t)
    }

    fn task_ids(&self, instance: u32) -> TaskNode {
        let ni = &self.world.instances[instance as usize];
        TaskNode {
            node_instance_id: ni.id.clone(),
            node_id: ni.node_id.clone(),
            ..TaskNode::default()
        }
    }

    /// An instance as a task sees it: its node's properties with their runtime functions
    /// (`get_secret` …) evaluated for it.
    fn task_node(&self, instance: u32) -> Result<TaskNode, String> {
        let ni = &self.world.instances[instance as usize];
        let node = self.world.node(instance);
        let properties = if node.properties.values().any(functions::has_function) {
            let scope = Scope {
                this: Some(instance),
                ..Scope::default()
            };
            functions::evaluate_map(&node.properties, self.env(), scope)
                .map_err(|e| format!("node properties: {e}"))?
        } else {
            node.properties.clone()
        };
        Ok(TaskNode {
            node_instance_id: ni.id.clone(),
            node_id: ni.node_id.clone(),
            node_type: node.type_name.clone(),
            properties,
            runtime_properties: ni.runtime_properties.clone(),
        })
    }

    fn env(&self) -> functions::Env<'_> {
        functions::Env {
            world: &self.world,
            store: self.store.as_ref(),
            tenant: &self.params.tenant,
        }
    }

    /// The message of an operation task.
    fn operation_task(
        &self,
        st: &PhaseState<'_>,
        t: TaskId,
        attempt: u32,
    ) -> Result<OperationTask, String> {
        let task = st.graph.tasks[t as usize];
        let name = self.operation_name(st, t);
        let op = self
            .operation(st, t)
            .ok_or_else(|| format!("operation {name} vanished from the plan"))?;
        let sides = self.sides(st, t);
        let scope = match sides {
            Some((s, tg)) => Scope {
                this: Some(match task.kind {
                    Kind::RelOp {
                        side: Side::Target, ..
                    } => tg,
                    _ => s,
                }),
                source: Some(s),
                target: Some(tg),
            },
            None => Scope {
                this: Some(task.instance),
                ..Scope::default()
            },
        };
        let mut inputs = if op.has_intrinsic_functions {
            functions::evaluate_map(&op.inputs, self.env(), scope).map_err(|e| {
                let instance = &self.world.instances[task.instance as usize].id;
                format!("{name} on {instance}: {e}")
            })?
        } else {
            op.inputs.clone()
        };
        if let Phase::Operation {
            kwargs,
            allow_kwargs_override,
            ..
        } = st.phase
        {
            for (k, v) in kwargs {
                if inputs.contains_key(k) && !allow_kwargs_override {
                    return Err(format!(
                        "operation input {k} is set by the plan; pass allow_kwargs_override to override it"
                    ));
                }
                inputs.insert(k.clone(), v.clone());
            }
        }
        let task_id = self.task_id(st.p, t, attempt);
        // A dry run runs nothing, so nothing reads the properties: the task carries ids only.
        let task_node = |i| {
            if self.params.dry_run {
                Ok(self.task_ids(i))
            } else {
                self.task_node(i)
                    .map_err(|e| format!("{name} on {}: {e}", self.world.instances[i as usize].id))
            }
        };
        let relationship = match (task.kind, sides) {
            (Kind::RelOp { rel, side, .. }, Some((s, tg))) => Some(TaskRelationship {
                type_name: self.world.plan_rel(task.instance, rel).type_name.clone(),
                side: match side {
                    Side::Source => "source",
                    Side::Target => "target",
                }
                .to_owned(),
                source: task_node(s)?,
                target: task_node(tg)?,
            }),
            _ => None,
        };
        Ok(OperationTask {
            task_id,
            execution_id: self.base.execution_id.clone(),
            workflow_id: self.base.workflow_id.clone(),
            deployment_id: self.base.deployment_id.clone(),
            operation: name.to_owned(),
            plugin: op.plugin.clone(),
            implementation: op.operation.clone(),
            executor: op.executor.clone(),
            inputs,
            dry_run: self.params.dry_run,
            attempt,
            timeout_s: op.timeout.as_ref().and_then(Value::as_f64),
            blueprint_dir: self.params.blueprint_dir.clone(),
            node: task_node(task.instance)?,
            relationship,
        })
    }
}

impl<'g> PhaseState<'g> {
    /// Moves the retries whose time has come to the ready queue.
    fn release_due_retries(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            self.ready.push_back(t);
        }
    }

    fn new(
        p: u32,
        phase: &'g Phase,
        graph: &'g Graph,
        done: Vec<bool>,
        attempts: HashMap<u32, u32>,
        world: &World,
        phases: u32,
    ) -> Self {
        let mut indegree = graph.indegree.clone();
        let mut remaining = graph.len();
        for t in 0..graph.len() as u32 {
            if done[t as usize] {
                remaining -= 1;
                for &s in graph.successors(t) {
                    indegree[s as usize] -= 1;
                }
            }
        }
        let ready = (0..graph.len() as u32)
            .filter(|&t| !done[t as usize] && indegree[t as usize] == 0)
            .collect();
        let instances_total = match phase.selection() {
            crate::lifecycle::Selection::All => world.instances.len(),
            crate::lifecycle::Selection::Ids(ids) => ids.len(),
        } as u64;
        PhaseState {
            p,
            graph,
            phase,
            indegree,
            done,
            attempts,
            ready,
            in_flight: HashMap::new(),
            retries: BinaryHeap::new(),
            remaining,
            failed: None,
            stopping: None,
            progress: Progress {
                phase: p,
                phases,
                tasks_done: (graph.len() - remaining) as u64,
                tasks_total: graph.len() as u64,
                instances_total,
                ..Progress::default()
            },
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
