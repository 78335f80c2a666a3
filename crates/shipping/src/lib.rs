//! Shipping event and log records to the `ingest` queue (durable, persistent messages), where
//! ingest indexes them by their id. Agents ship their operations' logs and task events through
//! it; workflow replicas their executions' workflow and task events.
//!
//! A [`Shipper`] never blocks the one that ships: records go to a bounded queue, and when that
//! is full (the broker is slower than the records come) records are dropped and counted, and a
//! warning record saying how many went missing follows once there is room again. A task drains
//! the queue in batches, each batch one message (a `RecordBatch` body), so the broker stores and
//! delivers one message for up to [`MAX_RECORDS_PER_MESSAGE`] records.
//!
//! [`ingest_messages`] is that cut for those who publish records themselves and await the
//! confirms (a workflow replica's events, which must be in the queue before its journal says
//! their tasks are done).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use drover_bus::{Bus, Message, Route};
/// Task events are shipped under the id the engine's own copies get too.
pub use drover_model::task_event_id;
use drover_model::{Event, EventContext, EventMessage, EventRecord};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Records in one ingest message at most. Ingest holds a bounded number of unacknowledged
/// messages, so this bounds the records it holds too.
pub const MAX_RECORDS_PER_MESSAGE: usize = 100;

/// `records` as messages for the `ingest` queue: [`MAX_RECORDS_PER_MESSAGE`] to a message, each
/// message named by its first record's id.
pub fn ingest_messages(bus: &dyn Bus, records: &[EventRecord]) -> Vec<(Route, Message)> {
    let route = bus.topology().ingest();
    records
        .chunks(MAX_RECORDS_PER_MESSAGE)
        .map(|chunk| {
            let body = drover_proto::codec::encode_records(chunk);
            (
                route.clone(),
                Message::new(body).with_id(chunk[0].id.clone()),
            )
        })
        .collect()
}

/// How much a shipper holds and sends at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipperConfig {
    /// Records waiting to be published, at most.
    pub max_queued: usize,
    /// Bytes of message text waiting to be published, at most.
    pub max_queued_bytes: usize,
    /// Records taken from the queue at once, published (in messages of at most
    /// [`MAX_RECORDS_PER_MESSAGE`]) before their confirms are awaited.
    pub max_batch: usize,
}

impl Default for ShipperConfig {
    fn default() -> Self {
        ShipperConfig {
            max_queued: 10_000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_batch: 256,
        }
    }
}

/// What the sending side and the shipping task share.
struct Shared {
    /// Prefixes record ids: the shipper's source name and when it started, so ids stay unique
    /// across sources and restarts.
    source: String,
    next: AtomicU64,
    queued_bytes: AtomicUsize,
    dropped: Mutex<Dropped>,
}

/// Records dropped since the last warning about it.
#[derive(Default)]
struct Dropped {
    count: u64,
    /// The context of the last one, for the warning.
    context: Option<EventContext>,
}

impl Shared {
    fn next_id(&self) -> String {
        format!(
            "{}-{}",
            self.source,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn drop_record(&self, record: EventRecord) {
        let mut dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        dropped.count += 1;
        dropped.context = Some(record.event.context);
    }

    /// The warning about dropped records, if any were.
    fn dropped_warning(&self) -> Option<EventRecord> {
        let Dropped { count, context } =
            std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|p| p.into_inner()));
        let context = context.filter(|_| count > 0)?;
        Some(log_record(
            self.next_id(),
            context,
            "warning",
            "runner",
            format!("{count} log records dropped: they came faster than the broker took them"),
            SystemTime::now(),
        ))
    }
}

/// Sends records to ingest; cheap to clone, every clone feeds the same queue.
#[derive(Clone)]
pub struct Shipper {
    sender: mpsc::Sender<EventRecord>,
    shared: Arc<Shared>,
    max_queued_bytes: usize,
}

/// The task publishing a shipper's records.
pub struct Shipping(JoinHandle<()>);

impl Shipping {
    /// Waits until every clone of the shipper is dropped and what they queued is published.
    pub async fn finished(self) {
        let _ = self.0.await;
    }
}

impl Shipper {
    /// Starts shipping on `bus` for `source` (an agent's or a replica's name), from a task on
    /// the current runtime.
    pub fn start(bus: Arc<dyn Bus>, source: &str, config: ShipperConfig) -> (Shipper, Shipping) {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let shared = Arc::new(Shared {
            source: format!("{source}-{started:x}"),
            next: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            dropped: Mutex::default(),
        });
        let (sender, receiver) = mpsc::channel(config.max_queued.max(1));
        let task = tokio::spawn(ship(bus, receiver, shared.clone(), config.max_batch.max(1)));
        let shipper = Shipper {
            sender,
            shared,
            max_queued_bytes: config.max_queued_bytes,
        };
        (shipper, Shipping(task))
    }

    /// A fresh record id, unique to this shipper's source and start.
    pub fn next_id(&self) -> String {
        self.shared.next_id()
    }

    /// Queues a record, or drops and counts it when the queue is full.
    pub fn ship(&self, record: EventRecord) {
        let size = record.event.message.text.len();
        let queued = self.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if queued + size > self.max_queued_bytes {
            self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return self.shared.drop_record(record);
        }
        if let Err(error) = self.sender.try_send(record) {
            self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.shared.drop_record(error.into_inner());
        }
    }
}

/// A `cloudify_log` record.
pub fn log_record(
    id: String,
    context: EventContext,
    level: &str,
    logger: &str,
    text: String,
    at: SystemTime,
) -> EventRecord {
    EventRecord {
        id,
        level: Some(level.to_owned()),
        logger: Some(logger.to_owned()),
        event: Event {
            event_type: String::new(),
            context,
            message: EventMessage {
                text,
                arguments: Value::Null,
            },
            timestamp: timestamp(at),
            kind: "cloudify_log".to_owned(),
        },
    }
}

/// A `cloudify_event` record of type `event_type`, timestamped now.
pub fn event_record(
    id: String,
    event_type: &str,
    context: EventContext,
    text: String,
) -> EventRecord {
    EventRecord {
        id,
        level: None,
        logger: None,
        event: Event {
            event_type: event_type.to_owned(),
            context,
            message: EventMessage {
                text,
                arguments: Value::Null,
            },
            timestamp: timestamp(SystemTime::now()),
            kind: "cloudify_event".to_owned(),
        },
    }
}

/// RFC 3339, UTC, milliseconds: the timestamp of Cloudify's events.
fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

async fn ship(
    bus: Arc<dyn Bus>,
    mut receiver: mpsc::Receiver<EventRecord>,
    shared: Arc<Shared>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let open = receiver.recv_many(&mut batch, max_batch).await > 0;
        let bytes: usize = batch.iter().map(|r| r.event.message.text.len()).sum();
        shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        batch.extend(shared.dropped_warning());
        if batch.is_empty() && !open {
            return;
        }
        let count = batch.len();
        let messages = ingest_messages(bus.as_ref(), &batch);
        batch.clear();
        if let Err(error) = bus.publish_batch(messages).await {
            tracing::warn!(%error, count, "log and event records lost");
        }
    }
}
