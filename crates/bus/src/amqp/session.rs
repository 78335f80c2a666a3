//! The connection to the broker, opened again whenever it fails.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use backon::Retryable;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use tracing::{info, warn};

use super::convert::Outgoing;
use super::{AmqpOptions, bounded, classify};
use crate::error::{BusError, Result};
use crate::topology::{ExchangeKind, QueueSpec};

/// How long one attempt to connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// One connection and its publishing channel. `generation` tells connections apart, so that
/// a failure seen on an old one does not tear down its successor.
pub(crate) struct Session {
    pub connection: Connection,
    pub generation: u64,
    publisher: Channel,
    /// Publishes on one channel are queued one at a time: lapin numbers a confirm when the
    /// publish starts and the broker when the frames arrive, and these must agree.
    publish_lock: Mutex<()>,
    /// The channel queues are declared on after the start, opened on first use and again after
    /// a refused declaration (which closes it).
    declarer: tokio::sync::Mutex<Option<Channel>>,
}

impl Session {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// Declares on a channel of its own: a refused declaration closes the channel it was made
    /// on, and that must not be the publishing one.
    async fn declare(&self, spec: &QueueSpec) -> Result<()> {
        let mut declarer = self.declarer.lock().await;
        let channel = match declarer.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel =
                    bounded("opening a channel", self.connection.create_channel()).await?;
                *declarer = Some(channel.clone());
                channel
            }
        };
        declare_queue(&channel, spec).await
    }
}

/// A publish handed to the broker, with the generation it went out on.
pub(crate) type Sent = std::result::Result<(u64, PublisherConfirm), SendError>;

/// Why a send did not happen.
pub(crate) enum SendError {
    /// The connection failed under it: worth sending again on the next one.
    Lost(BusError),
    /// No connection within the reconnect budget, or the bus is closed.
    Final(BusError),
}

/// The bus's connection, its options, and the queues declared on it since it started.
pub(crate) struct Sessions {
    pub options: AmqpOptions,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// By name: the queues declared since the start, declared again on every new connection.
    declared: Mutex<BTreeMap<String, QueueSpec>>,
    closed: AtomicBool,
}

impl Sessions {
    pub fn new(options: AmqpOptions) -> Self {
        Self {
            options,
            current: tokio::sync::Mutex::new(None),
            declared: Mutex::new(BTreeMap::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// The live session, connecting (with backoff, within the budget) when there is none.
    pub async fn current(&self) -> Result<Arc<Session>> {
        let mut slot = self.current.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Unavailable("the bus was closed".into()));
        }
        if let Some(session) = slot.as_ref().filter(|s| s.usable()) {
            return Ok(session.clone());
        }
        let generation = slot.as_ref().map_or(1, |s| s.generation + 1);
        if let Some(old) = slot.take() {
            close_connection(old, "reconnecting");
        }
        let session = (|| self.open(generation))
            .retry(self.options.backoff())
            .when(|error| matches!(error, BusError::Unavailable(_)))
            .notify(|error, delay| warn!(%error, ?delay, "broker unreachable; retrying"))
            .await?;
        info!(generation, "connected to the broker");
        let session = Arc::new(session);
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Drops the session of `generation` after a failure on it, so the next user reconnects.
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.current.lock().await;
        if slot.as_ref().is_some_and(|s| s.generation == generation)
            && let Some(old) = slot.take()
        {
            close_connection(old, "failed");
        }
    }

    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(old) = self.current.lock().await.take() {
            let _already_closed =
                bounded("closing", old.connection.close(200, "closed".into())).await;
        }
    }

