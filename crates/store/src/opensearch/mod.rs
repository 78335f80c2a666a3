//! The OpenSearch implementations: [`OpenSearchStore`] and [`OpenSearchEventIndex`] on the
//! synchronous traits, and [`Client`], the async layer under them that ingest uses directly.
//!
//! Indices, all named `<prefix>-…` (prefix `drover` by default):
//!
//! | index | holds | document id |
//! |---|---|---|
//! | `blueprints`, `deployments`, `executions` | one document per record | the record's id |
//! | `node-instances` | one per instance, with its version and first-write sequence | `deployment/instance` |
//! | `journal` | one per journal entry, with a per-store increasing sequence | `execution/sequence` |
//! | `events-YYYY.MM.DD` | logs and events, by the day of their timestamp | the record's id |
//! | `dead-letter` | what OpenSearch rejected for good, with the reason | the record's id |
//!
//! Templates (mappings and settings) for all of them are put at start; the state indices are
//! created then too. A record's JSON is kept whole in a non-indexed `body` field beside the
//! fields that are searched or sorted on, so a replace never merges old fields into new ones.
//! Refresh is chosen per call: writes that lists must see wait for a refresh (`wait_for`);
//! append-heavy, rarely read data (journal, the store's events) is refreshed when it is read;
//! reads by id are real-time and need none. Event indices older than the retention are deleted
//! at start and by [`Client::apply_retention`].

mod events;
mod store;
mod worker;

use std::time::Duration;

use bytes::Bytes;
use opensearch::http::StatusCode;
use opensearch::http::response::Response;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::indices::{
    IndicesCreateParts, IndicesDeleteIndexTemplateParts, IndicesDeleteParts, IndicesGetParts,
    IndicesPutIndexTemplateParts, IndicesRefreshParts,
};
use opensearch::{BulkParts, GetParts, OpenSearch, SearchParts};
use serde_json::{Value, json};

pub use events::OpenSearchEventIndex;
pub use opensearch::params::Refresh;
pub use store::OpenSearchStore;

use crate::events::EventRecord;
use crate::{Result, StoreError};

/// Where the node is and how drover's indices are named there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSearchOptions {
    /// `http(s)://host:port`.
    pub url: String,
    /// Every index name starts with `<prefix>-`; two installations (or tests) share a node with
    /// different prefixes.
    pub prefix: String,
    /// Event indices whose day is older than this many days are deleted.
    pub event_retention_days: u32,
    /// Per request.
    pub timeout: Duration,
}

impl OpenSearchOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "drover".into(),
            event_retention_days: 30,
            timeout: Duration::from_secs(30),
        }
    }

    /// From a store URL: `http(s)://host:port[/][?prefix=NAME][&retention_days=N]`.
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut options = Self::new(base.trim_end_matches('/'));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("prefix", p)) if valid_prefix(p) => options.prefix = p.to_owned(),
                Some(("prefix", p)) => {
                    return Err(invalid(format!(
                        "prefix {p:?}: lower-case letters, digits, '-' and '_' only"
                    )));
                }
                Some(("retention_days", n)) => {
                    options.event_retention_days =
                        n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            invalid(format!(
                                "retention_days {n:?}: a whole number of days, at least 1"
                            ))
                        })?;
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown parameter {pair:?} (prefix, retention_days)"
                    )));
                }
            }
        }
        url::Url::parse(&options.url).map_err(|e| invalid(e.to_string()))?;
        Ok(options)
    }
}

fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with(['-', '_'])
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// What became of one document of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Indexed,
    /// Worth sending again (OpenSearch was busy or a shard unavailable).
    Retry(String),
    /// OpenSearch will never take it (mapping or parse failure): the reason.
    Rejected(String),
}

/// The async layer: index names, templates, bulk writes and searches.
#[derive(Clone)]
pub struct Client {
    os: OpenSearch,
    options: OpenSearchOptions,
}

impl Client {
    pub fn new(options: OpenSearchOptions) -> Result<Self> {
        let url = url::Url::parse(&options.url).map_err(|e| StoreError::InvalidUrl {
            url: options.url.clone(),
            reason: e.to_string(),
        })?;
        let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(options.timeout)
            .build()
            .map_err(|e| StoreError::OpenSearch(format!("building the client: {e}")))?;
        Ok(Self {
            os: OpenSearch::new(transport),
            options,
        })
    }

