//! `MemoryBus`: the broker emulated in process, for `drover local` and unit tests. It routes
//! like RabbitMQ (default, direct, fanout and consistent-hash exchanges), honours prefetch,
//! redelivers what a dropped consumer left unacknowledged and dead-letters with a reason, so
//! code tested against it behaves the same on RabbitMQ. Nothing is persisted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::bus::{Bus, ConsumeOptions, Consumer, Source};
use crate::error::{BusError, Result};
use crate::message::{Confirm, Delivery, Message, Settle};
use crate::topology::{self, ExchangeKind, QueueSpec, Route, Topology};

/// An in-process bus. Clones share one broker.
#[derive(Clone)]
pub struct MemoryBus {
    topology: Topology,
    broker: Arc<Mutex<Broker>>,
}

impl MemoryBus {
    /// A broker with `topology` declared on it.
    pub fn new(topology: Topology) -> Self {
        let mut broker = Broker::default();
        for exchange in topology.exchanges() {
            broker.exchanges.insert(
                exchange.name,
                Exchange {
                    kind: exchange.kind,
                    bindings: Vec::new(),
                    ring: Vec::new(),
                },
            );
        }
        for queue in topology.queues() {
            broker.declare(queue);
        }
        Self {
            topology,
            broker: Arc::new(Mutex::new(broker)),
        }
    }

