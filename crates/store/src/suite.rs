//! The behaviour every [`StateStore`] and every [`EventIndex`] implementation must have, as one
//! test function each.
//!
//! Each implementation's tests call [`run`] (or [`run_events`]) on a fresh, empty store, so the
//! embedded store and the OpenSearch one cannot drift apart.

use drover_model::{
    Deployment, Event, EventContext, EventMessage, Execution, ExecutionStatus, NodeInstance, Plan,
};
use serde_json::json;
use serde_json::value::RawValue;

use crate::events::{EventIndex, EventQuery, EventRecord, SortOrder};
use crate::{Blueprint, Secret, StateStore, StoreError};

/// Runs the shared suite against an empty store. Panics (it is a test) on the first difference.
pub fn run(store: &dyn StateStore) {
    blueprints(store);
    deployments(store);
    node_instances(store);
    optimistic_updates(store);
    executions(store);
    journal(store);
    events(store);
    secrets(store);
}

fn secrets(store: &dyn StateStore) {
    let secret = |key: &str, value: &str| Secret {
        key: key.into(),
        value: value.into(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        updated_at: "2026-01-01T00:00:00.000Z".into(),
        visibility: "tenant".into(),
        is_hidden_value: false,
    };
    assert_eq!(store.secret("t1", "db").unwrap(), None);
    assert!(store.secrets("t1").unwrap().is_empty());
    store.put_secret("t1", &secret("db", "pw1")).unwrap();
    store
        .put_secret("t1", &secret("api", "{\"k\": 1}"))
        .unwrap();
    store.put_secret("t2", &secret("db", "other")).unwrap();
    let mut changed = secret("db", "pw2");
    changed.updated_at = "2026-01-02T00:00:00.000Z".into();
    changed.is_hidden_value = true;
    store.put_secret("t1", &changed).unwrap();
    assert_eq!(store.secret("t1", "db").unwrap(), Some(changed.clone()));
    assert_eq!(
        store.secret("t2", "db").unwrap().map(|s| s.value),
        Some("other".into()),
        "tenants apart"
    );
    let keys: Vec<String> = store
        .secrets("t1")
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(keys, ["api", "db"], "by key");
    assert!(store.delete_secret("t1", "db").unwrap());
    assert!(!store.delete_secret("t1", "db").unwrap(), "already gone");
    assert_eq!(store.secret("t1", "db").unwrap(), None);
    assert_eq!(store.secrets("t1").unwrap().len(), 1);
    assert!(store.secret("t2", "db").unwrap().is_some());
    assert!(
        !format!("{changed:?}").contains("pw2"),
        "Debug hides the value"
    );
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

fn blueprints(store: &dyn StateStore) {
    assert_eq!(store.blueprint("b1").unwrap(), None);
    let blueprint = |id: &str, created_at: &str| Blueprint {
        id: id.into(),
        created_at: created_at.into(),
        main_file_name: "blueprint.yaml".into(),
        description: None,
        plan: json!({"nodes": [{"id": "vm"}]}),
    };
    store.put_blueprint(&blueprint("b2", "2026-01-02")).unwrap();
    store.put_blueprint(&blueprint("b1", "2026-01-01")).unwrap();
    let mut described = blueprint("b1", "2026-01-01");
    described.description = Some("two words".into());
    store.put_blueprint(&described).unwrap();
    assert_eq!(store.blueprint("b1").unwrap(), Some(described));
    assert_eq!(store.blueprints().unwrap(), ["b1", "b2"]);
    store.delete_blueprint("b2").unwrap();
    assert_eq!(store.blueprint("b2").unwrap(), None);
    assert_eq!(store.blueprints().unwrap(), ["b1"]);
    store.delete_blueprint("never-was").unwrap();
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

fn optimistic_updates(store: &dyn StateStore) {
    store
        .put_deployment(&deployment("d3", "2026-01-03"))
        .unwrap();
    let mut first = instance("x_1", "uninitialized");
    first.deployment_id = "d3".into();
    store.put_node_instances("d3", &[first.clone()]).unwrap();
    assert_eq!(
        store.node_instance("d3", "x_1").unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.node_instance("d3", "nope").unwrap(), None);

    // Two writers read version 0; the first update wins, the second conflicts.
    let mut mine = first.clone();
    mine.state = "creating".into();
    mine.runtime_properties
        .insert("ip".into(), json!("10.0.0.2"));
    let written = store.update_node_instance("d3", &mine).unwrap();
    assert_eq!(written.version, 1);
    assert_eq!(
        store.node_instance("d3", "x_1").unwrap(),
        Some(written.clone())
    );
    let mut theirs = first.clone();
    theirs.state = "deleted".into();
    match store.update_node_instance("d3", &theirs) {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (0, Some(1))),
        other => panic!("a stale update must conflict, got {other:?}"),
    }
    assert_eq!(
        store.node_instance("d3", "x_1").unwrap(),
        Some(written.clone())
    );

    // From the version it read, the next update goes through; a removed property stays removed.
    let mut next = written;
    next.runtime_properties.clear();
    next.state = "started".into();
    let written = store.update_node_instance("d3", &next).unwrap();
    assert_eq!(written.version, 2);
    assert!(
        store.node_instances("d3").unwrap()[0]
            .runtime_properties
            .is_empty()
    );

    let mut ghost = instance("ghost_1", "started");
    ghost.deployment_id = "d3".into();
    assert!(matches!(
        store.update_node_instance("d3", &ghost),
        Err(StoreError::Conflict { actual: None, .. })
    ));
    assert_eq!(
        store.nodes("d3").unwrap(),
        deployment("d3", "2026-01-03").plan.nodes
    );
    // Writers race read-modify-write increments, retrying on conflict: none is lost.
    let (writers, increments) = (3, 3);
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                for _ in 0..increments {
                    increment(store, "d3", "x_1");
                }
            });
        }
    });
    let counted = store.node_instance("d3", "x_1").unwrap().unwrap();
    assert_eq!(counted.runtime_properties["n"], json!(writers * increments));
    assert_eq!(counted.version, 2 + writers * increments);
    store.delete_deployment("d3").unwrap();
    assert_eq!(store.node_instance("d3", "x_1").unwrap(), None);
}

