//! The OpenSearch store and event index against a real node: the shared suites, a call from
//! inside a tokio runtime, the event retention. `#[ignore]`d: run with `--ignored` and
//! DROVER_OPENSEARCH_URL set (scripts/test starts a node with scripts/opensearch).

use std::sync::Arc;

use drover_store::opensearch::Client;
use drover_store::{
    EventIndex, EventQuery, EventRecord, OpenSearchEventIndex, OpenSearchOptions, OpenSearchStore,
    SortOrder, StateStore,
};

fn url() -> String {
    match std::env::var("DROVER_OPENSEARCH_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DROVER_OPENSEARCH_URL is not set: these tests need OpenSearch. Start one with \
             `scripts/opensearch start` and set DROVER_OPENSEARCH_URL=$(scripts/opensearch url)"
        ),
    }
}

/// Options with a prefix of this test's own, so tests share the node without meeting.
fn options(test: &str) -> OpenSearchOptions {
    let mut options = OpenSearchOptions::new(url());
    options.prefix = format!("t-{test}-{}", std::process::id());
    options
}

/// Deletes the test's indices and templates when the test ends, passed or not.
struct Cleanup(OpenSearchOptions);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let client = Client::new(self.0.clone()).expect("client");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(e) = runtime.block_on(client.delete_everything()) {
            eprintln!("cleanup of {}: {e}", self.0.prefix);
        }
    }
}

#[test]
#[ignore = "needs OpenSearch at DROVER_OPENSEARCH_URL"]
fn store_passes_the_shared_suite_from_a_blocking_task_of_a_runtime() {
    let options = options("store");
    let _cleanup = Cleanup(options.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        // The engine calls the store from blocking threads of its runtime: so does this test.
        tokio::task::spawn_blocking(move || {
            let store: Arc<dyn StateStore> = Arc::new(OpenSearchStore::open(options).unwrap());
            drover_store::suite::run(store.as_ref());
        })
        .await
        .unwrap();
    });
}

#[test]
#[ignore = "needs OpenSearch at DROVER_OPENSEARCH_URL"]
fn opens_by_url_and_reopens_what_it_wrote() {
    let options = options("url");
    let _cleanup = Cleanup(options.clone());
    let url = format!("{}?prefix={}", options.url, options.prefix);
    let store = drover_store::open(&url).unwrap();
    let instance = drover_model::NodeInstance {
        id: "vm_1".into(),
        deployment_id: "d".into(),
        state: "started".into(),
        ..Default::default()
    };
    store
        .put_node_instances("d", std::slice::from_ref(&instance))
        .unwrap();
    drop(store);
    let again = drover_store::open(&url).unwrap();
    assert_eq!(again.node_instances("d").unwrap(), [instance]);
}

#[test]
#[ignore = "needs OpenSearch at DROVER_OPENSEARCH_URL"]
fn event_index_passes_the_shared_suite() {
    let options = options("events");
    let _cleanup = Cleanup(options.clone());
    let index = OpenSearchEventIndex::open(options).unwrap();
    drover_store::suite::run_events(&index);
}

