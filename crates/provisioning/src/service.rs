//! The gRPC face of a [`Provisioner`] (`drover.provisioning.v1.Provisioning`), and
//! [`RemoteCloud`], a [`CloudDriver`] that calls it, so the engine and `drover local` provision
//! through the service with the same code they use for an in-process cloud.
//!
//! State: the service keeps none of its own beyond the driver's creation [`Journal`]
//! (`crate::journal`); which server belongs to which node instance is read from the cloud's
//! metadata every time. After a `kill -9`, a client asks again and gets the servers already
//! made.
//!
//! [`Journal`]: crate::journal::Journal

use std::collections::{HashMap, HashSet};
use std::pin::Pin;

use drover_proto::drover::provisioning::v1 as pb;
use pb::provisioning_client::ProvisioningClient;
use pb::provisioning_server::Provisioning;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::driver::{CloudDriver, CloudError, DriverFuture, Server, ServerKey, ServerSpec};
use crate::metrics::{Metrics, Operation};
use crate::provisioner::{ProvisionError, Provisioner};

pub use pb::provisioning_server::ProvisioningServer;

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::ProvisionProgress, Status>> + Send>>;

/// Serves a provisioner over gRPC.
pub struct ProvisioningService {
    provisioner: Provisioner,
    /// Instances per progress message: a long batch reports as each chunk finishes.
    chunk: usize,
    metrics: Metrics,
}

impl ProvisioningService {
    /// `chunk`: instances per progress message (the provisioner's batch size fits).
    pub fn new(provisioner: Provisioner, chunk: usize) -> Self {
        ProvisioningService {
            provisioner,
            chunk: chunk.max(1),
            metrics: Metrics::default(),
        }
    }

