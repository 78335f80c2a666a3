//! One bus hosting a thousand agents' consumers (as `drover-agent --hollow 1000` will): one
//! channel per consumer on one connection, within RabbitMQ's default limit of 2047 channels.

mod common;

use std::time::Instant;

use drover_bus::suite::expect;
use drover_bus::{Bus, ConsumeOptions, Message};

const AGENTS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn a_thousand_consumers_on_one_bus() {
    let bus = common::connect(drover_bus::suite::topology("many_consumers")).await;
    let t = bus.topology().clone();
    let started = Instant::now();
    let mut consumers = Vec::with_capacity(AGENTS);
    for agent in 0..AGENTS {
        let name = format!("hollow-{agent}");
        bus.declare_queue(t.agent_queue(&name))
            .await
            .expect("declare");
        let options = ConsumeOptions::default().with_prefetch(4);
        consumers.push(
            bus.consume(&t.agent_queue_name(&name), options)
                .await
                .expect("consume"),
        );
    }
    let subscribed = started.elapsed();
    let tasks = (0..AGENTS)
        .map(|agent| {
            let name = format!("hollow-{agent}");
            (
                t.task_to_agent(&name),
                Message::new(name.clone()).with_id(name),
            )
        })
        .collect();
    bus.publish_batch(tasks).await.expect("publish");
    for (agent, consumer) in consumers.iter_mut().enumerate() {
        let delivery = expect(consumer).await;
        assert_eq!(delivery.message.id, Some(format!("hollow-{agent}")));
        delivery.ack().await.expect("ack");
    }
    println!(
        "{AGENTS} queues declared and consumed in {subscribed:?}, one task each through in {:?}",
        started.elapsed() - subscribed
    );
    drop(consumers);
    bus.close().await;
}
