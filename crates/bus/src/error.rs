//! What can go wrong on the bus, in terms a caller can act on.

/// An error of a bus operation.
///
/// Transient failures (a lost connection, a broker restart) are retried inside the bus and
/// surface only as [`BusError::Unavailable`] once the reconnect budget is spent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The message is larger than the topology's maximum message size.
    #[error("message of {size} bytes exceeds the bus's maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// No queue is bound for the route, so the broker would have dropped the message.
    #[error("no queue is bound for routing key {routing_key:?} on exchange {exchange:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    /// The exchange is not part of the declared topology.
    #[error("exchange {0:?} is not declared")]
    NoSuchExchange(String),
    /// The queue to consume from is not declared.
    #[error("queue {0:?} is not declared")]
    NoSuchQueue(String),
    /// A name, header or id the broker cannot carry (AMQP short strings are at most 255 bytes).
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// The delivery's channel or consumer is gone; the broker redelivers the message to
    /// another consumer, so the caller only drops it.
    #[error("the delivery's consumer is gone; the broker will redeliver the message")]
    StaleDelivery,
    /// The broker could not be reached within the reconnect budget.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused an operation for a reason that retrying will not fix (for example a
    /// queue redeclared with other arguments).
    #[error("the broker refused: {0}")]
    Refused(String),
}

/// The bus's result type.
pub type Result<T, E = BusError> = std::result::Result<T, E>;
