//! Shared helpers of the workflow engine's tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use drover_model::{Event, Execution, ExecutionStatus, NodeInstance, Plan};
use drover_store::{MemoryStore, StateStore};
use drover_workflow::NewDeployment;
use drover_workflow::testing::{PlanBuilder, RecordingRunner};
use drover_workflow::{
    Canceller, Engine, InProcessDispatcher, NullObserver, Observer, RunOptions, TaskDispatcher,
};

pub type TestEngine = Engine<InProcessDispatcher<RecordingRunner>>;

/// A db, two hosts, and two apps on each host connected to the db: every kind of edge.
pub fn three_tier() -> Plan {
    PlanBuilder::new()
        .node("db", 1)
        .compute("host", 2)
        .node("app", 2)
        .contained_in("host")
        .connected_to("db")
        .build()
}

pub fn engine(plan: Plan, runner: RecordingRunner) -> TestEngine {
    engine_on(Arc::new(MemoryStore::new()), plan, runner)
}

pub fn engine_on(store: Arc<dyn StateStore>, plan: Plan, runner: RecordingRunner) -> TestEngine {
    let engine = Engine::new(store, InProcessDispatcher::new(runner));
    engine
        .create_deployment(NewDeployment::new("d", "bp", plan))
        .unwrap();
    engine
}

/// Collects events.
#[derive(Default)]
pub struct Collect(pub Vec<Event>);

impl Observer for Collect {
    fn event(&mut self, event: &Event) {
        self.0.push(event.clone());
    }
}

pub async fn run<D: TaskDispatcher>(
    engine: &Engine<D>,
    workflow: &str,
    params: serde_json::Value,
) -> (Execution, Vec<Event>) {
    run_with(engine, workflow, params, false).await
}

pub async fn run_with<D: TaskDispatcher>(
    engine: &Engine<D>,
    workflow: &str,
    params: serde_json::Value,
    dry_run: bool,
) -> (Execution, Vec<Event>) {
    let params = params.as_object().cloned().unwrap_or_default();
    let execution = engine
        .create_execution("d", workflow, params, dry_run)
        .unwrap();
    let mut events = Collect::default();
    let (_canceller, cancel) = Canceller::new();
    let done = engine
        .run(&execution.id, &RunOptions::default(), &mut events, cancel)
        .await
        .unwrap();
    (done, events.0)
}

pub async fn install<D: TaskDispatcher>(engine: &Engine<D>) {
    let (e, _) = run(engine, "install", serde_json::json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
}

pub fn instances<D: TaskDispatcher>(engine: &Engine<D>) -> HashMap<String, NodeInstance> {
    engine
        .store()
        .node_instances("d")
        .unwrap()
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect()
}

/// The instance whose subgraph a recorded line belongs to (the source of a relationship op).
pub fn owner(line: &str) -> &str {
    let who = line.split(' ').nth(1).unwrap_or_default();
    who.split("->").next().unwrap_or(who)
}

pub fn op(line: &str) -> &str {
    line.split(' ').next().unwrap_or_default()
}

/// Positions of an instance's lines: (first, last).
pub fn span(lines: &[String], instance: &str) -> Option<(usize, usize)> {
    let positions: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| owner(l) == instance)
        .map(|(i, _)| i)
        .collect();
    Some((*positions.first()?, *positions.last()?))
}

/// Asserts that for every relationship source → target, all of one's operations come before
/// all of the other's (`target_first` for install).
pub fn assert_relationship_order(lines: &[String], instances: &[NodeInstance], target_first: bool) {
    for ni in instances {
        for r in &ni.relationships {
            let (Some(s), Some(t)) = (span(lines, &ni.id), span(lines, &r.target_id)) else {
                continue;
            };
            if target_first {
                assert!(
                    t.1 < s.0,
                    "{} must wait for {}: {lines:#?}",
                    ni.id,
                    r.target_id
                );
            } else {
                assert!(
                    s.1 < t.0,
                    "{} must go before {}: {lines:#?}",
                    ni.id,
                    r.target_id
                );
            }
        }
    }
}

pub fn null() -> NullObserver {
    NullObserver
}

/// Runs (or resumes) an existing execution, asserting that it ended terminated.
pub async fn resume_to_the_end<D: TaskDispatcher>(
    engine: &Engine<D>,
    id: &str,
    options: &RunOptions,
) -> Execution {
    let (_canceller, cancel) = Canceller::new();
    let resumed = engine.run(id, options, &mut null(), cancel).await.unwrap();
    assert_eq!(
        resumed.status,
        ExecutionStatus::Terminated,
        "{}",
        resumed.error
    );
    resumed
}
