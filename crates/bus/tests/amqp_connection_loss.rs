//! The broker closes the bus's connection while a consumer holds unacknowledged deliveries:
//! the bus reconnects, the held deliveries are stale and come again flagged `redelivered`,
//! settling the old ones is refused (never applied to the new channel), and publishing carries
//! on.
//!
//! In a binary of its own, like the restart test, because it closes connections on the broker.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use drover_bus::suite::expect;
use drover_bus::{AmqpBus, Bus, BusError, ConsumeOptions, Delivery, Message};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/rabbitmq");

/// Closes the broker's connections whose client properties carry `name`.
fn close_connections_named(name: &str) -> usize {
    let output = Command::new(SCRIPT)
        .args(["ctl", "-s", "list_connections", "pid", "client_properties"])
        .output()
        .expect("running scripts/rabbitmq ctl");
    assert!(
        output.status.success(),
        "list_connections failed: {output:?}"
    );
    let listing = String::from_utf8_lossy(&output.stdout);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split('\t').next())
        .collect();
    for pid in &pids {
        let status = Command::new(SCRIPT)
            .args([
                "ctl",
                "-q",
                "close_connection",
                pid,
                "drover test: connection loss",
            ])
            .status()
            .expect("running scripts/rabbitmq ctl");
        assert!(status.success(), "close_connection {pid} failed");
    }
    pids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn lost_connection_redelivers_and_refuses_stale_acks() {
    let topology = drover_bus::suite::topology("connection_loss");
    let name = format!("drover-test-{}", topology.prefix());
    let bus = AmqpBus::connect(common::options(topology).with_connection_name(name.clone()))
        .await
        .expect("connect");
    let t = bus.topology().clone();
    let messages = (0..4)
        .map(|i| {
            (
                t.task_to_central(),
                Message::new("task").with_id(i.to_string()),
            )
        })
        .collect();
    bus.publish_batch(messages).await.expect("publish");

    let mut consumer = bus
        .consume(
            &t.central_queue_name(),
            ConsumeOptions::default().with_prefetch(2),
        )
        .await
        .expect("consume");
    let held = [expect(&mut consumer).await, expect(&mut consumer).await];
    assert!(
        !held.iter().any(Delivery::is_stale),
        "held deliveries are live"
    );
    assert_eq!(
        close_connections_named(&name),
        1,
        "the bus's one connection"
    );

    let mut redelivered = BTreeMap::new();
    for _ in 0..4 {
        let delivery = expect(&mut consumer).await;
        redelivered.insert(
            delivery.message.id.clone().expect("id"),
            delivery.redelivered,
        );
        delivery.ack().await.expect("ack on the new connection");
    }
    let expected: BTreeMap<String, bool> = [("0", true), ("1", true), ("2", false), ("3", false)]
        .into_iter()
        .map(|(id, flag)| (id.to_string(), flag))
        .collect();
    assert_eq!(redelivered, expected);
    assert!(
        held.iter().all(Delivery::is_stale),
        "deliveries of the lost connection are stale"
    );
    for delivery in held {
        assert_eq!(delivery.ack().await, Err(BusError::StaleDelivery));
    }

    bus.publish(&t.task_to_central(), Message::new("after").with_id("4"))
        .await
        .expect("publish")
        .await
        .expect("confirmed on the new connection");
    assert_eq!(expect(&mut consumer).await.message.id.as_deref(), Some("4"));
    bus.close().await;
}
