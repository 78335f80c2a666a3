//! Healing confirmed failures: the [`Healer`] seam to the workflow service, and [`HealQueue`],
//! which decides when a heal may start.
//!
//! The rules (DESIGN.md, issue 7): one heal execution per failed instance at a time, and none
//! while an install, uninstall or scale runs on the deployment — those rebuild instances
//! themselves, and a heal racing them would fight over the same ones. A failure that cannot be
//! healed yet waits in the queue and starts as soon as the way is clear; one in a deployment
//! that is being or was uninstalled is dropped (the uninstall stopped that agent).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

/// The workflows during which no heal starts on their deployment.
pub const BLOCKING_WORKFLOWS: [&str; 3] = ["install", "uninstall", "scale"];

/// Why the workflow service could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow service: {0}")]
pub struct HealError(pub String);

/// An execution that has not ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveExecution {
    pub id: String,
    pub workflow_id: String,
}

/// What the monitor needs of the workflow service.
#[async_trait]
pub trait Healer: Send + Sync {
    /// The executions of `deployment` that have not ended (pending, started, cancelling …).
    async fn active_executions(&self, deployment: &str) -> Result<Vec<ActiveExecution>, HealError>;

    /// Whether the deployment's latest install or uninstall (dry runs aside) is an uninstall,
    /// running or ended: its instances are going or gone, and so are their agents.
    async fn uninstalled(&self, deployment: &str) -> Result<bool, HealError>;

    /// Starts a `heal` execution for `instance` of `deployment`; returns its id.
    async fn start_heal(&self, deployment: &str, instance: &str) -> Result<String, HealError>;

    /// Starts a `scale` execution of `group` by `delta` instances; returns its id.
    async fn start_scale(
        &self,
        deployment: &str,
        group: &str,
        delta: u32,
    ) -> Result<String, HealError>;
}

/// A failed instance to heal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealRequest {
    pub deployment: String,
    pub instance: String,
}

/// A heal that [`HealQueue::advance`] started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealStarted {
    pub request: HealRequest,
    pub execution_id: String,
}

/// Heals waiting and running. Its methods are called from one task.
#[derive(Debug, Default)]
pub struct HealQueue {
    queued: BTreeSet<HealRequest>,
    /// The heal execution running for each instance.
    running: BTreeMap<HealRequest, String>,
}

impl HealQueue {
    /// Queues a heal; false when one is already queued for the instance. One queued while a
    /// heal of the instance runs starts after it ends (the instance failed again).
    pub fn request(&mut self, request: HealRequest) -> bool {
        self.queued.insert(request)
    }

    /// Drops a queued heal that has not started (the agent came back by itself); a running one
    /// is left to finish.
    pub fn cancel(&mut self, request: &HealRequest) -> bool {
        self.queued.remove(request)
    }

    /// Heals running, heals queued.
    pub fn counts(&self) -> (usize, usize) {
        (self.running.len(), self.queued.len())
    }

    /// Forgets the heals that ended and starts those the rules allow now. A deployment the
    /// workflow service cannot be asked about is left as it is until the next call.
    pub async fn advance(&mut self, healer: &dyn Healer) -> Vec<HealStarted> {
        let deployments: BTreeSet<String> = self
            .queued
            .iter()
            .chain(self.running.keys())
            .map(|r| r.deployment.clone())
            .collect();
        let mut started = Vec::new();
        for deployment in deployments {
            let active = match healer.active_executions(&deployment).await {
                Ok(active) => active,
                Err(error) => {
                    tracing::warn!(%deployment, %error, "cannot list executions; heals wait");
                    continue;
                }
            };
            self.running.retain(|request, id| {
                request.deployment != deployment || active.iter().any(|e| &e.id == id)
            });
            let blocked = active
                .iter()
                .find(|e| BLOCKING_WORKFLOWS.contains(&e.workflow_id.as_str()));
            let ready: Vec<HealRequest> = self
                .queued
                .iter()
                .filter(|r| r.deployment == deployment && !self.running.contains_key(*r))
                .cloned()
                .collect();
            if !ready.is_empty() {
                match healer.uninstalled(&deployment).await {
                    // An uninstall stops its agents' heartbeats on purpose.
                    Ok(true) => {
                        tracing::info!(%deployment, dropped = ready.len(),
                            "heals dropped: the deployment is uninstalled");
                        for request in &ready {
                            self.queued.remove(request);
                        }
                        continue;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%deployment, %error, "cannot list executions; heals wait");
                        continue;
                    }
                }
            }
            if let Some(execution) = blocked {
                if !ready.is_empty() {
                    tracing::info!(%deployment, execution = %execution.id,
                        workflow = %execution.workflow_id, waiting = ready.len(),
                        "heals wait for a running execution");
                }
                continue;
            }
            for request in ready {
                match healer
                    .start_heal(&request.deployment, &request.instance)
                    .await
                {
                    Ok(execution_id) => {
                        self.queued.remove(&request);
                        self.running.insert(request.clone(), execution_id.clone());
                        started.push(HealStarted {
                            request,
                            execution_id,
                        });
                    }
                    Err(error) => {
                        tracing::warn!(instance = %request.instance, %error,
                            "cannot start a heal; retrying");
                    }
                }
            }
        }
        started
    }
}

