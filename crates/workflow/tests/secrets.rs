//! `get_secret` at task time: the default tenant's secrets from the (embedded) state store
//! reach an operation through its inputs and its node's properties, nested forms read into a
//! JSON secret, and a missing secret fails the task naming it, without the value showing in
//! any event.

mod common;

use std::sync::{Arc, Mutex};

use common::{engine_on, run};
use drover_model::{ExecutionStatus, Map, OperationTask, TaskOutcome, TaskResult};
use drover_store::{DEFAULT_TENANT, FileStore, Secret, StateStore};
use drover_workflow::NewDeployment;
use drover_workflow::OperationRunner;
use drover_workflow::testing::{PlanBuilder, RecordingRunner};
use serde_json::{Value, json};

fn secret(key: &str, value: &str) -> Secret {
    Secret {
        key: key.into(),
        value: value.into(),
        created_at: "2026-11-27T00:00:00.000Z".into(),
        updated_at: "2026-11-27T00:00:00.000Z".into(),
        visibility: "tenant".into(),
        is_hidden_value: false,
    }
}

/// Keeps the inputs and node properties of every `configure` it runs.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(Map, Map)>>>);

impl OperationRunner for Capture {
    async fn run(&self, task: OperationTask) -> TaskResult {
        if task.operation.ends_with(".configure") {
            self.0
                .lock()
                .unwrap()
                .push((task.inputs.clone(), task.node.properties.clone()));
        }
        TaskResult {
            task_id: task.task_id,
            execution_id: task.execution_id,
            outcome: TaskOutcome::Succeeded {
                result: Value::Null,
            },
            runtime_properties: Default::default(),
        }
    }
}

/// A node `app` whose `password` property and `configure` inputs call `get_secret`.
fn plan(missing: &str) -> drover_model::Plan {
    PlanBuilder::new()
        .node("app", 1)
        .property("password", json!({"get_secret": "db_password"}))
        .property("plain", json!(7))
        .with_operation("cloudify.interfaces.lifecycle.configure", |o| {
            o.has_intrinsic_functions = true;
            o.inputs
                .insert("token".into(), json!({"get_secret": "api_token"}));
            o.inputs.insert(
                "user".into(),
                json!({"get_secret": ["creds", "users", 1, "name"]}),
            );
            o.inputs.insert(
                "url".into(),
                json!({"concat": ["https://", {"get_secret": ["creds", "host"]}, "/"]}),
            );
            o.inputs
                .insert("other".into(), json!({"get_secret": missing}));
        })
        .build()
}

fn store_with_secrets(dir: &std::path::Path) -> Arc<dyn StateStore> {
    let store = FileStore::open(dir).unwrap();
    for (key, value) in [
        ("db_password", "pw-1234"),
        ("api_token", "tok-5678"),
        (
            "creds",
            r#"{"host": "db.example", "users": [{"name": "ann"}, {"name": "bob"}]}"#,
        ),
    ] {
        store
            .put_secret(DEFAULT_TENANT, &secret(key, value))
            .unwrap();
    }
    store
        .put_secret("other_tenant", &secret("only_there", "x"))
        .unwrap();
    Arc::new(store)
}

#[tokio::test]
async fn secrets_reach_the_operation_through_inputs_and_properties() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_secrets(dir.path());
    let capture = Capture::default();
    let engine = drover_workflow::Engine::new(
        store.clone(),
        drover_workflow::InProcessDispatcher::new(capture.clone()),
    );
    engine
        .create_deployment(NewDeployment::new("d", "bp", plan("api_token")))
        .unwrap();
    let (e, events) = run(&engine, "install", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let seen = capture.0.lock().unwrap().clone();
    let [(inputs, properties)] = seen.as_slice() else {
        panic!("one configure expected: {seen:?}");
    };
    assert_eq!(inputs["token"], "tok-5678");
    assert_eq!(
        inputs["user"], "bob",
        "[name, key, index, key] reads into JSON"
    );
    assert_eq!(inputs["url"], "https://db.example/");
    assert_eq!(properties["password"], "pw-1234");
    assert_eq!(properties["plain"], 7);
    // The plan in the store keeps the function, not the value.
    let stored = serde_json::to_string(&store.deployment("d").unwrap().unwrap()).unwrap();
    assert!(stored.contains("get_secret") && !stored.contains("pw-1234"));
    for text in events
        .iter()
        .chain(store.events(&e.id).unwrap().iter())
        .map(|ev| serde_json::to_string(ev).unwrap())
    {
        assert!(
            !text.contains("pw-1234") && !text.contains("tok-5678"),
            "a secret in an event: {text}"
        );
    }
}

