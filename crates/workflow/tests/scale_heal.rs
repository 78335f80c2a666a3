//! scale (out, in, scale_compute, scaling groups, rollback) and heal.

mod common;

use common::*;
use drover_model::{ExecutionStatus, ScalingGroup};
use drover_workflow::testing::{PlanBuilder, RecordingRunner};
use serde_json::json;

fn count(engine: &TestEngine, node: &str) -> usize {
    instances(engine)
        .values()
        .filter(|i| i.node_id == node)
        .count()
}

#[tokio::test]
async fn scale_out_with_scale_compute_adds_a_host_with_its_apps() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let n = runner.record.lines().len();
    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "app", "delta": 1, "scale_compute": true}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert_eq!(count(&engine, "host"), 3);
    assert_eq!(count(&engine, "app"), 6);
    let all = instances(&engine);
    assert!(all.values().all(|i| i.state == "started"));
    let lines = runner.record.lines()[n..].to_vec();
    // Only the new instances ran their lifecycle; db ran the target side of their relationships.
    let new_host = all
        .values()
        .find(|i| i.node_id == "host" && i.id != "host_1" && i.id != "host_2")
        .map(|i| i.id.clone());
    let old = [
        "db_1", "host_1", "host_2", "app_1", "app_2", "app_3", "app_4",
    ];
    assert!(lines.iter().all(|l| !old.contains(&owner(l))), "{lines:?}");
    let creates = lines.iter().filter(|l| op(l) == "create").count();
    assert_eq!(creates, 3, "{lines:?}");
    let new_apps: Vec<_> = all
        .values()
        .filter(|i| i.node_id == "app" && i.host_id == new_host)
        .collect();
    assert_eq!(new_apps.len(), 2);
    assert!(
        new_apps
            .iter()
            .all(|a| a.relationships.iter().any(|r| r.target_id == "db_1"))
    );
    let deployment = engine.store().deployment("d").unwrap().unwrap();
    let host = deployment
        .plan
        .nodes
        .iter()
        .find(|n| n.id == "host")
        .unwrap();
    assert_eq!(host.capabilities.scalable.properties.current_instances, 3);
    assert_relationship_order(&lines, &engine.store().node_instances("d").unwrap(), true);
}

#[tokio::test]
async fn scaling_a_contained_node_adds_per_container() {
    let engine = engine(three_tier(), RecordingRunner::new());
    install(&engine).await;
    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "app", "delta": "1"}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert_eq!(count(&engine, "host"), 2);
    assert_eq!(count(&engine, "app"), 6);
}

#[tokio::test]
async fn scale_in_removes_the_newest_or_the_included_instances() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let n = runner.record.lines().len();
    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "host", "delta": -1, "include_instances": ["host_1"]}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let all = instances(&engine);
    assert_eq!(all.len(), 1 + 1 + 2);
    assert!(!all.contains_key("host_1"));
    assert!(all.values().all(|i| i.host_id.as_deref() != Some("host_1")));
    let lines = runner.record.lines()[n..].to_vec();
    // db, intact, unlinked from the removed apps (target side).
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("unlink app_") && l.ends_with("target"))
    );
    let deployment = engine.store().deployment("d").unwrap().unwrap();
    let host = deployment
        .plan
        .nodes
        .iter()
        .find(|n| n.id == "host")
        .unwrap();
    assert_eq!(host.instances.deploy, 1);
    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "host", "delta": -2}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Failed);
}

#[tokio::test]
async fn failed_scale_out_is_rolled_back() {
    let engine = common::engine(three_tier(), RecordingRunner::new());
    install(&engine).await;
    // Configure fails on every app from now on: installed apps are past it, new ones hit it.
    let dispatcher_runner = RecordingRunner::new();
    let store = engine.store().clone();
    let engine = drover_workflow::Engine::new(
        store,
        drover_workflow::InProcessDispatcher::new(FailNew(dispatcher_runner.clone())),
    );
    let execution = engine
        .create_execution(
            "d",
            "scale",
            json!({"scalable_entity_name": "host", "delta": 1})
                .as_object()
                .cloned()
                .unwrap(),
            false,
        )
        .unwrap();
    let (_c, cancel) = drover_workflow::Canceller::new();
    let mut obs = null();
    let e = engine
        .run(&execution.id, &Default::default(), &mut obs, cancel)
        .await
        .unwrap();
    assert_eq!(e.status, ExecutionStatus::Failed);
    let all: Vec<_> = engine.store().node_instances("d").unwrap();
    assert_eq!(all.len(), 7, "the new instances are gone");
    assert!(all.iter().all(|i| i.state == "started"));
    let lines = dispatcher_runner.record.lines();
    assert!(
        lines.iter().any(|l| op(l) == "delete"),
        "rolled back: {lines:?}"
    );
    let deployment = engine.store().deployment("d").unwrap().unwrap();
    let host = deployment
        .plan
        .nodes
        .iter()
        .find(|n| n.id == "host")
        .unwrap();
    assert_eq!(host.instances.deploy, 2);
}

