//! [`StoreWriter`]: an execution's instance changes, journal entries and events written to the
//! store (the events to the engine's [`EventSink`]) behind the executor, in order.
//!
//! A write to a real store is a round trip or three (OpenSearch: a bulk request per kind, each
//! synced to disk). Made inline, the executor stops for it after every handful of results, and
//! a large install runs at the store's latency instead of the agents' pace. So the executor
//! hands each batch over and goes on; one task writes the batches in the order they came,
//! merging those that queued up meanwhile into one write (bigger bulks, fewer syncs), with each
//! write's instances and events before its journal — an entry is never durable before the
//! runtime properties and the events of the tasks it says are done. [`StoreWriter::flush`]
//! waits until everything handed over is written: the engine calls it wherever durability
//! matters (before it writes the store itself, before the execution's final status). What a crash loses is only
//! the tail not yet written: the resumed execution sends those tasks again under their ids and
//! the agents answer from memory, as for any task in flight. The queue is bounded, so a store
//! slower than the agents slows the executor down instead of filling memory.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use drover_model::{Event, NodeInstance};
use drover_store::{JournalEntry, StateStore};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::event_sink::{EventSink, off_runtime};

/// Batches that may wait for the writer before the executor waits too.
const QUEUED_BATCHES: usize = 16;

/// What one write puts in the store.
#[derive(Default)]
pub(crate) struct Batch {
    pub instances: Vec<NodeInstance>,
    pub journal: Vec<JournalEntry>,
    pub events: Vec<Event>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.journal.is_empty() && self.events.is_empty()
    }

    /// Appends `later`; an instance in both keeps its later copy, in its first place.
    fn merge(&mut self, later: Batch) {
        if !later.instances.is_empty() {
            let mut at: HashMap<String, usize> = self
                .instances
                .iter()
                .enumerate()
                .map(|(k, i)| (i.id.clone(), k))
                .collect();
            for instance in later.instances {
                match at.get(&instance.id) {
                    Some(&k) => self.instances[k] = instance,
                    None => {
                        at.insert(instance.id.clone(), self.instances.len());
                        self.instances.push(instance);
                    }
                }
            }
        }
        self.journal.extend(later.journal);
        self.events.extend(later.events);
    }
}

enum Request {
    Write(Batch),
    /// Answered once every write before it is done (or with the first error).
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Writes one execution's batches to the store, in order, behind the executor.
pub(crate) struct StoreWriter {
    requests: mpsc::Sender<Request>,
    /// The first write that failed: nothing after it is written.
    failed: Arc<OnceLock<String>>,
    task: JoinHandle<()>,
}

impl StoreWriter {
    /// Starts the writer for execution `execution_id` of deployment `deployment_id` on the
    /// current runtime, its events going to `events` (none: they are not kept).
    pub fn start(
        store: Arc<dyn StateStore>,
        events: Option<Arc<dyn EventSink>>,
        deployment_id: String,
        execution_id: String,
    ) -> Self {
        let (requests, received) = mpsc::channel(QUEUED_BATCHES);
        let failed = Arc::new(OnceLock::new());
        let target = Target {
            store,
            events,
            deployment_id,
            execution_id,
            failed: failed.clone(),
        };
        StoreWriter {
            requests,
            failed,
            task: tokio::spawn(target.run(received)),
        }
    }