/// Adds one to an instance's runtime property `n`, as a caller of the store would: read, change,
/// write back, and on a conflict read again.
fn increment(store: &dyn StateStore, deployment: &str, id: &str) {
    loop {
        let mut instance = store.node_instance(deployment, id).unwrap().unwrap();
        let n = instance
            .runtime_properties
            .get("n")
            .and_then(|n| n.as_u64())
            .unwrap_or(0);
        instance.runtime_properties.insert("n".into(), json!(n + 1));
        match store.update_node_instance(deployment, &instance) {
            Ok(_) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => panic!("update failed: {e}"),
        }
    }
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
        event_type: "sending_task".into(),
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

/// Runs the shared suite against an empty event index.
pub fn run_events(index: &dyn EventIndex) {
    let all = EventQuery::default();
    assert_eq!(
        index
            .query(&all, SortOrder::Ascending, 0, 10)
            .unwrap()
            .total,
        0
    );
    // 30 records of two executions over 30 seconds, appended out of order, in two batches.
    let records: Vec<EventRecord> = (0..30).map(record).collect();
    let (odd, even): (Vec<_>, Vec<_>) = records
        .iter()
        .cloned()
        .partition(|r| r.id.ends_with(['1', '3', '5', '7', '9']));
    index.append(&odd).unwrap();
    index.append(&even).unwrap();
    // Appending again (a redelivery) keeps one copy.
    index.append(&records[..5]).unwrap();
    let ids = |q: &EventQuery, order, offset, size| -> (u64, Vec<String>) {
        let page = index.query(q, order, offset, size).unwrap();
        (page.total, page.records.into_iter().map(|r| r.id).collect())
    };
    let first = ids(&all, SortOrder::Ascending, 0, 3);
    assert_eq!(first, (30, vec!["r00".into(), "r01".into(), "r02".into()]));
    let page = index.query(&all, SortOrder::Ascending, 0, 1).unwrap();
    assert_eq!(page.records[0], records[0], "a record reads back whole");
    assert_eq!(ids(&all, SortOrder::Descending, 2, 2).1, ["r27", "r26"]);
    assert_eq!(ids(&all, SortOrder::Ascending, 29, 5).1, ["r29"]);
    assert_eq!(ids(&all, SortOrder::Ascending, 40, 5), (30, vec![]));

    let by_execution = EventQuery {
        execution_id: Some("e1".into()),
        ..EventQuery::default()
    };
    assert_eq!(ids(&by_execution, SortOrder::Ascending, 0, 100).0, 15);
    let q = EventQuery {
        deployment_id: Some("d2".into()),
        ..EventQuery::default()
    };
    assert_eq!(ids(&q, SortOrder::Ascending, 0, 100).0, 15);
    let q = EventQuery {
        node_instance_id: Some("vm_3".into()),
        ..EventQuery::default()
    };
    assert_eq!(
        ids(&q, SortOrder::Ascending, 0, 100).1,
        ["r03", "r13", "r23"]
    );
    let q = EventQuery {
        event_types: vec!["task_failed".into(), "task_rescheduled".into()],
        ..EventQuery::default()
    };
    assert_eq!(ids(&q, SortOrder::Ascending, 0, 100).0, 20);
    let q = EventQuery {
        levels: vec!["error".into()],
        ..EventQuery::default()
    };
    assert_eq!(
        ids(&q, SortOrder::Ascending, 0, 100).1,
        ["r05", "r15", "r25"]
    );
    let q = EventQuery {
        kind: Some("cloudify_log".into()),
        ..EventQuery::default()
    };
    assert_eq!(ids(&q, SortOrder::Ascending, 0, 100).0, 6);
    let q = EventQuery {
        since: Some(timestamp(10)),
        until: Some(timestamp(13)),
        ..EventQuery::default()
    };
    assert_eq!(
        ids(&q, SortOrder::Ascending, 0, 100).1,
        ["r10", "r11", "r12"]
    );
    let q = EventQuery {
        text: Some("Disk FULL".into()),
        ..EventQuery::default()
    };
    assert_eq!(
        ids(&q, SortOrder::Ascending, 0, 100).1,
        ["r07", "r17", "r27"]
    );
    let q = EventQuery {
        execution_id: Some("e2".into()),
        text: Some("disk".into()),
        ..EventQuery::default()
    };
    assert_eq!(
        ids(&q, SortOrder::Ascending, 0, 100).0,
        0,
        "disk full is e1's only"
    );

    // Follow: pages after a cursor, nothing new, then what arrives later.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = index.follow(&by_execution, cursor.as_deref(), 4).unwrap();
        if page.records.is_empty() {
            assert_eq!(page.cursor, cursor, "nothing new keeps the cursor");
            break;
        }
        seen.extend(page.records.into_iter().map(|r| r.id));
        cursor = page.cursor;
    }
    let expected: Vec<String> = records
        .iter()
        .filter(|r| r.event.context.execution_id == "e1")
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(seen, expected);
    index.append(&[record(31), record(30)]).unwrap();
    let later = index.follow(&by_execution, cursor.as_deref(), 10).unwrap();
    let later: Vec<String> = later.records.into_iter().map(|r| r.id).collect();
    assert_eq!(later, ["r31"], "only the new record of e1");
    assert!(matches!(
        index.follow(&all, Some("not a cursor"), 1),
        Err(StoreError::InvalidCursor(_))
    ));
}

