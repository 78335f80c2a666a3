//! drover's ingest: consumes the `ingest` queue (logs and events) and indexes them in bulk.
//!
//! [`Ingest::run`] takes deliveries in batches bounded by size and by time, decodes each (one
//! record or a batch of them, [`decode`]; a malformed message is dead-lettered on the bus with
//! the reason), and hands the batch
//! to a [`Sink`] (OpenSearch's `_bulk` through [`drover_store::opensearch::Client`]). A record's
//! id is its document id, so a redelivery overwrites itself. Deliveries are acknowledged only
//! once the sink took their documents: documents that failed for a passing reason are sent again
//! alone, with backoff; one the sink refuses for good goes to its dead-letter index with the
//! reason. While the sink is down the batch in hand is retried and nothing more is consumed
//! (the broker holds the rest), so ingest catches up when it is back.
//!
//! Collecting the next batch overlaps with indexing the current one.

pub mod synthetic;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use drover_bus::{Bus, BusError, ConsumeOptions, Delivery, Message};
use drover_store::opensearch::{Client, ItemOutcome, Refresh};
use drover_store::{EventRecord, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where batches of records go.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Indexes a batch; one outcome per record, in order. An error means the whole request
    /// failed (the sink is unreachable) and nothing is known to be indexed.
    async fn index(&self, records: &[EventRecord]) -> Result<Vec<ItemOutcome>, StoreError>;
    /// Keeps what the sink refused for good: `(id, reason, record JSON)`.
    async fn dead_letter(&self, rejected: &[(String, String, String)]) -> Result<(), StoreError>;
}

#[async_trait]
impl Sink for Client {
    async fn index(&self, records: &[EventRecord]) -> Result<Vec<ItemOutcome>, StoreError> {
        // Nobody reads the index back at once: no refresh is waited for.
        self.bulk_events(records, Refresh::False).await
    }

    async fn dead_letter(&self, rejected: &[(String, String, String)]) -> Result<(), StoreError> {
        Client::dead_letter(self, rejected).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the bus: {0}")]
    Bus(#[from] BusError),
}

/// Why a message is not a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Body(#[from] drover_proto::codec::CodecError),
    #[error("event record {0} of the message has an empty id")]
    NoId(usize),
    #[error("a record batch without records")]
    Empty,
}

/// A message body as its records: `drover.bus.v1` protobuf, one record or a batch, as shippers
/// write them. A message is taken or refused whole.
pub fn decode(message: &Message) -> Result<Vec<EventRecord>, DecodeError> {
    let records = drover_proto::codec::decode_records(&message.body)?;
    if records.is_empty() {
        return Err(DecodeError::Empty);
    }
    if let Some(n) = records.iter().position(|r| r.id.is_empty()) {
        return Err(DecodeError::NoId(n));
    }
    Ok(records)
}

/// How batches are made and retried.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// At most this many records a bulk request.
    pub batch_size: usize,
    /// A batch goes out at most this long after its first record arrived.
    pub batch_wait: Duration,
    /// Messages delivered and not yet acknowledged, at most: with shippers' messages of at
    /// most `MAX_RECORDS_PER_MESSAGE` records, what bounds the records ingest holds.
    pub prefetch: u16,
    /// Backoff between retries of a failed request or of failed documents.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            batch_wait: Duration::from_millis(200),
            prefetch: 256,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// What ingest has done so far.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records the sink took (a redelivered record counts again).
    pub indexed: AtomicU64,
    /// Records the sink refused for good, kept in its dead-letter index.
    pub dead_lettered: AtomicU64,
    /// Messages that were no record, dead-lettered on the bus.
    pub malformed: AtomicU64,
    /// Whole requests that failed (the sink unreachable) and were retried.
    pub failed_requests: AtomicU64,
}

/// The ingest service: one bus consumer, one sink.
pub struct Ingest {
    bus: Arc<dyn Bus>,
    sink: Arc<dyn Sink>,
    config: IngestConfig,
    stats: Arc<Stats>,
}

struct Batch {
    deliveries: Vec<Delivery>,
    records: Vec<EventRecord>,
}

