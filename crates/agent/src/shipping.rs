//! Shipping logs and events to the `ingest` queue (durable, persistent messages), where
//! ingest indexes them by their id.
//!
//! A [`Shipper`] never blocks the operation that logs: records go to a bounded queue, and
//! when that is full (the broker is slower than a script's output) records are dropped and
//! counted, and a warning record saying how many went missing follows once there is room
//! again. A task drains the queue in batches: every record of a batch is published before
//! the first confirm is awaited, so a batch costs one round trip, not one per line.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use drover_bus::{Bus, Message};
use drover_model::{Event, EventContext, EventMessage, EventRecord, OperationTask};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::log::{LogLevel, LogRecord, LogSink, LogStream};

/// How much a shipper holds and sends at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipperConfig {
    /// Records waiting to be published, at most.
    pub max_queued: usize,
    /// Bytes of message text waiting to be published, at most.
    pub max_queued_bytes: usize,
    /// Records published before their confirms are awaited.
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
    /// Prefixes record ids: the agent's name and when this shipper started, so ids stay
    /// unique across agents and restarts.
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
            LogLevel::Warning,
            LogStream::Runner,
            format!(
                "{count} log records dropped: the operation wrote faster than the broker took \
                 them"
            ),
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
    /// Starts shipping on `bus` for the agent `agent`, from a task on the current runtime.
    pub fn start(bus: Arc<dyn Bus>, agent: &str, config: ShipperConfig) -> (Shipper, Shipping) {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let shared = Arc::new(Shared {
            source: format!("{agent}-{started:x}"),
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

    /// A runner's log sink that ships every line as a `cloudify_log` record.
    pub fn log_sink(&self) -> LogSink {
        let shipper = self.clone();
        Arc::new(move |log: LogRecord| {
            let context = EventContext {
                deployment_id: log.deployment_id,
                execution_id: log.execution_id,
                task_id: Some(log.task_id),
                operation: Some(log.operation),
                node_id: Some(log.node_instance_id),
                ..EventContext::default()
            };
            let id = shipper.shared.next_id();
            shipper.ship(log_record(
                id,
                context,
                log.level,
                log.stream,
                log.message,
                log.timestamp,
            ));
        })
    }

    /// Ships a task event (`task_started`, `task_succeeded`, `task_failed`). Its id is made of
    /// the task's id, attempt and the event type, so a task answered twice (a redelivery)
    /// yields the same records, indexed once.
    pub fn task_event(&self, task: &OperationTask, event_type: &str, text: String) {
        let context = EventContext {
            deployment_id: task.deployment_id.clone(),
            execution_id: task.execution_id.clone(),
            workflow_id: task.workflow_id.clone(),
            task_id: Some(task.task_id.clone()),
            operation: Some(task.operation.clone()),
            plugin: Some(task.plugin.clone()),
            task_current_retries: Some(task.attempt),
            node_id: Some(task.node.node_instance_id.clone()),
            node_name: Some(task.node.node_id.clone()),
            ..EventContext::default()
        };
        self.ship(EventRecord {
            id: format!("{}/{}/{event_type}", task.task_id, task.attempt),
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
        });
    }
}

fn log_record(
    id: String,
    context: EventContext,
    level: LogLevel,
    stream: LogStream,
    text: String,
    at: SystemTime,
) -> EventRecord {
    EventRecord {
        id,
        level: Some(level.name().to_owned()),
        logger: Some(stream.name().to_owned()),
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
    let route = bus.topology().ingest();
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
        let messages = batch
            .drain(..)
            .map(|record| {
                let body = drover_proto::codec::encode_record(&record);
                (route.clone(), Message::new(body).with_id(record.id))
            })
            .collect();
        if let Err(error) = bus.publish_batch(messages).await {
            tracing::warn!(%error, count, "log and event records lost");
        }
    }
}
