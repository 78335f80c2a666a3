//! `nova`: the OpenStack Compute API v2.1 driver (Keystone v3 password auth), tested against
//! `drover-cloudsim`; a real OpenStack is a drop-in.
//!
//! Idempotency: every server carries `drover_deployment_id` and `drover_node_instance_id`
//! metadata. A create first lists the deployment's servers and adopts the one carrying the key
//! (a delete, too, looks in the deployment only: node instance ids repeat across deployments);
//! a create whose answer was lost (5xx, timeout) is not repeated blindly: the driver waits until
//! the cloud's list consistency window has passed since the request (the [`Journal`] remembers
//! when, across a crash too), lists again, and only then creates. After the create, the driver
//! polls the server until ACTIVE; one that ends in ERROR or stays in BUILD past the build
//! timeout is deleted and made again, up to `rebuilds` times, and deleted for good when the
//! last one fails too, so a failed instance leaves nothing behind.
//!
//! Lists filter with `metadata.KEY=VALUE` query parameters (honoured by cloudsim, ignored by
//! Nova at the default microversion), and the driver filters what it gets again, so a real
//! Nova gives the same answer, only with larger pages.
//!
//! `min_count` batches are not used: Nova gives every server of such a request the same
//! metadata, so their node instance ids could only be set by a second request per server,
//! which leaves a window in which a server belongs to no instance.

mod api;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

pub use api::{NovaAccount, RequestPolicy};

use crate::driver::{
    CloudDriver, CloudError, DriverFuture, Server, ServerKey, ServerSpec, TAG_DEPLOYMENT,
    TAG_NODE_INSTANCE,
};
use crate::journal::{Journal, JournalError};
use api::Api;

/// Policies of one cloud account beyond request pacing.
#[derive(Debug, Clone)]
pub struct NovaPolicy {
    pub requests: RequestPolicy,
    /// Servers per driver call (the provisioner's batches).
    pub batch_size: usize,
    /// Servers being created (requested, then polled) at once.
    pub concurrent_creations: usize,
    /// How long a server may stay in BUILD.
    pub build_timeout: Duration,
    /// Time between two polls of a building server.
    pub poll_interval: Duration,
    /// Servers made again after one ended in ERROR or BUILD timed out.
    pub rebuilds: usize,
    /// How long after its creation a server may still be missing from lists.
    pub list_consistency: Duration,
    /// `imageRef` and `flavorRef` when the Compute node's properties name none (`image`,
    /// `flavor`, or `image_id`/`flavor_id`, as Cloudify's OpenStack plugin spells them).
    pub default_image: String,
    pub default_flavor: String,
    /// Network uuids to attach (`networks: "auto"` when empty).
    pub networks: Vec<String>,
}

impl Default for NovaPolicy {
    fn default() -> Self {
        NovaPolicy {
            requests: RequestPolicy {
                requests_per_second: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
                burst: NonZeroU32::MIN,
                timeout: Duration::from_secs(30),
                max_attempts: 8,
                min_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(10),
            },
            batch_size: 50,
            concurrent_creations: 50,
            build_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            rebuilds: 2,
            list_consistency: Duration::from_secs(5),
            default_image: String::new(),
            default_flavor: String::new(),
            networks: Vec::new(),
        }
    }
}

/// The `nova` driver.
pub struct NovaDriver {
    api: Api,
    policy: NovaPolicy,
    journal: Arc<Journal>,
    creations: Semaphore,
}

/// A server as a list or show returns it.
#[derive(Debug, Clone)]
struct NovaServer {
    id: String,
    status: String,
    metadata: BTreeMap<String, String>,
    ip: String,
}

impl NovaServer {
    fn parse(value: &Value) -> Option<Self> {
        let metadata = value
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        // The first fixed IPv4 address of any network.
        let ip = value
            .get("addresses")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|nets| nets.values())
            .filter_map(Value::as_array)
            .flatten()
            .find(|a| a.get("version").and_then(Value::as_u64) == Some(4))
            .and_then(|a| a.get("addr")?.as_str())
            .unwrap_or_default()
            .to_owned();
        Some(NovaServer {
            id: value.get("id")?.as_str()?.to_owned(),
            status: value.get("status")?.as_str()?.to_owned(),
            metadata,
            ip,
        })
    }

    fn key(&self) -> Option<&str> {
        self.metadata.get(TAG_NODE_INSTANCE).map(String::as_str)
    }

    fn into_server(self) -> Option<Server> {
        Some(Server {
            key: self.metadata.get(TAG_NODE_INSTANCE)?.clone(),
            deployment_id: self.metadata.get(TAG_DEPLOYMENT)?.clone(),
            id: self.id,
            private_ip: self.ip,
            tags: self.metadata,
        })
    }
}