impl Ingest {
    pub fn new(bus: Arc<dyn Bus>, sink: Arc<dyn Sink>, config: IngestConfig) -> Self {
        Self {
            bus,
            sink,
            config,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Consumes the ingest queue until `shutdown` resolves (then finishes the batches in hand)
    /// or the bus fails for good.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<(), IngestError> {
        let queue = self.bus.topology().ingest_queue_name();
        let options = ConsumeOptions::default().with_prefetch(self.config.prefetch.max(1));
        let consumer = self.bus.consume(&queue, options).await?;
        let (tx, mut rx) = mpsc::channel::<Batch>(1);
        let collect = collect(
            consumer,
            tx,
            self.config.clone(),
            self.stats.clone(),
            shutdown,
        );
        let index = async {
            while let Some(batch) = rx.recv().await {
                self.index(batch).await;
            }
        };
        let (collected, ()) = tokio::join!(collect, index);
        collected
    }

    /// Indexes a batch until every record is in the sink or its dead-letter index, then
    /// acknowledges its deliveries.
    async fn index(&self, batch: Batch) {
        let Batch {
            deliveries,
            records,
        } = batch;
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut rejected = Vec::new();
        let mut backoff = self.backoff();
        while !pending.is_empty() {
            let attempt: Vec<EventRecord> = pending.iter().map(|&i| records[i].clone()).collect();
            match self.sink.index(&attempt).await {
                Err(error) => {
                    self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next().unwrap_or(self.config.retry_max);
                    tracing::warn!(%error, records = attempt.len(), ?wait, "bulk request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Ok(outcomes) => {
                    let mut retry = Vec::new();
                    let mut indexed = 0;
                    let mut last_reason = None;
                    // An answer with fewer items than the request: the rest are sent again.
                    let outcomes = outcomes
                        .into_iter()
                        .map(Some)
                        .chain(std::iter::repeat(None));
                    for (&i, outcome) in pending.iter().zip(outcomes) {
                        match outcome {
                            Some(ItemOutcome::Indexed) => indexed += 1,
                            Some(ItemOutcome::Rejected(reason)) => rejected.push((i, reason)),
                            Some(ItemOutcome::Retry(reason)) => {
                                last_reason = Some(reason);
                                retry.push(i);
                            }
                            None => retry.push(i),
                        }
                    }
                    self.stats.indexed.fetch_add(indexed, Ordering::Relaxed);
                    pending = retry;
                    if !pending.is_empty() {
                        let wait = backoff.next().unwrap_or(self.config.retry_max);
                        tracing::warn!(documents = pending.len(), reason = ?last_reason, ?wait, "documents failed; retrying them");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        if !rejected.is_empty() {
            self.dead_letter(&records, &rejected).await;
        }
        let acks = deliveries.into_iter().map(Delivery::ack);
        for result in futures_util::future::join_all(acks).await {
            if let Err(error) = result {
                // Not acknowledged: redelivered later, and indexed again under the same id.
                tracing::warn!(%error, "could not acknowledge a delivery");
            }
        }
    }

    async fn dead_letter(&self, records: &[EventRecord], rejected: &[(usize, String)]) {
        let entries: Vec<(String, String, String)> = rejected
            .iter()
            .map(|(i, reason)| {
                let record = &records[*i];
                let json = serde_json::to_string(record).unwrap_or_default();
                (record.id.clone(), reason.clone(), json)
            })
            .collect();
        let mut backoff = self.backoff();
        loop {
            match self.sink.dead_letter(&entries).await {
                Ok(()) => break,
                Err(error) => {
                    let wait = backoff.next().unwrap_or(self.config.retry_max);
                    tracing::warn!(%error, ?wait, "writing to the dead-letter index failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        for (id, reason, _) in &entries {
            tracing::warn!(%id, %reason, "record refused by the index; kept in its dead-letter index");
        }
        self.stats
            .dead_lettered
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.config.retry_min)
            .with_max_delay(self.config.retry_max)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Takes deliveries into batches and sends them to the indexer; a full channel (the indexer
/// busy, or the sink down) stops the taking, so the broker keeps the rest.
async fn collect(
    mut consumer: drover_bus::Consumer,
    tx: mpsc::Sender<Batch>,
    config: IngestConfig,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), IngestError> {
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            () = &mut shutdown => return Ok(()),
            d = consumer.next() => d?,
        };
        let deadline = Instant::now() + config.batch_wait;
        let mut batch = Batch {
            deliveries: Vec::with_capacity(config.batch_size),
            records: Vec::with_capacity(config.batch_size),
        };
        let mut next = Some(first);
        loop {
            if let Some(delivery) = next.take() {
                match decode(&delivery.message) {
                    Ok(records) => {
                        batch.records.extend(records);
                        batch.deliveries.push(delivery);
                    }
                    Err(error) => {
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                        let reason = error.to_string();
                        tracing::warn!(id = ?delivery.message.id, %reason, "dead-lettering a malformed message");
                        if let Err(error) = delivery.reject(&reason).await {
                            tracing::warn!(%error, "could not dead-letter a malformed message");
                        }
                    }
                }
            }
            if batch.records.len() >= config.batch_size {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                d = consumer.next() => next = Some(d?),
            }
        }
        if batch.records.is_empty() {
            continue;
        }
        // Waiting for the indexer (or for OpenSearch to come back) still hears the shutdown;
        // a batch dropped here was not acknowledged, so the broker delivers it again.
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            sent = tx.send(batch) => if sent.is_err() { return Ok(()) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_shippers_send_and_refuses_the_rest() {
        let record = synthetic::record("t", 7);
        assert_eq!(
            decode(&synthetic::message(&record)).unwrap(),
            std::slice::from_ref(&record)
        );
        let batch = [record.clone(), synthetic::record("t", 8)];
        let body = drover_proto::codec::encode_records(&batch);
        assert_eq!(decode(&Message::new(body)).unwrap(), batch);
        assert!(matches!(
            decode(&Message::new("not protobuf")),
            Err(DecodeError::Body(_))
        ));
        let mut no_id = record.clone();
        no_id.id.clear();
        assert!(matches!(
            decode(&synthetic::message(&no_id)),
            Err(DecodeError::NoId(0))
        ));
        let body = drover_proto::codec::encode_records(&[record, no_id]);
        let error = decode(&Message::new(body)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "event record 1 of the message has an empty id"
        );
        let empty = drover_proto::codec::encode_records(&[]);
        assert!(matches!(
            decode(&Message::new(empty)),
            Err(DecodeError::Empty)
        ));
    }
}