/// A workflow service in memory, for tests and the drill: executions start and end when told,
/// and every heal asked for is remembered.
#[derive(Debug, Default)]
pub struct MemoryHealer {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    next: u64,
    executions: Vec<MemoryExecution>,
}

#[derive(Debug, Clone)]
struct MemoryExecution {
    id: String,
    deployment: String,
    workflow_id: String,
    instance: Option<String>,
    ended: bool,
}

impl MemoryHealer {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every execution started, in order: (workflow, execution id).
    pub fn executions(&self) -> Vec<(String, String)> {
        self.with(|s| {
            s.executions
                .iter()
                .map(|e| (e.workflow_id.clone(), e.id.clone()))
                .collect()
        })
    }

    /// Starts an execution of `workflow_id` (an install, say) on `deployment`.
    pub fn start(&self, deployment: &str, workflow_id: &str) -> String {
        self.with(|s| s.start(deployment, workflow_id, None))
    }

    /// Ends an execution.
    pub fn end(&self, id: &str) {
        self.with(|s| {
            for execution in s.executions.iter_mut().filter(|e| e.id == id) {
                execution.ended = true;
            }
        });
    }

    /// Every heal started, in order: (deployment, instance, execution id).
    pub fn heals(&self) -> Vec<(String, String, String)> {
        self.with(|s| {
            s.executions
                .iter()
                .filter_map(|e| {
                    let instance = e.instance.clone()?;
                    Some((e.deployment.clone(), instance, e.id.clone()))
                })
                .collect()
        })
    }
}

impl MemoryState {
    fn start(&mut self, deployment: &str, workflow_id: &str, instance: Option<&str>) -> String {
        self.next += 1;
        let id = format!("exec-{}", self.next);
        self.executions.push(MemoryExecution {
            id: id.clone(),
            deployment: deployment.to_owned(),
            workflow_id: workflow_id.to_owned(),
            instance: instance.map(str::to_owned),
            ended: false,
        });
        id
    }
}

#[async_trait]
impl Healer for MemoryHealer {
    async fn active_executions(&self, deployment: &str) -> Result<Vec<ActiveExecution>, HealError> {
        Ok(self.with(|s| {
            s.executions
                .iter()
                .filter(|e| e.deployment == deployment && !e.ended)
                .map(|e| ActiveExecution {
                    id: e.id.clone(),
                    workflow_id: e.workflow_id.clone(),
                })
                .collect()
        }))
    }

    async fn uninstalled(&self, deployment: &str) -> Result<bool, HealError> {
        Ok(self.with(|s| {
            s.executions
                .iter()
                .rev()
                .filter(|e| e.deployment == deployment)
                .find(|e| e.workflow_id == "install" || e.workflow_id == "uninstall")
                .is_some_and(|e| e.workflow_id == "uninstall")
        }))
    }

    async fn start_heal(&self, deployment: &str, instance: &str) -> Result<String, HealError> {
        Ok(self.with(|s| s.start(deployment, "heal", Some(instance))))
    }

