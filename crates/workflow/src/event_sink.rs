//! [`EventSink`]: where an execution's events are kept.
//!
//! The store writer hands each batch's events to the sink before it writes the journal entries
//! of that batch, and goes on only once the sink has them for good: a resumed execution never
//! re-announces what its journal says is done, so those events must not be lost with the
//! process. The default sink is the store's event index ([`StoreEvents`]); a workflow replica
//! on OpenSearch puts them on the `ingest` queue instead (`IngestEvents`), so the execution
//! waits for the broker's confirms rather than for the indexing, which ingest does behind it.

use std::sync::Arc;

use async_trait::async_trait;
use drover_model::Event;
use drover_store::StateStore;

/// Keeps an execution's events.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Returns once `events` are durable where this sink keeps them, in order; an error means
    /// they may not be, and the execution cannot go on.
    async fn append(&self, execution_id: &str, events: Vec<Event>) -> Result<(), String>;
}

/// The store's event index.
pub struct StoreEvents(Arc<dyn StateStore>);

impl StoreEvents {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        StoreEvents(store)
    }
}

#[async_trait]
impl EventSink for StoreEvents {
    async fn append(&self, execution_id: &str, events: Vec<Event>) -> Result<(), String> {
        let execution_id = execution_id.to_owned();
        off_runtime(&self.0, move |store| {
            store.append_events(&execution_id, &events)
        })
        .await
    }
}

/// Runs a store write off the runtime's threads (the store's trait is synchronous).
pub(crate) async fn off_runtime(
    store: &Arc<dyn StateStore>,
    call: impl FnOnce(&dyn StateStore) -> drover_store::Result<()> + Send + 'static,
) -> Result<(), String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|e| format!("the store write panicked: {e}"))?
        .map_err(|e| e.to_string())
}