    async fn open(&self, generation: u64) -> Result<Session> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.options.connection_name.as_str().into());
        // A broker still booting may accept the connection and answer nothing: give up on this
        // attempt then (declaring the topology is not bounded: it fails when the connection does).
        let connecting = Connection::connect(&self.options.url, properties);
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(connected) => connected
                .map_err(|e| BusError::Unavailable(format!("connecting to the broker: {e}")))?,
            Err(_) => {
                return Err(BusError::Unavailable(format!(
                    "no answer from the broker within {CONNECT_TIMEOUT:?}"
                )));
            }
        };
        match self.prepare(&connection).await {
            Ok(publisher) => Ok(Session {
                connection,
                generation,
                publisher,
                publish_lock: Mutex::new(()),
                declarer: tokio::sync::Mutex::new(None),
            }),
            Err(error) => {
                let _already_failed =
                    bounded("closing", connection.close(200, "setup failed".into())).await;
                Err(error)
            }
        }
    }

    /// Declares the topology and every queue declared so far; returns the publishing channel.
    async fn prepare(&self, connection: &Connection) -> Result<Channel> {
        let channel = bounded("opening a channel", connection.create_channel()).await?;
        let topology = &self.options.topology;
        for exchange in topology.exchanges() {
            let kind = match exchange.kind {
                ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
                ExchangeKind::ConsistentHash => {
                    lapin::ExchangeKind::Custom("x-consistent-hash".into())
                }
            };
            let options = ExchangeDeclareOptions {
                durable: exchange.durable,
                ..ExchangeDeclareOptions::default()
            };
            let context = format!("declaring exchange {}", exchange.name);
            let declaring = channel.exchange_declare(
                exchange.name.as_str().into(),
                kind,
                options,
                FieldTable::default(),
            );
            bounded(&context, declaring).await?;
        }
        let declared: Vec<QueueSpec> = self
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for queue in topology.queues().iter().chain(&declared) {
            declare_queue(&channel, queue).await?;
        }
        let confirms = channel.confirm_select(ConfirmSelectOptions::default());
        bounded("enabling publisher confirms", confirms).await?;
        Ok(channel)
    }

    /// Declares a queue now and after every reconnect.
    pub async fn declare_queue(&self, spec: QueueSpec) -> Result<()> {
        // Remembered first, so that a session opened meanwhile declares it too.
        let previous = self.remember(spec.clone());
        let mut attempts = 0;
        loop {
            let session = self.current().await?;
            match session.declare(&spec).await {
                Ok(()) => return Ok(()),
                Err(BusError::Unavailable(reason)) if attempts < 5 => {
                    warn!(%reason, queue = %spec.name, "declaring again after a connection failure");
                    attempts += 1;
                    self.invalidate(session.generation).await;
                }
                Err(error) => {
                    self.forget(&spec.name, previous);
                    return Err(error);
                }
            }
        }
    }

    fn remember(&self, spec: QueueSpec) -> Option<QueueSpec> {
        let mut declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
        declared.insert(spec.name.clone(), spec)
    }

    fn forget(&self, name: &str, previous: Option<QueueSpec>) {
        let mut declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
        match previous {
            Some(spec) => declared.insert(name.into(), spec),
            None => declared.remove(name),
        };
    }

    /// Hands a message to the broker (without waiting for its confirm).
    pub async fn send(&self, outgoing: &Outgoing) -> Sent {
        let session = self.current().await.map_err(SendError::Final)?;
        let publishing = session.publisher.basic_publish(
            outgoing.exchange.clone(),
            outgoing.routing_key.clone(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &outgoing.body,
            outgoing.properties.clone(),
        );
        let mut publishing = pin!(publishing);
        // lapin numbers the confirm and queues the frames in the first poll, without yielding
        // in between; only that poll is serialised. The rest waits for the frames to be
        // written, which publishes on other tasks need not wait for.
        let first_poll = poll_fn(|cx| {
            let _serial = session
                .publish_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Poll::Ready(publishing.as_mut().poll(cx))
        })
        .await;
        let sent = match first_poll {
            Poll::Ready(sent) => sent.map_err(|e| classify("publishing", &e)),
            Poll::Pending => bounded("publishing", publishing).await,
        };
        match sent {
            Ok(confirm) => Ok((session.generation, confirm)),
            Err(error) => {
                self.invalidate(session.generation).await;
                Err(SendError::Lost(error))
            }
        }
    }

    /// Awaits the confirm of a send, sending again while the connection fails under it.
    pub async fn confirm(&self, outgoing: &Outgoing, first: Sent) -> Result<()> {
        let mut sent = first;
        let mut attempt = 1;
        loop {
            let lost = match sent {
                Err(SendError::Final(error)) => return Err(error),
                Err(SendError::Lost(error)) => error,
                Ok((generation, confirm)) => {
                    match tokio::time::timeout(self.options.confirm_timeout, confirm).await {
                        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                            return Ok(());
                        }
                        Ok(Ok(Confirmation::Ack(Some(_returned)))) => {
                            return Err(BusError::Unroutable {
                                exchange: outgoing.exchange.to_string(),
                                routing_key: outgoing.routing_key.to_string(),
                            });
                        }
                        Ok(Ok(Confirmation::Nack(_))) => {
                            BusError::Unavailable("the broker refused the message (nack)".into())
                        }
                        Ok(Err(e)) => {
                            self.invalidate(generation).await;
                            classify("awaiting a confirm", &e)
                        }
                        Err(_elapsed) => BusError::Unavailable(format!(
                            "no confirm within {:?}",
                            self.options.confirm_timeout
                        )),
                    }
                }
            };
            if !matches!(lost, BusError::Unavailable(_)) || attempt >= self.options.publish_attempts
            {
                return Err(lost);
            }
            warn!(error = %lost, attempt, routing_key = %outgoing.routing_key, "publishing again");
            tokio::time::sleep(self.retry_delay(attempt)).await;
            attempt += 1;
            sent = self.send(outgoing).await;
        }
    }

    fn retry_delay(&self, attempt: usize) -> Duration {
        let factor = 1u32 << attempt.min(10);
        (self.options.reconnect_min * factor).min(self.options.reconnect_max)
    }
}

async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> Result<()> {
    let mut arguments = FieldTable::default();
    if let Some(exchange) = &spec.dead_letter_exchange {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(exchange.as_str())),
        );
    }
    if let Some(expires) = spec.expires {
        let millis = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(millis));
    }
    let options = QueueDeclareOptions {
        durable: spec.durable,
        ..QueueDeclareOptions::default()
    };
    let context = format!("declaring queue {}", spec.name);
    let declaring = channel.queue_declare(spec.name.as_str().into(), options, arguments);
    bounded(&context, declaring).await?;
    for binding in &spec.bindings {
        let context = format!("binding queue {} to {}", spec.name, binding.exchange);
        let binding = channel.queue_bind(
            spec.name.as_str().into(),
            binding.exchange.as_str().into(),
            binding.key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        bounded(&context, binding).await?;
    }
    Ok(())
}

/// Closes a connection in the background: it may be dead already, and nobody waits for it.
fn close_connection(session: Arc<Session>, reason: &'static str) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _already_closed =
                bounded("closing", session.connection.close(200, reason.into())).await;
        });
    }
}