#[test]
#[ignore = "needs OpenSearch at DROVER_OPENSEARCH_URL"]
fn event_indices_past_the_retention_are_deleted() {
    let mut options = options("retention");
    options.event_retention_days = 7;
    let _cleanup = Cleanup(options.clone());
    let index = OpenSearchEventIndex::open(options.clone()).unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let record = |id: &str, day: time::Date| EventRecord {
        id: id.into(),
        level: None,
        logger: None,
        event: drover_model::Event {
            event_type: "sending_task".into(),
            context: Default::default(),
            message: Default::default(),
            timestamp: format!("{day}T12:00:00.000Z"),
            kind: "cloudify_event".into(),
        },
    };
    let old = today - time::Duration::days(8);
    let recent = today - time::Duration::days(6);
    index
        .append(&[record("old", old), record("recent", recent)])
        .unwrap();
    let all = EventQuery::default();
    assert_eq!(
        index
            .query(&all, SortOrder::Ascending, 0, 10)
            .unwrap()
            .total,
        2
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let deleted = runtime
        .block_on(index.client().apply_retention(today))
        .unwrap();
    assert_eq!(
        deleted,
        [index.client().events_index_for(&format!("{old}"))]
    );
    let left = index.query(&all, SortOrder::Ascending, 0, 10).unwrap();
    assert_eq!(left.records.len(), 1);
    assert_eq!(left.records[0].id, "recent");
}

#[test]
#[ignore = "needs OpenSearch at DROVER_OPENSEARCH_URL"]
fn an_agents_copy_of_a_task_event_replaces_the_engines() {
    let options = options("task-events");
    let _cleanup = Cleanup(options.clone());
    let store = OpenSearchStore::open(options.clone()).unwrap();
    let index = OpenSearchEventIndex::open(options).unwrap();
    let event = |event_type: &str, task: Option<&str>, text: &str, at: &str| drover_model::Event {
        event_type: event_type.into(),
        context: drover_model::EventContext {
            execution_id: "e1".into(),
            task_id: task.map(str::to_owned),
            task_current_retries: task.map(|_| 0),
            ..Default::default()
        },
        message: drover_model::EventMessage {
            text: text.into(),
            arguments: serde_json::Value::Null,
        },
        timestamp: format!("2026-01-01T00:00:0{at}.000Z"),
        kind: "cloudify_event".into(),
    };
    let started = event("workflow_started", None, "engine", "0");
    store
        .append_events(
            "e1",
            &[
                started.clone(),
                event("task_succeeded", Some("e1-0-3-0"), "engine", "2"),
            ],
        )
        .unwrap();
    // The agent that ran the task ships its own copy through ingest, which indexes by id.
    let agents = event("task_succeeded", Some("e1-0-3-0"), "agent", "1");
    let id = drover_model::task_event_id("e1-0-3-0", 0, "task_succeeded");
    index
        .append(&[EventRecord {
            id: id.clone(),
            level: None,
            logger: None,
            event: agents.clone(),
        }])
        .unwrap();

    let all = index
        .query(&EventQuery::default(), SortOrder::Ascending, 0, 10)
        .unwrap();
    assert_eq!(all.total, 2, "{:?}", all.records);
    assert_eq!(all.records[1].id, id);
    assert_eq!(all.records[1].event, agents);
    assert_eq!(store.events("e1").unwrap(), [started, agents]);
}

#[test]
#[ignore = "needs OpenSearch at DROVER_OPENSEARCH_URL"]
fn a_large_set_of_events_goes_in_several_bulks_with_outcomes_in_order() {
    let options = options("bulks");
    let _cleanup = Cleanup(options.clone());
    let client = Client::new(options).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let records: Vec<EventRecord> = (0..2500)
        .map(|i| EventRecord {
            id: format!("r{i}"),
            level: None,
            logger: None,
            event: drover_model::Event {
                event_type: "sending_task".into(),
                context: Default::default(),
                message: Default::default(),
                // One record OpenSearch will not take, in the second bulk.
                timestamp: if i == 1700 {
                    "2026-01-01Tnot-a-time".into()
                } else {
                    "2026-01-01T00:00:00.000Z".into()
                },
                kind: "cloudify_event".into(),
            },
        })
        .collect();
    let outcomes = runtime.block_on(async {
        client.ensure_indices().await.unwrap();
        client
            .bulk_events(&records, drover_store::opensearch::Refresh::True)
            .await
            .unwrap()
    });
    assert_eq!(outcomes.len(), 2500);
    for (i, outcome) in outcomes.iter().enumerate() {
        match (i, outcome) {
            (1700, drover_store::opensearch::ItemOutcome::Rejected(_)) => {}
            (1700, other) => panic!("record 1700: {other:?}"),
            (_, drover_store::opensearch::ItemOutcome::Indexed) => {}
            (i, other) => panic!("record {i}: {other:?}"),
        }
    }
    assert_eq!(runtime.block_on(client.count_events()).unwrap(), 2499);
}
