//! The provisioner: turns many per-instance requests into few, paced, retried cloud calls.
//!
//! - Batches: requests are cut into batches of `batch_size` (capped by the driver's
//!   `max_batch`), with at most `concurrent_requests` calls in flight.
//! - Pace: every cloud call first takes a permit from a `governor` limiter, so drover stays
//!   under the account's request rate instead of discovering it through 429s.
//! - Retries (`backon`, jittered exponential): a call that failed as a whole with a retryable
//!   error is repeated, after the cloud's retry-after when it gave one; servers that failed
//!   individually with a retryable error go into a later round. Repeating a create is safe
//!   because drivers adopt servers by key.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::driver::{CloudDriver, CloudError, Server, ServerKey, ServerSpec};
use crate::sim::{SimCloud, SimConfig};

/// Policies for one cloud account.
#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    /// Servers per create or delete call (capped by the driver's `max_batch`).
    pub batch_size: usize,
    /// Cloud calls per second, sustained.
    pub requests_per_second: NonZeroU32,
    /// Calls that may go out back to back before the pace applies.
    pub burst: NonZeroU32,
    /// Cloud calls in flight at once (tries waiting out a backoff do not count).
    pub concurrent_requests: usize,
    /// Tries of one call, and rounds for one server, before giving up.
    pub max_attempts: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            batch_size: 50,
            requests_per_second: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::MIN,
            concurrent_requests: 4,
            max_attempts: 8,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// A server that could not be provisioned or deprovisioned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error} (after {attempts} rounds)")]
pub struct ProvisionError {
    /// Rounds this server went through.
    pub attempts: usize,
    /// The last error.
    pub error: CloudError,
}

/// Provisions and deprovisions servers through one driver; cheap to clone.
#[derive(Clone)]
pub struct Provisioner {
    driver: Arc<dyn CloudDriver>,
    config: ProvisionerConfig,
    limiter: Arc<DefaultDirectRateLimiter>,
    calls: Arc<Semaphore>,
}

impl Provisioner {
    pub fn new(driver: Arc<dyn CloudDriver>, config: ProvisionerConfig) -> Self {
        let quota = Quota::per_second(config.requests_per_second).allow_burst(config.burst);
        Provisioner {
            driver,
            limiter: Arc::new(RateLimiter::direct(quota)),
            calls: Arc::new(Semaphore::new(config.concurrent_requests.max(1))),
            config,
        }
    }

    /// The `sim` cloud in this process, instant and reliable, paced for a local run rather than
    /// a real cloud's limits: what `drover local` provisions with. Its servers live as long as
    /// the process; deleting a server it does not know succeeds.
    pub fn in_memory() -> Self {
        let config = ProvisionerConfig {
            requests_per_second: NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(1_000).unwrap_or(NonZeroU32::MIN),
            concurrent_requests: 64,
            ..ProvisionerConfig::default()
        };
        Provisioner::new(Arc::new(SimCloud::new(SimConfig::default())), config)
    }

    /// Creates (or adopts) a server for each spec; results in the order of `specs`.
    pub async fn provision(&self, specs: Vec<ServerSpec>) -> Vec<Result<Server, ProvisionError>> {
        self.in_rounds(specs, |this, batch| async move {
            this.call(|| this.driver.create_servers(&batch)).await
        })
        .await
    }

    /// Deletes the servers of each key (deployment and node instance); results in the order
    /// of `keys`.
    pub async fn deprovision(&self, keys: Vec<ServerKey>) -> Vec<Result<(), ProvisionError>> {
        self.in_rounds(keys, |this, batch| async move {
            this.call(|| this.driver.delete_servers(&batch)).await
        })
        .await
    }

    /// The servers drover tagged, of one deployment or of all.
    pub async fn servers(&self, deployment_id: Option<&str>) -> Result<Vec<Server>, CloudError> {
        self.call(|| self.driver.list_servers(deployment_id)).await
    }

    /// Servers tagged by drover (of one deployment, or all) whose key is not in `live_keys`:
    /// servers no node instance owns.
    pub async fn orphans(
        &self,
        deployment_id: Option<&str>,
        live_keys: &HashSet<String>,
    ) -> Result<Vec<Server>, CloudError> {
        Ok(self
            .servers(deployment_id)
            .await?
            .into_iter()
            .filter(|s| !live_keys.contains(&s.key))
            .collect())
    }

