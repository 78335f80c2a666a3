//! Set-up shared by the agent's RabbitMQ tests.

use drover_bus::{AmqpBus, AmqpOptions, Bus, ConsumeOptions, Consumer, Topology};

/// The owner name the tests' tasks carry in their owner header.
pub const OWNER: &str = "w1";

/// The broker URL scripts/test exports; a clear panic when it is missing.
pub fn amqp_url() -> String {
    std::env::var("DROVER_AMQP_URL").expect(
        "DROVER_AMQP_URL is not set: start RabbitMQ with `scripts/rabbitmq start` and set \
         DROVER_AMQP_URL=$(scripts/rabbitmq url)",
    )
}

/// A test playing the workflow replica [`OWNER`]: connected to RabbitMQ with its own topology
/// (named after `case`), consuming the results queue its agents answer to.
pub struct Owner {
    pub url: String,
    pub topology: Topology,
    pub bus: AmqpBus,
    pub results: Consumer,
}

pub async fn owner_on_rabbitmq(case: &str) -> Owner {
    let url = amqp_url();
    let topology = drover_bus::suite::topology(case);
    let bus = AmqpBus::connect(AmqpOptions::new(url.clone(), topology.clone()))
        .await
        .expect("connecting to RabbitMQ");
    bus.declare_queue(topology.results_queue(OWNER))
        .await
        .unwrap();
    let results = bus
        .consume(
            &topology.results_queue_name(OWNER),
            ConsumeOptions::default(),
        )
        .await
        .unwrap();
    Owner {
        url,
        topology,
        bus,
        results,
    }
}
