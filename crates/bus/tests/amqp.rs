//! The shared bus suite, run against a real RabbitMQ.

mod common;

drover_bus::bus_suite!(
    common::connect,
    #[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
);