/// How polling a server ended, when not ACTIVE.
enum Built {
    Active(NovaServer),
    Failed(String),
}

fn journal_error(error: JournalError) -> CloudError {
    CloudError::Permanent(error.to_string())
}

impl NovaDriver {
    pub fn new(
        account: NovaAccount,
        policy: NovaPolicy,
        journal: Arc<Journal>,
    ) -> Result<Self, CloudError> {
        Ok(NovaDriver {
            api: Api::new(account, policy.requests.clone())?,
            creations: Semaphore::new(policy.concurrent_creations.max(1)),
            policy,
            journal,
        })
    }

    /// Waits until lists can be trusted for `keys`: until their last create requests are
    /// older than the consistency window.
    async fn settle<'k>(&self, keys: impl IntoIterator<Item = &'k ServerKey>) {
        let newest = keys
            .into_iter()
            .filter_map(|k| self.journal.get(k).last_intent)
            .max();
        self.settle_since(newest).await;
    }

    /// Waits until the consistency window has passed since `newest` (a create request's time).
    async fn settle_since(&self, newest: Option<SystemTime>) {
        if let Some(newest) = newest {
            let trusted = newest + self.policy.list_consistency;
            if let Ok(wait) = trusted.duration_since(SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Every server whose metadata holds `filter`, all pages, filtered again here.
    async fn list(&self, filter: &[(&str, &str)]) -> Result<Vec<NovaServer>, CloudError> {
        let mut servers = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut query = String::from("/servers/detail?limit=1000");
            for (key, value) in filter {
                query.push_str(&format!("&metadata.{key}={}", encode(value)));
            }
            if let Some(marker) = &marker {
                query.push_str(&format!("&marker={}", encode(marker)));
            }
            let answer = self.api.call(Method::GET, &query, None, true).await?;
            let page: Vec<NovaServer> = answer
                .body
                .get("servers")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(NovaServer::parse).collect())
                .unwrap_or_default();
            let has_next = answer
                .body
                .get("servers_links")
                .and_then(Value::as_array)
                .is_some_and(|links| {
                    links
                        .iter()
                        .any(|l| l.get("rel").and_then(Value::as_str) == Some("next"))
                });
            marker = page.last().map(|s| s.id.clone());
            servers.extend(page.into_iter().filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.metadata.get(*k).map(String::as_str) == Some(*v))
            }));
            if !has_next || marker.is_none() {
                return Ok(servers);
            }
        }
    }

    /// The server's current state; `None` when it is gone.
    async fn show(&self, id: &str) -> Result<Option<NovaServer>, CloudError> {
        let answer = self
            .api
            .call(Method::GET, &format!("/servers/{}", encode(id)), None, true)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(answer.body.get("server").and_then(NovaServer::parse))
    }

    /// Deletes a server (gone already counts as deleted) and journals it.
    async fn delete_id(&self, key: &ServerKey, id: &str) -> Result<(), CloudError> {
        self.api
            .call(
                Method::DELETE,
                &format!("/servers/{}", encode(id)),
                None,
                true,
            )
            .await?;
        self.journal.deleted(key, id).map_err(journal_error)
    }

    /// One create request, journaled before it goes out. `Ok(None)`: the answer was lost, a
    /// server may or may not exist.
    async fn post(&self, spec: &ServerSpec) -> Result<Option<String>, CloudError> {
        let props = &spec.properties;
        let pick = |names: [&str; 2], default: &str| {
            names
                .iter()
                .find_map(|n| props.get(*n).and_then(Value::as_str))
                .unwrap_or(default)
                .to_owned()
        };
        let mut server = json!({
            "name": spec.key,
            "imageRef": pick(["image", "image_id"], &self.policy.default_image),
            "flavorRef": pick(["flavor", "flavor_id"], &self.policy.default_flavor),
            "metadata": {TAG_DEPLOYMENT: spec.deployment_id, TAG_NODE_INSTANCE: spec.key},
            "networks": "auto",
        });
        if !self.policy.networks.is_empty() {
            server["networks"] = self
                .policy
                .networks
                .iter()
                .map(|uuid| json!({ "uuid": uuid }))
                .collect();
        }
        let key = spec.server_key();
        self.journal.intent(&key).map_err(journal_error)?;
        let body = json!({ "server": server });
        match self
            .api
            .call(Method::POST, "/servers", Some(&body), false)
            .await
        {
            Ok(answer) => {
                let id = answer
                    .body
                    .pointer("/server/id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        CloudError::Transient(format!(
                            "create answered {} without a server id",
                            answer.status
                        ))
                    })?;
                self.journal.created(&key, id).map_err(journal_error)?;
                Ok(Some(id.to_owned()))
            }
            Err(CloudError::Transient(error)) => {
                tracing::debug!(key = %spec.key, %error, "create answer lost");
                // The cloud may have acted on the request any time until now (the request
                // waited for its pace first): the consistency window starts here.
                self.journal.intent(&key).map_err(journal_error)?;
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// The id of the key's server: `known` (from the batch's list) if any, else one found
    /// by a fresh list, else a new one. Creates whose answer was lost are resolved by waiting
    /// out the list's consistency window and looking again.
    async fn ensure(
        &self,
        spec: &ServerSpec,
        mut known: Option<NovaServer>,
    ) -> Result<NovaServer, CloudError> {
        let mut lost = 0;
        loop {
            if let Some(server) = known.take() {
                return Ok(server);
            }
            if let Some(id) = self.post(spec).await? {
                let metadata = BTreeMap::from([
                    (TAG_DEPLOYMENT.to_owned(), spec.deployment_id.clone()),
                    (TAG_NODE_INSTANCE.to_owned(), spec.key.clone()),
                ]);
                // Not known to be ACTIVE until shown so: the first poll fetches its state.
                return Ok(NovaServer {
                    id,
                    status: "BUILD".into(),
                    metadata,
                    ip: String::new(),
                });
            }
            lost += 1;
            if lost >= self.policy.requests.max_attempts {
                return Err(CloudError::Transient(format!(
                    "{lost} create requests for {} lost their answers",
                    spec.key
                )));
            }
            known = self.find(spec).await?;
        }
    }

    /// The key's server per a list that can be trusted; extra ones (which only a second
    /// provisioner racing on the same key could make) are deleted.
    async fn find(&self, spec: &ServerSpec) -> Result<Option<NovaServer>, CloudError> {
        let key = spec.server_key();
        self.settle([&key]).await;
        let mut found = self
            .list(&[
                (TAG_DEPLOYMENT, &spec.deployment_id),
                (TAG_NODE_INSTANCE, &spec.key),
            ])
            .await?;
        found.sort_by_key(|s| s.status == "ERROR");
        let mut found = found.into_iter();
        let first = found.next();
        for extra in found {
            tracing::warn!(key = %spec.key, id = %extra.id, "deleting a second server of one key");
            self.delete_id(&key, &extra.id).await?;
        }
        Ok(first)
    }

    /// Polls until ACTIVE, ERROR, gone, or the build timeout.
    async fn await_build(&self, mut server: NovaServer) -> Result<Built, CloudError> {
        let deadline = Instant::now() + self.policy.build_timeout;
        loop {
            match server.status.as_str() {
                "ACTIVE" => return Ok(Built::Active(server)),
                "ERROR" => return Ok(Built::Failed(format!("server {} is in ERROR", server.id))),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Ok(Built::Failed(format!(
                    "server {} still in {} after {:?}",
                    server.id, server.status, self.policy.build_timeout
                )));
            }
            tokio::time::sleep(self.policy.poll_interval).await;
            match self.show(&server.id).await? {
                Some(now) => server = now,
                None => return Ok(Built::Failed(format!("server {} vanished", server.id))),
            }
        }
    }

    /// Creates or adopts the key's server and sees it ACTIVE, rebuilding failed ones.
    async fn create_one(
        &self,
        spec: &ServerSpec,
        known: Option<NovaServer>,
    ) -> Result<Server, CloudError> {
        let _slot = self
            .creations
            .acquire()
            .await
            .map_err(|_| CloudError::Permanent("the driver is shutting down".into()))?;
        let mut known = known;
        let mut failures = Vec::new();
        while failures.len() <= self.policy.rebuilds {
            let server = self.ensure(spec, known.take()).await?;
            match self.await_build(server.clone()).await? {
                Built::Active(active) => {
                    let id = active.id.clone();
                    return active.into_server().ok_or_else(|| {
                        CloudError::Permanent(format!("server {id} lost drover's metadata"))
                    });
                }
                Built::Failed(why) => {
                    tracing::info!(key = %spec.key, %why, "deleting and making it again");
                    self.delete_id(&spec.server_key(), &server.id).await?;
                    failures.push(why);
                }
            }
        }
        Err(CloudError::Permanent(format!(
            "no ACTIVE server for {} after {} tries: {}",
            spec.key,
            failures.len(),
            failures.join("; ")
        )))
    }

    async fn create_batch(
        &self,
        specs: &[ServerSpec],
    ) -> Result<Vec<Result<Server, CloudError>>, CloudError> {
        let keys: Vec<ServerKey> = specs.iter().map(ServerSpec::server_key).collect();
        self.settle(&keys).await;
        let mut existing: HashMap<(String, String), NovaServer> = HashMap::new();
        let deployments: HashSet<&str> = specs.iter().map(|s| s.deployment_id.as_str()).collect();
        for deployment in deployments {
            for server in self.list(&[(TAG_DEPLOYMENT, deployment)]).await? {
                if let Some(key) = server.key() {
                    let slot = existing.entry((deployment.to_owned(), key.to_owned()));
                    // Prefer a server that is not in ERROR.
                    slot.and_modify(|s| {
                        if s.status == "ERROR" {
                            *s = server.clone();
                        }
                    })
                    .or_insert(server);
                }
            }
        }
        let creations = specs.iter().map(|spec| {
            let known = existing.remove(&(spec.deployment_id.clone(), spec.key.clone()));
            self.create_one(spec, known)
        });
        Ok(futures_util::future::join_all(creations).await)
    }

    async fn delete_batch(
        &self,
        keys: &[ServerKey],
    ) -> Result<Vec<Result<(), CloudError>>, CloudError> {
        self.settle(keys).await;
        let wanted: HashSet<&ServerKey> = keys.iter().collect();
        let mut ids: HashMap<ServerKey, HashSet<String>> = HashMap::new();
        let deployments: HashSet<&str> = keys.iter().map(|k| k.deployment_id.as_str()).collect();
        for deployment in deployments {
            for server in self.list(&[(TAG_DEPLOYMENT, deployment)]).await? {
                let Some(key) = server.key().map(|k| ServerKey::new(k, deployment)) else {
                    continue;
                };
                if wanted.contains(&key) {
                    ids.entry(key).or_default().insert(server.id);
                }
            }
        }
        let deletions = keys.iter().map(|key| {
            let mut key_ids = ids.remove(key).unwrap_or_default();
            key_ids.extend(self.journal.get(key).server_ids);
            async move {
                for id in &key_ids {
                    self.delete_id(key, id).await?;
                }
                self.journal.forget(key).map_err(journal_error)
            }
        });
        Ok(futures_util::future::join_all(deletions).await)
    }
}

