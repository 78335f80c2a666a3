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
            event_type: "task_sent".into(),
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