    /// Hands `batch` over; waits only while the queue is full. An error is a write that
    /// failed before (the execution cannot go on without its journal).
    pub async fn write(&self, batch: Batch) -> Result<(), String> {
        if let Some(e) = self.failed.get() {
            return Err(e.clone());
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.requests
            .send(Request::Write(batch))
            .await
            .map_err(|_| writer_gone())
    }

    /// Waits until everything handed over is in the store.
    pub async fn flush(&self) -> Result<(), String> {
        let (done, written) = oneshot::channel();
        self.requests
            .send(Request::Flush(done))
            .await
            .map_err(|_| writer_gone())?;
        written.await.map_err(|_| writer_gone())?
    }
}

impl Drop for StoreWriter {
    /// An execution that ends without a flush (an error on the way) leaves the rest unwritten,
    /// as a crash would.
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn writer_gone() -> String {
    "the store writer stopped".to_owned()
}

/// Where the writer writes.
struct Target {
    store: Arc<dyn StateStore>,
    events: Option<Arc<dyn EventSink>>,
    deployment_id: String,
    execution_id: String,
    failed: Arc<OnceLock<String>>,
}

impl Target {
    async fn run(self, mut requests: mpsc::Receiver<Request>) {
        let mut next = requests.recv().await;
        while let Some(request) = next.take() {
            match request {
                Request::Flush(done) => {
                    let _ = done.send(self.failed.get().cloned().map_or(Ok(()), Err));
                }
                Request::Write(mut batch) => {
                    // Everything queued behind it up to a flush goes in the same write.
                    while let Ok(request) = requests.try_recv() {
                        match request {
                            Request::Write(later) => batch.merge(later),
                            flush => {
                                next = Some(flush);
                                break;
                            }
                        }
                    }
                    if self.failed.get().is_none()
                        && let Err(e) = self.write(batch).await
                    {
                        let _ = self.failed.set(e);
                    }
                }
            }
            if next.is_none() {
                next = requests.recv().await;
            }
        }
    }

    async fn write(&self, batch: Batch) -> Result<(), String> {
        let started = std::time::Instant::now();
        let (instances, entries, events) = (
            batch.instances.len(),
            batch.journal.len(),
            batch.events.len(),
        );
        self.write_batch(batch).await?;
        tracing::debug!(
            execution = %self.execution_id,
            instances,
            entries,
            events,
            ms = started.elapsed().as_millis() as u64,
            "written"
        );
        Ok(())
    }