    pub fn options(&self) -> &OpenSearchOptions {
        &self.options
    }

    pub fn index(&self, name: &str) -> String {
        format!("{}-{name}", self.options.prefix)
    }

    /// All event indices.
    pub fn events_pattern(&self) -> String {
        self.index("events-*")
    }

    pub fn dead_letter_index(&self) -> String {
        self.index("dead-letter")
    }

    /// The event index of a record's day; a timestamp without a date goes to today's (where
    /// its mapping then rejects it).
    pub fn events_index_for(&self, timestamp: &str) -> String {
        let day = timestamp
            .get(..10)
            .and_then(|d| time::Date::parse(d, DAY_IN_TIMESTAMP).ok())
            .unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
        self.events_index_of(day)
    }

    fn events_index_of(&self, day: time::Date) -> String {
        let name = day
            .format(DAY_IN_INDEX)
            .unwrap_or_else(|_| "invalid".to_owned());
        self.index(&format!("events-{name}"))
    }

    /// Puts every template and creates the state indices (idempotent), then applies the event
    /// retention.
    pub async fn ensure_indices(&self) -> Result<()> {
        for (name, mappings, settings) in templates() {
            let body = json!({
                "index_patterns": [self.index(name)],
                "priority": 100,
                "template": {"settings": settings, "mappings": mappings},
            });
            let response = self
                .os
                .indices()
                .put_index_template(IndicesPutIndexTemplateParts::Name(
                    &self.index(name.trim_end_matches("-*")),
                ))
                .body(body)
                .send()
                .await;
            checked(response, "putting an index template").await?;
        }
        for name in STATE_INDICES {
            let response = self
                .os
                .indices()
                .create(IndicesCreateParts::Index(&self.index(name)))
                .send()
                .await
                .map_err(request_error)?;
            let status = response.status_code();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                if !body.contains("resource_already_exists_exception") {
                    return Err(StoreError::OpenSearch(format!(
                        "creating index {}: {status}: {body}",
                        self.index(name)
                    )));
                }
            }
        }
        self.apply_retention(time::OffsetDateTime::now_utc().date())
            .await?;
        Ok(())
    }

    /// Deletes the event indices whose day is more than the retention before `today`; returns
    /// their names.
    pub async fn apply_retention(&self, today: time::Date) -> Result<Vec<String>> {
        let response = self
            .os
            .indices()
            .get(IndicesGetParts::Index(&[&self.events_pattern()]))
            .send()
            .await;
        let indices = checked(response, "listing event indices").await?;
        let oldest = today - time::Duration::days(i64::from(self.options.event_retention_days));
        let prefix = self.index("events-");
        let mut expired = Vec::new();
        for name in indices.as_object().into_iter().flat_map(|m| m.keys()) {
            let day = name
                .strip_prefix(&prefix)
                .and_then(|d| time::Date::parse(d, DAY_IN_INDEX).ok());
            if day.is_some_and(|d| d < oldest) {
                expired.push(name.clone());
            }
        }
        if !expired.is_empty() {
            let names: Vec<&str> = expired.iter().map(String::as_str).collect();
            let response = self
                .os
                .indices()
                .delete(IndicesDeleteParts::Index(&names))
                .send()
                .await;
            checked(response, "deleting expired event indices").await?;
            tracing::info!(indices = ?expired, "deleted event indices past the retention");
        }
        Ok(expired)
    }

    /// Sends one `_bulk` request (NDJSON `body`) and returns each item's outcome, in order.
    pub async fn bulk(&self, body: Bytes, refresh: Refresh) -> Result<Vec<ItemOutcome>> {
        let response = self
            .os
            .bulk(BulkParts::None)
            .refresh(refresh)
            .body(vec![body])
            .send()
            .await;
        let answer = checked(response, "bulk request").await?;
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        Ok(items.iter().map(item_outcome).collect())
    }

    /// Indexes records into their day's event index, each under its id.
    pub async fn bulk_events(
        &self,
        records: &[EventRecord],
        refresh: Refresh,
    ) -> Result<Vec<ItemOutcome>> {
        let mut body = Vec::with_capacity(records.len() * 400);
        for record in records {
            push_line(
                &mut body,
                &json!({"index": {"_index": self.events_index_for(&record.event.timestamp), "_id": record.id}}),
            )?;
            push_line(&mut body, record)?;
        }
        self.bulk(Bytes::from(body), refresh).await
    }

    /// Records documents OpenSearch rejected for good: each one's id, the reason, and its JSON.
    pub async fn dead_letter(&self, rejected: &[(String, String, String)]) -> Result<()> {
        let index = self.dead_letter_index();
        let at = now_rfc3339();
        let mut body = Vec::new();
        for (id, reason, source) in rejected {
            push_line(&mut body, &json!({"index": {"_index": index, "_id": id}}))?;
            push_line(
                &mut body,
                &json!({"id": id, "reason": reason, "source": source, "at": at}),
            )?;
        }
        let outcomes = self.bulk(Bytes::from(body), Refresh::False).await?;
        match outcomes.iter().find(|o| **o != ItemOutcome::Indexed) {
            Some(o) => Err(StoreError::OpenSearch(format!(
                "the dead-letter index refused a document: {o:?}"
            ))),
            None => Ok(()),
        }
    }

    pub async fn refresh(&self, index: &str) -> Result<()> {
        let response = self
            .os
            .indices()
            .refresh(IndicesRefreshParts::Index(&[index]))
            .allow_no_indices(true)
            .send()
            .await;
        checked(response, "refresh").await.map(drop)
    }

    /// How many event records are indexed, after a refresh (tests and benchmarks).
    pub async fn count_events(&self) -> Result<u64> {
        let index = self.events_pattern();
        self.refresh(&index).await?;
        let answer = self
            .search(&index, json!({"size": 0, "track_total_hits": true}))
            .await?;
        Ok(answer["hits"]["total"]["value"]
            .as_u64()
            .unwrap_or_default())
    }

    /// One search; the answer's JSON.
    pub async fn search(&self, index: &str, body: Value) -> Result<Value> {
        let response = self
            .os
            .search(SearchParts::Index(&[index]))
            .allow_no_indices(true)
            .ignore_unavailable(true)
            .body(body)
            .send()
            .await;
        checked(response, "search").await
    }

    /// Every hit's `_source` of a query, in `sort` order (which must end in a unique field),
    /// page after page with `search_after`.
    pub async fn search_all(&self, index: &str, query: Value, sort: Value) -> Result<Vec<Value>> {
        const PAGE: usize = 5000;
        let mut out = Vec::new();
        let mut after: Option<Value> = None;
        loop {
            let mut body =
                json!({"query": query, "sort": sort, "size": PAGE, "track_total_hits": false});
            if let Some(a) = after.take() {
                body["search_after"] = a;
            }
            let answer = self.search(index, body).await?;
            let hits = hits(&answer);
            let n = hits.len();
            for hit in hits {
                after = Some(hit["sort"].clone());
                out.push(hit["_source"].clone());
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    /// A document by id, real-time: its `_source`, `_seq_no` and `_primary_term`.
    pub(crate) async fn get(&self, index: &str, id: &str) -> Result<Option<(Value, i64, i64)>> {
        let response = self
            .os
            .get(GetParts::IndexId(index, id))
            .realtime(true)
            .send()
            .await
            .map_err(request_error)?;
        if response.status_code() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let doc = checked(Ok(response), "get").await?;
        Ok(Some((
            doc["_source"].clone(),
            doc["_seq_no"].as_i64().unwrap_or_default(),
            doc["_primary_term"].as_i64().unwrap_or_default(),
        )))
    }

    /// Deletes every index and template of this prefix (tests, and a reset).
    pub async fn delete_everything(&self) -> Result<()> {
        let pattern = self.index("*");
        let response = self
            .os
            .indices()
            .delete(IndicesDeleteParts::Index(&[&pattern]))
            .send()
            .await;
        checked(response, "deleting indices").await?;
        for (name, _, _) in templates() {
            let template = self.index(name.trim_end_matches("-*"));
            let response = self
                .os
                .indices()
                .delete_index_template(IndicesDeleteIndexTemplateParts::Name(&template))
                .send()
                .await;
            checked(response, "deleting an index template").await?;
        }
        Ok(())
    }

    pub(crate) fn raw(&self) -> &OpenSearch {
        &self.os
    }
}

const DAY_IN_TIMESTAMP: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");
const DAY_IN_INDEX: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year].[month].[day]");

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The state indices, created at start.
const STATE_INDICES: [&str; 5] = [
    "blueprints",
    "deployments",
    "node-instances",
    "executions",
    "journal",
];

/// Each template's index name (or pattern), mappings and settings.
fn templates() -> Vec<(&'static str, Value, Value)> {
    let keyword = || json!({"type": "keyword"});
    let long = || json!({"type": "long"});
    // The whole record, kept in `_source`, never indexed.
    let body = || json!({"type": "text", "index": false});
    // State is read right after it is written: refreshed often, and waited for by writes.
    let state = json!({"number_of_shards": 1, "refresh_interval": "250ms"});
    let by_id_and_date = json!({"dynamic": false, "properties": {
        "id": keyword(), "created_at": keyword(), "body": body(),
    }});
    vec![
        ("blueprints", by_id_and_date.clone(), state.clone()),
        ("deployments", by_id_and_date, state.clone()),
        (
            "node-instances",
            json!({"dynamic": false, "properties": {
                "id": keyword(), "deployment_id": keyword(), "state": keyword(),
                "version": long(), "seq": long(), "body": body(),
            }}),
            state.clone(),
        ),
        (
            "executions",
            json!({"dynamic": false, "properties": {
                "id": keyword(), "deployment_id": keyword(), "status": keyword(),
                "created_at": keyword(), "body": body(),
            }}),
            state,
        ),
        (
            "journal",
            json!({"dynamic": false, "properties": {
                "execution_id": keyword(), "seq": long(), "entry": body(),
            }}),
            json!({"number_of_shards": 1}),
        ),
        (
            "events-*",
            json!({"dynamic": false, "properties": {
                "id": keyword(), "type": keyword(), "event_type": keyword(), "level": keyword(),
                "logger": keyword(), "timestamp": {"type": "date", "format": "strict_date_optional_time"},
                "context": {"dynamic": false, "properties": {
                    "deployment_id": keyword(), "execution_id": keyword(),
                    "workflow_id": keyword(), "task_id": keyword(), "operation": keyword(),
                    "plugin": keyword(), "node_id": keyword(), "node_name": keyword(),
                }},
                "message": {"properties": {
                    "text": {"type": "text"},
                    "arguments": {"type": "object", "enabled": false},
                }},
            }}),
            json!({"number_of_shards": 1, "refresh_interval": "1s"}),
        ),
        (
            "dead-letter",
            json!({"dynamic": false, "properties": {
                "id": keyword(), "reason": {"type": "text"}, "source": body(),
                "at": {"type": "date"},
            }}),
            json!({"number_of_shards": 1}),
        ),
    ]
}

fn push_line(buf: &mut Vec<u8>, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *buf, value)?;
    buf.push(b'\n');
    Ok(())
}