    async fn start_scale(&self, deployment: &str, _: &str, _: u32) -> Result<String, HealError> {
        Ok(self.with(|s| s.start(deployment, "scale", None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(instance: &str) -> HealRequest {
        HealRequest {
            deployment: "d1".into(),
            instance: instance.into(),
        }
    }

    #[tokio::test]
    async fn one_heal_per_instance_at_a_time() {
        let healer = MemoryHealer::new();
        let mut queue = HealQueue::default();
        assert!(queue.request(request("web_1")));
        assert!(!queue.request(request("web_1")), "queued twice");
        let started = queue.advance(&healer).await;
        assert_eq!(started.len(), 1);
        // It fails again while its heal runs: queued, not started.
        assert!(queue.request(request("web_1")));
        assert!(queue.advance(&healer).await.is_empty());
        assert_eq!(queue.counts(), (1, 1));
        healer.end(&started[0].execution_id);
        let again = queue.advance(&healer).await;
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].execution_id, started[0].execution_id);
        assert_eq!(healer.heals().len(), 2);
        assert_eq!(queue.counts(), (1, 0));
    }

    #[tokio::test]
    async fn heals_wait_for_an_install_or_scale_of_their_deployment() {
        for workflow in ["install", "scale"] {
            let healer = MemoryHealer::new();
            let mut queue = HealQueue::default();
            let install = healer.start("d1", workflow);
            healer.start("d2", workflow);
            queue.request(request("web_1"));
            queue.request(request("web_2"));
            assert!(queue.advance(&healer).await.is_empty(), "{workflow}");
            assert_eq!(queue.counts(), (0, 2));
            healer.end(&install);
            let started = queue.advance(&healer).await;
            assert_eq!(started.len(), 2, "{workflow}");
            assert_eq!(queue.counts(), (2, 0));
        }
    }

    #[tokio::test]
    async fn an_uninstall_drops_the_heals_of_its_deployment() {
        let healer = MemoryHealer::new();
        let mut queue = HealQueue::default();
        let install = healer.start("d1", "install");
        healer.end(&install);
        // Its agents stop as the uninstall frees their hosts: nothing to heal, now or after.
        let uninstall = healer.start("d1", "uninstall");
        queue.request(request("web_1"));
        assert!(queue.advance(&healer).await.is_empty());
        assert_eq!(queue.counts(), (0, 0));
        healer.end(&uninstall);
        queue.request(request("web_2"));
        assert!(queue.advance(&healer).await.is_empty());
        assert_eq!(queue.counts(), (0, 0));
        // Installed again, its failures are healed again.
        let again = healer.start("d1", "install");
        healer.end(&again);
        queue.request(request("web_1"));
        assert_eq!(queue.advance(&healer).await.len(), 1);
        assert_eq!(healer.heals().len(), 1);
    }

    #[tokio::test]
    async fn other_executions_do_not_block_and_recovery_cancels_a_queued_heal() {
        let healer = MemoryHealer::new();
        let mut queue = HealQueue::default();
        healer.start("d1", "execute_operation");
        queue.request(request("web_1"));
        queue.request(request("web_2"));
        assert!(queue.cancel(&request("web_2")));
        let started = queue.advance(&healer).await;
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].request, request("web_1"));
    }

    struct Down;

    #[async_trait]
    impl Healer for Down {
        async fn active_executions(&self, _: &str) -> Result<Vec<ActiveExecution>, HealError> {
            Err(HealError("unreachable".into()))
        }

        async fn uninstalled(&self, _: &str) -> Result<bool, HealError> {
            Err(HealError("unreachable".into()))
        }

        async fn start_heal(&self, _: &str, _: &str) -> Result<String, HealError> {
            Err(HealError("unreachable".into()))
        }

        async fn start_scale(&self, _: &str, _: &str, _: u32) -> Result<String, HealError> {
            Err(HealError("unreachable".into()))
        }
    }

    #[tokio::test]
    async fn an_unreachable_workflow_service_keeps_heals_queued() {
        let mut queue = HealQueue::default();
        queue.request(request("web_1"));
        assert!(queue.advance(&Down).await.is_empty());
        assert_eq!(queue.counts(), (0, 1));
        let started = queue.advance(&MemoryHealer::new()).await;
        assert_eq!(started.len(), 1);
    }
}
