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
//! | `secrets` | one per secret of a tenant | `tenant/key` |
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
use futures_util::{StreamExt, TryStreamExt, stream};
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

/// Event records in one bulk request at most.
const EVENTS_PER_BULK: usize = 1000;

/// Bulk requests of one call sent at once: the write threads of a small node.
const BULKS_IN_FLIGHT: usize = 2;
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
        // Today's event index too, not left to the first bulk: a search that meets an index
        // whose shards are still starting fails ("all shards failed").
        let today = time::OffsetDateTime::now_utc().date();
        let indices = STATE_INDICES
            .iter()
            .map(|name| self.index(name))
            .chain([self.events_index_of(today)]);
        for index in indices {
            let response = self
                .os
                .indices()
                .create(IndicesCreateParts::Index(&index))
                .send()
                .await
                .map_err(request_error)?;
            let status = response.status_code();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                if !body.contains("resource_already_exists_exception") {
                    return Err(StoreError::OpenSearch(format!(
                        "creating index {index}: {status}: {body}"
                    )));
                }
            }
        }
        self.apply_retention(today).await?;
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
    async fn bulk(&self, body: Bytes, refresh: Refresh) -> Result<Vec<ItemOutcome>> {
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

    /// Indexes records into their day's event index, each under its id; outcomes in order.
    ///
    /// A large set goes as several bulk requests of [`EVENTS_PER_BULK`] (and
    /// [`MAX_BULK_BYTES`]), [`BULKS_IN_FLIGHT`] at a time: OpenSearch works through one bulk's items for a shard on one write thread,
    /// so a single huge request leaves the node's other write threads idle (and could pass its
    /// request size limit).
    pub async fn bulk_events(
        &self,
        records: &[EventRecord],
        refresh: Refresh,
    ) -> Result<Vec<ItemOutcome>> {
        let mut body = BulkBody::new().max_actions(EVENTS_PER_BULK);
        for record in records {
            let index = self.events_index_for(&record.event.timestamp);
            body.push(
                &json!({"index": {"_index": index, "_id": record.id}}),
                record,
            )?;
        }
        self.send_bulk(body, refresh, BULKS_IN_FLIGHT).await
    }

    /// Sends a body's requests, `in_flight` at a time; the outcome of every action, in order.
    /// Fails when a request fails as a whole.
    async fn send_bulk(
        &self,
        body: BulkBody,
        refresh: Refresh,
        in_flight: usize,
    ) -> Result<Vec<ItemOutcome>> {
        let outcomes: Vec<Vec<ItemOutcome>> = stream::iter(body.into_requests())
            .map(|request| self.bulk(request, refresh))
            .buffered(in_flight)
            .try_collect()
            .await?;
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// [`Client::send_bulk`], one request after the other (writes whose order matters).
    pub(super) async fn send_bulk_in_order(
        &self,
        body: BulkBody,
        refresh: Refresh,
    ) -> Result<Vec<ItemOutcome>> {
        self.send_bulk(body, refresh, 1).await
    }

    /// Records documents OpenSearch rejected for good: each one's id, the reason, and its JSON.
    pub async fn dead_letter(&self, rejected: &[(String, String, String)]) -> Result<()> {
        let index = self.dead_letter_index();
        let at = now_rfc3339();
        let mut body = BulkBody::new();
        for (id, reason, source) in rejected {
            body.push(
                &json!({"index": {"_index": index, "_id": id}}),
                &json!({"id": id, "reason": reason, "source": source, "at": at}),
            )?;
        }
        let outcomes = self.send_bulk_in_order(body, Refresh::False).await?;
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
const STATE_INDICES: [&str; 6] = [
    "blueprints",
    "deployments",
    "node-instances",
    "executions",
    "journal",
    "secrets",
];

/// Each template's index name (or pattern), mappings and settings.
fn templates() -> Vec<(&'static str, Value, Value)> {
    let keyword = || json!({"type": "keyword"});
    let long = || json!({"type": "long"});
    // A keyword only ever filtered on: no doc values (nothing sorts or aggregates by it).
    let filter = || json!({"type": "keyword", "doc_values": false});
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
            state.clone(),
        ),
        (
            "secrets",
            json!({"dynamic": false, "properties": {
                "tenant": keyword(), "key": keyword(), "body": body(),
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
            // Written a few hundred thousand at a time by an install of thousands of instances,
            // and the node's costliest work then: only what queries use is indexed. Filters
            // need no doc values (only the sort's `timestamp` and `id` keep them); the text
            // is matched, never scored nor searched as a phrase (no frequencies, positions
            // or norms).
            "events-*",
            json!({"dynamic": false, "properties": {
                "id": keyword(), "type": filter(), "event_type": filter(), "level": filter(),
                "logger": filter(), "timestamp": {"type": "date", "format": "strict_date_optional_time"},
                "context": {"dynamic": false, "properties": {
                    "deployment_id": filter(), "execution_id": filter(),
                    "workflow_id": filter(), "task_id": filter(), "operation": filter(),
                    "plugin": filter(), "node_id": filter(), "node_name": filter(),
                }},
                "message": {"properties": {
                    "text": {"type": "text", "index_options": "docs", "norms": false},
                    "arguments": {"type": "object", "enabled": false},
                }},
            }}),
            // No explicit refresh interval: OpenSearch's default (every second) with its
            // search-idle rule, so while nobody has searched the index for 30 s (an install's
            // burst, say) it is not refreshed at all, and the first search waits for a refresh
            // and sees everything. Under such a burst each refresh made a small segment: the
            // refreshes and the merges after them took a third as long as the indexing itself.
            json!({"number_of_shards": 1}),
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

/// Bytes of one `_bulk` request at most: OpenSearch refuses a request over its
/// `http.max_content_length` (100 MB by default), which the node instances of a deployment of
/// a hundred thousand would pass.
const MAX_BULK_BYTES: usize = 8 << 20;

/// A `_bulk` body, cut between actions into requests of at most [`MAX_BULK_BYTES`] (an action
/// larger than that alone makes a request of its own) and, if asked, of at most so many
/// actions.
pub(super) struct BulkBody {
    requests: Vec<Bytes>,
    current: Vec<u8>,
    /// Actions in `current`.
    actions: usize,
    max_bytes: usize,
    max_actions: usize,
}

impl BulkBody {
    pub(super) fn new() -> Self {
        BulkBody {
            requests: Vec::new(),
            current: Vec::new(),
            actions: 0,
            max_bytes: MAX_BULK_BYTES,
            max_actions: usize::MAX,
        }
    }

    #[cfg(test)]
    fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    fn max_actions(mut self, max: usize) -> Self {
        self.max_actions = max;
        self
    }

    /// Adds an action with its document (`index`, `update` …).
    pub(super) fn push(&mut self, action: &Value, source: &impl serde::Serialize) -> Result<()> {
        self.add(|buf| {
            push_line(buf, action)?;
            push_line(buf, source)
        })
    }

    /// Adds a `delete` action (no document).
    pub(super) fn delete(&mut self, action: &Value) -> Result<()> {
        self.add(|buf| push_line(buf, action))
    }

    fn add(&mut self, write: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
        if self.actions == self.max_actions {
            self.cut();
        }
        let start = self.current.len();
        write(&mut self.current)?;
        self.actions += 1;
        if self.current.len() > self.max_bytes && start > 0 {
            let this = self.current.split_off(start);
            let full = std::mem::replace(&mut self.current, this);
            self.requests.push(Bytes::from(full));
            self.actions = 1;
        }
        Ok(())
    }

    /// Closes the current request, if it has anything.
    fn cut(&mut self) {
        if !self.current.is_empty() {
            self.requests
                .push(Bytes::from(std::mem::take(&mut self.current)));
            self.actions = 0;
        }
    }

    /// The requests' bodies, in the order of the actions.
    fn into_requests(mut self) -> Vec<Bytes> {
        self.cut();
        self.requests
    }
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
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return Err(StoreError::Unavailable(format!("{what}: {status}: {text}")));
    }
    if !status.is_success() {
        return Err(StoreError::OpenSearch(format!("{what}: {status}: {text}")));
    }
    Ok(serde_json::from_str(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(request: &Bytes) -> Vec<Value> {
        std::str::from_utf8(request)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_bulk_body_is_cut_between_actions_and_keeps_their_order() {
        let mut body = BulkBody::new().max_bytes(200);
        let mut whole = Vec::new();
        for i in 0..20 {
            let action = json!({"index": {"_index": "x", "_id": i}});
            let doc = json!({"n": i, "pad": "p".repeat(i * 5)});
            push_line(&mut whole, &action).unwrap();
            push_line(&mut whole, &doc).unwrap();
            body.push(&action, &doc).unwrap();
        }
        body.delete(&json!({"delete": {"_index": "x", "_id": 99}}))
            .unwrap();
        push_line(&mut whole, &json!({"delete": {"_index": "x", "_id": 99}})).unwrap();
        let requests = body.into_requests();
        assert!(requests.len() > 5, "{} requests", requests.len());
        let joined: Vec<u8> = requests.iter().flat_map(|r| r.to_vec()).collect();
        assert_eq!(joined, whole, "nothing lost, added or reordered");
        for request in &requests {
            let lines = lines(request);
            // Each request starts with an action, and an index action has its document.
            assert!(lines[0].get("index").or(lines[0].get("delete")).is_some());
            let one_action = lines.len() <= 2;
            assert!(
                request.len() <= 200 || one_action,
                "{} bytes",
                request.len()
            );
        }
    }

    #[test]
    fn a_bulk_body_can_be_cut_by_actions_too() {
        let mut body = BulkBody::new().max_actions(3);
        for i in 0..7 {
            body.push(
                &json!({"index": {"_index": "x", "_id": i}}),
                &json!({"n": i}),
            )
            .unwrap();
        }
        let sizes: Vec<usize> = body
            .into_requests()
            .iter()
            .map(|r| lines(r).len() / 2)
            .collect();
        assert_eq!(sizes, [3, 3, 1]);
    }

    #[test]
    fn an_empty_bulk_body_makes_no_request() {
        assert!(BulkBody::new().into_requests().is_empty());
    }
}