    /// Counts requests and instances in `metrics` (for `/metrics`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn into_server(self) -> ProvisioningServer<Self> {
        ProvisioningServer::new(self)
    }

    /// Runs `items` in chunks at once (the provisioner paces them together) and streams each
    /// chunk's results as it finishes.
    fn stream<I, F, Fut>(&self, operation: Operation, items: Vec<I>, run: F) -> ProgressStream
    where
        I: Send + 'static,
        F: Fn(Provisioner, Vec<I>) -> Fut,
        Fut: Future<Output = Vec<pb::InstanceResult>> + Send + 'static,
    {
        self.metrics.request(operation);
        let metrics = self.metrics.clone();
        let total = items.len() as u32;
        let (tx, rx) = mpsc::channel(16);
        let mut chunks = JoinSet::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<I> = items.by_ref().take(self.chunk).collect();
            chunks.spawn(run(self.provisioner.clone(), chunk));
        }
        tokio::spawn(async move {
            let mut done = 0;
            while let Some(joined) = chunks.join_next().await {
                let results = match joined {
                    Ok(results) => results,
                    Err(error) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("a batch failed: {error}"))))
                            .await;
                        return;
                    }
                };
                for result in &results {
                    metrics.instance(operation, result.failure.is_none());
                }
                done += results.len() as u32;
                let progress = pb::ProvisionProgress {
                    results,
                    done,
                    total,
                };
                if tx.send(Ok(progress)).await.is_err() {
                    // The client went away; the provisioner finishes what it started.
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

fn server_to_pb(server: Server) -> pb::Server {
    pb::Server {
        id: server.id,
        node_instance_id: server.key,
        deployment_id: server.deployment_id,
        private_ip: server.private_ip,
        tags: server.tags.into_iter().collect(),
    }
}

fn server_from_pb(server: pb::Server) -> Server {
    Server {
        id: server.id,
        key: server.node_instance_id,
        deployment_id: server.deployment_id,
        private_ip: server.private_ip,
        tags: server.tags.into_iter().collect(),
    }
}

fn failure(error: &ProvisionError) -> pb::Failure {
    pb::Failure {
        error: error.error.to_string(),
        retryable: error.error.is_retryable(),
        attempts: error.attempts as u32,
    }
}

fn cloud_status(error: CloudError) -> Status {
    match error {
        CloudError::Permanent(m) => Status::failed_precondition(m),
        other => Status::unavailable(other.to_string()),
    }
}

#[tonic::async_trait]
impl Provisioning for ProvisioningService {
    type ProvisionStream = ProgressStream;
    type DeprovisionStream = ProgressStream;

    async fn provision(
        &self,
        request: Request<pb::ProvisionRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let mut specs = Vec::new();
        for instance in request.into_inner().instances {
            let properties = if instance.properties_json.trim().is_empty() {
                Default::default()
            } else {
                serde_json::from_str(&instance.properties_json).map_err(|e| {
                    Status::invalid_argument(format!(
                        "properties_json of {}: {e}",
                        instance.node_instance_id
                    ))
                })?
            };
            if instance.node_instance_id.is_empty() || instance.deployment_id.is_empty() {
                return Err(Status::invalid_argument(
                    "every instance needs a node_instance_id and a deployment_id",
                ));
            }
            specs.push(ServerSpec {
                key: instance.node_instance_id,
                deployment_id: instance.deployment_id,
                properties,
            });
        }
        let stream = self.stream(
            Operation::Provision,
            specs,
            |provisioner, chunk| async move {
                let keys: Vec<String> = chunk.iter().map(|s| s.key.clone()).collect();
                let results = provisioner.provision(chunk).await;
                keys.into_iter()
                    .zip(results)
                    .map(|(key, result)| match result {
                        Ok(server) => pb::InstanceResult {
                            node_instance_id: key,
                            server: Some(server_to_pb(server)),
                            failure: None,
                        },
                        Err(error) => pb::InstanceResult {
                            node_instance_id: key,
                            server: None,
                            failure: Some(failure(&error)),
                        },
                    })
                    .collect()
            },
        );
        Ok(Response::new(stream))
    }

    async fn deprovision(
        &self,
        request: Request<pb::DeprovisionRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let request = request.into_inner();
        if request.deployment_id.is_empty() && !request.node_instance_ids.is_empty() {
            return Err(Status::invalid_argument(
                "a deprovision needs the deployment_id of its node instances",
            ));
        }
        let deployment = request.deployment_id;
        let keys: Vec<ServerKey> = request
            .node_instance_ids
            .into_iter()
            .map(|id| ServerKey::new(id, &deployment))
            .collect();
        let stream = self.stream(
            Operation::Deprovision,
            keys,
            |provisioner, chunk| async move {
                let results = provisioner.deprovision(chunk.clone()).await;
                chunk
                    .into_iter()
                    .zip(results)
                    .map(|(key, result)| pb::InstanceResult {
                        node_instance_id: key.key,
                        server: None,
                        failure: result.err().map(|e| failure(&e)),
                    })
                    .collect()
            },
        );
        Ok(Response::new(stream))
    }

    async fn get_server(
        &self,
        request: Request<pb::GetServerRequest>,
    ) -> Result<Response<pb::Server>, Status> {
        let request = request.into_inner();
        let deployment = Some(request.deployment_id.as_str()).filter(|d| !d.is_empty());
        self.provisioner
            .servers(deployment)
            .await
            .map_err(cloud_status)?
            .into_iter()
            .find(|s| s.key == request.node_instance_id)
            .map(|s| Response::new(server_to_pb(s)))
            .ok_or_else(|| Status::not_found(format!("no server for {}", request.node_instance_id)))
    }

    async fn list_servers(
        &self,
        request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let request = request.into_inner();
        let deployment = Some(request.deployment_id.as_str()).filter(|d| !d.is_empty());
        let servers = self
            .provisioner
            .servers(deployment)
            .await
            .map_err(cloud_status)?;
        Ok(Response::new(pb::ListServersResponse {
            servers: servers.into_iter().map(server_to_pb).collect(),
        }))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let request = request.into_inner();
        let deployment = Some(request.deployment_id.as_str()).filter(|d| !d.is_empty());
        let live: HashSet<String> = request.live_node_instance_ids.into_iter().collect();
        let reconciled = self
            .provisioner
            .reconcile(deployment, &live, request.dry_run)
            .await
            .map_err(cloud_status)?;
        Ok(Response::new(pb::ReconcileResponse {
            orphans: reconciled.orphans.into_iter().map(server_to_pb).collect(),
            failed: reconciled
                .failed
                .into_iter()
                .map(|(key, error)| pb::InstanceResult {
                    node_instance_id: key.key,
                    server: None,
                    failure: Some(failure(&error)),
                })
                .collect(),
        }))
    }
}

/// The provisioning service as a cloud: what the workflow engine (or `drover local`) puts
/// behind its provisioner to provision through `drover-provisioner`. Batches go out whole;
/// the service does the pacing, retries and idempotency.
pub struct RemoteCloud {
    client: ProvisioningClient<Channel>,
    max_batch: usize,
}

impl RemoteCloud {
    /// Connects lazily to `endpoint` (`http://host:port`); `max_batch`: instances per call.
    pub fn connect_lazy(endpoint: &str, max_batch: usize) -> Result<Self, CloudError> {
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|e| CloudError::Permanent(format!("bad endpoint {endpoint}: {e}")))?
            .connect_lazy();
        Ok(RemoteCloud {
            client: ProvisioningClient::new(channel),
            max_batch: max_batch.max(1),
        })
    }
}

fn status_error(status: Status) -> CloudError {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            CloudError::Permanent(status.message().to_owned())
        }
        _ => CloudError::Transient(format!("provisioning service: {status}")),
    }
}

fn failure_error(failure: pb::Failure) -> CloudError {
    if failure.retryable {
        CloudError::Transient(failure.error)
    } else {
        CloudError::Permanent(failure.error)
    }
}

