//! Consuming: a channel per consumer, subscribed again after a reconnect.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};
use tracing::warn;

use super::convert::{Outgoing, incoming};
use super::session::{Session, Sessions};
use super::{OPERATION_TIMEOUT, bounded, classify, is_not_found};
use crate::bus::Source;
use crate::error::{BusError, Result};
use crate::message::{Delivery, Message, Settle};

/// The longest pause between two subscriptions that failed.
const SUBSCRIBE_PAUSE_MAX: Duration = Duration::from_secs(3);

pub(crate) struct AmqpSource {
    sessions: Arc<Sessions>,
    queue: String,
    prefetch: u16,
    exclusive: bool,
    subscription: Option<Subscription>,
}

struct Subscription {
    channel: Channel,
    consumer: lapin::Consumer,
    generation: u64,
}

impl AmqpSource {
    /// Subscribes now, so that an undeclared queue fails `consume` itself.
    pub async fn start(
        sessions: Arc<Sessions>,
        queue: &str,
        prefetch: u16,
        exclusive: bool,
    ) -> Result<Self> {
        let mut source = Self {
            sessions,
            queue: queue.into(),
            prefetch: prefetch.max(1),
            exclusive,
            subscription: None,
        };
        source.subscribe().await?;
        Ok(source)
    }

    /// Subscribes, on a fresh connection after each failure, for as long as the reconnect
    /// budget allows: a broker that has just restarted may accept connections and still fail
    /// channels for a while (more so on a loaded machine), which a fixed number of attempts
    /// does not ride out.
    async fn subscribe(&mut self) -> Result<()> {
        let mut attempt = 0;
        let mut failing_since: Option<Instant> = None;
        loop {
            let session = self.sessions.current().await?;
            match subscribe(&session, &self.queue, self.prefetch, self.exclusive).await {
                Ok(subscription) => {
                    self.subscription = Some(subscription);
                    return Ok(());
                }
                Err(error) => {
                    attempt += 1;
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let budget = self.sessions.options.reconnect_budget;
                    if !matches!(error, BusError::Unavailable(_)) || since.elapsed() >= budget {
                        return Err(error);
                    }
                    warn!(%error, "subscribing again");
                    self.sessions.invalidate(session.generation).await;
                    let pause = Duration::from_millis(100) * attempt;
                    tokio::time::sleep(pause.min(SUBSCRIBE_PAUSE_MAX)).await;
                }
            }
        }
    }
}

/// An exclusive subscription that another consumer holds fails with the broker's
/// ACCESS_REFUSED, a soft error: [`BusError::Refused`], not retried.
async fn subscribe(
    session: &Session,
    queue: &str,
    prefetch: u16,
    exclusive: bool,
) -> Result<Subscription> {
    static TAGS: AtomicU64 = AtomicU64::new(0);
    let context = format!("consuming {queue}");
    let channel = bounded(&context, session.connection.create_channel()).await?;
    bounded(
        &context,
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let tag = format!(
        "drover-{}-{}",
        std::process::id(),
        TAGS.fetch_add(1, Ordering::Relaxed)
    );
    let consuming = channel.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions {
            exclusive,
            ..BasicConsumeOptions::default()
        },
        FieldTable::default(),
    );
    let consumer = match tokio::time::timeout(OPERATION_TIMEOUT, consuming).await {
        Ok(Ok(consumer)) => consumer,
        Ok(Err(e)) if is_not_found(&e) => return Err(BusError::NoSuchQueue(queue.into())),
        Ok(Err(e)) => return Err(classify(&context, &e)),
        Err(_) => {
            return Err(BusError::Unavailable(format!(
                "{context}: no answer within {OPERATION_TIMEOUT:?}"
            )));
        }
    };
    Ok(Subscription {
        channel,
        consumer,
        generation: session.generation,
    })
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            let Some(subscription) = self.subscription.as_mut() else {
                self.subscribe().await?;
                continue;
            };
            let lost = match subscription.consumer.next().await {
                Some(Ok(delivery)) => {
                    let settle = AmqpSettle {
                        acker: delivery.acker,
                        sessions: self.sessions.clone(),
                    };
                    return Ok(Delivery::new(
                        incoming(&delivery.properties, delivery.data),
                        self.queue.clone(),
                        delivery.exchange.to_string(),
                        delivery.routing_key.to_string(),
                        delivery.redelivered,
                        Box::new(settle),
                    ));
                }
                Some(Err(e)) => e.to_string(),
                // The broker cancelled the consumer (its queue was deleted) or the channel closed.
                None => "the consumer was cancelled".into(),
            };
            warn!(queue = %self.queue, reason = %lost, "consumer lost; subscribing again");
            if let Some(old) = self.subscription.take() {
                if !old.channel.status().connected() {
                    self.sessions.invalidate(old.generation).await;
                }
                close_channel(old.channel, "resubscribing");
            }
        }
    }
}

impl Drop for AmqpSource {
    fn drop(&mut self) {
        // Closing the channel makes the broker requeue what this consumer had not settled.
        if let Some(subscription) = self.subscription.take() {
            close_channel(subscription.channel, "consumer dropped");
        }
    }
}

fn close_channel(channel: Channel, reason: &'static str) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _already_closed = channel.close(200, reason.into()).await;
        });
    }
}

struct AmqpSettle {
    acker: Acker,
    sessions: Arc<Sessions>,
}

/// lapin answers `false` (or an error) when the delivery's channel is gone; an answer that does
/// not come means the connection is dying, and the broker will redeliver.
async fn settled(operation: impl Future<Output = lapin::Result<bool>>) -> Result<()> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false) | Err(_)) | Err(_) => Err(BusError::StaleDelivery),
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(&self) -> Result<()> {
        settled(self.acker.ack(BasicAckOptions::default())).await
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        settled(self.acker.nack(options)).await
    }

    /// lapin poisons a channel's ackers when the channel closes or its connection is lost.
    fn is_stale(&self) -> bool {
        !self.acker.usable()
    }

    async fn dead_letter(&self, copy: Message) -> Result<()> {
        if !self.acker.usable() {
            return Err(BusError::StaleDelivery);
        }
        let route = self.sessions.options.topology.dead_letter();
        let outgoing = Outgoing::new(&route, &copy);
        let sent = self.sessions.send(&outgoing).await;
        self.sessions.confirm(&outgoing, sent).await?;
        self.ack().await
    }
}