#[tokio::test]
async fn a_deployment_reads_the_secrets_of_its_own_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_secrets(dir.path());
    for (key, value) in [
        ("db_password", "pw-other"),
        ("api_token", "tok-other"),
        (
            "creds",
            r#"{"host": "other.example", "users": [{}, {"name": "cy"}]}"#,
        ),
    ] {
        store
            .put_secret("other_tenant", &secret(key, value))
            .unwrap();
    }
    let capture = Capture::default();
    let engine = drover_workflow::Engine::new(
        store.clone(),
        drover_workflow::InProcessDispatcher::new(capture.clone()),
    );
    engine
        .create_deployment(NewDeployment::new("d", "bp", plan("only_there")).tenant("other_tenant"))
        .unwrap();
    assert_eq!(
        store.deployment("d").unwrap().unwrap().tenant,
        "other_tenant"
    );
    let (e, _) = run(&engine, "install", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let seen = capture.0.lock().unwrap().clone();
    let [(inputs, properties)] = seen.as_slice() else {
        panic!("one configure expected: {seen:?}");
    };
    assert_eq!(
        (&inputs["token"], &inputs["user"], &inputs["other"]),
        (&json!("tok-other"), &json!("cy"), &json!("x"))
    );
    assert_eq!(properties["password"], "pw-other");
}

#[tokio::test]
async fn a_missing_secret_fails_the_task_naming_it_and_the_operation() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_secrets(dir.path());
    // Secrets are per tenant: another tenant's is not found.
    let engine = engine_on(store.clone(), plan("only_there"), RecordingRunner::new());
    let (e, events) = run(&engine, "install", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    for needle in ["only_there", "configure", "app_1", DEFAULT_TENANT] {
        assert!(e.error.contains(needle), "{needle} not in {}", e.error);
    }
    let failed = events
        .iter()
        .find(|ev| ev.event_type == "task_failed")
        .expect("a task_failed event");
    assert_eq!(failed.context.node_id.as_deref(), Some("app_1"));
    assert!(
        !e.error.contains("tok-5678") && !e.error.contains("pw-1234"),
        "{}",
        e.error
    );
}

#[tokio::test]
async fn a_property_whose_secret_is_missing_fails_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_secrets(dir.path());
    store.delete_secret(DEFAULT_TENANT, "db_password").unwrap();
    let engine = engine_on(store, plan("api_token"), RecordingRunner::new());
    let (e, _) = run(&engine, "install", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert!(e.error.contains("db_password"), "{}", e.error);
    assert!(e.error.contains("app_1: node properties"), "{}", e.error);
}

#[tokio::test]
async fn nested_reads_into_a_secret_that_is_not_json_or_lacks_the_key_fail_clearly() {
    for (args, needle) in [
        (json!(["db_password", "x"]), "not JSON"),
        (json!(["creds", "users", 5]), "nothing at"),
        (json!(["creds", "nope"]), "nothing at"),
        (json!([]), "get_secret takes"),
        (json!(3), "get_secret takes"),
    ] {
        let plan = PlanBuilder::new()
            .node("app", 1)
            .with_operation("cloudify.interfaces.lifecycle.configure", |o| {
                o.has_intrinsic_functions = true;
                o.inputs.insert("v".into(), json!({"get_secret": args}));
            })
            .build();
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_on(store_with_secrets(dir.path()), plan, RecordingRunner::new());
        let (e, _) = run(&engine, "install", json!({})).await;
        assert_eq!(e.status, ExecutionStatus::Failed);
        assert!(e.error.contains(needle), "{needle} not in {}", e.error);
    }
}
