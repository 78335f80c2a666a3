//! Retries, failures, ignore_failure, cancel, and resume after the executor dies mid-run.

mod common;

use std::collections::HashMap;
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
    let (canceller, cancel) = Canceller::new();
    let mut observer = null();
    let resumed = engine
        .run(&e.id, &RunOptions::default(), &mut observer, cancel)
        .await
        .unwrap();
    drop(canceller);
    assert_eq!(
        resumed.status,
        ExecutionStatus::Terminated,
        "{}",
        resumed.error
    );
    assert!(instances(&engine).values().all(|i| i.state == "started"));
    assert_ran_each_op_once_but_in_flight(&runner.record.lines(), 4);
}

/// Every operation ran at least once; at most `in_flight` ran twice (those in flight at the
/// interruption, whose results were lost).
fn assert_ran_each_op_once_but_in_flight(lines: &[String], in_flight: usize) {
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for l in lines {
        *counts.entry(l).or_default() += 1;
    }
    let twice = counts.values().filter(|&&c| c == 2).count();
    assert!(counts.values().all(|&c| c <= 2), "{counts:?}");
    assert!(twice <= in_flight, "{twice} ran twice");
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
    let (_canceller, cancel) = Canceller::new();
    let mut observer = null();
    let resumed = engine
        .run(&execution.id, &options, &mut observer, cancel)
        .await
        .unwrap();
    assert_eq!(
        resumed.status,
        ExecutionStatus::Terminated,
        "{}",
        resumed.error
    );
    assert!(
        engine
            .store()
            .node_instances("d")
            .unwrap()
            .iter()
            .all(|i| i.state == "started")
    );
    assert_ran_each_op_once_but_in_flight(&runner.record.lines(), 4);
    let events = engine.store().events(&execution.id).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.text.starts_with("Resuming"))
    );
}

#[tokio::test]
async fn a_failed_execution_resumes_from_its_failed_task() {
    let runner = RecordingRunner::new().fail(fail("configure", "b_1", 1, false));
    let engine = engine(chain(), runner.clone());
    let (e, _) = run(&engine, "install", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let before = runner.record.lines();
    let (_canceller, cancel) = Canceller::new();
    let mut observer = null();
    let resumed = engine
        .run(&e.id, &RunOptions::default(), &mut observer, cancel)
        .await
        .unwrap();
    assert_eq!(
        resumed.status,
        ExecutionStatus::Terminated,
        "{}",
        resumed.error
    );
    let after = runner.record.lines()[before.len()..].to_vec();
    // Only the failed operation and what came after it ran.
    assert_eq!(after.first().map(String::as_str), Some("configure b_1"));
    assert!(!after.iter().any(|l| owner(l) == "a_1"), "{after:?}");
    assert!(instances(&engine).values().all(|i| i.state == "started"));
}
