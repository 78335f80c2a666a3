//! drover's state store: what must survive a crash of the process that runs workflows, and the
//! index of logs and events.
//!
//! [`StateStore`] is the boundary: blueprints, deployments with their plan (and so their nodes),
//! node instances with their state, runtime properties and a version for optimistic concurrency,
//! executions, an append-only task journal per execution (written in batches: the workflow
//! engine calls [`StateStore::append_journal`] once per batch of task state changes, never once
//! per task), events, and each tenant's [`Secret`]s (written by the gateway's `/secrets`, read
//! by the engine's `get_secret`, so every replica of either sees the same ones). Three implementations pass the same test suite ([`suite::run`]):
//! [`FileStore`], the embedded default on local disk, [`MemoryStore`], and [`OpenSearchStore`].
//!
//! [`EventIndex`] is the searchable record of logs and events: [`FileEventIndex`] (embedded) and
//! [`OpenSearchEventIndex`] pass [`suite::run_events`].
//!
//! The traits are synchronous: the embedded store's writes are short, and callers on an async
//! runtime batch their writes and make them from a blocking thread. The OpenSearch
//! implementations run their requests on a runtime of their own ([`opensearch`]).

pub mod events;
mod events_file;
mod file;
mod memory;
mod open;
pub mod opensearch;
pub mod suite;

use drover_model::{Deployment, Event, Execution, NodeInstance, PlanNode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use events::{EventIndex, EventQuery, EventRecord, FollowPage, Page, SortOrder};
pub use events_file::FileEventIndex;
pub use file::FileStore;
pub use memory::MemoryStore;
pub use open::{open, open_events};
pub use opensearch::{OpenSearchEventIndex, OpenSearchOptions, OpenSearchStore};

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
    /// An optimistic update lost: the record changed (or went) since the caller read it.
    #[error("conflict: {kind} {id} changed since it was read (expected version {expected}, {})", match .actual { Some(v) => format!("the store has version {v}"), None => "it no longer exists".to_owned() })]
    Conflict {
        kind: &'static str,
        id: String,
        expected: u64,
        /// The stored version, when known; `None` when the record is gone.
        actual: Option<u64>,
    },
    #[error("invalid cursor {0:?}: not one this index returned")]
    InvalidCursor(String),
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// OpenSearch failed or answered what drover did not expect.
    #[error("opensearch: {0}")]
    OpenSearch(String),
    /// OpenSearch cannot answer right now (503: shards starting, the node overloaded): the
    /// same request may succeed a moment later.
    #[error("opensearch unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Checks an optimistic update against the stored instance and returns what to write.
fn next_version(stored: Option<&NodeInstance>, update: &NodeInstance) -> Result<NodeInstance> {
    match stored {
        Some(s) if s.version == update.version => Ok(NodeInstance {
            version: update.version + 1,
            ..update.clone()
        }),
        other => Err(StoreError::Conflict {
            kind: "node instance",
            id: update.id.clone(),
            expected: update.version,
            actual: other.map(|s| s.version),
        }),
    }
}

/// A blueprint as uploaded: Cloudify's REST shape, with its plan (a JSON value the store does not
/// look inside).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Blueprint {
    pub id: String,
    pub created_at: String,
    #[serde(default)]
    pub main_file_name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub plan: serde_json::Value,
}

pub use drover_model::DEFAULT_TENANT;

/// A tenant's secret, as Cloudify's `/secrets` keeps it. Its value never appears in `Debug`
/// output, so never in logs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    pub key: String,
    pub value: String,
    pub created_at: String,
    pub updated_at: String,
    pub visibility: String,
    pub is_hidden_value: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("key", &self.key)
            .field("value", &"<hidden>")
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("visibility", &self.visibility)
            .field("is_hidden_value", &self.is_hidden_value)
            .finish()
    }
}

/// Durable state of blueprints, deployments and their executions.
pub trait StateStore: Send + Sync {
    /// Creates or replaces a blueprint.
    fn put_blueprint(&self, blueprint: &Blueprint) -> Result<()>;
    fn blueprint(&self, id: &str) -> Result<Option<Blueprint>>;
    /// Blueprint ids, in creation order.
    fn blueprints(&self) -> Result<Vec<String>>;
    fn delete_blueprint(&self, id: &str) -> Result<()>;

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
    /// One node instance, as last written (real time: no delay after a write).
    fn node_instance(&self, deployment_id: &str, id: &str) -> Result<Option<NodeInstance>>;
    /// Replaces a node instance if nobody changed it since the caller read it: `instance.version`
    /// is the version read, the stored one must still be that, and the written instance gets
    /// that version plus one (returned). Otherwise [`StoreError::Conflict`], and nothing changes.
    fn update_node_instance(
        &self,
        deployment_id: &str,
        instance: &NodeInstance,
    ) -> Result<NodeInstance>;

    /// A deployment's nodes: those of its plan (Cloudify's nodes are the plan's, per deployment).
    fn nodes(&self, deployment_id: &str) -> Result<Vec<PlanNode>> {
        Ok(self
            .deployment(deployment_id)?
            .map(|d| d.plan.nodes)
            .unwrap_or_default())
    }

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
    /// An execution's events, in append order (OpenSearch: in time order, as a task event
    /// may be replaced by the agent's copy of it; see `append_events` there).
    fn events(&self, execution_id: &str) -> Result<Vec<Event>>;

    /// Creates or replaces a tenant's secret (by its key).
    fn put_secret(&self, tenant: &str, secret: &Secret) -> Result<()>;
    /// One secret of a tenant, as last written (real time).
    fn secret(&self, tenant: &str, key: &str) -> Result<Option<Secret>>;
    /// A tenant's secrets, by key.
    fn secrets(&self, tenant: &str) -> Result<Vec<Secret>>;
    /// Deletes a tenant's secret; whether it existed.
    fn delete_secret(&self, tenant: &str, key: &str) -> Result<bool>;
}
