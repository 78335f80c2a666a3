//! Messages as the bus carries them: opaque bytes plus an id and string headers. The body's
//! encoding (JSON today, versioned protobuf later) is the caller's business.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::topology::{EXCHANGE_HEADER, QUEUE_HEADER, REASON_HEADER, ROUTING_KEY_HEADER};

/// Message headers: string keys and values.
pub type Headers = BTreeMap<String, String>;

/// A message body with its id and headers.
///
/// Delivery is at least once: after a broker restart, a publish whose confirm was lost is sent
/// again, and a delivery that was not acknowledged is delivered again. Consumers deduplicate by
/// [`Message::id`] (for tasks and results, the task id).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The message's id (AMQP `message_id`), what consumers deduplicate by.
    pub id: Option<String>,
    pub headers: Headers,
    pub body: Bytes,
}

impl Message {
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            id: None,
            headers: Headers::new(),
            body: body.into(),
        }
    }

    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The broker's answer to one publish, as a future: resolves once the broker has taken
/// responsibility for the message (written it to disk for a persistent message on a durable
/// queue). Holding many of these at once is how publishing is pipelined; a publish whose
/// confirm is lost to a connection failure is sent again before this resolves.
#[must_use = "a message is confirmed only once its Confirm resolves"]
pub struct Confirm(Pin<Box<dyn Future<Output = Result<()>> + Send>>);

impl Confirm {
    pub(crate) fn new(future: impl Future<Output = Result<()>> + Send + 'static) -> Self {
        Self(Box::pin(future))
    }

    pub(crate) fn ready(result: Result<()>) -> Self {
        Self::new(std::future::ready(result))
    }
}

impl Future for Confirm {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Confirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Confirm")
    }
}

/// How an implementation settles one delivery.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    async fn ack(&self) -> Result<()>;
    async fn nack(&self, requeue: bool) -> Result<()>;
    /// Publishes `copy` to the dead-letter exchange (confirmed), then acknowledges the original.
    async fn dead_letter(&self, copy: Message) -> Result<()>;
    /// The delivery can no longer be settled (see [`Delivery::is_stale`]).
    fn is_stale(&self) -> bool;
}

/// A message handed to a consumer; settle it with exactly one of [`Delivery::ack`],
/// [`Delivery::nack`] or [`Delivery::reject`]. Dropping it unsettled leaves it unacknowledged
/// until its consumer is dropped, when the broker redelivers it.
pub struct Delivery {
    pub message: Message,
    /// The queue it was consumed from.
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
    /// Delivered before to a consumer that did not acknowledge it.
    pub redelivered: bool,
    settle: Box<dyn Settle>,
}

impl Delivery {
    pub(crate) fn new(
        message: Message,
        queue: String,
        exchange: String,
        routing_key: String,
        redelivered: bool,
        settle: Box<dyn Settle>,
    ) -> Self {
        Self {
            message,
            queue,
            exchange,
            routing_key,
            redelivered,
            settle,
        }
    }

    /// True once this delivery can no longer be settled: it was settled, or the channel it
    /// came on closed (a lost connection, a broker restart, its consumer dropped), and the
    /// broker gives the message to a consumer again. Whoever holds a delivery as a lease (a
    /// workflow replica its execution's ticket) has lost the lease then.
    pub fn is_stale(&self) -> bool {
        self.settle.is_stale()
    }

    /// Done with it: the broker forgets the message.
    pub async fn ack(self) -> Result<()> {
        self.settle.ack().await
    }

    /// Give it back: with `requeue` the broker delivers it again (flagged redelivered);
    /// without, the broker dead-letters it as it is (no reason header).
    pub async fn nack(self, requeue: bool) -> Result<()> {
        self.settle.nack(requeue).await
    }

    /// This message cannot be processed (malformed, too large, unknown version): a copy goes to
    /// the dead-letter queue with `reason` in the `x-drover-reason` header and where it came
    /// from in `x-drover-queue`, `x-drover-exchange` and `x-drover-routing-key`; the original is
    /// acknowledged. (RabbitMQ's own dead-lettering cannot add headers, hence the copy.)
    pub async fn reject(self, reason: &str) -> Result<()> {
        let mut copy = self.message.clone();
        copy.headers.insert(REASON_HEADER.into(), reason.into());
        copy.headers.insert(QUEUE_HEADER.into(), self.queue.clone());
        copy.headers
            .insert(EXCHANGE_HEADER.into(), self.exchange.clone());
        copy.headers
            .insert(ROUTING_KEY_HEADER.into(), self.routing_key.clone());
        self.settle.dead_letter(copy).await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}
