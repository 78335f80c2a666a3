//! [`FileEventIndex`]: the embedded event index, one JSON-lines file read into memory at open.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::events::{EventIndex, EventQuery, EventRecord, FollowPage, Page, SortOrder};
use crate::file::{append_unsynced, for_each_line, io_err};
use crate::{Result, StoreError};

/// `(timestamp, id)`: the order of records.
type Key = (String, String);

/// The embedded event index: `DIR/events.jsonl`, appended to (a replaced record's newer line
/// wins at the next open), and searched in memory.
pub struct FileEventIndex {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<Key, EventRecord>,
    /// Each id's timestamp, to find the record a newer one with the same id replaces.
    timestamps: HashMap<String, String>,
}

impl Inner {
    fn insert(&mut self, record: EventRecord) {
        if let Some(old) = self
            .timestamps
            .insert(record.id.clone(), record.event.timestamp.clone())
        {
            self.records.remove(&(old, record.id.clone()));
        }
        self.records
            .insert((record.event.timestamp.clone(), record.id.clone()), record);
    }
}

impl FileEventIndex {
    /// Opens (creating if needed) the index under `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let path = dir.join("events.jsonl");
        let mut inner = Inner::default();
        for_each_line::<EventRecord>(&path, |r| inner.insert(r))?;
        Ok(Self {
            path,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EventIndex for FileEventIndex {
    fn append(&self, records: &[EventRecord]) -> Result<()> {
        let mut buf = Vec::with_capacity(records.len() * 256);
        for record in records {
            serde_json::to_writer(&mut buf, record)?;
            buf.push(b'\n');
        }
        let mut inner = self.lock();
        append_unsynced(&self.path, &buf)?;
        for record in records {
            inner.insert(record.clone());
        }
        Ok(())
    }

    fn query(
        &self,
        query: &EventQuery,
        order: SortOrder,
        offset: usize,
        size: usize,
    ) -> Result<Page> {
        let inner = self.lock();
        let matching = inner.records.values().filter(|r| query.matches(r));
        let (total, records) = match order {
            SortOrder::Ascending => page(matching, offset, size),
            SortOrder::Descending => page(matching.rev(), offset, size),
        };
        Ok(Page { records, total })
    }

    fn follow(&self, query: &EventQuery, cursor: Option<&str>, limit: usize) -> Result<FollowPage> {
        let start = match cursor {
            None => Bound::Unbounded,
            Some(c) => Bound::Excluded(
                serde_json::from_str::<Key>(c)
                    .map_err(|_| StoreError::InvalidCursor(c.to_owned()))?,
            ),
        };
        let inner = self.lock();
        let records: Vec<EventRecord> = inner
            .records
            .range((start, Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| query.matches(r))
            .take(limit)
            .cloned()
            .collect();
        let cursor = match records.last() {
            Some(r) => Some(serde_json::to_string(&(&r.event.timestamp, &r.id))?),
            None => cursor.map(str::to_owned),
        };
        Ok(FollowPage { records, cursor })
    }
}

fn page<'a>(
    it: impl Iterator<Item = &'a EventRecord>,
    offset: usize,
    size: usize,
) -> (u64, Vec<EventRecord>) {
    let mut total = 0;
    let mut out = Vec::new();
    for r in it {
        if total >= offset as u64 && out.len() < size {
            out.push(r.clone());
        }
        total += 1;
    }
    (total, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_shared_suite_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let index = FileEventIndex::open(dir.path()).unwrap();
        crate::suite::run_events(&index);
        let all = EventQuery::default();
        let before = index.query(&all, SortOrder::Ascending, 0, 1000).unwrap();
        let reopened = FileEventIndex::open(dir.path()).unwrap();
        assert_eq!(
            reopened.query(&all, SortOrder::Ascending, 0, 1000).unwrap(),
            before
        );
    }
}
