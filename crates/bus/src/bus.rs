//! The `Bus` trait: what the rest of drover sees of the message broker.

use async_trait::async_trait;
use futures_util::future::try_join_all;

use crate::error::Result;
use crate::message::{Confirm, Delivery, Message};
use crate::topology::{QueueSpec, Route, Topology};

/// How a consumer takes deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// How many deliveries the consumer may hold unacknowledged; the broker sends no more
    /// until one is settled. At least 1.
    pub prefetch: u16,
    /// A smaller maximum body size for this consumer than the topology's; a larger delivery is
    /// dead-lettered, never handed over.
    pub max_message_size: Option<usize>,
    /// The only consumer of the queue: `consume` fails with [`crate::BusError::Refused`] while
    /// another consumer holds it, and no other consumer is let in until this one is dropped
    /// (monitor replicas claim heartbeat shards this way).
    pub exclusive: bool,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            prefetch: 32,
            max_message_size: None,
            exclusive: false,
        }
    }
}

impl ConsumeOptions {
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    #[must_use]
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }
}

/// A message broker with drover's topology declared on it.
///
/// Guarantees, for both implementations: a publish resolves its [`Confirm`] once the broker
/// holds the message; delivery is at least once (consumers deduplicate by message id); a
/// consumer holds at most `prefetch` unacknowledged deliveries; the unacknowledged deliveries
/// of a dropped consumer are delivered again, flagged `redelivered`.
#[async_trait]
pub trait Bus: Send + Sync {
    /// The topology this bus declared.
    fn topology(&self) -> &Topology;

    /// Declares a queue that is not part of the fixed topology (an agent's, a replica's
    /// results queue) and its bindings; idempotent. It is declared again after a reconnect.
    async fn declare_queue(&self, spec: QueueSpec) -> Result<()>;

    /// Sends a message and returns at once with the broker's confirm to await: publish many,
    /// then await their confirms, never one round trip per message. Fails at once when the
    /// message is too large or a name is invalid; the confirm fails when no queue is bound
    /// for the route ([`crate::BusError::Unroutable`]) or the broker stays unreachable. While
    /// the bus is reconnecting, `publish` waits (up to the reconnect budget): that is the
    /// back-pressure of a broker restart.
    async fn publish(&self, route: &Route, message: Message) -> Result<Confirm>;

    /// Starts consuming a declared queue.
    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer>;

    /// Publishes every message and returns their confirms, in order, to await (or not) as the
    /// caller likes. An implementation may send them together (one lock, one wake-up per
    /// queue).
    async fn publish_each(&self, messages: Vec<(Route, Message)>) -> Result<Vec<Confirm>> {
        let mut confirms = Vec::with_capacity(messages.len());
        for (route, message) in messages {
            confirms.push(self.publish(&route, message).await?);
        }
        Ok(confirms)
    }

    /// Publishes every message, then awaits all their confirms.
    async fn publish_batch(&self, messages: Vec<(Route, Message)>) -> Result<()> {
        try_join_all(self.publish_each(messages).await?).await?;
        Ok(())
    }
}

/// Where an implementation's deliveries come from.
#[async_trait]
pub(crate) trait Source: Send {
    async fn next(&mut self) -> Result<Delivery>;
}

/// A stream of deliveries from one queue. Dropping it hands its unacknowledged deliveries
/// back to the broker.
pub struct Consumer {
    source: Box<dyn Source>,
    queue: String,
    max_message_size: usize,
}

impl Consumer {
    pub(crate) fn new(source: Box<dyn Source>, queue: String, max_message_size: usize) -> Self {
        Self {
            source,
            queue,
            max_message_size,
        }
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The next delivery. Waits through reconnects; fails only when the queue is gone or the
    /// broker stays unreachable. A body over the size limit is dead-lettered here and never
    /// returned.
    pub async fn next(&mut self) -> Result<Delivery> {
        loop {
            let delivery = self.source.next().await?;
            let size = delivery.message.body.len();
            if size <= self.max_message_size {
                return Ok(delivery);
            }
            let reason = format!(
                "too large: {size} bytes, the consumer's maximum is {}",
                self.max_message_size
            );
            tracing::warn!(queue = %self.queue, %reason, "dead-lettering a delivery");
            if let Err(error) = delivery.reject(&reason).await {
                // Not settled: it comes back after a reconnect and is dead-lettered then.
                tracing::warn!(queue = %self.queue, %error, "could not dead-letter a delivery");
            }
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}
