//! Install, uninstall, start, stop, restart and execute_operation on hand-built plans, checked
//! against Cloudify's ordering rules.

mod common;

use common::*;
use drover_model::ExecutionStatus;
use drover_workflow::testing::{PlanBuilder, RecordingRunner};
use serde_json::json;

#[tokio::test]
async fn install_runs_each_instance_lifecycle_in_cloudify_order() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let lines = runner.record.lines();
    // Per instance, Cloudify's sequence.
    let app: Vec<&str> = lines
        .iter()
        .filter(|l| owner(l) == "app_1")
        .map(|l| op(l))
        .collect();
    assert_eq!(
        app,
        [
            "precreate",
            "create",
            // contained_in host_1 (source and target side), then connected_to db_1
            "preconfigure",
            "preconfigure",
            "preconfigure",
            "preconfigure",
            "configure",
            "postconfigure",
            "postconfigure",
            "postconfigure",
            "postconfigure",
            "start",
            "poststart",
            "establish",
            "establish",
            "establish",
            "establish",
        ]
    );
    // Relationship groups go one target after another: host_1's pair before db_1's.
    let pre: Vec<&String> = lines
        .iter()
        .filter(|l| owner(l) == "app_1" && op(l) == "preconfigure")
        .collect();
    assert!(pre[..2].iter().all(|l| l.contains("->host_")));
    assert!(pre[2..].iter().all(|l| l.contains("->db_1")));
    let instances = engine.store().node_instances("d").unwrap();
    assert_relationship_order(&lines, &instances, true);
    assert!(instances.iter().all(|i| i.state == "started"));
    assert_eq!(instances.len(), 7);
    assert_eq!(instances[0].runtime_properties["create_ran"], json!(true));
}

#[tokio::test]
async fn uninstall_goes_in_reverse_order_and_deletes() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let before = runner.record.lines().len();
    let (e, _) = run(&engine, "uninstall", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let lines = runner.record.lines()[before..].to_vec();
    let app: Vec<&str> = lines
        .iter()
        .filter(|l| owner(l) == "app_2")
        .map(|l| op(l))
        .collect();
    assert_eq!(
        app,
        [
            "prestop",
            "stop",
            "unlink",
            "unlink",
            "unlink",
            "unlink",
            "delete",
            "postdelete"
        ]
    );
    // Unlink goes by target group in reverse: db_1 first, then the host.
    let unlink: Vec<&String> = lines
        .iter()
        .filter(|l| owner(l) == "app_2" && op(l) == "unlink")
        .collect();
    assert!(unlink[..2].iter().all(|l| l.contains("->db_1")));
    let instances = engine.store().node_instances("d").unwrap();
    assert_relationship_order(&lines, &instances, false);
    assert!(instances.iter().all(|i| i.state == "deleted"));
}

#[tokio::test]
async fn installing_an_installed_deployment_does_nothing() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let before = runner.record.lines().len();
    install(&engine).await;
    assert_eq!(runner.record.lines().len(), before);
}

#[tokio::test]
async fn noop_operations_are_not_sent_but_states_still_change() {
    let plan = PlanBuilder::new()
        .node("a", 1)
        .noop("cloudify.interfaces.lifecycle.create")
        .build();
    let runner = RecordingRunner::new();
    let engine = engine(plan, runner.clone());
    let (_, events) = run(&engine, "install", json!({})).await;
    let ops: Vec<String> = runner
        .record
        .lines()
        .iter()
        .map(|l| op(l).to_owned())
        .collect();
    assert_eq!(ops, ["precreate", "configure", "start", "poststart"]);
    assert_eq!(instances(&engine)["a_1"].state, "started");
    assert!(!events.iter().any(|e| e.context.operation.as_deref() == Some("cloudify.interfaces.lifecycle.create")));
}

#[tokio::test]
async fn dry_run_sends_and_acknowledges_without_running() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    let (e, events) = run_with(&engine, "install", json!({}), true).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert!(e.is_dry_run);
    assert!(runner.record.lines().is_empty());
    let sent = events
        .iter()
        .filter(|e| e.event_type == "sending_task")
        .count();
    let ok = events
        .iter()
        .filter(|e| e.event_type == "task_succeeded")
        .count();
    assert!(sent > 0);
    assert_eq!(sent, ok);
    assert!(instances(&engine).values().all(|i| i.state == "started"));
}