    /// Does to the consumers what a broker restart does, for tests of the layers above: every
    /// delivery not yet settled becomes stale and its message goes back to its queue, flagged
    /// redelivered. The consumers stay subscribed, as an `AmqpBus` consumer subscribes again.
    pub fn lose_connections(&self) {
        let mut broker = self.lock();
        let held: Vec<(String, Vec<Stored>)> = broker
            .consumers
            .values_mut()
            .map(|state| {
                state.freed.notify_waiters();
                let unacked = std::mem::take(&mut state.unacked);
                (state.queue.clone(), unacked.into_values().collect())
            })
            .collect();
        for (queue, messages) in held {
            broker.requeue(&queue, messages.into_iter());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Broker> {
        lock(&self.broker)
    }
}

/// The broker's state stays consistent across a panic elsewhere, so a poisoned lock is used
/// as is.
fn lock(broker: &Mutex<Broker>) -> MutexGuard<'_, Broker> {
    broker.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Bus for MemoryBus {
    fn topology(&self) -> &Topology {
        &self.topology
    }

    async fn declare_queue(&self, spec: QueueSpec) -> Result<()> {
        topology::check_queue(&spec)?;
        let mut broker = self.lock();
        if let Some(binding) = spec
            .bindings
            .iter()
            .find(|b| !broker.exchanges.contains_key(&b.exchange))
        {
            return Err(BusError::NoSuchExchange(binding.exchange.clone()));
        }
        broker.declare(spec);
        Ok(())
    }

    async fn publish(&self, route: &Route, message: Message) -> Result<Confirm> {
        topology::check_publish(&self.topology, route, &message)?;
        let result = self.lock().publish(Stored::new(route, message));
        Ok(Confirm::ready(result))
    }

    /// One lock for the whole batch, and consumers are woken once per queue, not per message.
    async fn publish_each(&self, messages: Vec<(Route, Message)>) -> Result<Vec<Confirm>> {
        for (route, message) in &messages {
            topology::check_publish(&self.topology, route, message)?;
        }
        let mut broker = self.lock();
        let mut woken: Vec<Arc<Notify>> = Vec::new();
        let mut confirms = Vec::with_capacity(messages.len());
        for (route, message) in messages {
            let enqueued = broker.enqueue(Stored::new(&route, message)).map(|arrived| {
                for notify in arrived {
                    if !woken.iter().any(|w| Arc::ptr_eq(w, &notify)) {
                        woken.push(notify);
                    }
                }
            });
            confirms.push(Confirm::ready(enqueued));
        }
        drop(broker);
        for notify in woken {
            notify.notify_waiters();
        }
        Ok(confirms)
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer> {
        let mut broker = self.lock();
        let arrived = match broker.queues.get(queue) {
            Some(q) => q.arrived.clone(),
            None => return Err(BusError::NoSuchQueue(queue.into())),
        };
        let held = broker
            .consumers
            .values()
            .any(|c| c.queue == queue && (c.exclusive || options.exclusive));
        if held {
            return Err(BusError::Refused(format!(
                "queue {queue:?} has an exclusive consumer, or consumers when one was asked for"
            )));
        }
        broker.next_consumer += 1;
        let id = broker.next_consumer;
        let freed = Arc::new(Notify::new());
        broker.consumers.insert(
            id,
            ConsumerState {
                queue: queue.into(),
                prefetch: usize::from(options.prefetch.max(1)),
                exclusive: options.exclusive,
                unacked: BTreeMap::new(),
                next_tag: 0,
                freed: freed.clone(),
            },
        );
        let source = MemorySource {
            broker: self.broker.clone(),
            dead_letter_exchange: self.topology.dead_letter_exchange(),
            id,
            queue: queue.into(),
            arrived,
            freed,
        };
        let max = options
            .max_message_size
            .unwrap_or(self.topology.max_message_size());
        Ok(Consumer::new(Box::new(source), queue.into(), max))
    }
}

#[derive(Default)]
struct Broker {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    consumers: HashMap<u64, ConsumerState>,
    next_consumer: u64,
}

struct Exchange {
    kind: ExchangeKind,
    /// (binding key, queue)
    bindings: Vec<(String, String)>,
    /// For a consistent-hash exchange, its bindings' ring, rebuilt when they change.
    ring: Vec<(u64, String)>,
}

struct Queue {
    ready: VecDeque<Stored>,
    arrived: Arc<Notify>,
    dead_letter_exchange: Option<String>,
}

#[derive(Clone)]
struct Stored {
    message: Message,
    exchange: String,
    routing_key: String,
    redelivered: bool,
}

impl Stored {
    fn new(route: &Route, message: Message) -> Self {
        Stored {
            message,
            exchange: route.exchange.clone(),
            routing_key: route.routing_key.clone(),
            redelivered: false,
        }
    }
}

struct ConsumerState {
    queue: String,
    prefetch: usize,
    exclusive: bool,
    unacked: BTreeMap<u64, Stored>,
    next_tag: u64,
    freed: Arc<Notify>,
}

impl Broker {
    fn declare(&mut self, spec: QueueSpec) {
        self.queues
            .entry(spec.name.clone())
            .or_insert_with(|| Queue {
                ready: VecDeque::new(),
                arrived: Arc::new(Notify::new()),
                dead_letter_exchange: spec.dead_letter_exchange.clone(),
            });
        for binding in spec.bindings {
            if let Some(exchange) = self.exchanges.get_mut(&binding.exchange) {
                let entry = (binding.key, spec.name.clone());
                if !exchange.bindings.contains(&entry) {
                    exchange.bindings.push(entry);
                    if exchange.kind == ExchangeKind::ConsistentHash {
                        exchange.ring = hash_ring(&exchange.bindings);
                    }
                }
            }
        }
    }

    /// The queues a message goes to.
    fn route(&self, exchange: &str, key: &str) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(self
                .queues
                .contains_key(key)
                .then(|| key.to_string())
                .into_iter()
                .collect());
        }
        let exchange_state = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| BusError::NoSuchExchange(exchange.into()))?;
        let bound = exchange_state.bindings.iter();
        Ok(match exchange_state.kind {
            ExchangeKind::Direct => bound
                .filter(|(binding_key, _)| binding_key == key)
                .map(|(_, queue)| queue.clone())
                .collect(),
            ExchangeKind::Fanout => bound.map(|(_, queue)| queue.clone()).collect(),
            ExchangeKind::ConsistentHash => consistent_hash(&exchange_state.ring, key)
                .into_iter()
                .collect(),
        })
    }

    fn publish(&mut self, stored: Stored) -> Result<()> {
        for arrived in self.enqueue(stored)? {
            arrived.notify_waiters();
        }
        Ok(())
    }

