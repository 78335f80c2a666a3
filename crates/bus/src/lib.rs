//! drover's message bus.
//!
//! Services and agents meet through RabbitMQ (see `DESIGN.md`): tasks go out to agents' queues,
//! results come back to the workflow replica that owns the execution, executions wait on a work
//! queue for a replica, events and logs go to ingest, heartbeats to monitor shards. This crate
//! is that, behind one trait:
//!
//! - [`Bus`]: publish with pipelined publisher confirms, consume with manual acks and a
//!   per-consumer prefetch, dead-letter what cannot be processed with a reason.
//! - [`Topology`]: every exchange, queue and route, declared in one place.
//! - [`AmqpBus`]: RabbitMQ through lapin, reconnecting with backoff after a broker restart.
//! - [`MemoryBus`]: the same behaviour in process, for `drover local` and unit tests.
//!
//! Bodies are opaque bytes with an id and string headers; their encoding is the caller's.
//! Delivery is at least once: consumers deduplicate by message id (the task id for tasks and
//! results). The `test-suite` feature exposes the `suite` module: the behaviour both
//! implementations are tested against.

mod amqp;
mod bus;
mod error;
mod memory;
mod message;
pub mod topology;

#[cfg(any(test, feature = "test-suite"))]
pub mod suite;

pub use amqp::{AmqpBus, AmqpOptions};
pub use bus::{Bus, ConsumeOptions, Consumer};
pub use error::{BusError, Result};
pub use memory::MemoryBus;
pub use message::{Confirm, Delivery, Headers, Message};
pub use topology::{QueueSpec, Route, Topology};
