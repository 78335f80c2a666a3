//! The behaviour every [`Bus`] implementation must show, as one suite run against each:
//! `MemoryBus` in its unit tests, `AmqpBus` against a real RabbitMQ in `tests/amqp.rs`.
//!
//! [`bus_suite!`](crate::bus_suite) expands to one `#[tokio::test]` per case. Each case gets a
//! topology with a prefix of its own, so the cases can share one broker, run in parallel, and
//! leave nothing behind for long (its queues expire when unused).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Bus, BusError, ConsumeOptions, Consumer, Delivery, Message, topology};

/// How long a case waits for a delivery it expects.
const EXPECT: Duration = Duration::from_secs(15);
/// How long a case waits to be sure that no delivery comes.
const QUIET: Duration = Duration::from_millis(400);

/// Expands to one test per suite case, each building its bus with `$make(topology)`, a
/// closure or function returning a future of the bus. Extra attributes (`#[ignore = …]`)
/// are put on every test.
#[macro_export]
macro_rules! bus_suite {
    ($make:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::bus_suite!(@cases ($make) [$(#[$attr])*]
            roundtrip_keeps_id_headers_and_body,
            tasks_route_to_their_agent_queue,
            results_route_to_their_owner,
            work_queue_consumers_compete,
            unroutable_publish_fails,
            too_large_publish_fails,
            too_large_delivery_is_dead_lettered,
            reject_dead_letters_with_reason,
            nack_without_requeue_dead_letters,
            prefetch_limits_unacknowledged,
            dropped_consumer_redelivers,
            nack_with_requeue_redelivers,
            heartbeats_stick_to_one_shard,
            pipelined_batch_is_consumed_whole,
            consume_unknown_queue_fails,
            exclusive_consumer_keeps_others_out,
        );
    };
    (@cases ($make:expr) [$($attr:tt)*] $case:ident $(, $rest:ident)* $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $case() {
            let bus = ($make)($crate::suite::topology(stringify!($case))).await;
            $crate::suite::$case(&bus).await;
        }
        $crate::bus_suite!(@cases ($make) [$($attr)*] $($rest),*);
    };
    (@cases ($make:expr) [$($attr:tt)*] $(,)?) => {};
}

/// A topology whose names no other test uses.
pub fn topology(case: &str) -> topology::Topology {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let prefix = format!(
        "test.{case}.{}.{nanos}.{}.",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    );
    topology::Topology::new()
        .with_prefix(prefix)
        .with_monitor_shards(4)
        .with_max_message_size(64 * 1024)
        .with_queue_expiry(Duration::from_secs(300))
}

/// Waits until `delivery` is stale, or panics after [`EXPECT`].
pub async fn wait_stale(delivery: &Delivery) {
    let deadline = tokio::time::Instant::now() + EXPECT;
    while !delivery.is_stale() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery {:?} still live after {EXPECT:?}",
            delivery.message.id
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next delivery, or a panic naming the queue after [`EXPECT`].
pub async fn expect(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(EXPECT, consumer.next()).await {
        Ok(Ok(delivery)) => delivery,
        Ok(Err(error)) => panic!("consuming {}: {error}", consumer.queue()),
        Err(_) => panic!("no delivery from {} within {EXPECT:?}", consumer.queue()),
    }
}

/// Publishes `message` once its route exists, trying every `pause` up to 100 times: a consumer
/// started in the background declares its queue a little later, and until then the message is
/// unroutable. Panics naming the route if it never becomes routable.
pub async fn publish_when_routable(
    bus: &dyn Bus,
    route: &topology::Route,
    message: Message,
    pause: Duration,
) {
    for _ in 0..100 {
        if let Ok(confirm) = bus.publish(route, message.clone()).await
            && confirm.await.is_ok()
        {
            return;
        }
        tokio::time::sleep(pause).await;
    }
    panic!("{route:?} never became routable");
}

/// Panics if a delivery arrives within [`QUIET`].
pub async fn expect_none(consumer: &mut Consumer) {
    if let Ok(result) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!("{}: expected no delivery, got {result:?}", consumer.queue());
    }
}

fn body(delivery: &Delivery) -> &str {
    std::str::from_utf8(&delivery.message.body).expect("test bodies are UTF-8")
}

async fn publish(bus: &dyn Bus, route: &topology::Route, message: Message) {
    bus.publish(route, message)
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

async fn consumer(bus: &dyn Bus, queue: &str, prefetch: u16) -> Consumer {
    bus.consume(queue, ConsumeOptions::default().with_prefetch(prefetch))
        .await
        .expect("consume")
}

pub async fn roundtrip_keeps_id_headers_and_body(bus: &dyn Bus) {
    let t = bus.topology().clone();
    let message = Message::new("hello")
        .with_id("task-1")
        .with_header("content-type", "application/json")
        .with_header("x-version", "1");
    publish(bus, &t.task_to_central(), message.clone()).await;
    let mut consumer = consumer(bus, &t.central_queue_name(), 8).await;
    let delivery = expect(&mut consumer).await;
    assert_eq!(delivery.message, message);
    assert_eq!(delivery.queue, t.central_queue_name());
    assert_eq!(delivery.exchange, t.tasks_exchange());
    assert_eq!(delivery.routing_key, "central");
    assert!(!delivery.redelivered);
    delivery.ack().await.expect("ack");
    expect_none(&mut consumer).await;
}

pub async fn tasks_route_to_their_agent_queue(bus: &dyn Bus) {
    let t = bus.topology().clone();
    for agent in ["a", "b"] {
        bus.declare_queue(t.agent_queue(agent))
            .await
            .expect("declare");
    }
    // Declaring again is harmless.
    bus.declare_queue(t.agent_queue("a"))
        .await
        .expect("redeclare");
    publish(bus, &t.task_to_agent("a"), Message::new("for a")).await;
    publish(bus, &t.task_to_agent("b"), Message::new("for b")).await;
    for agent in ["a", "b"] {
        let mut consumer = consumer(bus, &t.agent_queue_name(agent), 8).await;
        let delivery = expect(&mut consumer).await;
        assert_eq!(body(&delivery), format!("for {agent}"));
        delivery.ack().await.expect("ack");
        expect_none(&mut consumer).await;
    }
}

pub async fn results_route_to_their_owner(bus: &dyn Bus) {
    let t = bus.topology().clone();
    for owner in ["w1", "w2"] {
        bus.declare_queue(t.results_queue(owner))
            .await
            .expect("declare");
    }
    publish(
        bus,
        &t.result_to("w2"),
        Message::new("result").with_id("task-9"),
    )
    .await;
    let mut w1 = consumer(bus, &t.results_queue_name("w1"), 8).await;
    let mut w2 = consumer(bus, &t.results_queue_name("w2"), 8).await;
    let delivery = expect(&mut w2).await;
    assert_eq!(delivery.message.id.as_deref(), Some("task-9"));
    delivery.ack().await.expect("ack");
    expect_none(&mut w1).await;
}

pub async fn work_queue_consumers_compete(bus: &dyn Bus) {
    let t = bus.topology().clone();
    let count = 40;
    for i in 0..count {
        publish(bus, &t.execution(), Message::new(format!("{i}"))).await;
    }
    let mut first = consumer(bus, &t.executions_queue_name(), 1).await;
    let mut second = consumer(bus, &t.executions_queue_name(), 1).await;
    let mut seen = BTreeSet::new();
    // Each holds one unacknowledged at a time, so both get a share.
    let held = expect(&mut first).await;
    let mut per_consumer = [1, 0];
    seen.insert(body(&held).to_string());
    while seen.len() < count {
        let delivery = expect(&mut second).await;
        per_consumer[1] += 1;
        assert!(seen.insert(body(&delivery).to_string()), "delivered twice");
        delivery.ack().await.expect("ack");
    }
    held.ack().await.expect("ack");
    expect_none(&mut first).await;
    assert_eq!(per_consumer, [1, count - 1]);

    // The ingest queue is a work queue of the same kind.
    publish(bus, &t.ingest(), Message::new("event")).await;
    let mut ingest = consumer(bus, &t.ingest_queue_name(), 100).await;
    expect(&mut ingest).await.ack().await.expect("ack");
}

pub async fn unroutable_publish_fails(bus: &dyn Bus) {
    let t = bus.topology().clone();
    let confirm = bus
        .publish(&t.task_to_agent("nobody"), Message::new("lost"))
        .await
        .expect("publish is sent");
    let error = confirm
        .await
        .expect_err("no queue is bound for agent.nobody");
    assert!(matches!(error, BusError::Unroutable { .. }), "{error}");
    // The bus still works afterwards.
    publish(bus, &t.task_to_central(), Message::new("fine")).await;
}

pub async fn too_large_publish_fails(bus: &dyn Bus) {
    let t = bus.topology().clone();
    let body = vec![b'x'; t.max_message_size() + 1];
    let error = bus
        .publish(&t.task_to_central(), Message::new(body))
        .await
        .expect_err("too large");
    assert!(matches!(error, BusError::TooLarge { .. }), "{error}");
}

pub async fn too_large_delivery_is_dead_lettered(bus: &dyn Bus) {
    let t = bus.topology().clone();
    publish(
        bus,
        &t.task_to_central(),
        Message::new(vec![b'x'; 2048]).with_id("big"),
    )
    .await;
    publish(
        bus,
        &t.task_to_central(),
        Message::new("small").with_id("small"),
    )
    .await;
    let options = ConsumeOptions::default().with_max_message_size(1024);
    let mut central = bus
        .consume(&t.central_queue_name(), options)
        .await
        .expect("consume");
    let delivery = expect(&mut central).await;
    assert_eq!(delivery.message.id.as_deref(), Some("small"));
    delivery.ack().await.expect("ack");

    let mut dead = consumer(bus, &t.dead_letter_queue_name(), 8).await;
    let delivery = expect(&mut dead).await;
    assert_eq!(delivery.message.id.as_deref(), Some("big"));
    assert_eq!(delivery.message.body.len(), 2048);
    let reason = &delivery.message.headers[topology::REASON_HEADER];
    assert!(reason.starts_with("too large"), "{reason}");
    assert_eq!(
        delivery.message.headers[topology::QUEUE_HEADER],
        t.central_queue_name()
    );
    delivery.ack().await.expect("ack");
    expect_none(&mut central).await;
}

pub async fn reject_dead_letters_with_reason(bus: &dyn Bus) {
    let t = bus.topology().clone();
    bus.declare_queue(t.agent_queue("a"))
        .await
        .expect("declare");
    let message = Message::new("{not json")
        .with_id("m1")
        .with_header("k", "v");
    publish(bus, &t.task_to_agent("a"), message).await;
    let mut agent = consumer(bus, &t.agent_queue_name("a"), 8).await;
    expect(&mut agent)
        .await
        .reject("malformed: expected an OperationTask")
        .await
        .expect("reject");
    expect_none(&mut agent).await;

    let mut dead = consumer(bus, &t.dead_letter_queue_name(), 8).await;
    let delivery = expect(&mut dead).await;
    assert_eq!(body(&delivery), "{not json");
    assert_eq!(delivery.message.id.as_deref(), Some("m1"));
    let headers = &delivery.message.headers;
    assert_eq!(headers["k"], "v");
    assert_eq!(
        headers[topology::REASON_HEADER],
        "malformed: expected an OperationTask"
    );
    assert_eq!(headers[topology::QUEUE_HEADER], t.agent_queue_name("a"));
    assert_eq!(headers[topology::EXCHANGE_HEADER], t.tasks_exchange());
    assert_eq!(headers[topology::ROUTING_KEY_HEADER], "agent.a");
    delivery.ack().await.expect("ack");
}

pub async fn nack_without_requeue_dead_letters(bus: &dyn Bus) {
    let t = bus.topology().clone();
    publish(bus, &t.ingest(), Message::new("poison").with_id("p")).await;
    let mut ingest = consumer(bus, &t.ingest_queue_name(), 8).await;
    expect(&mut ingest).await.nack(false).await.expect("nack");
    let mut dead = consumer(bus, &t.dead_letter_queue_name(), 8).await;
    let delivery = expect(&mut dead).await;
    assert_eq!(delivery.message.id.as_deref(), Some("p"));
    delivery.ack().await.expect("ack");
    expect_none(&mut ingest).await;
}

pub async fn prefetch_limits_unacknowledged(bus: &dyn Bus) {
    let t = bus.topology().clone();
    for i in 0..5 {
        publish(bus, &t.task_to_central(), Message::new(format!("{i}"))).await;
    }
    let mut central = consumer(bus, &t.central_queue_name(), 2).await;
    let first = expect(&mut central).await;
    let second = expect(&mut central).await;
    expect_none(&mut central).await;
    first.ack().await.expect("ack");
    let third = expect(&mut central).await;
    expect_none(&mut central).await;
    assert_eq!(
        [body(&second), body(&third)],
        ["1", "2"],
        "deliveries keep the queue's order"
    );
    second.ack().await.expect("ack");
    third.ack().await.expect("ack");
    for _ in 3..5 {
        expect(&mut central).await.ack().await.expect("ack");
    }
}

pub async fn dropped_consumer_redelivers(bus: &dyn Bus) {
    let t = bus.topology().clone();
    for i in 0..3 {
        publish(
            bus,
            &t.execution(),
            Message::new(format!("{i}")).with_id(format!("e{i}")),
        )
        .await;
    }
    let mut replica = consumer(bus, &t.executions_queue_name(), 2).await;
    let held: Vec<Delivery> = vec![expect(&mut replica).await, expect(&mut replica).await];
    let held_ids: BTreeSet<_> = held.iter().map(|d| d.message.id.clone()).collect();
    assert!(
        !held.iter().any(Delivery::is_stale),
        "held deliveries are live"
    );
    drop(replica);

    let mut takeover = consumer(bus, &t.executions_queue_name(), 8).await;
    let mut redelivered = BTreeMap::new();
    for _ in 0..3 {
        let delivery = expect(&mut takeover).await;
        redelivered.insert(delivery.message.id.clone(), delivery.redelivered);
        delivery.ack().await.expect("ack");
    }
    for (id, flag) in &redelivered {
        assert_eq!(*flag, held_ids.contains(id), "redelivered flag of {id:?}");
    }
    // The dropped consumer's deliveries are stale (an AmqpBus learns it when the broker
    // answers the channel's close), and settling one is refused, not applied elsewhere.
    for delivery in &held {
        wait_stale(delivery).await;
    }
    for delivery in held {
        assert_eq!(delivery.ack().await, Err(BusError::StaleDelivery));
    }
    expect_none(&mut takeover).await;
}

pub async fn nack_with_requeue_redelivers(bus: &dyn Bus) {
    let t = bus.topology().clone();
    publish(bus, &t.task_to_central(), Message::new("again")).await;
    let mut central = consumer(bus, &t.central_queue_name(), 1).await;
    let delivery = expect(&mut central).await;
    assert!(!delivery.redelivered);
    delivery.nack(true).await.expect("nack");
    let delivery = expect(&mut central).await;
    assert!(delivery.redelivered);
    assert_eq!(body(&delivery), "again");
    delivery.ack().await.expect("ack");
}

pub async fn heartbeats_stick_to_one_shard(bus: &dyn Bus) {
    let t = bus.topology().clone();
    let agents = 100;
    let beats = 3;
    let mut confirms = Vec::new();
    for beat in 0..beats {
        for agent in 0..agents {
            let route = t.heartbeat(&format!("agent-{agent}"));
            let message = Message::new(format!("agent-{agent}/{beat}"));
            confirms.push(bus.publish(&route, message).await.expect("publish"));
        }
    }
    for confirm in confirms {
        confirm.await.expect("confirm");
    }
    let mut monitors = Vec::new();
    for shard in 0..t.monitor_shards() {
        monitors.push((
            shard,
            consumer(bus, &t.monitor_queue_name(shard), 500).await,
        ));
    }
    let mut shard_of: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + EXPECT;
    // Round the shards until everything has come (idle gaps say nothing on a loaded machine).
    while received < agents * beats && tokio::time::Instant::now() < deadline {
        for (shard, monitor) in &mut monitors {
            let poll = Duration::from_millis(20);
            while let Ok(result) = tokio::time::timeout(poll, monitor.next()).await {
                let delivery = result.expect("consume");
                let agent = body(&delivery)
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                shard_of.entry(agent).or_default().insert(*shard);
                received += 1;
                delivery.ack().await.expect("ack");
            }
        }
    }
    for (_, monitor) in &mut monitors {
        expect_none(monitor).await;
    }
    assert_eq!(received, agents * beats);
    assert_eq!(shard_of.len(), agents);
    for (agent, shards) in &shard_of {
        assert_eq!(shards.len(), 1, "{agent} went to shards {shards:?}");
    }
    let used: BTreeSet<_> = shard_of.values().flatten().collect();
    assert!(used.len() >= 3, "100 agents spread over only {used:?}");
}

pub async fn pipelined_batch_is_consumed_whole(bus: &dyn Bus) {
    let t = bus.topology().clone();
    let count = 3000;
    let messages = (0..count)
        .map(|i| {
            (
                t.task_to_central(),
                Message::new(format!("body {i}")).with_id(format!("{i}")),
            )
        })
        .collect();
    bus.publish_batch(messages).await.expect("batch");
    let mut central = consumer(bus, &t.central_queue_name(), 500).await;
    let mut seen = BTreeSet::new();
    while seen.len() < count {
        let delivery = expect(&mut central).await;
        let id = delivery.message.id.clone().expect("id");
        assert_eq!(body(&delivery), format!("body {id}"));
        seen.insert(id);
        delivery.ack().await.expect("ack");
    }
    expect_none(&mut central).await;
}

pub async fn consume_unknown_queue_fails(bus: &dyn Bus) {
    let t = bus.topology().clone();
    let error = bus
        .consume(
            &t.agent_queue_name("never-declared"),
            ConsumeOptions::default(),
        )
        .await
        .expect_err("not declared");
    assert!(matches!(error, BusError::NoSuchQueue(_)), "{error}");
    // The bus still works afterwards.
    publish(bus, &t.task_to_central(), Message::new("fine")).await;
}

pub async fn exclusive_consumer_keeps_others_out(bus: &dyn Bus) {
    let t = bus.topology().clone();
    let shard = t.monitor_queue_name(0);
    let exclusive = ConsumeOptions::default().exclusive();
    let holder = bus.consume(&shard, exclusive).await.expect("first claim");
    for options in [exclusive, ConsumeOptions::default()] {
        let refused = bus.consume(&shard, options).await;
        assert!(
            matches!(refused, Err(BusError::Refused(_))),
            "{options:?}: {refused:?}"
        );
    }
    // Another queue is not affected.
    bus.consume(&t.monitor_queue_name(1), exclusive)
        .await
        .expect("another shard");
    drop(holder);
    // The broker lets the next one in once the holder's channel is closed.
    let deadline = tokio::time::Instant::now() + EXPECT;
    loop {
        match bus.consume(&shard, exclusive).await {
            Ok(_) => break,
            Err(BusError::Refused(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("claim after the holder left: {error}"),
        }
    }
    // An exclusive claim is refused while an ordinary consumer is there.
    let _plain = bus
        .consume(&t.monitor_queue_name(2), ConsumeOptions::default())
        .await
        .expect("plain consumer");
    let refused = bus.consume(&t.monitor_queue_name(2), exclusive).await;
    assert!(matches!(refused, Err(BusError::Refused(_))), "{refused:?}");
}
