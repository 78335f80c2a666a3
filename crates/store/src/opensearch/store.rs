//! [`OpenSearchStore`]: the state store on OpenSearch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use drover_model::{Deployment, Event, Execution, NodeInstance};
use opensearch::IndexParts;
use opensearch::http::StatusCode;
use opensearch::params::Refresh;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::worker::Worker;
use super::{Client, ItemOutcome, OpenSearchOptions, push_line, request_error};
use crate::events::EventRecord;
use crate::{Blueprint, JournalEntry, Result, StateStore, StoreError, next_version};

/// The state store on an OpenSearch node. Its requests run on a runtime of its own (see
/// [`super`]'s worker), so its methods may be called from any thread.
pub struct OpenSearchStore {
    client: Client,
    /// Increasing sequence numbers for first-write order and journal order: the wall clock in
    /// microseconds, never less than the last one plus one.
    sequence: Arc<AtomicU64>,
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
            sequence: Arc::new(AtomicU64::new(0)),
            worker,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn next_sequence(&self, n: u64) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        let mut last = self.sequence.load(Ordering::Relaxed);
        loop {
            let first = now.max(last + 1);
            match self.sequence.compare_exchange(
                last,
                first + n.saturating_sub(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return first,
                Err(actual) => last = actual,
            }
        }
    }

    /// Runs `f` with a clone of the client on the worker.
    fn run<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        self.worker.run(f(self.client.clone()))
    }

    /// Writes documents in one `_bulk` request; fails unless every one is indexed.
    fn bulk(&self, body: Vec<u8>, refresh: Refresh) -> Result<()> {
        if body.is_empty() {
            return Ok(());
        }
        let outcomes =
            self.run(move |c| async move { c.bulk(Bytes::from(body), refresh).await })?;
        match outcomes.into_iter().find(|o| *o != ItemOutcome::Indexed) {
            Some(o) => Err(StoreError::OpenSearch(format!(
                "a bulk write failed: {o:?}"
            ))),
            None => Ok(()),
        }
    }

    /// Replaces one document, visible to lists when this returns.
    fn put_doc(&self, index: &str, id: &str, doc: Value) -> Result<()> {
        let mut body = Vec::new();
        push_line(&mut body, &json!({"index": {"_index": index, "_id": id}}))?;
        push_line(&mut body, &doc)?;
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

    /// Every matching document's record, in `sort` order.
    fn list<T: DeserializeOwned>(&self, index: &str, query: Value, sort: Value) -> Result<Vec<T>> {
        let index = index.to_owned();
        let sources = self.run(move |c| async move { c.search_all(&index, query, sort).await })?;
        sources.iter().map(body_of).collect()
    }

    fn delete_docs(&self, index: &str, ids: &[String]) -> Result<()> {
        let mut body = Vec::new();
        for id in ids {
            push_line(&mut body, &json!({"delete": {"_index": index, "_id": id}}))?;
        }
        if body.is_empty() {
            return Ok(());
        }
        let outcomes =
            self.run(move |c| async move { c.bulk(Bytes::from(body), Refresh::WaitFor).await })?;
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
        let first = self.next_sequence(instances.len() as u64);
        let mut body = Vec::with_capacity(instances.len() * 512);
        for (i, instance) in instances.iter().enumerate() {
            // An update with an upsert: a new instance gets its sequence, a replaced one keeps it.
            let fields = instance_fields(instance)?;
            let mut upsert = fields.clone();
            upsert["id"] = json!(instance.id);
            upsert["deployment_id"] = json!(deployment_id);
            upsert["seq"] = json!(first + i as u64);
            push_line(
                &mut body,
                &json!({"update": {"_index": index, "_id": instance_doc_id(deployment_id, &instance.id)}}),
            )?;
            push_line(&mut body, &json!({"doc": fields, "upsert": upsert}))?;
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
        let first = self.next_sequence(entries.len() as u64);
        let mut body = Vec::with_capacity(entries.len() * 128);
        for (i, entry) in entries.iter().enumerate() {
            let seq = first + i as u64;
            push_line(
                &mut body,
                &json!({"index": {"_index": index, "_id": format!("{execution_id}/{seq}")}}),
            )?;
            push_line(
                &mut body,
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
        // The store's events go to the event index, under ids in append order.
        let first = self.next_sequence(events.len() as u64);
        let records: Vec<EventRecord> = events
            .iter()
            .enumerate()
            .map(|(i, event)| EventRecord {
                id: format!("{execution_id}-{:020}", first + i as u64),
                level: None,
                logger: None,
                event: event.clone(),
            })
            .collect();
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
        let prefix = format!("{execution_id}-");
        let query = json!({"bool": {"filter": [
            {"term": {"context.execution_id": execution_id}},
            {"prefix": {"id": prefix}},
        ]}});
        let sources = self.run(move |c| async move {
            c.refresh(&index).await?;
            c.search_all(&index, query, json!([{"id": "asc"}])).await
        })?;
        sources
            .into_iter()
            .map(|s| Ok(serde_json::from_value::<EventRecord>(s)?.event))
            .collect()
    }
}