    /// Puts a message on every queue its route reaches; returns their consumers' wake-ups for
    /// the caller to notify.
    fn enqueue(&mut self, stored: Stored) -> Result<Vec<Arc<Notify>>> {
        let mut queues = self.route(&stored.exchange, &stored.routing_key)?;
        let Some(last) = queues.pop() else {
            return Err(BusError::Unroutable {
                exchange: stored.exchange,
                routing_key: stored.routing_key,
            });
        };
        let mut arrived = Vec::with_capacity(queues.len() + 1);
        for queue in queues {
            if let Some(q) = self.queues.get_mut(&queue) {
                q.ready.push_back(stored.clone());
                arrived.push(q.arrived.clone());
            }
        }
        // The last queue takes the message itself: most routes reach one queue, no copy.
        if let Some(q) = self.queues.get_mut(&last) {
            q.ready.push_back(stored);
            arrived.push(q.arrived.clone());
        }
        Ok(arrived)
    }

    /// Hands the consumer the next ready message, unless it holds `prefetch` already.
    fn take(&mut self, consumer: u64) -> Result<Option<(u64, Stored)>> {
        let state = self
            .consumers
            .get_mut(&consumer)
            .ok_or(BusError::StaleDelivery)?;
        if state.unacked.len() >= state.prefetch {
            return Ok(None);
        }
        let queue = self
            .queues
            .get_mut(&state.queue)
            .ok_or_else(|| BusError::NoSuchQueue(state.queue.clone()))?;
        let Some(stored) = queue.ready.pop_front() else {
            return Ok(None);
        };
        state.next_tag += 1;
        state.unacked.insert(state.next_tag, stored.clone());
        Ok(Some((state.next_tag, stored)))
    }

    /// Removes an unacknowledged delivery from its consumer.
    fn settle(&mut self, consumer: u64, tag: u64) -> Result<Stored> {
        let state = self
            .consumers
            .get_mut(&consumer)
            .ok_or(BusError::StaleDelivery)?;
        let stored = state.unacked.remove(&tag).ok_or(BusError::StaleDelivery)?;
        state.freed.notify_waiters();
        Ok(stored)
    }

    /// Puts messages back at the head of their queue, flagged redelivered, in their order.
    fn requeue(&mut self, queue: &str, messages: impl DoubleEndedIterator<Item = Stored>) {
        if let Some(q) = self.queues.get_mut(queue) {
            for mut stored in messages.rev() {
                stored.redelivered = true;
                q.ready.push_front(stored);
            }
            q.arrived.notify_waiters();
        }
    }
}

/// A hash ring where each queue owns points in proportion to its weight (the binding key).
fn hash_ring(bindings: &[(String, String)]) -> Vec<(u64, String)> {
    const POINTS_PER_WEIGHT: u64 = 16;
    let mut ring = Vec::new();
    for (weight, queue) in bindings {
        let points = weight.parse::<u64>().unwrap_or(1).clamp(1, 1000) * POINTS_PER_WEIGHT;
        ring.extend((0..points).map(|i| {
            (
                stable_hash(format!("{queue}#{i}").as_bytes()),
                queue.clone(),
            )
        }));
    }
    ring.sort_unstable();
    ring
}

/// The queue owning the first point at or after the key's hash: stable for a given ring.
fn consistent_hash(ring: &[(u64, String)], key: &str) -> Option<String> {
    let hash = stable_hash(key.as_bytes());
    let index = ring.partition_point(|(point, _)| *point < hash);
    ring.get(index)
        .or_else(|| ring.first())
        .map(|(_, queue)| queue.clone())
}

/// FNV-1a, 64 bits, then MurmurHash3's finaliser to spread similar keys apart: stable across
/// runs and platforms, unlike std's randomly keyed hasher.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

struct MemorySource {
    broker: Arc<Mutex<Broker>>,
    dead_letter_exchange: String,
    id: u64,
    queue: String,
    arrived: Arc<Notify>,
    freed: Arc<Notify>,
}