#[tokio::test]
async fn events_have_cloudifys_shape_and_order() {
    let engine = engine(three_tier(), RecordingRunner::new());
    let (e, events) = run(&engine, "install", json!({})).await;
    assert_eq!(events.first().unwrap().event_type, "workflow_started");
    assert_eq!(events.last().unwrap().event_type, "workflow_succeeded");
    let create = events
        .iter()
        .find(|ev| {
            ev.event_type == "sending_task"
                && ev.context.operation.as_deref() == Some("cloudify.interfaces.lifecycle.create")
        })
        .unwrap();
    let c = &create.context;
    assert_eq!(c.execution_id, e.id);
    assert_eq!(c.workflow_id, "install");
    assert_eq!(c.plugin.as_deref(), Some("test"));
    let node_id = c.node_id.clone().unwrap();
    assert!(
        node_id.starts_with(c.node_name.as_deref().unwrap()),
        "node_id is the instance id"
    );
    // Every task goes sent → started → succeeded, in that order.
    let task = c.task_id.clone().unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|ev| ev.context.task_id.as_deref() == Some(task.as_str()))
        .map(|ev| ev.event_type.as_str())
        .collect();
    assert_eq!(kinds, ["sending_task", "task_started", "task_succeeded"]);
    let rel = events
        .iter()
        .find(|ev| {
            ev.context.operation.as_deref()
                == Some("cloudify.interfaces.relationship_lifecycle.establish")
        })
        .unwrap();
    assert_eq!(rel.context.source_name.as_deref(), Some("app"));
    assert!(rel.context.target_id.is_some());
    let json = serde_json::to_value(rel).unwrap();
    assert_eq!(json["type"], "cloudify_event");
    assert!(
        json["message"]["text"]
            .as_str()
            .unwrap()
            .contains("test.establish")
    );
    assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    // Node events say what happens to each instance, as Cloudify's.
    let app_events: Vec<&str> = events
        .iter()
        .filter(|ev| {
            ev.event_type == "workflow_node_event" && ev.context.node_id.as_deref() == Some("app_1")
        })
        .map(|ev| ev.message.text.as_str())
        .collect();
    assert_eq!(app_events.first(), Some(&"Creating node instance"));
    assert_eq!(app_events.last(), Some(&"Node instance started"));
    // The store has them too.
    assert_eq!(engine.store().events(&e.id).unwrap().len(), events.len());
}

#[tokio::test]
async fn start_stop_restart() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let n = runner.record.lines().len();
    let (e, _) = run(&engine, "stop", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated);
    assert!(instances(&engine).values().all(|i| i.state == "stopped"));
    let stop_lines = runner.record.lines()[n..].to_vec();
    assert_relationship_order(
        &stop_lines,
        &engine.store().node_instances("d").unwrap(),
        false,
    );
    assert!(
        stop_lines
            .iter()
            .all(|l| ["prestop", "stop"].contains(&op(l)))
    );
    run(&engine, "start", json!({})).await;
    assert!(instances(&engine).values().all(|i| i.state == "started"));
    let n = runner.record.lines().len();
    run(&engine, "restart", json!({})).await;
    let ops: Vec<String> = runner.record.lines()[n..]
        .iter()
        .map(|l| op(l).to_owned())
        .collect();
    let first_start = ops.iter().position(|o| o == "start").unwrap();
    assert!(
        ops[..first_start]
            .iter()
            .all(|o| o == "prestop" || o == "stop")
    );
    assert!(instances(&engine).values().all(|i| i.state == "started"));
}

