//! [`OpenSearchStore`]: the state store on OpenSearch.

use std::sync::Arc;

use drover_model::{
    ClockSequence, Deployment, Event, Execution, NodeInstance, execution_event_records,
};
use opensearch::IndexParts;
use opensearch::http::StatusCode;
use opensearch::params::Refresh;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::worker::Worker;
use super::{BulkBody, Client, ItemOutcome, OpenSearchOptions, request_error};
use crate::events::EventRecord;
use crate::{Blueprint, JournalEntry, Result, Secret, StateStore, StoreError, next_version};

/// The state store on an OpenSearch node. Its requests run on a runtime of its own (see
/// [`super`]'s worker), so its methods may be called from any thread.
pub struct OpenSearchStore {
    client: Client,
    /// Increasing sequence numbers for first-write order, journal order and the workflow's own
    /// events.
    sequence: Arc<ClockSequence>,
    worker: Worker,
}

impl OpenSearchStore {
    /// Connects, puts the templates and creates the indices.
    pub fn open(options: OpenSearchOptions) -> Result<Self> {
        let client = Client::new(options)?;
        let worker = Worker::start("drover-store-opensearch")?;
        let c = client.clone();
        worker.run(async move { c.ensure_indices().await })?;
        Ok(Self {
            client,
            sequence: Arc::default(),
            worker,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `f` with a clone of the client on the worker.
    fn run<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        self.worker.run(f(self.client.clone()))
    }

    /// Sends a body's `_bulk` requests one after the other; the outcome of every action.
    fn send_bulk(&self, body: BulkBody, refresh: Refresh) -> Result<Vec<ItemOutcome>> {
        self.run(move |c| async move { c.send_bulk_in_order(body, refresh).await })
    }

    /// Writes documents; fails unless every one is indexed.
    fn bulk(&self, body: BulkBody, refresh: Refresh) -> Result<()> {
        let outcomes = self.send_bulk(body, refresh)?;
        match outcomes.into_iter().find(|o| *o != ItemOutcome::Indexed) {
            Some(o) => Err(StoreError::OpenSearch(format!(
                "a bulk write failed: {o:?}"
            ))),
            None => Ok(()),
        }
    }

    /// Replaces one document, visible to lists when this returns.
    fn put_doc(&self, index: &str, id: &str, doc: Value) -> Result<()> {
        let mut body = BulkBody::new();
        body.push(&json!({"index": {"_index": index, "_id": id}}), &doc)?;
        self.bulk(body, Refresh::WaitFor)
    }

    /// A document's record (its `body`), real-time.
    fn get_body<T: DeserializeOwned>(&self, index: &str, id: &str) -> Result<Option<T>> {
        let (index, id) = (index.to_owned(), id.to_owned());
        match self.run(move |c| async move { c.get(&index, &id).await })? {
            Some((source, _, _)) => Ok(Some(body_of(&source)?)),
            None => Ok(None),
        }
    }

    /// Every matching document's record, in `sort` order. The index is refreshed first, so a
    /// list sees every write before it, as a real-time get does: a client that read an
    /// execution as ended and then asks what still runs must not be told it runs.
    fn list<T: DeserializeOwned>(&self, index: &str, query: Value, sort: Value) -> Result<Vec<T>> {
        let index = index.to_owned();
        let sources = self.run(move |c| async move {
            c.refresh(&index).await?;
            c.search_all(&index, query, sort).await
        })?;
        sources.iter().map(body_of).collect()
    }

    fn delete_docs(&self, index: &str, ids: &[String]) -> Result<()> {
        let mut body = BulkBody::new();
        for id in ids {
            body.delete(&json!({"delete": {"_index": index, "_id": id}}))?;
        }
        let outcomes = self.send_bulk(body, Refresh::WaitFor)?;
        // Deleting what is not there answers 404: the document is gone either way.
        match outcomes.into_iter().find(|o| match o {
            ItemOutcome::Indexed => false,
            ItemOutcome::Rejected(r) => !r.starts_with("404"),
            ItemOutcome::Retry(_) => true,
        }) {
            Some(o) => Err(StoreError::OpenSearch(format!(
                "a bulk delete failed: {o:?}"
            ))),
            None => Ok(()),
        }
    }

    fn instance_ids(&self, deployment_id: &str) -> Result<Vec<String>> {
        let index = self.client.index("node-instances");
        let query = json!({"term": {"deployment_id": deployment_id}});
        let sources = self.run(move |c| async move {
            c.refresh(&index).await?;
            c.search_all(&index, query, json!([{"seq": "asc"}, {"id": "asc"}]))
                .await
        })?;
        Ok(sources
            .iter()
            .filter_map(|s| s["id"].as_str())
            .map(|id| instance_doc_id(deployment_id, id))
            .collect())
    }
}

/// The record kept whole in a document's `body`.
fn body_of<T: DeserializeOwned>(source: &Value) -> Result<T> {
    let text = source["body"]
        .as_str()
        .ok_or_else(|| StoreError::OpenSearch(format!("a document without a body: {source}")))?;
    Ok(serde_json::from_str(text)?)
}

fn body_string(record: &impl Serialize) -> Result<String> {
    Ok(serde_json::to_string(record)?)
}

fn instance_doc_id(deployment_id: &str, id: &str) -> String {
    format!("{deployment_id}/{id}")
}

fn secret_doc_id(tenant: &str, key: &str) -> String {
    format!("{tenant}/{key}")
}

fn instance_fields(instance: &NodeInstance) -> Result<Value> {
    Ok(json!({
        "state": instance.state,
        "version": instance.version,
        "body": body_string(instance)?,
    }))
}

impl StateStore for OpenSearchStore {
    fn put_blueprint(&self, blueprint: &Blueprint) -> Result<()> {
        self.put_doc(
            &self.client.index("blueprints"),
            &blueprint.id,
            json!({"id": blueprint.id, "created_at": blueprint.created_at, "body": body_string(blueprint)?}),
        )
    }

    fn blueprint(&self, id: &str) -> Result<Option<Blueprint>> {
        self.get_body(&self.client.index("blueprints"), id)
    }

    fn blueprints(&self) -> Result<Vec<String>> {
        let all: Vec<Blueprint> = self.list(
            &self.client.index("blueprints"),
            json!({"match_all": {}}),
            json!([{"created_at": "asc"}, {"id": "asc"}]),
        )?;
        Ok(all.into_iter().map(|b| b.id).collect())
    }

    fn delete_blueprint(&self, id: &str) -> Result<()> {
        self.delete_docs(&self.client.index("blueprints"), &[id.to_owned()])
    }

    fn put_deployment(&self, deployment: &Deployment) -> Result<()> {
        self.put_doc(
            &self.client.index("deployments"),
            &deployment.id,
            json!({"id": deployment.id, "created_at": deployment.created_at, "body": body_string(deployment)?}),
        )
    }

    fn deployment(&self, id: &str) -> Result<Option<Deployment>> {
        self.get_body(&self.client.index("deployments"), id)
    }

    fn deployments(&self) -> Result<Vec<String>> {
        // Only the ids: a deployment's body (its plan) can be large.
        let index = self.client.index("deployments");
        let sources = self.run(move |c| async move {
            c.search_all(
                &index,
                json!({"match_all": {}}),
                json!([{"created_at": "asc"}, {"id": "asc"}]),
            )
            .await
        })?;
        Ok(sources
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect())
    }

    fn delete_deployment(&self, id: &str) -> Result<()> {
        let instances = self.instance_ids(id)?;
        self.delete_docs(&self.client.index("node-instances"), &instances)?;
        self.delete_docs(&self.client.index("deployments"), &[id.to_owned()])
    }

    fn put_node_instances(&self, deployment_id: &str, instances: &[NodeInstance]) -> Result<()> {
        let index = self.client.index("node-instances");
        let first = self.sequence.reserve(instances.len() as u64);
        let mut body = BulkBody::new();
        for (i, instance) in instances.iter().enumerate() {
            // An update with an upsert: a new instance gets its sequence, a replaced one keeps it.
            let fields = instance_fields(instance)?;
            let mut upsert = fields.clone();
            upsert["id"] = json!(instance.id);
            upsert["deployment_id"] = json!(deployment_id);
            upsert["seq"] = json!(first + i as u64);
            body.push(
                &json!({"update": {"_index": index, "_id": instance_doc_id(deployment_id, &instance.id)}}),
                &json!({"doc": fields, "upsert": upsert}),
            )?;
        }
        self.bulk(body, Refresh::WaitFor)
    }

    fn delete_node_instances(&self, deployment_id: &str, ids: &[String]) -> Result<()> {
        let ids: Vec<String> = ids
            .iter()
            .map(|id| instance_doc_id(deployment_id, id))
            .collect();
        self.delete_docs(&self.client.index("node-instances"), &ids)
    }

    fn node_instances(&self, deployment_id: &str) -> Result<Vec<NodeInstance>> {
        self.list(
            &self.client.index("node-instances"),
            json!({"term": {"deployment_id": deployment_id}}),
            json!([{"seq": "asc"}, {"id": "asc"}]),
        )
    }

    fn node_instance(&self, deployment_id: &str, id: &str) -> Result<Option<NodeInstance>> {
        self.get_body(
            &self.client.index("node-instances"),
            &instance_doc_id(deployment_id, id),
        )
    }

    fn update_node_instance(
        &self,
        deployment_id: &str,
        instance: &NodeInstance,
    ) -> Result<NodeInstance> {
        let index = self.client.index("node-instances");
        let doc_id = instance_doc_id(deployment_id, &instance.id);
        let (i, d) = (index.clone(), doc_id.clone());
        let stored = self.run(move |c| async move { c.get(&i, &d).await })?;
        let (source, seq_no, primary_term) = match stored {
            Some(s) => s,
            None => return Err(next_version(None, instance).unwrap_err()),
        };
        let current: NodeInstance = body_of(&source)?;
        let new = next_version(Some(&current), instance)?;
        let mut doc = source;
        if let (Some(doc), Value::Object(fields)) = (doc.as_object_mut(), instance_fields(&new)?) {
            doc.extend(fields);
        }
        // Whoever wrote between our read and this write changed `_seq_no`: the write fails.
        let status = self.run(move |c| async move {
            let response = c
                .raw()
                .index(IndexParts::IndexId(&index, &doc_id))
                .if_seq_no(seq_no)
                .if_primary_term(primary_term)
                .refresh(Refresh::WaitFor)
                .body(doc)
                .send()
                .await
                .map_err(request_error)?;
            let status = response.status_code();
            let text = response.text().await.map_err(request_error)?;
            Ok((status, text))
        })?;
        match status {
            (s, _) if s.is_success() => Ok(new),
            (StatusCode::CONFLICT, _) => Err(StoreError::Conflict {
                kind: "node instance",
                id: instance.id.clone(),
                expected: instance.version,
                actual: self
                    .node_instance(deployment_id, &instance.id)?
                    .map(|a| a.version),
            }),
            (s, text) => Err(StoreError::OpenSearch(format!(
                "updating node instance {}: {s}: {text}",
                instance.id
            ))),
        }
    }

    fn put_execution(&self, execution: &Execution) -> Result<()> {
        if execution.status.is_final() {
            // Its events become searchable before it shows as ended: a client that waits for
            // the end and then lists the events (Cloudify's does) finds them all.
            let index = self.client.events_pattern();
            self.run(move |c| async move { c.refresh(&index).await })?;
        }
        self.put_doc(
            &self.client.index("executions"),
            &execution.id,
            json!({
                "id": execution.id,
                "deployment_id": execution.deployment_id,
                "status": execution.status,
                "created_at": execution.created_at,
                "body": body_string(execution)?,
            }),
        )
    }

    fn execution(&self, id: &str) -> Result<Option<Execution>> {
        self.get_body(&self.client.index("executions"), id)
    }

    fn executions(&self, deployment_id: &str) -> Result<Vec<Execution>> {
        self.list(
            &self.client.index("executions"),
            json!({"term": {"deployment_id": deployment_id}}),
            json!([{"created_at": "asc"}, {"id": "asc"}]),
        )
    }

    fn append_journal(&self, execution_id: &str, entries: &[JournalEntry]) -> Result<()> {
        let index = self.client.index("journal");
        let first = self.sequence.reserve(entries.len() as u64);
        let mut body = BulkBody::new();
        for (i, entry) in entries.iter().enumerate() {
            let seq = first + i as u64;
            body.push(
                &json!({"index": {"_index": index, "_id": format!("{execution_id}/{seq}")}}),
                &json!({"execution_id": execution_id, "seq": seq, "entry": entry.get()}),
            )?;
        }
        // Durable when the bulk answers (the translog is synced per request); the journal is
        // read on resume, which refreshes first.
        self.bulk(body, Refresh::False)
    }

    fn journal(&self, execution_id: &str) -> Result<Vec<JournalEntry>> {
        let index = self.client.index("journal");
        let query = json!({"term": {"execution_id": execution_id}});
        let sources = self.run(move |c| async move {
            c.refresh(&index).await?;
            c.search_all(&index, query, json!([{"seq": "asc"}])).await
        })?;
        sources
            .iter()
            .map(|s| {
                let text = s["entry"].as_str().unwrap_or("null");
                Ok(RawValue::from_string(text.to_owned())?)
            })
            .collect()
    }

    fn append_events(&self, execution_id: &str, events: &[Event]) -> Result<()> {
        let records = execution_event_records(execution_id, events, &self.sequence);
        let outcomes =
            self.run(move |c| async move { c.bulk_events(&records, Refresh::False).await })?;
        match outcomes.into_iter().find(|o| *o != ItemOutcome::Indexed) {
            Some(o) => Err(StoreError::OpenSearch(format!(
                "indexing events failed: {o:?}"
            ))),
            None => Ok(()),
        }
    }

    fn events(&self, execution_id: &str) -> Result<Vec<Event>> {
        let index = self.client.events_pattern();
        // Task ids begin with the execution's too; agents' logs have ids of their own.
        let prefix = format!("{execution_id}-");
        let query = json!({"bool": {"filter": [
            {"term": {"context.execution_id": execution_id}},
            {"prefix": {"id": prefix}},
        ]}});
        let sources = self.run(move |c| async move {
            c.refresh(&index).await?;
            // Task events' ids do not sort in append order: time does, and the id among
            // events of one millisecond.
            c.search_all(&index, query, json!([{"timestamp": "asc"}, {"id": "asc"}]))
                .await
        })?;
        sources
            .into_iter()
            .map(|s| Ok(serde_json::from_value::<EventRecord>(s)?.event))
            .collect()
    }

    fn put_secret(&self, tenant: &str, secret: &Secret) -> Result<()> {
        self.put_doc(
            &self.client.index("secrets"),
            &secret_doc_id(tenant, &secret.key),
            json!({"tenant": tenant, "key": secret.key, "body": body_string(secret)?}),
        )
    }

    fn secret(&self, tenant: &str, key: &str) -> Result<Option<Secret>> {
        self.get_body(&self.client.index("secrets"), &secret_doc_id(tenant, key))
    }

    fn secrets(&self, tenant: &str) -> Result<Vec<Secret>> {
        self.list(
            &self.client.index("secrets"),
            json!({"term": {"tenant": tenant}}),
            json!([{"key": "asc"}]),
        )
    }

    fn delete_secret(&self, tenant: &str, key: &str) -> Result<bool> {
        if self.secret(tenant, key)?.is_none() {
            return Ok(false);
        }
        self.delete_docs(&self.client.index("secrets"), &[secret_doc_id(tenant, key)])?;
        Ok(true)
    }
}
