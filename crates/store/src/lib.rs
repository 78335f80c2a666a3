//! drover's state store: what must survive a crash of the process that runs workflows.
//!
//! [`StateStore`] is the boundary: deployments with their plan, node instances with their state
//! and runtime properties, executions, an append-only task journal per execution (written in
//! batches: the workflow engine calls [`StateStore::append_journal`] once per batch of task state
//! changes, never once per task) and events. Two implementations pass the same test suite
//! ([`suite::run`]): [`FileStore`], the embedded default on local disk, and [`MemoryStore`].
//!
//! The trait is synchronous: the embedded store's writes are short, and callers on an async
//! runtime batch their writes and make them from a blocking thread.

mod file;
mod memory;
pub mod suite;

use drover_model::{Deployment, Event, Execution, NodeInstance};
use serde_json::value::RawValue;

pub use file::FileStore;
pub use memory::MemoryStore;

/// One journal entry: a JSON value the workflow engine wrote and reads back; the store does not
/// look inside.
pub type JournalEntry = Box<RawValue>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Corrupt {
        path: String,
        line: usize,
        message: String,
    },
    #[error("invalid id {0:?}: ids are file names, without '/', '\\' or a leading '.'")]
    InvalidId(String),
    #[error("{0}")]
    Serialize(#[from] serde_json::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Durable state of deployments and their executions.
pub trait StateStore: Send + Sync {
    /// Creates or replaces a deployment (its plan changes when it is scaled).
    fn put_deployment(&self, deployment: &Deployment) -> Result<()>;
    fn deployment(&self, id: &str) -> Result<Option<Deployment>>;
    /// Deployment ids, in creation order.
    fn deployments(&self) -> Result<Vec<String>>;
    /// Deletes a deployment with its node instances (not its executions).
    fn delete_deployment(&self, id: &str) -> Result<()>;

    /// Creates or replaces node instances, in one batch.
    fn put_node_instances(&self, deployment_id: &str, instances: &[NodeInstance]) -> Result<()>;
    fn delete_node_instances(&self, deployment_id: &str, ids: &[String]) -> Result<()>;
    /// A deployment's node instances, in the order they were first written.
    fn node_instances(&self, deployment_id: &str) -> Result<Vec<NodeInstance>>;

    /// Creates or replaces an execution.
    fn put_execution(&self, execution: &Execution) -> Result<()>;
    fn execution(&self, id: &str) -> Result<Option<Execution>>;
    /// A deployment's executions, oldest first.
    fn executions(&self, deployment_id: &str) -> Result<Vec<Execution>>;

    /// Appends a batch of entries to an execution's journal; durable when this returns.
    fn append_journal(&self, execution_id: &str, entries: &[JournalEntry]) -> Result<()>;
    /// An execution's journal, in append order.
    fn journal(&self, execution_id: &str) -> Result<Vec<JournalEntry>>;

    /// Appends a batch of events of an execution.
    fn append_events(&self, execution_id: &str, events: &[Event]) -> Result<()>;
    /// An execution's events, in append order.
    fn events(&self, execution_id: &str) -> Result<Vec<Event>>;
}