#[async_trait]
impl Source for MemorySource {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            // Registered before looking, so a publish or an ack between the look and the wait
            // still wakes us.
            let arrived = self.arrived.notified();
            let freed = self.freed.notified();
            tokio::pin!(arrived, freed);
            arrived.as_mut().enable();
            freed.as_mut().enable();
            if let Some((tag, stored)) = lock(&self.broker).take(self.id)? {
                let settle = MemorySettle {
                    broker: self.broker.clone(),
                    dead_letter_exchange: self.dead_letter_exchange.clone(),
                    consumer: self.id,
                    queue: self.queue.clone(),
                    tag,
                };
                return Ok(Delivery::new(
                    stored.message,
                    self.queue.clone(),
                    stored.exchange,
                    stored.routing_key,
                    stored.redelivered,
                    Box::new(settle),
                ));
            }
            tokio::select! {
                () = arrived => {}
                () = freed => {}
            }
        }
    }
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        let mut broker = lock(&self.broker);
        if let Some(state) = broker.consumers.remove(&self.id) {
            broker.requeue(&state.queue, state.unacked.into_values());
        }
    }
}

struct MemorySettle {
    broker: Arc<Mutex<Broker>>,
    dead_letter_exchange: String,
    consumer: u64,
    queue: String,
    tag: u64,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(&self) -> Result<()> {
        lock(&self.broker).settle(self.consumer, self.tag).map(drop)
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        let mut broker = lock(&self.broker);
        let stored = broker.settle(self.consumer, self.tag)?;
        if requeue {
            broker.requeue(&self.queue, std::iter::once(stored));
        } else if let Some(exchange) = broker
            .queues
            .get(&self.queue)
            .and_then(|q| q.dead_letter_exchange.clone())
        {
            // As RabbitMQ does: to the queue's dead-letter exchange, with the original key.
            let _unroutable_is_dropped = broker.publish(Stored {
                exchange,
                redelivered: false,
                ..stored
            });
        }
        Ok(())
    }

    async fn dead_letter(&self, copy: Message) -> Result<()> {
        let mut broker = lock(&self.broker);
        let stored = broker.settle(self.consumer, self.tag)?;
        let published = broker.publish(Stored {
            message: copy,
            exchange: self.dead_letter_exchange.clone(),
            routing_key: String::new(),
            redelivered: false,
        });
        if published.is_err() {
            // Keep the original unacknowledged, as on RabbitMQ when the copy is not confirmed.
            if let Some(state) = broker.consumers.get_mut(&self.consumer) {
                state.unacked.insert(self.tag, stored);
            }
        }
        published
    }

    fn is_stale(&self) -> bool {
        lock(&self.broker)
            .consumers
            .get(&self.consumer)
            .is_none_or(|state| !state.unacked.contains_key(&self.tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::bus_suite!(|topology| async move { MemoryBus::new(topology) });

    #[tokio::test]
    async fn lost_connections_make_held_deliveries_stale_and_deliver_them_again() {
        let bus = MemoryBus::new(crate::suite::topology("lose_connections"));
        let t = bus.topology().clone();
        for id in ["a", "b"] {
            bus.publish(&t.execution(), Message::new(id).with_id(id))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let mut replica = bus
            .consume(
                &t.executions_queue_name(),
                ConsumeOptions::default().with_prefetch(1),
            )
            .await
            .unwrap();
        let held = crate::suite::expect(&mut replica).await;
        assert!(!held.is_stale());
        bus.lose_connections();
        assert!(held.is_stale());
        let again = crate::suite::expect(&mut replica).await;
        assert_eq!(again.message.id, held.message.id);
        assert!(again.redelivered && !again.is_stale());
        assert_eq!(held.ack().await, Err(BusError::StaleDelivery));
        again.ack().await.unwrap();
        let next = crate::suite::expect(&mut replica).await;
        assert_eq!(next.message.id.as_deref(), Some("b"));
        assert!(!next.redelivered);
    }

    #[test]
    fn consistent_hash_follows_weights() {
        let bindings = vec![
            ("1".to_string(), "a".to_string()),
            ("3".to_string(), "b".to_string()),
        ];
        let ring = hash_ring(&bindings);
        let to_b = (0..4000)
            .filter(|i| consistent_hash(&ring, &format!("agent-{i}")).as_deref() == Some("b"))
            .count();
        assert!(
            (2400..3600).contains(&to_b),
            "{to_b} of 4000 to the weight-3 queue"
        );
    }
}
