//! Ingest on a real RabbitMQ and a real OpenSearch: 100,000 events exactly once, through a
//! redelivery and through a 60 s outage of OpenSearch; malformed and refused records
//! dead-lettered. `#[ignore]`d: run with `--ignored`, DROVER_AMQP_URL and DROVER_OPENSEARCH_URL
//! set (scripts/test starts both). The outage test stops and starts the node with
//! scripts/opensearch (or DROVER_OPENSEARCH_SCRIPT).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use drover_bus::topology::REASON_HEADER;
use drover_bus::{AmqpBus, AmqpOptions, Bus, ConsumeOptions, Message, Topology};
use drover_ingest::{Ingest, IngestConfig, Stats, synthetic};
use drover_store::OpenSearchOptions;
use drover_store::opensearch::Client;
use serde_json::json;
use tokio::sync::Mutex;

const EVENTS: u64 = 100_000;

/// The tests stop OpenSearch or count on it: one at a time.
static NODE: Mutex<()> = Mutex::const_new(());

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests need RabbitMQ and OpenSearch (scripts/rabbitmq, \
             scripts/opensearch; scripts/test sets both URLs)"
        ),
    }
}

/// A bus and an index of this test's own.
async fn setup(test: &str) -> (Arc<AmqpBus>, Client) {
    let run = format!("t-{test}-{}", std::process::id());
    let mut options = OpenSearchOptions::new(env("DROVER_OPENSEARCH_URL"));
    options.prefix = run.clone();
    let client = Client::new(options).unwrap();
    client.ensure_indices().await.unwrap();
    let topology = Topology::new()
        .with_prefix(format!("{run}-"))
        // Long enough for publishing 100,000 before a consumer comes (publishes are no "use").
        .with_queue_expiry(Duration::from_secs(900));
    let options = AmqpOptions::new(env("DROVER_AMQP_URL"), topology)
        .with_reconnect_budget(Duration::from_secs(30));
    let bus = AmqpBus::connect(options).await.unwrap();
    (Arc::new(bus), client)
}

fn ingest(bus: &Arc<AmqpBus>, client: &Client) -> Ingest {
    Ingest::new(
        bus.clone(),
        Arc::new(client.clone()),
        IngestConfig::default(),
    )
}

async fn wait_for(stats: &Stats, indexed: u64) {
    while stats.indexed.load(Ordering::Relaxed) < indexed {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs ingest until `done` resolves, at most `limit`.
async fn run_until(ingest: &Ingest, done: impl Future<Output = ()> + Send, limit: Duration) {
    tokio::time::timeout(limit, ingest.run(done))
        .await
        .expect("ingest did not finish in time")
        .expect("ingest failed");
}

async fn node(command: &str) {
    let script = std::env::var("DROVER_OPENSEARCH_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/opensearch")
        });
    let status = tokio::process::Command::new(&script)
        .arg(command)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "{} {command} failed", script.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (DROVER_AMQP_URL) and OpenSearch (DROVER_OPENSEARCH_URL)"]
async fn a_hundred_thousand_events_are_indexed_exactly_once_even_when_redelivered() {
    let _node = NODE.lock().await;
    let (bus, client) = setup("exact").await;
    synthetic::publish(bus.as_ref(), "exact", EVENTS, 5000)
        .await
        .unwrap();
    // The first thousand again: a publisher's retry, or a redelivery.
    synthetic::publish(bus.as_ref(), "exact", 1000, 1000)
        .await
        .unwrap();
    let ingest = ingest(&bus, &client);
    let stats = ingest.stats();
    run_until(
        &ingest,
        wait_for(&stats, EVENTS + 1000),
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(client.count_events().await.unwrap(), EVENTS);
    client.delete_everything().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (DROVER_AMQP_URL) and OpenSearch (DROVER_OPENSEARCH_URL)"]
async fn an_outage_of_opensearch_loses_and_duplicates_nothing() {
    let _node = NODE.lock().await;
    let (bus, client) = setup("outage").await;
    synthetic::publish(bus.as_ref(), "outage", EVENTS, 5000)
        .await
        .unwrap();
    let ingest = ingest(&bus, &client);
    let stats = ingest.stats();
    // The outage runs beside ingest, on a task of its own, and says when all is indexed.
    let (done, all_indexed) = tokio::sync::oneshot::channel();
    let outage = tokio::spawn({
        let stats = stats.clone();
        async move {
            wait_for(&stats, EVENTS / 3).await;
            node("stop").await;
            let stopped_at = stats.indexed.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(60)).await;
            // Nothing is indexed while the node is down: ingest waits with the batch in hand.
            assert_eq!(stats.indexed.load(Ordering::Relaxed), stopped_at);
            assert!(stats.failed_requests.load(Ordering::Relaxed) > 0);
            node("start").await;
            wait_for(&stats, EVENTS).await;
            let _ = done.send(());
        }
    });
    let all_indexed = async {
        let _ = all_indexed.await;
    };
    run_until(&ingest, all_indexed, Duration::from_secs(900)).await;
    outage.await.expect("the outage task failed");
    assert!(
        stats.indexed.load(Ordering::Relaxed) < EVENTS * 2,
        "ingest did not start over"
    );
    assert_eq!(client.count_events().await.unwrap(), EVENTS);
    client.delete_everything().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (DROVER_AMQP_URL) and OpenSearch (DROVER_OPENSEARCH_URL)"]
async fn poison_messages_and_refused_records_are_dead_lettered() {
    let _node = NODE.lock().await;
    let (bus, client) = setup("poison").await;
    let route = bus.topology().ingest();
    let mut refused = synthetic::record("poison", 1);
    refused.event.timestamp = "2026-11-26Tnot-a-time".into();
    bus.publish_batch(vec![
        (
            route.clone(),
            Message::new("not protobuf").with_id("poison-0"),
        ),
        (route.clone(), synthetic::message(&refused)),
        (
            route.clone(),
            synthetic::message(&synthetic::record("poison", 2)),
        ),
    ])
    .await
    .unwrap();
    let ingest = ingest(&bus, &client);
    let stats = ingest.stats();
    let done = {
        let stats = stats.clone();
        async move {
            while stats.indexed.load(Ordering::Relaxed) < 1
                || stats.dead_lettered.load(Ordering::Relaxed) < 1
                || stats.malformed.load(Ordering::Relaxed) < 1
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    run_until(&ingest, done, Duration::from_secs(60)).await;

    // The malformed message: on the bus's dead-letter queue, with the reason.
    let mut dead = bus
        .consume(
            &bus.topology().dead_letter_queue_name(),
            ConsumeOptions::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.message.id.as_deref(), Some("poison-0"));
    let reason = &delivery.message.headers[REASON_HEADER];
    assert!(reason.contains("not a drover bus body"), "{reason}");
    delivery.ack().await.unwrap();

    // The record OpenSearch refused: in the dead-letter index, with OpenSearch's reason.
    client.refresh(&client.dead_letter_index()).await.unwrap();
    let answer = client
        .search(
            &client.dead_letter_index(),
            json!({"query": {"match_all": {}}}),
        )
        .await
        .unwrap();
    let hits = answer["hits"]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["_source"]["id"], "poison-1");
    let reason = hits[0]["_source"]["reason"].as_str().unwrap();
    assert!(reason.contains("timestamp"), "{reason}");
    assert_eq!(
        client.count_events().await.unwrap(),
        1,
        "the good record is indexed"
    );
    client.delete_everything().await.unwrap();
}
