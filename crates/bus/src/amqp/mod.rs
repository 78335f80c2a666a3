//! `AmqpBus`: the bus on RabbitMQ, through lapin.
//!
//! One connection per bus carries one publishing channel (publisher confirms on) and one
//! channel per consumer (so prefetch is per consumer). When the connection fails, the next
//! operation that needs it opens a new one with exponential backoff, declares the topology and
//! every queue declared since, and carries on: consumers subscribe again, and a publish whose
//! confirm was lost is sent again. Reconnecting is ours rather than lapin's automatic recovery
//! so that a delivery of a dead channel can never be acknowledged on its successor (it fails
//! with [`BusError::StaleDelivery`] and the broker redelivers it).

mod consume;
mod convert;
mod session;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::ExponentialBuilder;

use crate::bus::{Bus, ConsumeOptions, Consumer};
use crate::error::{BusError, Result};
use crate::message::{Confirm, Message};
use crate::topology::{self, QueueSpec, Route, Topology};

use session::Sessions;

/// Where the broker is and how hard to try to reach it.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// `amqp://user:password@host:port/vhost`.
    pub url: String,
    pub topology: Topology,
    /// Shown in the broker's connection list.
    pub connection_name: String,
    /// Delays between connection attempts (jittered, doubling from `reconnect_min` up to
    /// `reconnect_max`).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long to keep trying to connect before an operation fails with
    /// [`BusError::Unavailable`]; long enough to ride out a broker restart.
    pub reconnect_budget: Duration,
    /// How long a confirm may take before the publish is treated as lost and sent again.
    pub confirm_timeout: Duration,
    /// How many times one message is sent before its confirm gives up.
    pub publish_attempts: usize,
}

impl AmqpOptions {
    pub fn new(url: impl Into<String>, topology: Topology) -> Self {
        Self {
            url: url.into(),
            topology,
            connection_name: "drover".into(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(3),
            reconnect_budget: Duration::from_secs(120),
            confirm_timeout: Duration::from_secs(30),
            publish_attempts: 10,
        }
    }

    #[must_use]
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    #[must_use]
    pub fn with_reconnect_budget(mut self, budget: Duration) -> Self {
        self.reconnect_budget = budget;
        self
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.reconnect_min)
            .with_max_delay(self.reconnect_max)
            .with_jitter()
            .with_max_times(usize::MAX)
            .with_total_delay(Some(self.reconnect_budget))
    }
}

/// The bus on RabbitMQ. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct AmqpBus {
    sessions: Arc<Sessions>,
}

impl AmqpBus {
    /// Connects (retrying within the reconnect budget) and declares the topology.
    pub async fn connect(options: AmqpOptions) -> Result<Self> {
        let sessions = Arc::new(Sessions::new(options));
        sessions.current().await?;
        Ok(Self { sessions })
    }

    /// Closes the connection; consumers and publishes in flight fail.
    pub async fn close(&self) {
        self.sessions.close().await;
    }
}

#[async_trait]
impl Bus for AmqpBus {
    fn topology(&self) -> &Topology {
        &self.sessions.options.topology
    }

    async fn declare_queue(&self, spec: QueueSpec) -> Result<()> {
        topology::check_queue(&spec)?;
        self.sessions.declare_queue(spec).await
    }

    async fn publish(&self, route: &Route, message: Message) -> Result<Confirm> {
        topology::check_publish(self.topology(), route, &message)?;
        let sessions = self.sessions.clone();
        let outgoing = Arc::new(convert::Outgoing::new(route, &message));
        let first = sessions.send(&outgoing).await;
        Ok(Confirm::new(async move {
            sessions.confirm(&outgoing, first).await
        }))
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer> {
        let source = consume::AmqpSource::start(
            self.sessions.clone(),
            queue,
            options.prefetch,
            options.exclusive,
        )
        .await?;
        let max = options
            .max_message_size
            .unwrap_or(self.topology().max_message_size());
        Ok(Consumer::new(Box::new(source), queue.into(), max))
    }
}

/// How long one protocol operation (opening a channel, a declaration, writing a publish, an
/// ack) may take. A connection can die without lapin noticing for a while (a broker stopping
/// mid-operation); past this, the operation is taken for lost and the connection for dead.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs one lapin operation within [`OPERATION_TIMEOUT`].
pub(crate) async fn bounded<T>(
    context: &str,
    operation: impl Future<Output = lapin::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => result.map_err(|e| classify(context, &e)),
        Err(_) => Err(BusError::Unavailable(format!(
            "{context}: no answer within {OPERATION_TIMEOUT:?}"
        ))),
    }
}

/// Sorts lapin's errors into those another connection may cure and those it will not.
pub(crate) fn classify(context: &str, error: &lapin::Error) -> BusError {
    use lapin::ErrorKind;
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                BusError::Refused(format!("{context}: not found: {error}"))
            }
            AMQPErrorKind::Soft(_) => BusError::Refused(format!("{context}: {error}")),
            AMQPErrorKind::Hard(_) => BusError::Unavailable(format!("{context}: {error}")),
        },
        _ => BusError::Unavailable(format!("{context}: {error}")),
    }
}

/// Whether the protocol error is the broker's "not found" (an undeclared queue or exchange).
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}