#[tokio::test]
async fn execute_operation_filters_and_passes_kwargs() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let n = runner.record.lines().len();
    let (e, _) = run(
        &engine,
        "execute_operation",
        json!({
            "operation": "cloudify.interfaces.lifecycle.configure",
            "node_ids": ["app"],
            "operation_kwargs": {"x": 1},
            "run_by_dependency_order": true,
        }),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let lines = runner.record.lines()[n..].to_vec();
    assert_eq!(lines.len(), 4);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("configure app_") && l.ends_with(r#"{"x":1}"#))
    );

    let n = runner.record.lines().len();
    run(
        &engine,
        "execute_operation",
        json!({"operation": "cloudify.interfaces.lifecycle.start", "type_names": ["cloudify.nodes.Compute"]}),
    )
    .await;
    let lines = runner.record.lines()[n..].to_vec();
    assert_eq!(lines, ["start host_1", "start host_2"]);

    let n = runner.record.lines().len();
    run(
        &engine,
        "execute_operation",
        json!({"operation": "cloudify.interfaces.lifecycle.start", "node_instance_ids": ["app_3"]}),
    )
    .await;
    assert_eq!(runner.record.lines()[n..], ["start app_3"]);

    let (e, _) = run(
        &engine,
        "execute_operation",
        json!({"operation": "cloudify.interfaces.lifecycle.strat"}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert!(e.error.contains("strat"), "{}", e.error);
}

#[tokio::test]
async fn unknown_workflows_and_bad_parameters_fail_cleanly() {
    let engine = engine(three_tier(), RecordingRunner::new());
    assert!(
        engine
            .create_execution("d", "frobnicate", Default::default(), false)
            .is_err()
    );
    let (e, events) = run(&engine, "execute_operation", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert!(e.error.contains("operation"), "{}", e.error);
    assert_eq!(events.last().unwrap().event_type, "workflow_failed");
}

#[tokio::test]
async fn get_attribute_is_evaluated_when_the_task_is_sent() {
    let plan = PlanBuilder::new()
        .compute("host", 1)
        .node("app", 1)
        .contained_in("host")
        .property("port", json!(8080))
        .with_operation("cloudify.interfaces.lifecycle.configure", |o| {
            o.has_intrinsic_functions = true;
            o.inputs.insert(
                "host_created".into(),
                json!({"get_attribute": ["host", "create_ran"]}),
            );
            o.inputs
                .insert("port".into(), json!({"get_attribute": ["SELF", "port"]}));
            o.inputs.insert(
                "me".into(),
                json!({"concat": ["id=", {"get_attribute": ["SELF", "node_instance_id"]}]}),
            );
        })
        .build();
    let runner = RecordingRunner::new();
    let engine = engine(plan, runner.clone());
    install(&engine).await;
    let configure = runner
        .record
        .lines()
        .into_iter()
        .find(|l| l.starts_with("configure app_1"))
        .unwrap();
    assert!(configure.contains(r#""host_created":true"#), "{configure}");
    assert!(configure.contains(r#""port":8080"#), "{configure}");
    assert!(configure.contains(r#""me":"id=app_1""#), "{configure}");
}

#[tokio::test]
async fn outputs_are_evaluated_against_runtime_properties() {
    let mut plan = PlanBuilder::new().compute("host", 1).build();
    plan.outputs.insert(
        "created".into(),
        json!({"value": {"get_attribute": ["host", "create_ran"]}}),
    );
    plan.outputs.insert("plain".into(), json!({"value": 3}));
    let engine = engine(plan, RecordingRunner::new());
    assert_eq!(engine.outputs("d").unwrap()["created"], json!(null));
    install(&engine).await;
    let outputs = engine.outputs("d").unwrap();
    assert_eq!(outputs["created"], json!(true));
    assert_eq!(outputs["plain"], json!(3));
}

#[tokio::test]
async fn reinstall_uninstalls_then_installs_everything() {
    let runner = RecordingRunner::new();
    let engine = engine(three_tier(), runner.clone());
    install(&engine).await;
    let n = runner.record.lines().len();
    let (e, _) = run(&engine, "reinstall", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let ops: Vec<String> = runner.record.lines()[n..]
        .iter()
        .map(|l| op(l).to_owned())
        .collect();
    let last_delete = ops.iter().rposition(|o| o == "delete").unwrap();
    let first_create = ops.iter().position(|o| o == "create").unwrap();
    assert!(last_delete < first_create, "{ops:?}");
    assert!(instances(&engine).values().all(|i| i.state == "started"));
}

#[tokio::test]
async fn workflows_mapped_to_cloudify_implementations_run_their_built_in() {
    let mut plan = three_tier();
    for (name, implementation) in [
        ("my_heal", "auto_heal_reinstall_node_subgraph"),
        ("my_scale", "scale_entity"),
        ("agents", "install_new_agents"),
    ] {
        plan.workflows.insert(
            name.into(),
            drover_model::WorkflowSpec {
                plugin: "default_workflows".into(),
                operation: format!("cloudify.plugins.workflows.{implementation}"),
                ..Default::default()
            },
        );
    }
    let engine = engine(plan, RecordingRunner::new());
    install(&engine).await;
    let (e, _) = run(&engine, "my_scale", json!({"scalable_entity_name": "db"})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert_eq!(
        instances(&engine)
            .values()
            .filter(|i| i.node_id == "db")
            .count(),
        2
    );
    let (e, _) = run(&engine, "my_heal", json!({"node_instance_id": "host_1"})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let refused = engine.create_execution("d", "agents", Default::default(), false);
    assert!(refused.unwrap_err().to_string().contains("does not run"));
}

#[tokio::test]
async fn compute_nodes_without_create_get_their_server_from_the_provisioner() {
    let plan = PlanBuilder::new()
        .compute("host", 1)
        .noop("cloudify.interfaces.lifecycle.create")
        .noop("cloudify.interfaces.lifecycle.delete")
        .build();
    let runner = RecordingRunner::new();
    let engine = engine(plan, runner.clone());
    let (_, events) = run(&engine, "install", json!({})).await;
    let sent = events
        .iter()
        .find(|e| {
            e.event_type == "sending_task"
                && e.context.plugin.as_deref() == Some(drover_model::PROVISIONING_PLUGIN)
        })
        .expect("a provisioning task");
    assert_eq!(
        sent.context.operation.as_deref(),
        Some("cloudify.interfaces.lifecycle.create")
    );
    assert!(runner.record.lines().contains(&"create host_1".to_owned()));
    run(&engine, "uninstall", json!({})).await;
    assert!(runner.record.lines().contains(&"delete host_1".to_owned()));
}

#[tokio::test]
async fn relationship_operations_see_source_and_target() {
    let mut plan = PlanBuilder::new()
        .node("db", 1)
        .property("port", json!(5432))
        .node("app", 1)
        .connected_to("db")
        .build();
    let app = plan.nodes.iter_mut().find(|n| n.id == "app").unwrap();
    let establish = "cloudify.interfaces.relationship_lifecycle.establish";
    let op = app.relationships[0]
        .source_operations
        .get_mut(establish)
        .unwrap();
    op.has_intrinsic_functions = true;
    op.inputs
        .insert("port".into(), json!({"get_attribute": ["TARGET", "port"]}));
    op.inputs.insert(
        "db_created".into(),
        json!({"get_attribute": ["TARGET", "create_ran"]}),
    );
    op.inputs.insert(
        "me".into(),
        json!({"get_attribute": ["SOURCE", "node_instance_id"]}),
    );
    let op = app.relationships[0]
        .target_operations
        .get_mut(establish)
        .unwrap();
    op.has_intrinsic_functions = true;
    op.inputs.insert(
        "self".into(),
        json!({"get_attribute": ["SELF", "node_instance_id"]}),
    );
    let runner = RecordingRunner::new();
    let engine = engine(plan, runner.clone());
    install(&engine).await;
    let lines = runner.record.lines();
    let source = lines
        .iter()
        .find(|l| l.starts_with("establish app_1->db_1 source"))
        .unwrap();
    assert!(source.contains(r#""port":5432"#), "{source}");
    assert!(source.contains(r#""db_created":true"#), "{source}");
    assert!(source.contains(r#""me":"app_1""#), "{source}");
    let target = lines
        .iter()
        .find(|l| l.starts_with("establish app_1->db_1 target"))
        .unwrap();
    assert!(
        target.contains(r#""self":"db_1""#),
        "SELF of a target operation is the target: {target}"
    );
}
