//! What the broker tests share: where RabbitMQ is.
// Each test binary compiles this module and uses only a part of it.
#![allow(dead_code)]

use std::time::Duration;

use drover_bus::{AmqpBus, AmqpOptions, Topology};

/// The broker's URL from `DROVER_AMQP_URL`. These tests are `#[ignore]`d so that a plain
/// `cargo test` does not need a broker; run them with `--ignored` and the variable set
/// (scripts/test does: it starts RabbitMQ with scripts/rabbitmq first). Unset, they fail: a
/// broker test that silently passes without a broker proves nothing.
pub fn broker_url() -> String {
    match std::env::var("DROVER_AMQP_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DROVER_AMQP_URL is not set: these tests need RabbitMQ. Start one with \
             `scripts/rabbitmq start` and set DROVER_AMQP_URL=$(scripts/rabbitmq url)"
        ),
    }
}

pub fn options(topology: Topology) -> AmqpOptions {
    // Short, so that a wrong URL fails the tests soon; the restart test sets a longer one.
    AmqpOptions::new(broker_url(), topology).with_reconnect_budget(Duration::from_secs(15))
}

pub async fn connect(topology: Topology) -> AmqpBus {
    AmqpBus::connect(options(topology))
        .await
        .expect("connecting to the broker at DROVER_AMQP_URL")
}