    /// Instances and events (at once: they go to different places), then the journal: a
    /// journal entry says its tasks are done, and a resumed execution never redoes (nor
    /// re-announces) what it says is done, so both what the tasks changed and their events
    /// must be kept before it.
    async fn write_batch(&self, batch: Batch) -> Result<(), String> {
        let Batch {
            instances,
            journal,
            events,
        } = batch;
        let deployment_id = self.deployment_id.clone();
        let instances_written = off_runtime(&self.store, move |store| {
            if instances.is_empty() {
                return Ok(());
            }
            store.put_node_instances(&deployment_id, &instances)
        });
        let events_kept = async {
            match &self.events {
                Some(sink) if !events.is_empty() => sink.append(&self.execution_id, events).await,
                _ => Ok(()),
            }
        };
        let (instances_written, events_kept) = tokio::join!(instances_written, events_kept);
        instances_written?;
        events_kept?;
        if !journal.is_empty() {
            let execution_id = self.execution_id.clone();
            off_runtime(&self.store, move |store| {
                store.append_journal(&execution_id, &journal)
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use drover_model::EventContext;
    use drover_store::{FileStore, MemoryStore};
    use serde_json::json;
    use serde_json::value::RawValue;

    use super::*;
    use crate::event_sink::StoreEvents;
    use crate::events::event;

    fn entry(n: u32) -> JournalEntry {
        RawValue::from_string(n.to_string()).unwrap()
    }

    fn instance(id: &str, props: serde_json::Value) -> NodeInstance {
        NodeInstance {
            id: id.into(),
            deployment_id: "d".into(),
            runtime_properties: serde_json::from_value(props).unwrap(),
            ..NodeInstance::default()
        }
    }

    #[tokio::test]
    async fn batches_reach_the_store_in_order_and_flush_waits_for_them() {
        let store = Arc::new(MemoryStore::new());
        let writer = StoreWriter::start(
            store.clone(),
            Some(Arc::new(StoreEvents::new(store.clone()))),
            "d".into(),
            "e".into(),
        );
        for n in 0..50 {
            let batch = Batch {
                instances: vec![
                    instance("a", json!({"n": n})),
                    instance(&format!("b{n}"), json!({})),
                ],
                journal: vec![entry(n)],
                events: vec![event("x", EventContext::default(), format!("{n}"))],
            };
            writer.write(batch).await.unwrap();
        }
        writer.flush().await.unwrap();
        let journal: Vec<String> = store
            .journal("e")
            .unwrap()
            .iter()
            .map(|e| e.get().to_owned())
            .collect();
        assert_eq!(journal, (0..50).map(|n| n.to_string()).collect::<Vec<_>>());
        let texts: Vec<String> = store
            .events("e")
            .unwrap()
            .into_iter()
            .map(|e| e.message.text)
            .collect();
        assert_eq!(texts, (0..50).map(|n| n.to_string()).collect::<Vec<_>>());
        let a = store.node_instance("d", "a").unwrap().unwrap();
        assert_eq!(a.runtime_properties["n"], 49, "the last copy wins");
        assert_eq!(store.node_instances("d").unwrap().len(), 51);
    }

    #[test]
    fn a_merged_instance_keeps_its_later_copy_in_its_first_place() {
        let mut batch = Batch {
            instances: vec![instance("a", json!({"v": 1})), instance("b", json!({}))],
            ..Batch::default()
        };
        batch.merge(Batch {
            instances: vec![instance("c", json!({})), instance("a", json!({"v": 2}))],
            ..Batch::default()
        });
        let ids: Vec<&str> = batch.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(batch.instances[0].runtime_properties["v"], 2);
    }

    /// Records, at each append, how many journal entries the store held then and the first
    /// batch number among the events (a batch's event is its number).
    struct JournalAtAppend {
        store: Arc<MemoryStore>,
        seen: std::sync::Mutex<Vec<(usize, usize)>>,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl EventSink for JournalAtAppend {
        async fn append(&self, execution_id: &str, events: Vec<Event>) -> Result<(), String> {
            let entries = self.store.journal(execution_id).unwrap().len();
            let first = events[0].message.text.parse().unwrap();
            self.seen.lock().unwrap().push((entries, first));
            if self.fail {
                return Err("the broker is gone".into());
            }
            Ok(())
        }
    }

    fn events_and_entry(n: u32) -> Batch {
        Batch {
            journal: vec![entry(n)],
            events: vec![event("x", EventContext::default(), format!("{n}"))],
            ..Batch::default()
        }
    }

    #[tokio::test]
    async fn a_batch_s_events_are_kept_before_its_journal_entries() {
        let store = Arc::new(MemoryStore::new());
        let sink = Arc::new(JournalAtAppend {
            store: store.clone(),
            seen: Default::default(),
            fail: false,
        });
        let writer = StoreWriter::start(store.clone(), Some(sink.clone()), "d".into(), "e".into());
        for n in 0..20 {
            writer.write(events_and_entry(n)).await.unwrap();
            if n % 5 == 4 {
                writer.flush().await.unwrap();
            }
        }
        writer.flush().await.unwrap();
        assert_eq!(store.journal("e").unwrap().len(), 20);
        let seen = sink.seen.lock().unwrap().clone();
        // Merged writes append once for several batches: the events of batches n.. were kept
        // while the journal held entries 0..n at most.
        assert!(!seen.is_empty() && seen.len() <= 20);
        assert!(
            seen.iter().all(|&(entries, first)| entries <= first),
            "{seen:?}"
        );
        assert!(store.events("e").unwrap().is_empty(), "the sink kept them");
    }

    #[tokio::test]
    async fn events_the_sink_cannot_keep_stop_the_journal() {
        let store = Arc::new(MemoryStore::new());
        let sink = Arc::new(JournalAtAppend {
            store: store.clone(),
            seen: Default::default(),
            fail: true,
        });
        let writer = StoreWriter::start(store.clone(), Some(sink), "d".into(), "e".into());
        writer.write(events_and_entry(1)).await.unwrap();
        let error = writer.flush().await.unwrap_err();
        assert_eq!(error, "the broker is gone");
        assert!(store.journal("e").unwrap().is_empty());
        assert_eq!(writer.write(events_and_entry(2)).await.unwrap_err(), error);
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_flush_and_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = Arc::new(FileStore::open(&root).unwrap());
        // A file where the store's directory was: every write fails.
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::write(&root, "").unwrap();
        let events: Option<Arc<dyn EventSink>> = Some(Arc::new(StoreEvents::new(store.clone())));
        let writer = StoreWriter::start(store, events, "d".into(), "e".into());
        let batch = || Batch {
            journal: vec![entry(1)],
            ..Batch::default()
        };
        writer.write(batch()).await.unwrap();
        let error = writer.flush().await.unwrap_err();
        assert!(!error.is_empty());
        assert_eq!(writer.write(batch()).await.unwrap_err(), error);
        assert_eq!(writer.flush().await.unwrap_err(), error);
    }
}
