//! `sim`: an in-memory fake cloud for tests and benchmarks.
//!
//! It behaves like a finicky cloud API on purpose: every call takes `latency`, calls beyond
//! the `rate_limit` are refused with a retry-after, a fraction fail transiently, a fraction of
//! create calls create their servers but lose the response (the case idempotency exists for),
//! and a quota caps live servers. Random choices come from one seeded generator, so a run with
//! the same seed and the same sequence of calls fails the same way. Servers get fake private
//! addresses in 10.0.0.0/8: nothing connects to them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::driver::{CloudDriver, CloudError, DriverFuture, Server, ServerKey, ServerSpec};

/// How the simulated cloud misbehaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Time each API call takes.
    pub latency: Duration,
    /// Fraction of calls (0–1) that fail with a transient error before doing anything.
    pub failure_rate: f64,
    /// Fraction of create calls (0–1) that create their servers but fail as if the response
    /// was lost.
    pub lost_response_rate: f64,
    /// Requests the cloud accepts; beyond, it answers "rate limited" with a retry-after.
    pub rate_limit: Option<Quota>,
    /// Most servers per create or delete call.
    pub max_batch: usize,
    /// Most servers alive at once; creations beyond fail permanently.
    pub quota: Option<usize>,
    pub seed: u64,
}

impl Default for SimConfig {
    /// A well-behaved cloud: instant, never failing, unlimited, batches of up to 100.
    fn default() -> Self {
        SimConfig {
            latency: Duration::ZERO,
            failure_rate: 0.0,
            lost_response_rate: 0.0,
            rate_limit: None,
            max_batch: 100,
            quota: None,
            seed: 0,
        }
    }
}

/// What the simulated cloud saw, for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    /// Every call, including refused ones.
    pub calls: u64,
    /// Calls refused by the rate limit.
    pub rate_limited: u64,
    /// Calls failed on purpose (transient errors and lost responses).
    pub transient_failures: u64,
    /// Servers actually created (adoptions not counted).
    pub servers_created: u64,
    /// The number of specs in each create call that got past the rate limit and faults.
    pub create_batch_sizes: Vec<usize>,
}

struct SimState {
    /// Servers by id.
    servers: BTreeMap<String, Server>,
    next_server: u32,
    rng: StdRng,
    stats: SimStats,
}

/// The simulated cloud.
pub struct SimCloud {
    config: SimConfig,
    clock: DefaultClock,
    limiter: Option<DefaultDirectRateLimiter>,
    state: Mutex<SimState>,
}

/// What a call does after getting past latency and the rate limit.
enum Gate {
    Proceed,
    Refuse(CloudError),
}

impl SimCloud {
    pub fn new(config: SimConfig) -> Self {
        let clock = DefaultClock::default();
        SimCloud {
            limiter: config
                .rate_limit
                .map(|quota| RateLimiter::direct_with_clock(quota, clock.clone())),
            clock,
            state: Mutex::new(SimState {
                servers: BTreeMap::new(),
                next_server: 0,
                rng: StdRng::seed_from_u64(config.seed),
                stats: SimStats::default(),
            }),
            config,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every server alive, in id order.
    pub fn servers(&self) -> Vec<Server> {
        self.state().servers.values().cloned().collect()
    }

    pub fn stats(&self) -> SimStats {
        self.state().stats.clone()
    }

    /// Latency, rate limit and random failure: what every call goes through first.
    async fn gate(&self) -> Gate {
        tokio::time::sleep(self.config.latency).await;
        let mut state = self.state();
        state.stats.calls += 1;
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check()
        {
            state.stats.rate_limited += 1;
            let retry_after = not_until.wait_time_from(self.clock.now());
            return Gate::Refuse(CloudError::RateLimited {
                retry_after: Some(retry_after),
            });
        }
        if roll(&mut state.rng, self.config.failure_rate) {
            state.stats.transient_failures += 1;
            return Gate::Refuse(CloudError::Transient("503 service unavailable".into()));
        }
        Gate::Proceed
    }

    fn check_batch(&self, len: usize) -> Result<(), CloudError> {
        if len > self.config.max_batch {
            return Err(CloudError::Permanent(format!(
                "batch of {len} exceeds the cloud's limit of {}",
                self.config.max_batch
            )));
        }
        Ok(())
    }

    fn create(&self, specs: &[ServerSpec]) -> Result<Vec<Result<Server, CloudError>>, CloudError> {
        self.check_batch(specs.len())?;
        let mut state = self.state();
        state.stats.create_batch_sizes.push(specs.len());
        let results = specs
            .iter()
            .map(|spec| {
                let existing = state
                    .servers
                    .values()
                    .find(|s| s.key == spec.key && s.deployment_id == spec.deployment_id);
                if let Some(existing) = existing {
                    return Ok(existing.clone());
                }
                if let Some(quota) = self.config.quota
                    && state.servers.len() >= quota
                {
                    return Err(CloudError::Permanent(format!(
                        "quota exceeded: {quota} servers"
                    )));
                }
                let server = new_server(&mut state, spec);
                state.servers.insert(server.id.clone(), server.clone());
                state.stats.servers_created += 1;
                Ok(server)
            })
            .collect();
        if roll(&mut state.rng, self.config.lost_response_rate) {
            state.stats.transient_failures += 1;
            return Err(CloudError::Transient(
                "timed out waiting for the response".into(),
            ));
        }
        Ok(results)
    }

    fn delete(&self, keys: &[ServerKey]) -> Result<Vec<Result<(), CloudError>>, CloudError> {
        self.check_batch(keys.len())?;
        let mut state = self.state();
        Ok(keys
            .iter()
            .map(|key| {
                state.servers.retain(|_, server| !key.owns(server));
                Ok(())
            })
            .collect())
    }
}

fn roll(rng: &mut StdRng, probability: f64) -> bool {
    probability > 0.0 && rng.random::<f64>() < probability
}

fn new_server(state: &mut SimState, spec: &ServerSpec) -> Server {
    state.next_server += 1;
    let n = state.next_server;
    let id = format!("sim-{:016x}", state.rng.random::<u64>());
    let private_ip = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    Server::tagged(id, &spec.key, &spec.deployment_id, private_ip)
}

impl CloudDriver for SimCloud {
    fn max_batch(&self) -> usize {
        self.config.max_batch
    }

    fn create_servers<'a>(
        &'a self,
        specs: &'a [ServerSpec],
    ) -> DriverFuture<'a, Vec<Result<Server, CloudError>>> {
        Box::pin(async move {
            match self.gate().await {
                Gate::Refuse(error) => Err(error),
                Gate::Proceed => self.create(specs),
            }
        })
    }

