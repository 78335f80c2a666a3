//! Every exchange, queue, binding and route of drover, declared in this one place.
//!
//! | exchange | kind | routes to |
//! |---|---|---|
//! | `tasks` | direct | `agent.<name>` (one queue per agent, key `agent.<name>`), `central` (key `central`) |
//! | `results` | direct | `results.<owner>`, the queue of the workflow replica that owns the execution (key `results.<owner>`) |
//! | `heartbeats` | `x-consistent-hash` | `monitor.<n>` shard queues, bound with weight 1; the key is the agent's name, so an agent always lands on the same shard |
//! | `dead-letter` | fanout | `dead-letter` |
//! | (default) | — | `executions` (workflow replicas compete for executions), `ingest` (events and logs) |
//!
//! Every consuming queue names `dead-letter` as its dead-letter exchange. Everything but the
//! heartbeat shards is durable and its messages persistent; heartbeats are worthless a few
//! seconds later, so they are neither. A prefix namespaces every name, so that tests (or two
//! drover installations) can share one broker.

use std::time::Duration;

use crate::error::{BusError, Result};

/// Why a message was dead-lettered (set by [`crate::Delivery::reject`]).
pub const REASON_HEADER: &str = "x-drover-reason";
/// The queue a dead-lettered message was consumed from.
pub const QUEUE_HEADER: &str = "x-drover-queue";
/// The exchange a dead-lettered message was published to.
pub const EXCHANGE_HEADER: &str = "x-drover-exchange";
/// The routing key a dead-lettered message was published with.
pub const ROUTING_KEY_HEADER: &str = "x-drover-routing-key";

/// On a task: the workflow replica that owns its execution, so the agent publishes the result
/// with [`Topology::result_to`] of this owner (results are routed back to whoever sent the task).
pub const OWNER_HEADER: &str = "x-drover-owner";

/// AMQP short strings (names, routing keys, header keys, message ids) hold at most 255 bytes.
pub(crate) const MAX_SHORT_STRING: usize = 255;

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// To the queues bound with exactly the routing key.
    Direct,
    /// To every bound queue.
    Fanout,
    /// To one bound queue chosen by a stable hash of the routing key, in proportion to the
    /// binding's weight (the binding key, a decimal number).
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
}

/// A queue's binding to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub exchange: String,
    /// The routing key, or for a consistent-hash exchange the weight.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// Survives a broker restart (and so do the persistent messages in it).
    pub durable: bool,
    pub dead_letter_exchange: Option<String>,
    /// The broker deletes the queue after it has been unused this long (`x-expires`).
    pub expires: Option<Duration>,
    pub bindings: Vec<Binding>,
}

/// Where a message goes: an exchange and a routing key, and whether it is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The empty string is the default exchange, which routes to the queue named by the key.
    pub exchange: String,
    pub routing_key: String,
    /// Delivery mode 2: written to disk, because the queue it routes to is durable.
    pub persistent: bool,
}

/// Every exchange's base name (before the prefix) and kind, as the `*_exchange` methods spell
/// them; [`Topology::exchanges`] and [`Topology::has_exchange`] read this table.
const EXCHANGES: [(&str, ExchangeKind); 4] = [
    ("tasks", ExchangeKind::Direct),
    ("results", ExchangeKind::Direct),
    ("heartbeats", ExchangeKind::ConsistentHash),
    ("dead-letter", ExchangeKind::Fanout),
];

