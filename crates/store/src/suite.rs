//! The behaviour every [`StateStore`] implementation must have, as one test function.
//!
//! Each implementation's tests call [`run`] on a fresh, empty store, so the embedded store and
//! the OpenSearch one (issue 6) cannot drift apart.

use drover_model::{
    Deployment, Event, EventContext, EventMessage, Execution, ExecutionStatus, NodeInstance, Plan,
};
use serde_json::json;
use serde_json::value::RawValue;

use crate::StateStore;

/// Runs the shared suite against an empty store. Panics (it is a test) on the first difference.
pub fn run(store: &dyn StateStore) {
    deployments(store);
    node_instances(store);
    executions(store);
    journal(store);
    events(store);
}

fn deployment(id: &str, created_at: &str) -> Deployment {
    Deployment {
        id: id.into(),
        blueprint_id: "bp".into(),
        plan: Plan {
            version: "cloudify_dsl_1_3".into(),
            ..Plan::default()
        },
        created_at: created_at.into(),
        ..Deployment::default()
    }
}

fn deployments(store: &dyn StateStore) {
    assert_eq!(store.deployment("d1").unwrap(), None);
    store
        .put_deployment(&deployment("d2", "2026-01-02"))
        .unwrap();
    store
        .put_deployment(&deployment("d1", "2026-01-01"))
        .unwrap();
    let mut changed = deployment("d1", "2026-01-01");
    changed.inputs.insert("x".into(), json!(1));
    store.put_deployment(&changed).unwrap();
    assert_eq!(store.deployment("d1").unwrap(), Some(changed));
    assert_eq!(store.deployments().unwrap(), ["d1", "d2"]);
    store
        .put_deployment(&deployment("gone", "2026-01-03"))
        .unwrap();
    store.delete_deployment("gone").unwrap();
    assert_eq!(store.deployment("gone").unwrap(), None);
    store.delete_deployment("never-was").unwrap();
}

fn instance(id: &str, state: &str) -> NodeInstance {
    NodeInstance {
        id: id.into(),
        deployment_id: "d1".into(),
        node_id: id.split('_').next().unwrap_or(id).into(),
        state: state.into(),
        ..NodeInstance::default()
    }
}

fn node_instances(store: &dyn StateStore) {
    assert!(store.node_instances("d1").unwrap().is_empty());
    let batch = [
        instance("a_1", "uninitialized"),
        instance("b_1", "uninitialized"),
    ];
    store.put_node_instances("d1", &batch).unwrap();
    let mut started = instance("a_1", "started");
    started
        .runtime_properties
        .insert("ip".into(), json!("10.0.0.1"));
    started.version = 3;
    store.put_node_instances("d1", &[started.clone()]).unwrap();
    store
        .put_node_instances("d1", &[instance("c_1", "uninitialized")])
        .unwrap();
    store.delete_node_instances("d1", &["b_1".into()]).unwrap();
    let got = store.node_instances("d1").unwrap();
    let ids: Vec<&str> = got.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["a_1", "c_1"], "first-write order, deletions gone");
    assert_eq!(got[0], started, "a replaced instance reads back whole");
    assert!(
        store.node_instances("d2").unwrap().is_empty(),
        "per deployment"
    );
}

fn execution(id: &str, deployment: &str, created_at: &str) -> Execution {
    Execution {
        id: id.into(),
        deployment_id: deployment.into(),
        workflow_id: "install".into(),
        parameters: Default::default(),
        status: ExecutionStatus::Pending,
        error: String::new(),
        created_at: created_at.into(),
        ended_at: None,
        is_dry_run: false,
    }
}

fn executions(store: &dyn StateStore) {
    assert_eq!(store.execution("e1").unwrap(), None);
    store
        .put_execution(&execution("e2", "d1", "2026-01-02"))
        .unwrap();
    store
        .put_execution(&execution("e1", "d1", "2026-01-01"))
        .unwrap();
    store
        .put_execution(&execution("e3", "d2", "2026-01-01"))
        .unwrap();
    let mut done = execution("e1", "d1", "2026-01-01");
    done.status = ExecutionStatus::Terminated;
    store.put_execution(&done).unwrap();
    assert_eq!(store.execution("e1").unwrap(), Some(done));
    let ids: Vec<String> = store
        .executions("d1")
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
}

fn journal(store: &dyn StateStore) {
    assert!(store.journal("e1").unwrap().is_empty());
    let entries: Vec<_> = (0..3)
        .map(|i| RawValue::from_string(json!({"t": i}).to_string()).unwrap())
        .collect();
    store.append_journal("e1", &entries[..2]).unwrap();
    store.append_journal("e1", &entries[2..]).unwrap();
    store.append_journal("e1", &[]).unwrap();
    let got: Vec<String> = store
        .journal("e1")
        .unwrap()
        .iter()
        .map(|e| e.get().to_owned())
        .collect();
    assert_eq!(got, [r#"{"t":0}"#, r#"{"t":1}"#, r#"{"t":2}"#]);
    assert!(store.journal("e2").unwrap().is_empty());
}

fn events(store: &dyn StateStore) {
    let event = |n: usize| Event {
        event_type: "task_sent".into(),
        context: EventContext {
            execution_id: "e1".into(),
            task_id: Some(format!("t{n}")),
            ..EventContext::default()
        },
        message: EventMessage {
            text: format!("event {n}"),
            arguments: serde_json::Value::Null,
        },
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        kind: "cloudify_event".into(),
    };
    store.append_events("e1", &[event(0), event(1)]).unwrap();
    store.append_events("e1", &[event(2)]).unwrap();
    assert_eq!(store.events("e1").unwrap(), [event(0), event(1), event(2)]);
    assert!(store.events("e9").unwrap().is_empty());
}
