//! [`OpenSearchEventIndex`]: logs and events in daily OpenSearch indices.

use opensearch::params::Refresh;
use serde_json::{Value, json};

use super::worker::Worker;
use super::{Client, ItemOutcome, OpenSearchOptions, hits};
use crate::events::{EventIndex, EventQuery, EventRecord, FollowPage, Page, SortOrder};
use crate::{Result, StoreError};

/// The event index on an OpenSearch node (see [`super`] for its indices).
pub struct OpenSearchEventIndex {
    client: Client,
    worker: Worker,
}

impl OpenSearchEventIndex {
    /// Connects, puts the templates and creates the indices.
    pub fn open(options: OpenSearchOptions) -> Result<Self> {
        let client = Client::new(options)?;
        let worker = Worker::start("drover-events-opensearch")?;
        let c = client.clone();
        worker.run(async move { c.ensure_indices().await })?;
        Ok(Self { client, worker })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn search(&self, body: Value) -> Result<Value> {
        let (c, index) = (self.client.clone(), self.client.events_pattern());
        self.worker.run(async move { c.search(&index, body).await })
    }
}

/// The query's filters in OpenSearch's terms.
fn filter(q: &EventQuery) -> Value {
    let mut filters = Vec::new();
    let mut term = |field: &str, value: &Option<String>| {
        if let Some(v) = value {
            filters.push(json!({"term": {field: v}}));
        }
    };
    term("context.execution_id", &q.execution_id);
    term("context.deployment_id", &q.deployment_id);
    term("context.node_id", &q.node_instance_id);
    term("type", &q.kind);
    if !q.event_types.is_empty() {
        filters.push(json!({"terms": {"event_type": q.event_types}}));
    }
    if !q.levels.is_empty() {
        filters.push(json!({"terms": {"level": q.levels}}));
    }
    if q.since.is_some() || q.until.is_some() {
        let mut range = serde_json::Map::new();
        if let Some(s) = &q.since {
            range.insert("gte".into(), json!(s));
        }
        if let Some(u) = &q.until {
            range.insert("lt".into(), json!(u));
        }
        filters.push(json!({"range": {"timestamp": range}}));
    }
    if let Some(text) = &q.text {
        filters.push(json!({"match": {"message.text": {"query": text, "operator": "and"}}}));
    }
    json!({"bool": {"filter": filters}})
}

fn sort(order: SortOrder) -> Value {
    let o = match order {
        SortOrder::Ascending => "asc",
        SortOrder::Descending => "desc",
    };
    json!([{"timestamp": o}, {"id": o}])
}

fn records(answer: &Value) -> Result<Vec<EventRecord>> {
    hits(answer)
        .into_iter()
        .map(|h| Ok(serde_json::from_value(h["_source"].clone())?))
        .collect()
}

impl EventIndex for OpenSearchEventIndex {
    fn append(&self, records: &[EventRecord]) -> Result<()> {
        let (c, records) = (self.client.clone(), records.to_vec());
        let outcomes = self
            .worker
            .run(async move { c.bulk_events(&records, Refresh::WaitFor).await })?;
        match outcomes.into_iter().find(|o| *o != ItemOutcome::Indexed) {
            Some(o) => Err(StoreError::OpenSearch(format!(
                "indexing events failed: {o:?}"
            ))),
            None => Ok(()),
        }
    }

    fn query(
        &self,
        query: &EventQuery,
        order: SortOrder,
        offset: usize,
        size: usize,
    ) -> Result<Page> {
        let answer = self.search(json!({
            "query": filter(query),
            "sort": sort(order),
            "from": offset,
            "size": size,
            "track_total_hits": true,
        }))?;
        Ok(Page {
            records: records(&answer)?,
            total: answer["hits"]["total"]["value"]
                .as_u64()
                .unwrap_or_default(),
        })
    }

    fn follow(&self, query: &EventQuery, cursor: Option<&str>, limit: usize) -> Result<FollowPage> {
        let mut body = json!({
            "query": filter(query),
            "sort": sort(SortOrder::Ascending),
            "size": limit,
            "track_total_hits": false,
        });
        if let Some(c) = cursor {
            // The last hit's sort values: the timestamp in milliseconds and the id.
            let after: Value = serde_json::from_str(c)
                .ok()
                .filter(|v: &Value| {
                    v[0].is_i64() && v[1].is_string() && v.as_array().is_some_and(|a| a.len() == 2)
                })
                .ok_or_else(|| StoreError::InvalidCursor(c.to_owned()))?;
            body["search_after"] = after;
        }
        let answer = self.search(body)?;
        let last_sort = hits(&answer).last().map(|h| h["sort"].to_string());
        Ok(FollowPage {
            records: records(&answer)?,
            cursor: last_sort.or_else(|| cursor.map(str::to_owned)),
        })
    }
}