    fn delete_servers<'a>(
        &'a self,
        keys: &'a [ServerKey],
    ) -> DriverFuture<'a, Vec<Result<(), CloudError>>> {
        Box::pin(async move {
            match self.gate().await {
                Gate::Refuse(error) => Err(error),
                Gate::Proceed => self.delete(keys),
            }
        })
    }

    fn list_servers<'a>(&'a self, deployment_id: Option<&'a str>) -> DriverFuture<'a, Vec<Server>> {
        Box::pin(async move {
            match self.gate().await {
                Gate::Refuse(error) => Err(error),
                Gate::Proceed => Ok(self
                    .state()
                    .servers
                    .values()
                    .filter(|s| deployment_id.is_none_or(|d| s.deployment_id == d))
                    .cloned()
                    .collect()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::TAG_NODE_INSTANCE;

    fn spec(key: &str) -> ServerSpec {
        ServerSpec::new(key, "d")
    }

    #[tokio::test]
    async fn create_adopts_an_existing_key() {
        let cloud = SimCloud::new(SimConfig::default());
        let first = cloud.create_servers(&[spec("a")]).await.unwrap();
        let again = cloud.create_servers(&[spec("a"), spec("b")]).await.unwrap();
        assert_eq!(first[0], again[0]);
        assert_eq!(cloud.servers().len(), 2);
        assert_eq!(cloud.stats().servers_created, 2);
        let ip = &again[1].as_ref().unwrap().private_ip;
        assert!(ip.starts_with("10."), "{ip}");
        assert_eq!(again[1].as_ref().unwrap().tags[TAG_NODE_INSTANCE], "b");
    }

    #[tokio::test]
    async fn a_node_instance_id_of_two_deployments_has_two_servers() {
        let cloud = SimCloud::new(SimConfig::default());
        let d1 = cloud.create_servers(&[spec("a")]).await.unwrap();
        let d2 = cloud
            .create_servers(&[ServerSpec::new("a", "d2")])
            .await
            .unwrap();
        assert_ne!(d1[0], d2[0], "d2's a is not d1's adopted");
        let deleted = cloud
            .delete_servers(&[ServerKey::new("a", "d2")])
            .await
            .unwrap();
        assert!(deleted[0].is_ok());
        assert_eq!(cloud.servers(), [d1[0].clone().unwrap()]);
    }

    #[tokio::test]
    async fn same_seed_same_faults() {
        let run = || async {
            let cloud = SimCloud::new(SimConfig {
                failure_rate: 0.5,
                seed: 7,
                ..Default::default()
            });
            let mut outcomes = Vec::new();
            for i in 0..20 {
                outcomes.push(cloud.create_servers(&[spec(&i.to_string())]).await.is_ok());
            }
            (outcomes, cloud.servers())
        };
        let (a, servers_a) = run().await;
        let (b, servers_b) = run().await;
        assert_eq!(a, b);
        assert_eq!(servers_a, servers_b);
        assert!(a.contains(&true) && a.contains(&false));
    }

    #[tokio::test]
    async fn oversized_batches_are_refused() {
        let cloud = SimCloud::new(SimConfig {
            max_batch: 2,
            ..Default::default()
        });
        let specs = [spec("a"), spec("b"), spec("c")];
        assert!(matches!(
            cloud.create_servers(&specs).await,
            Err(CloudError::Permanent(_))
        ));
    }
}