fn timestamp(second: usize) -> String {
    format!("2026-03-01T10:00:{second:02}.000Z")
}

/// Record `n`: execution e1 (odd n) or e2 (even), deployment d1 or d2 alike, node instance
/// `vm_<n % 10>`; event types cycle through three; every fifth is a log (an error when n ends in
/// 5); those ending in 7 say "disk full".
fn record(n: usize) -> EventRecord {
    let log = n.is_multiple_of(5);
    EventRecord {
        id: format!("r{n:02}"),
        level: log.then(|| if n % 10 == 5 { "error" } else { "info" }.to_owned()),
        logger: None,
        event: Event {
            event_type: match n % 3 {
                0 => "task_failed",
                1 => "task_rescheduled",
                _ => "task_succeeded",
            }
            .into(),
            context: EventContext {
                deployment_id: format!("d{}", 2 - n % 2),
                execution_id: format!("e{}", 2 - n % 2),
                workflow_id: "install".into(),
                node_id: Some(format!("vm_{}", n % 10)),
                ..EventContext::default()
            },
            message: EventMessage {
                text: if n % 10 == 7 {
                    format!("operation {n} failed: disk full")
                } else {
                    format!("operation {n} ran")
                },
                arguments: json!({"n": n}),
            },
            timestamp: timestamp(n),
            kind: if log {
                "cloudify_log"
            } else {
                "cloudify_event"
            }
            .into(),
        },
    }
}