/// Percent-encodes a query value (ids and keys are mostly URL-safe already).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl CloudDriver for NovaDriver {
    fn max_batch(&self) -> usize {
        self.policy.batch_size.max(1)
    }

    fn create_servers<'a>(
        &'a self,
        specs: &'a [ServerSpec],
    ) -> DriverFuture<'a, Vec<Result<Server, CloudError>>> {
        Box::pin(self.create_batch(specs))
    }

    fn delete_servers<'a>(
        &'a self,
        keys: &'a [ServerKey],
    ) -> DriverFuture<'a, Vec<Result<(), CloudError>>> {
        Box::pin(self.delete_batch(keys))
    }

    fn list_servers<'a>(&'a self, deployment_id: Option<&'a str>) -> DriverFuture<'a, Vec<Server>> {
        Box::pin(async move {
            // A server created a moment ago may be missing from lists: a reconcile that
            // missed it would leave it behind.
            self.settle_since(self.journal.newest_intent(deployment_id))
                .await;
            let filter: Vec<(&str, &str)> = deployment_id
                .map(|d| (TAG_DEPLOYMENT, d))
                .into_iter()
                .collect();
            Ok(self
                .list(&filter)
                .await?
                .into_iter()
                .filter_map(NovaServer::into_server)
                .collect())
        })
    }
}