    /// Finds the orphans and, unless `dry_run`, deletes them. Returns the orphans found; an
    /// orphan whose deletion failed is reported in the error list beside them.
    pub async fn reconcile(
        &self,
        deployment_id: Option<&str>,
        live_keys: &HashSet<String>,
        dry_run: bool,
    ) -> Result<Reconciled, CloudError> {
        let orphans = self.orphans(deployment_id, live_keys).await?;
        let mut failed = Vec::new();
        if !dry_run {
            let mut seen = HashSet::new();
            let keys: Vec<ServerKey> = orphans
                .iter()
                .map(|s| ServerKey::new(&s.key, &s.deployment_id))
                .filter(|k| seen.insert(k.clone()))
                .collect();
            let results = self.deprovision(keys.clone()).await;
            failed = keys
                .into_iter()
                .zip(results)
                .filter_map(|(key, result)| result.err().map(|e| (key, e)))
                .collect();
        }
        Ok(Reconciled { orphans, failed })
    }

    /// One cloud call: paced by the limiter, retried while its error is retryable.
    async fn call<T, F, Fut>(&self, make_call: F) -> Result<T, CloudError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        let mut make_call = make_call;
        // The permit covers the call only, not the backoff sleeps between tries, so waiting
        // retries do not hold back other calls.
        let paced = || {
            let call = make_call();
            async {
                let _permit = self.calls.acquire().await;
                self.limiter.until_ready().await;
                call.await
            }
        };
        paced
            .retry(self.backoff())
            .when(CloudError::is_retryable)
            .adjust(|error, delay| delay.map(|d| error.retry_after().unwrap_or(d)))
            .await
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.max_attempts.saturating_sub(1))
            .with_jitter()
    }

    /// Runs `items` through `batch_call` in batches, repeating items that failed retryably
    /// (up to `max_attempts` rounds, with backoff between rounds).
    async fn in_rounds<I, T, F, Fut>(
        &self,
        items: Vec<I>,
        batch_call: F,
    ) -> Vec<Result<T, ProvisionError>>
    where
        I: Clone + Send + 'static,
        T: Send + 'static,
        F: Fn(Provisioner, Vec<I>) -> Fut,
        Fut: Future<Output = Result<Vec<Result<T, CloudError>>, CloudError>> + Send + 'static,
    {
        let batch_size = self.config.batch_size.min(self.driver.max_batch()).max(1);
        let mut results: Vec<Option<Result<T, ProvisionError>>> =
            items.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut round_delays = self.backoff().build();
        let mut round = 0;
        while !pending.is_empty() {
            round += 1;
            let mut calls = JoinSet::new();
            for batch in pending.chunks(batch_size) {
                let indexes = batch.to_vec();
                let batch_items = indexes.iter().map(|&i| items[i].clone()).collect();
                let call = batch_call(self.clone(), batch_items);
                calls.spawn(async move { (indexes, call.await) });
            }
            let mut retry = Vec::new();
            let mut last_round = round >= self.config.max_attempts;
            let delay = if last_round {
                None
            } else {
                round_delays.next()
            };
            last_round |= delay.is_none();
            while let Some(joined) = calls.join_next().await {
                let Ok((indexes, outcome)) = joined else {
                    continue;
                };
                let per_item: Vec<Result<T, CloudError>> = match outcome {
                    Ok(per_item) if per_item.len() == indexes.len() => per_item,
                    Ok(per_item) => indexes
                        .iter()
                        .map(|_| {
                            Err(CloudError::Permanent(format!(
                                "the driver answered {} results for {} requests",
                                per_item.len(),
                                indexes.len()
                            )))
                        })
                        .collect(),
                    Err(error) => indexes.iter().map(|_| Err(error.clone())).collect(),
                };
                for (i, result) in indexes.into_iter().zip(per_item) {
                    match result {
                        Err(error) if error.is_retryable() && !last_round => retry.push(i),
                        other => {
                            results[i] = Some(other.map_err(|error| ProvisionError {
                                attempts: round,
                                error,
                            }))
                        }
                    }
                }
            }
            retry.sort_unstable();
            pending = retry;
            if let (false, Some(delay)) = (pending.is_empty(), delay) {
                tokio::time::sleep(delay).await;
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ProvisionError {
                        attempts: round,
                        error: CloudError::Transient("the request's task was lost".into()),
                    })
                })
            })
            .collect()
    }
}

/// What [`Provisioner::reconcile`] found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    /// Servers no live node instance owns (deleted unless it was a dry run).
    pub orphans: Vec<Server>,
    /// Orphan keys whose deletion failed.
    pub failed: Vec<(ServerKey, ProvisionError)>,
}
