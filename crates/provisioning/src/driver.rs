//! The `CloudDriver` trait: what drover needs from a cloud, one implementation per cloud
//! (`sim` here; `process` and `nova` come with issue 5).
//!
//! Idempotency is the driver's contract, not the caller's hope: every server carries the node
//! instance id it was made for (its *key*) and the deployment id as tags, and creating a key
//! that already has a server in that deployment adopts that server. Node instance ids repeat
//! across deployments, so creates, deletes and the journal always match both. So a create retried after a lost response, a
//! resumed execution or a duplicated request never makes a second server.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use drover_model::Map;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The tag holding the node instance id a server was made for.
pub const TAG_NODE_INSTANCE: &str = "drover_node_instance_id";
/// The tag holding the deployment a server belongs to.
pub const TAG_DEPLOYMENT: &str = "drover_deployment_id";

/// A server to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// The node instance id: the idempotency key.
    pub key: String,
    pub deployment_id: String,
    /// The Compute node's properties (image, flavor, …), for drivers that use them.
    #[serde(default)]
    pub properties: Map,
}

impl ServerSpec {
    /// A spec with no properties (the driver's defaults).
    pub fn new(key: impl Into<String>, deployment_id: impl Into<String>) -> Self {
        ServerSpec {
            key: key.into(),
            deployment_id: deployment_id.into(),
            properties: Map::new(),
        }
    }

    /// The key of the server this spec makes.
    pub fn server_key(&self) -> ServerKey {
        ServerKey::new(&self.key, &self.deployment_id)
    }
}

/// Which servers a delete frees: those made for node instance `key` of `deployment_id`. A
/// node instance id is unique within its deployment only, so a delete names both and never
/// touches another deployment's server of the same id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServerKey {
    pub deployment_id: String,
    /// The node instance id.
    pub key: String,
}

impl ServerKey {
    pub fn new(key: impl Into<String>, deployment_id: impl Into<String>) -> Self {
        ServerKey {
            deployment_id: deployment_id.into(),
            key: key.into(),
        }
    }

    /// Whether `server` was made for this key.
    pub fn owns(&self, server: &Server) -> bool {
        server.key == self.key && server.deployment_id == self.deployment_id
    }
}

/// A server as the cloud reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// The cloud's id for the server.
    pub id: String,
    /// The node instance id it was made for.
    pub key: String,
    pub deployment_id: String,
    pub private_ip: String,
    pub tags: BTreeMap<String, String>,
}

impl Server {
    /// A server made for `key` of `deployment_id`, tagged with both as every driver tags.
    pub fn tagged(id: String, key: &str, deployment_id: &str, private_ip: String) -> Self {
        Server {
            id,
            key: key.to_owned(),
            deployment_id: deployment_id.to_owned(),
            private_ip,
            tags: BTreeMap::from([
                (TAG_NODE_INSTANCE.to_owned(), key.to_owned()),
                (TAG_DEPLOYMENT.to_owned(), deployment_id.to_owned()),
            ]),
        }
    }

    /// The runtime properties a Compute node instance gets from its server: `ip`, and
    /// `external_id` as Cloudify's cloud plugins name the cloud's id.
    pub fn runtime_properties(&self) -> Map {
        let mut map = Map::new();
        map.insert("ip".into(), Value::String(self.private_ip.clone()));
        map.insert("external_id".into(), Value::String(self.id.clone()));
        map
    }
}

/// Why a cloud call failed, typed by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CloudError {
    /// The cloud is throttling us (HTTP 429): wait, then retry.
    #[error("rate limited by the cloud{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// Worth retrying: 5xx, timeouts, a lost response.
    #[error("transient cloud error: {0}")]
    Transient(String),
    /// Retrying will not help: bad request, quota exhausted, unknown image.
    #[error("{0}")]
    Permanent(String),
}

impl CloudError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, CloudError::Permanent(_))
    }

    /// How long the cloud asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CloudError>> + Send + 'a>>;

/// One cloud. An `Err` of a whole call means the call as such failed (a retry may repeat it:
/// creation adopts what an earlier try made); per-server results say what became of each.
pub trait CloudDriver: Send + Sync {
    /// The most servers one create or delete call may carry (1 for clouds without batches).
    fn max_batch(&self) -> usize;

    /// Creates a server for each spec, or adopts the one that already carries its key.
    /// Results are in the order of `specs`.
    fn create_servers<'a>(
        &'a self,
        specs: &'a [ServerSpec],
    ) -> DriverFuture<'a, Vec<Result<Server, CloudError>>>;

    /// Deletes every server carrying each key (its deployment's and node instance's tags); a
    /// key with no server is already deleted. Results are in the order of `keys`.
    fn delete_servers<'a>(
        &'a self,
        keys: &'a [ServerKey],
    ) -> DriverFuture<'a, Vec<Result<(), CloudError>>>;

    /// The servers drover tagged, of one deployment or of all.
    fn list_servers<'a>(&'a self, deployment_id: Option<&'a str>) -> DriverFuture<'a, Vec<Server>>;
}