impl RemoteCloud {
    /// Collects a progress stream into one result per key, in the order of `keys`; a key the
    /// stream never answered is a transient error (the service went away).
    async fn collect(
        &self,
        keys: Vec<String>,
        stream: Result<Response<tonic::Streaming<pb::ProvisionProgress>>, Status>,
    ) -> Result<Vec<Result<Option<Server>, CloudError>>, CloudError> {
        let mut stream = stream.map_err(status_error)?.into_inner();
        let mut answers: HashMap<String, Result<Option<Server>, CloudError>> = HashMap::new();
        loop {
            match stream.message().await {
                Ok(Some(progress)) => {
                    for result in progress.results {
                        let answer = match (result.failure, result.server) {
                            (Some(failure), _) => Err(failure_error(failure)),
                            (None, server) => Ok(server.map(server_from_pb)),
                        };
                        answers.insert(result.node_instance_id, answer);
                    }
                }
                Ok(None) => break,
                // Answers already in stay; the rest are retried by the caller.
                Err(status) => {
                    tracing::warn!(%status, "provisioning stream broke off");
                    break;
                }
            }
        }
        Ok(keys
            .into_iter()
            .map(|key| {
                answers.remove(&key).unwrap_or_else(|| {
                    Err(CloudError::Transient(format!(
                        "the provisioning service did not answer for {key}"
                    )))
                })
            })
            .collect())
    }
}

/// Calls `call` with the indexes of each deployment's items (`deployments`: the deployment of
/// each item, in order), all at once, and puts every answer back at its item's index.
async fn per_deployment<'a, T, F, Fut>(
    deployments: impl Iterator<Item = &'a str>,
    call: F,
) -> Result<Vec<Result<T, CloudError>>, CloudError>
where
    F: Fn(Vec<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<Result<T, CloudError>>, CloudError>>,
{
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut items = 0;
    for (i, deployment) in deployments.enumerate() {
        groups.entry(deployment).or_default().push(i);
        items = i + 1;
    }
    let calls = groups.into_values().map(|group| {
        let answers = call(group.clone());
        async move { answers.await.map(|answers| (group, answers)) }
    });
    let mut results: Vec<Option<Result<T, CloudError>>> = (0..items).map(|_| None).collect();
    for answered in futures_util::future::join_all(calls).await {
        let (group, answers) = answered?;
        for (i, answer) in group.into_iter().zip(answers) {
            results[i] = Some(answer);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(CloudError::Transient("no answer for it".into()))))
        .collect())
}

impl CloudDriver for RemoteCloud {
    fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// One `Provision` call per deployment of `specs`, at once (answers name node instances
    /// only, which repeat across deployments).
    fn create_servers<'a>(
        &'a self,
        specs: &'a [ServerSpec],
    ) -> DriverFuture<'a, Vec<Result<Server, CloudError>>> {
        let deployments = specs.iter().map(|s| s.deployment_id.as_str());
        Box::pin(per_deployment(deployments, move |group| {
            let instances = group
                .iter()
                .map(|&i| pb::NodeInstance {
                    node_instance_id: specs[i].key.clone(),
                    deployment_id: specs[i].deployment_id.clone(),
                    properties_json: serde_json::Value::Object(specs[i].properties.clone())
                        .to_string(),
                })
                .collect();
            let keys = group.iter().map(|&i| specs[i].key.clone()).collect();
            let mut client = self.client.clone();
            async move {
                let stream = client.provision(pb::ProvisionRequest { instances }).await;
                Ok(self
                    .collect(keys, stream)
                    .await?
                    .into_iter()
                    .map(|r| {
                        r.and_then(|s| {
                            s.ok_or_else(|| CloudError::Transient("no server in the answer".into()))
                        })
                    })
                    .collect())
            }
        }))
    }

    /// One `Deprovision` call per deployment of `keys`, at once.
    fn delete_servers<'a>(
        &'a self,
        keys: &'a [ServerKey],
    ) -> DriverFuture<'a, Vec<Result<(), CloudError>>> {
        let deployments = keys.iter().map(|k| k.deployment_id.as_str());
        Box::pin(per_deployment(deployments, move |group| {
            let ids: Vec<String> = group.iter().map(|&i| keys[i].key.clone()).collect();
            let request = pb::DeprovisionRequest {
                node_instance_ids: ids.clone(),
                deployment_id: keys[group[0]].deployment_id.clone(),
            };
            let mut client = self.client.clone();
            async move {
                let stream = client.deprovision(request).await;
                Ok(self
                    .collect(ids, stream)
                    .await?
                    .into_iter()
                    .map(|r| r.map(drop))
                    .collect())
            }
        }))
    }

    fn list_servers<'a>(&'a self, deployment_id: Option<&'a str>) -> DriverFuture<'a, Vec<Server>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let response = client
                .list_servers(pb::ListServersRequest {
                    deployment_id: deployment_id.unwrap_or_default().to_owned(),
                })
                .await
                .map_err(status_error)?;
            Ok(response
                .into_inner()
                .servers
                .into_iter()
                .map(server_from_pb)
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deprovision_that_names_no_deployment_is_refused() {
        let service = ProvisioningService::new(Provisioner::in_memory(), 10);
        let request = pb::DeprovisionRequest {
            node_instance_ids: vec!["vm_1".into()],
            deployment_id: String::new(),
        };
        let refused = service.deprovision(Request::new(request)).await;
        assert_eq!(
            refused.err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
    }
}
