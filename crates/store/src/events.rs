//! [`EventIndex`]: the searchable record of logs and events.
//!
//! A record ([`EventRecord`], the model's) is a Cloudify event or log with an id, which is what
//! makes a redelivered record land on itself rather than beside itself, and for logs a level.
//! Records are ordered by `(timestamp, id)`: queries sort by it, and [`EventIndex::follow`]
//! returns what comes after a cursor in that order.

pub use drover_model::EventRecord;

use crate::Result;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Oldest first.
    #[default]
    Ascending,
    Descending,
}

/// Which records a query wants. Every filter that is set must match; an empty list matches
/// everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    pub execution_id: Option<String>,
    pub deployment_id: Option<String>,
    /// The node instance (Cloudify's `context.node_id`).
    pub node_instance_id: Option<String>,
    /// Any of these `event_type`s.
    pub event_types: Vec<String>,
    /// Any of these levels (so: logs only, when set).
    pub levels: Vec<String>,
    /// `cloudify_event` or `cloudify_log`.
    pub kind: Option<String>,
    /// Timestamps at or after this (RFC 3339, UTC, as records carry them).
    pub since: Option<String>,
    /// Timestamps before this.
    pub until: Option<String>,
    /// Every word of it appears in the message text (case-insensitive, whole words).
    pub text: Option<String>,
}

/// One page of a query's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<EventRecord>,
    /// How many records match in all.
    pub total: u64,
}

/// What [`EventIndex::follow`] found after a cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowPage {
    pub records: Vec<EventRecord>,
    /// Where to continue: pass it to the next call (the same one when nothing was new).
    pub cursor: Option<String>,
}

/// Appends and searches logs and events.
pub trait EventIndex: Send + Sync {
    /// Appends records in one batch; a record whose id is already indexed replaces it. Visible
    /// to queries when this returns.
    fn append(&self, records: &[EventRecord]) -> Result<()>;
    /// The records matching `query`, sorted by `(timestamp, id)` in `order`, skipping `offset`
    /// and returning at most `size`.
    fn query(
        &self,
        query: &EventQuery,
        order: SortOrder,
        offset: usize,
        size: usize,
    ) -> Result<Page>;
    /// At most `limit` matching records after `cursor` (from the start when `None`), oldest
    /// first, and the cursor to continue from. A record indexed late with a timestamp before
    /// the cursor is not returned.
    fn follow(&self, query: &EventQuery, cursor: Option<&str>, limit: usize) -> Result<FollowPage>;
}

/// The words of a text query, lower-cased, as both implementations split them.
pub(crate) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl EventQuery {
    /// Whether a record matches (the embedded index's filter; OpenSearch's query says the same).
    pub(crate) fn matches(&self, r: &EventRecord) -> bool {
        let c = &r.event.context;
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let any = |want: &[String], have: Option<&str>| {
            want.is_empty() || have.is_some_and(|h| want.iter().any(|w| w == h))
        };
        eq(&self.execution_id, &c.execution_id)
            && eq(&self.deployment_id, &c.deployment_id)
            && eq(&self.node_instance_id, c.node_id.as_deref().unwrap_or(""))
            && eq(&self.kind, &r.event.kind)
            && any(&self.event_types, Some(&r.event.event_type))
            && any(&self.levels, r.level.as_deref())
            && self
                .since
                .as_deref()
                .is_none_or(|s| r.event.timestamp.as_str() >= s)
            && self
                .until
                .as_deref()
                .is_none_or(|u| r.event.timestamp.as_str() < u)
            && self.text.as_deref().is_none_or(|t| {
                let have = words(&r.event.message.text);
                words(t).iter().all(|w| have.contains(w))
            })
    }
}