fn item_outcome(item: &Value) -> ItemOutcome {
    let Some(op) = item.as_object().and_then(|o| o.values().next()) else {
        return ItemOutcome::Retry(format!("unreadable bulk item {item}"));
    };
    let status = op["status"].as_u64().unwrap_or(0);
    let reason = || {
        let e = &op["error"];
        format!(
            "{status} {}: {}",
            e["type"].as_str().unwrap_or("error"),
            e["reason"].as_str().unwrap_or("")
        )
    };
    match status {
        200..=299 => ItemOutcome::Indexed,
        // Busy, a shard not there yet, a conflict on a concurrent write of the same id.
        409 | 429 | 500.. => ItemOutcome::Retry(reason()),
        _ => ItemOutcome::Rejected(reason()),
    }
}

fn hits(answer: &Value) -> Vec<Value> {
    answer["hits"]["hits"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn request_error(e: opensearch::Error) -> StoreError {
    StoreError::OpenSearch(format!("request failed: {e}"))
}

/// The answer's JSON when the status is a success, else an error with the status and body.
async fn checked(response: Result<Response, opensearch::Error>, what: &str) -> Result<Value> {
    let response = response.map_err(request_error)?;
    let status = response.status_code();
    let text = response.text().await.map_err(request_error)?;
    if !status.is_success() {
        return Err(StoreError::OpenSearch(format!("{what}: {status}: {text}")));
    }
    Ok(serde_json::from_str(&text)?)
}
