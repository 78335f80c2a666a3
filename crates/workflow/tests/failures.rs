//! Retries, failures, ignore_failure, cancel, and resume after the executor dies mid-run.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use drover_model::ExecutionStatus;
use drover_store::{FileStore, StateStore};
use drover_workflow::testing::{Failure, PlanBuilder, RecordingRunner};
use drover_workflow::{CancelMode, Canceller, RunOptions};
use serde_json::json;

fn fail(op: &str, instance: &str, times: u32, recoverable: bool) -> Failure {
    Failure {
        operation: op.into(),
        instance: instance.into(),
        times,
        recoverable,
    }
}

fn chain() -> drover_model::Plan {
    PlanBuilder::new()
        .node("a", 1)
        .node("b", 1)
        .connected_to("a")
        .build()
}

#[tokio::test]
async fn recoverable_failures_are_retried_up_to_task_retries() {
    let runner = RecordingRunner::new().fail(fail("create", "a_1", 2, true));
    let engine = engine(chain(), runner.clone());
    let (e, events) = run(
        &engine,
        "install",
        json!({"task_retries": 2, "task_retry_interval": 0}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let creates = runner
        .record
        .lines()
        .iter()
        .filter(|l| *l == "create a_1")
        .count();
    assert_eq!(creates, 3);
    let rescheduled: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "task_rescheduled")
        .collect();
    assert_eq!(rescheduled.len(), 2);
    // Each attempt has its own task id.
    assert_ne!(
        rescheduled[0].context.task_id,
        rescheduled[1].context.task_id
    );
}

#[tokio::test]
async fn exhausted_retries_fail_the_workflow_and_stop_dependents() {
    let runner = RecordingRunner::new().fail(fail("create", "a_1", 5, true));
    let engine = engine(chain(), runner.clone());
    let (e, events) = run(
        &engine,
        "install",
        json!({"task_retries": 1, "task_retry_interval": 0}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert!(
        e.error
            .contains("cloudify.interfaces.lifecycle.create on a_1"),
        "{}",
        e.error
    );
    assert_eq!(events.last().unwrap().event_type, "workflow_failed");
    assert!(events.iter().any(|e| e.event_type == "task_failed"));
    let lines = runner.record.lines();
    assert_eq!(lines.iter().filter(|l| *l == "create a_1").count(), 2);
    assert!(
        !lines.iter().any(|l| owner(l) == "b_1"),
        "b waits for a: {lines:?}"
    );
    assert_eq!(instances(&engine)["a_1"].state, "creating");
}

#[tokio::test]
async fn operation_max_retries_overrides_task_retries() {
    let plan = PlanBuilder::new()
        .node("a", 1)
        .with_operation("cloudify.interfaces.lifecycle.create", |o| {
            o.max_retries = Some(json!(3));
            o.retry_interval = Some(json!(0));
        })
        .build();
    let runner = RecordingRunner::new().fail(fail("create", "a_1", 3, true));
    let engine = engine(plan, runner.clone());
    let (e, _) = run(&engine, "install", json!({"task_retries": 0})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert_eq!(
        runner
            .record
            .lines()
            .iter()
            .filter(|l| *l == "create a_1")
            .count(),
        4
    );
}

#[tokio::test]
async fn non_recoverable_failures_are_not_retried() {
    let runner = RecordingRunner::new().fail(fail("configure", "a_1", 1, false));
    let engine = engine(chain(), runner.clone());
    let (e, _) = run(
        &engine,
        "install",
        json!({"task_retries": 5, "task_retry_interval": 0}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(
        runner
            .record
            .lines()
            .iter()
            .filter(|l| *l == "configure a_1")
            .count(),
        1
    );
}

#[tokio::test]
async fn uninstall_with_ignore_failure_goes_on() {
    let runner = RecordingRunner::new().fail(fail("stop", "b_1", 1, false));
    let engine = engine(chain(), runner.clone());
    install(&engine).await;
    let (e, events) = run(&engine, "uninstall", json!({"ignore_failure": true})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert!(instances(&engine).values().all(|i| i.state == "deleted"));
    assert!(
        events
            .iter()
            .any(|e| e.event_type == "task_failed" && e.message.text.contains("ignored"))
    );

    let runner = RecordingRunner::new().fail(fail("stop", "b_1", 1, false));
    let engine2 = common::engine(chain(), runner.clone());
    install(&engine2).await;
    let (e, _) = run(&engine2, "uninstall", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
}

fn wide() -> drover_model::Plan {
    PlanBuilder::new()
        .node("db", 1)
        .node("app", 40)
        .connected_to("db")
        .build()
}

async fn cancel_after(mode: CancelMode) -> (drover_model::Execution, RecordingRunner, TestEngine) {
    let runner = RecordingRunner::new().with_delay(Duration::from_millis(20));
    let engine = engine(wide(), runner.clone());
    let execution = engine
        .create_execution("d", "install", Default::default(), false)
        .unwrap();
    let (canceller, cancel) = Canceller::new();
    let options = RunOptions {
        parallelism: 4,
        ..RunOptions::default()
    };
    let mut observer = null();
    let run = engine.run(&execution.id, &options, &mut observer, cancel);
    let cancel_later = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        canceller.cancel(mode);
    };
    let (done, ()) = tokio::join!(run, cancel_later);
    (done.unwrap(), runner, engine)
}

#[tokio::test]
async fn graceful_cancel_waits_for_tasks_in_flight() {
    let (e, runner, engine) = cancel_after(CancelMode::Graceful).await;
    assert_eq!(e.status, ExecutionStatus::Cancelled);
    let ran = runner.record.lines().len();
    assert!(ran > 0 && ran < 40 * 4, "{ran}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        runner.record.lines().len(),
        ran,
        "nothing started after the cancel"
    );
    assert_eq!(
        engine.store().execution(&e.id).unwrap().unwrap().status,
        ExecutionStatus::Cancelled
    );
}

#[tokio::test]
async fn forced_cancel_stops_at_once_and_resume_finishes() {
    let (e, runner, engine) = cancel_after(CancelMode::Force).await;
    assert_eq!(e.status, ExecutionStatus::Cancelled);
    resume_to_the_end(&engine, &e.id, &RunOptions::default()).await;
    assert!(instances(&engine).values().all(|i| i.state == "started"));
    // A cancel writes what ended: only what was in flight runs again.
    assert_ran_each_op_once_but(&runner.record.lines(), 4);
}

/// Every operation ran at least once; at most `rerun` ran twice (those whose completion the
/// store had not got at the interruption).
fn assert_ran_each_op_once_but(lines: &[String], rerun: usize) {
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for l in lines {
        *counts.entry(l).or_default() += 1;
    }
    let twice = counts.values().filter(|&&c| c == 2).count();
    assert!(counts.values().all(|&c| c <= 2), "{counts:?}");
    assert!(twice <= rerun, "{twice} ran twice");
    // 41 instances × 4 lifecycle ops (precreate/create/configure/start/poststart = 5) + 40 × 3 rel
    // steps × 2 sides.
    assert_eq!(counts.len(), 41 * 5 + 40 * 3 * 2);
}

#[tokio::test]
async fn resume_after_the_process_dies_mid_install() {
    let dir = tempfile::tempdir().unwrap();
    let runner = RecordingRunner::new().with_delay(Duration::from_millis(5));
    let store: Arc<dyn StateStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let engine = engine_on(store, wide(), runner.clone());
    let execution = engine
        .create_execution("d", "install", Default::default(), false)
        .unwrap();
    let options = RunOptions {
        parallelism: 4,
        ..RunOptions::default()
    };
    // "kill -9": the run's future is dropped mid-way, without any final write.
    {
        let (_canceller, cancel) = Canceller::new();
        let mut observer = null();
        let run = engine.run(&execution.id, &options, &mut observer, cancel);
        // Dropped once a few operations ran, however slow the machine.
        let some_ran = async {
            while runner.record.lines().len() < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = run => panic!("the install ended before the interruption"),
            () = some_ran => {}
        }
    }
    let before = runner.record.lines().len();
    assert!(before > 0);
    drop(engine);
    // A new process: a new store over the same directory, a new engine.
    let store: Arc<dyn StateStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let dispatcher = drover_workflow::InProcessDispatcher::new(runner.clone());
    let engine = drover_workflow::Engine::new(store, dispatcher);
    resume_to_the_end(&engine, &execution.id, &options).await;
    assert!(
        engine
            .store()
            .node_instances("d")
            .unwrap()
            .iter()
            .all(|i| i.state == "started")
    );
    // Lost: what was in flight, and what had ended but was still on its way to the store
    // when the process died (the store writer queues up to 16 writes, each of the reports
    // that came together: at most the 4 in flight).
    assert_ran_each_op_once_but(&runner.record.lines(), 4 + 16 * 4);
    let events = engine.store().events(&execution.id).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.text.starts_with("Resuming"))
    );
    // A state change made again after the resume announces itself under the same id, so an
    // id-keyed event index holds each instance's "Creating node instance" … once.
    let mut ids: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.event_type == "workflow_node_event")
    {
        let id = e
            .task_event_id()
            .expect("a node event has its state change's id");
        let node = e.context.node_id.clone().unwrap_or_default();
        ids.entry((node, e.message.text.clone()))
            .or_default()
            .insert(id);
    }
    let instances = engine.store().node_instances("d").unwrap().len();
    assert_eq!(ids.len(), 6 * instances, "six state changes per instance");
    assert!(ids.values().all(|ids| ids.len() == 1), "{ids:?}");
}

#[tokio::test]
async fn a_failed_execution_resumes_from_its_failed_task() {
    let runner = RecordingRunner::new().fail(fail("configure", "b_1", 1, false));
    let engine = engine(chain(), runner.clone());
    let (e, _) = run(&engine, "install", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let before = runner.record.lines();
    resume_to_the_end(&engine, &e.id, &RunOptions::default()).await;
    let after = runner.record.lines()[before.len()..].to_vec();
    // Only the failed operation and what came after it ran.
    assert_eq!(after.first().map(String::as_str), Some("configure b_1"));
    assert!(!after.iter().any(|l| owner(l) == "a_1"), "{after:?}");
    assert!(instances(&engine).values().all(|i| i.state == "started"));
}

/// Refuses its first `fail` appends, then keeps events in a memory store.
struct FlakySink {
    fail: std::sync::atomic::AtomicU32,
    kept: Arc<drover_store::MemoryStore>,
}

#[async_trait::async_trait]
impl drover_workflow::EventSink for FlakySink {
    async fn append(
        &self,
        execution_id: &str,
        events: Vec<drover_model::Event>,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if self
            .fail
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("the broker is restarting".into());
        }
        self.kept.append_events(execution_id, &events).unwrap();
        Ok(())
    }
}

/// Events that cannot be kept interrupt the run (the replica hands the execution back to be
/// resumed): the execution is not failed, and the resume finishes it.
#[tokio::test]
async fn an_event_sink_failure_interrupts_the_run_and_the_resume_finishes() {
    let runner = RecordingRunner::new();
    let kept = Arc::new(drover_store::MemoryStore::new());
    let sink = Arc::new(FlakySink {
        fail: 1.into(),
        kept: kept.clone(),
    });
    let engine = engine(chain(), runner.clone()).with_events(sink);
    let execution = engine
        .create_execution("d", "install", Default::default(), false)
        .unwrap();
    let (_canceller, cancel) = Canceller::new();
    let mut observer = Collect::default();
    let error = engine
        .run(&execution.id, &RunOptions::default(), &mut observer, cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(error, drover_workflow::EngineError::Interrupted(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("the broker is restarting"));
    let stored = engine.store().execution(&execution.id).unwrap().unwrap();
    assert_ne!(stored.status, ExecutionStatus::Failed);

    resume_to_the_end(&engine, &execution.id, &RunOptions::default()).await;
    let events = kept.events(&execution.id).unwrap();
    assert_eq!(events.last().unwrap().event_type, "workflow_succeeded");
    // Every operation's end, once: nothing was lost with the refused append.
    let ended: BTreeSet<String> = events
        .iter()
        .filter(|e| e.event_type == "task_succeeded")
        .filter_map(|e| e.context.task_id.clone())
        .collect();
    assert_eq!(ended.len(), runner.record.lines().len());
}
