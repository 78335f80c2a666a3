//! [`MemoryStore`]: the state store in memory, for tests and throwaway runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use drover_model::{Deployment, Event, Execution, NodeInstance};
use indexmap::IndexMap;

use crate::{Blueprint, JournalEntry, Result, Secret, StateStore, next_version};

/// Everything in memory; nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    blueprints: IndexMap<String, Blueprint>,
    deployments: IndexMap<String, Deployment>,
    instances: HashMap<String, IndexMap<String, NodeInstance>>,
    executions: IndexMap<String, Execution>,
    journals: HashMap<String, Vec<JournalEntry>>,
    events: HashMap<String, Vec<Event>>,
    /// By tenant, then key.
    secrets: HashMap<String, BTreeMap<String, Secret>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still consistent per call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StateStore for MemoryStore {
    fn put_blueprint(&self, blueprint: &Blueprint) -> Result<()> {
        self.lock()
            .blueprints
            .insert(blueprint.id.clone(), blueprint.clone());
        Ok(())
    }

    fn blueprint(&self, id: &str) -> Result<Option<Blueprint>> {
        Ok(self.lock().blueprints.get(id).cloned())
    }

    fn blueprints(&self) -> Result<Vec<String>> {
        let inner = self.lock();
        let mut all: Vec<&Blueprint> = inner.blueprints.values().collect();
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(all.into_iter().map(|b| b.id.clone()).collect())
    }

    fn delete_blueprint(&self, id: &str) -> Result<()> {
        self.lock().blueprints.shift_remove(id);
        Ok(())
    }

    fn put_deployment(&self, deployment: &Deployment) -> Result<()> {
        self.lock()
            .deployments
            .insert(deployment.id.clone(), deployment.clone());
        Ok(())
    }

    fn deployment(&self, id: &str) -> Result<Option<Deployment>> {
        Ok(self.lock().deployments.get(id).cloned())
    }

    fn deployments(&self) -> Result<Vec<String>> {
        let inner = self.lock();
        let mut all: Vec<&Deployment> = inner.deployments.values().collect();
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(all.into_iter().map(|d| d.id.clone()).collect())
    }

    fn delete_deployment(&self, id: &str) -> Result<()> {
        let mut inner = self.lock();
        inner.deployments.shift_remove(id);
        inner.instances.remove(id);
        Ok(())
    }

    fn put_node_instances(&self, deployment_id: &str, instances: &[NodeInstance]) -> Result<()> {
        let mut inner = self.lock();
        let map = inner.instances.entry(deployment_id.to_owned()).or_default();
        for instance in instances {
            map.insert(instance.id.clone(), instance.clone());
        }
        Ok(())
    }

    fn delete_node_instances(&self, deployment_id: &str, ids: &[String]) -> Result<()> {
        if let Some(map) = self.lock().instances.get_mut(deployment_id) {
            for id in ids {
                map.shift_remove(id);
            }
        }
        Ok(())
    }

    fn node_instances(&self, deployment_id: &str) -> Result<Vec<NodeInstance>> {
        Ok(self
            .lock()
            .instances
            .get(deployment_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    fn node_instance(&self, deployment_id: &str, id: &str) -> Result<Option<NodeInstance>> {
        Ok(self
            .lock()
            .instances
            .get(deployment_id)
            .and_then(|m| m.get(id))
            .cloned())
    }

    fn update_node_instance(
        &self,
        deployment_id: &str,
        instance: &NodeInstance,
    ) -> Result<NodeInstance> {
        let mut inner = self.lock();
        let map = inner.instances.entry(deployment_id.to_owned()).or_default();
        let new = next_version(map.get(&instance.id), instance)?;
        map.insert(new.id.clone(), new.clone());
        Ok(new)
    }

    fn put_execution(&self, execution: &Execution) -> Result<()> {
        self.lock()
            .executions
            .insert(execution.id.clone(), execution.clone());
        Ok(())
    }

    fn execution(&self, id: &str) -> Result<Option<Execution>> {
        Ok(self.lock().executions.get(id).cloned())
    }

    fn executions(&self, deployment_id: &str) -> Result<Vec<Execution>> {
        let mut found: Vec<Execution> = self
            .lock()
            .executions
            .values()
            .filter(|e| e.deployment_id == deployment_id)
            .cloned()
            .collect();
        found.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(found)
    }

    fn append_journal(&self, execution_id: &str, entries: &[JournalEntry]) -> Result<()> {
        self.lock()
            .journals
            .entry(execution_id.to_owned())
            .or_default()
            .extend(entries.iter().cloned());
        Ok(())
    }

    fn journal(&self, execution_id: &str) -> Result<Vec<JournalEntry>> {
        Ok(self
            .lock()
            .journals
            .get(execution_id)
            .cloned()
            .unwrap_or_default())
    }

    fn append_events(&self, execution_id: &str, events: &[Event]) -> Result<()> {
        self.lock()
            .events
            .entry(execution_id.to_owned())
            .or_default()
            .extend(events.iter().cloned());
        Ok(())
    }

    fn events(&self, execution_id: &str) -> Result<Vec<Event>> {
        Ok(self
            .lock()
            .events
            .get(execution_id)
            .cloned()
            .unwrap_or_default())
    }

    fn put_secret(&self, tenant: &str, secret: &Secret) -> Result<()> {
        self.lock()
            .secrets
            .entry(tenant.to_owned())
            .or_default()
            .insert(secret.key.clone(), secret.clone());
        Ok(())
    }

    fn secret(&self, tenant: &str, key: &str) -> Result<Option<Secret>> {
        Ok(self
            .lock()
            .secrets
            .get(tenant)
            .and_then(|m| m.get(key))
            .cloned())
    }

    fn secrets(&self, tenant: &str) -> Result<Vec<Secret>> {
        Ok(self
            .lock()
            .secrets
            .get(tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    fn delete_secret(&self, tenant: &str, key: &str) -> Result<bool> {
        Ok(self
            .lock()
            .secrets
            .get_mut(tenant)
            .is_some_and(|m| m.remove(key).is_some()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_the_shared_suite() {
        crate::suite::run(&super::MemoryStore::new());
    }
}