/// drover's topology, with the settings that shape it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    monitor_shards: u32,
    max_message_size: usize,
    queue_expiry: Option<Duration>,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            monitor_shards: 4,
            max_message_size: 4 * 1024 * 1024,
            queue_expiry: None,
        }
    }
}

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }

    /// Prefixes every exchange and queue name (not routing keys).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many `monitor.<n>` shard queues the heartbeats exchange spreads agents over (at
    /// least 1).
    #[must_use]
    pub fn with_monitor_shards(mut self, shards: u32) -> Self {
        self.monitor_shards = shards.max(1);
        self
    }

    /// The largest message body the bus publishes or hands to a consumer; a larger delivery
    /// is dead-lettered with a reason.
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Lets the broker delete queues unused for this long: for tests sharing a broker.
    #[must_use]
    pub fn with_queue_expiry(mut self, expiry: Duration) -> Self {
        self.queue_expiry = Some(expiry);
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn monitor_shards(&self) -> u32 {
        self.monitor_shards
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    pub fn tasks_exchange(&self) -> String {
        self.name("tasks")
    }

    pub fn results_exchange(&self) -> String {
        self.name("results")
    }

    pub fn heartbeats_exchange(&self) -> String {
        self.name("heartbeats")
    }

    pub fn dead_letter_exchange(&self) -> String {
        self.name("dead-letter")
    }

    pub fn agent_queue_name(&self, agent: &str) -> String {
        self.name(&format!("agent.{agent}"))
    }

    pub fn central_queue_name(&self) -> String {
        self.name("central")
    }

    pub fn results_queue_name(&self, owner: &str) -> String {
        self.name(&format!("results.{owner}"))
    }

    pub fn executions_queue_name(&self) -> String {
        self.name("executions")
    }

    pub fn ingest_queue_name(&self) -> String {
        self.name("ingest")
    }

    pub fn monitor_queue_name(&self, shard: u32) -> String {
        self.name(&format!("monitor.{shard}"))
    }

    pub fn dead_letter_queue_name(&self) -> String {
        self.name("dead-letter")
    }

    /// The exchanges, declared when a bus connects.
    pub fn exchanges(&self) -> Vec<ExchangeSpec> {
        EXCHANGES
            .iter()
            .map(|&(base, kind)| ExchangeSpec {
                name: self.name(base),
                kind,
                durable: true,
            })
            .collect()
    }

    /// Whether `name` is one of [`Topology::exchanges`]; checked on every publish, so it
    /// compares names without building them.
    pub fn has_exchange(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix.as_str())
            .is_some_and(|base| EXCHANGES.iter().any(|&(b, _)| b == base))
    }

    /// The fixed queues, declared when a bus connects. Agent and results queues come and go
    /// with agents and workflow replicas: see [`Topology::agent_queue`] and
    /// [`Topology::results_queue`].
    pub fn queues(&self) -> Vec<QueueSpec> {
        let mut queues = vec![
            self.work_queue(
                self.central_queue_name(),
                Some((self.tasks_exchange(), "central")),
            ),
            self.work_queue(self.executions_queue_name(), None),
            self.work_queue(self.ingest_queue_name(), None),
            QueueSpec {
                name: self.dead_letter_queue_name(),
                durable: true,
                dead_letter_exchange: None,
                expires: self.queue_expiry,
                bindings: vec![Binding {
                    exchange: self.dead_letter_exchange(),
                    key: String::new(),
                }],
            },
        ];
        queues.extend((0..self.monitor_shards).map(|shard| QueueSpec {
            name: self.monitor_queue_name(shard),
            durable: false,
            dead_letter_exchange: Some(self.dead_letter_exchange()),
            expires: self.queue_expiry,
            bindings: vec![Binding {
                exchange: self.heartbeats_exchange(),
                key: "1".into(),
            }],
        }));
        queues
    }

    /// The queue of one agent, bound to the tasks exchange.
    pub fn agent_queue(&self, agent: &str) -> QueueSpec {
        let key = format!("agent.{agent}");
        self.work_queue(
            self.agent_queue_name(agent),
            Some((self.tasks_exchange(), &key)),
        )
    }

    /// The results queue of one workflow replica, bound to the results exchange.
    pub fn results_queue(&self, owner: &str) -> QueueSpec {
        let key = format!("results.{owner}");
        self.work_queue(
            self.results_queue_name(owner),
            Some((self.results_exchange(), &key)),
        )
    }

    fn work_queue(&self, name: String, binding: Option<(String, &str)>) -> QueueSpec {
        QueueSpec {
            name,
            durable: true,
            dead_letter_exchange: Some(self.dead_letter_exchange()),
            expires: self.queue_expiry,
            bindings: binding
                .map(|(exchange, key)| Binding {
                    exchange,
                    key: key.into(),
                })
                .into_iter()
                .collect(),
        }
    }

    /// A task for one agent's queue.
    pub fn task_to_agent(&self, agent: &str) -> Route {
        persistent(self.tasks_exchange(), format!("agent.{agent}"))
    }

    /// A task for the central deployment agent.
    pub fn task_to_central(&self) -> Route {
        persistent(self.tasks_exchange(), "central".into())
    }

    /// A task's result, to the workflow replica that owns the execution.
    pub fn result_to(&self, owner: &str) -> Route {
        persistent(self.results_exchange(), format!("results.{owner}"))
    }

    /// An execution for the workflow replicas.
    pub fn execution(&self) -> Route {
        persistent(String::new(), self.executions_queue_name())
    }

    /// An event or log record for ingest.
    pub fn ingest(&self) -> Route {
        persistent(String::new(), self.ingest_queue_name())
    }

    /// An agent's heartbeat, to the monitor shard its name hashes to.
    pub fn heartbeat(&self, agent: &str) -> Route {
        Route {
            exchange: self.heartbeats_exchange(),
            routing_key: agent.into(),
            persistent: false,
        }
    }

    /// A message that could not be processed.
    pub fn dead_letter(&self) -> Route {
        persistent(self.dead_letter_exchange(), String::new())
    }
}