/// Fails `configure` of every app instance, runs the rest.
struct FailNew(RecordingRunner);

impl drover_workflow::OperationRunner for FailNew {
    async fn run(&self, task: drover_model::OperationTask) -> drover_model::TaskResult {
        let fails = task.operation.ends_with(".configure") && task.node.node_id == "app";
        let mut result = drover_workflow::OperationRunner::run(&self.0, task).await;
        if fails {
            result.outcome = drover_model::TaskOutcome::Failed {
                error: "boom".into(),
                recoverable: false,
                retry_after_s: None,
            };
        }
        result
    }
}

#[tokio::test]
async fn scaling_groups_scale_their_members_together() {
    let mut plan = PlanBuilder::new()
        .compute("vm", 1)
        .node("web", 1)
        .contained_in("vm")
        .node("lb", 1)
        .build();
    plan.scaling_groups.insert(
        "pair".into(),
        ScalingGroup {
            members: vec!["vm".into(), "lb".into()],
            properties: Default::default(),
        },
    );
    let engine = engine(plan, RecordingRunner::new());
    install(&engine).await;
    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "pair", "delta": 2}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert_eq!(count(&engine, "vm"), 3);
    assert_eq!(count(&engine, "web"), 3);
    assert_eq!(count(&engine, "lb"), 3);
}

#[tokio::test]
async fn heal_reinstalls_the_failing_host_subgraph_only() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let n = runner.record.lines().len();
    let (e, _) = run(&engine, "heal", json!({"node_instance_id": "app_1"})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let lines = runner.record.lines()[n..].to_vec();
    let all = instances(&engine);
    let host = all["app_1"].host_id.clone().unwrap();
    let healed: Vec<&str> = all
        .values()
        .filter(|i| i.host_id.as_deref() == Some(host.as_str()))
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(healed.len(), 3);
    for l in &lines {
        let o = owner(l);
        assert!(healed.contains(&o), "only {healed:?} run: {l}");
    }
    let stop = lines
        .iter()
        .position(|l| l == &format!("stop {host}"))
        .unwrap();
    let create = lines
        .iter()
        .position(|l| l == &format!("create {host}"))
        .unwrap();
    assert!(stop < create);
    // The intact db runs the target side of unlink and establish with the healed apps.
    assert!(
        lines
            .iter()
            .any(|l| op(l) == "unlink" && l.contains("->db_1 target"))
    );
    assert!(
        lines
            .iter()
            .any(|l| op(l) == "establish" && l.contains("->db_1 target"))
    );
    assert!(all.values().all(|i| i.state == "started"));
}

#[tokio::test]
async fn scaling_a_connected_to_target_relinks_its_sources() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let n = runner.record.lines().len();
    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "db", "delta": 1}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let all = instances(&engine);
    let new_db = all
        .values()
        .find(|i| i.node_id == "db" && i.id != "db_1")
        .unwrap()
        .id
        .clone();
    for app in all.values().filter(|i| i.node_id == "app") {
        assert!(
            app.relationships.iter().any(|r| r.target_id == new_db),
            "{app:?}"
        );
    }
    let lines = runner.record.lines()[n..].to_vec();
    // The intact apps establish with the new db, after it started; nothing else of theirs runs.
    let started = lines
        .iter()
        .position(|l| l == &format!("start {new_db}"))
        .unwrap();
    let establish: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| op(l) == "establish" && l.contains(&format!("->{new_db}")))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(establish.len(), 4 * 2, "{lines:?}");
    assert!(establish.iter().all(|&i| i > started));
    assert!(
        !lines
            .iter()
            .any(|l| op(l) == "create" && owner(l).starts_with("app"))
    );

    let n = runner.record.lines().len();
    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "db", "delta": -1, "include_instances": [new_db.clone()]}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let lines = runner.record.lines()[n..].to_vec();
    let stop = lines
        .iter()
        .position(|l| l == &format!("stop {new_db}"))
        .unwrap();
    let unlinks: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| op(l) == "unlink")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(unlinks.len(), 4 * 2, "{lines:?}");
    assert!(
        unlinks.iter().all(|&i| i < stop),
        "sources unlink before the target goes"
    );
    let all = instances(&engine);
    assert!(!all.contains_key(&new_db));
    assert!(
        all.values()
            .all(|i| i.relationships.iter().all(|r| r.target_id != new_db))
    );
}