fn persistent(exchange: String, routing_key: String) -> Route {
    Route {
        exchange,
        routing_key,
        persistent: true,
    }
}

/// Checks a string the broker carries as an AMQP short string.
pub(crate) fn check_short(what: &'static str, value: &str) -> Result<()> {
    if value.len() > MAX_SHORT_STRING {
        return Err(BusError::Invalid {
            what,
            detail: format!(
                "{} bytes, at most {MAX_SHORT_STRING} allowed: {:?}…",
                value.len(),
                value.chars().take(40).collect::<String>()
            ),
        });
    }
    Ok(())
}

/// Checks a queue before it is declared: a name, short enough.
pub(crate) fn check_queue(spec: &QueueSpec) -> Result<()> {
    if spec.name.is_empty() {
        return Err(BusError::Invalid {
            what: "queue name",
            detail: "empty".into(),
        });
    }
    check_short("queue name", &spec.name)?;
    for binding in &spec.bindings {
        check_short("binding key", &binding.key)?;
    }
    Ok(())
}

/// Checks what a publish carries besides its body.
pub(crate) fn check_publish(
    topology: &Topology,
    route: &Route,
    message: &crate::Message,
) -> Result<()> {
    if message.body.len() > topology.max_message_size() {
        return Err(BusError::TooLarge {
            size: message.body.len(),
            max: topology.max_message_size(),
        });
    }
    // Publishing to an exchange the broker does not know closes the publishing channel, and
    // with it the confirms of every other publish in flight: refuse it here.
    if !route.exchange.is_empty() && !topology.has_exchange(&route.exchange) {
        return Err(BusError::NoSuchExchange(route.exchange.clone()));
    }
    check_short("routing key", &route.routing_key)?;
    if let Some(id) = &message.id {
        check_short("message id", id)?;
    }
    for key in message.headers.keys() {
        check_short("header name", key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consuming_queue_dead_letters() {
        let topology = Topology::new().with_prefix("p.");
        let mut queues = topology.queues();
        queues.push(topology.agent_queue("a"));
        queues.push(topology.results_queue("w1"));
        for queue in queues {
            assert!(queue.name.starts_with("p."), "{}", queue.name);
            if queue.name != topology.dead_letter_queue_name() {
                assert_eq!(
                    queue.dead_letter_exchange.as_deref(),
                    Some("p.dead-letter"),
                    "{}",
                    queue.name
                );
            }
        }
    }

    #[test]
    fn routes_match_bindings() {
        let topology = Topology::new();
        let queue = topology.agent_queue("a1");
        let route = topology.task_to_agent("a1");
        assert_eq!(queue.bindings[0].exchange, route.exchange);
        assert_eq!(queue.bindings[0].key, route.routing_key);
        let queue = topology.results_queue("w1");
        let route = topology.result_to("w1");
        assert_eq!(queue.bindings[0].key, route.routing_key);
        assert_eq!(topology.execution().routing_key, "executions");
    }

    #[test]
    fn unknown_exchanges_are_refused_not_sent() {
        let topology = Topology::new().with_prefix("p.");
        let route = Route {
            exchange: "tasks".into(),
            routing_key: "central".into(),
            persistent: true,
        };
        let err = check_publish(&topology, &route, &crate::Message::new("b")).unwrap_err();
        assert_eq!(err, BusError::NoSuchExchange("tasks".into()));
        assert!(
            check_publish(
                &topology,
                &topology.task_to_central(),
                &crate::Message::new("b")
            )
            .is_ok()
        );
    }

    #[test]
    fn long_names_are_refused_not_sent() {
        let topology = Topology::new();
        let route = topology.task_to_agent(&"x".repeat(300));
        let err = check_publish(&topology, &route, &crate::Message::new("b")).unwrap_err();
        assert!(matches!(
            err,
            BusError::Invalid {
                what: "routing key",
                ..
            }
        ));
    }
}
