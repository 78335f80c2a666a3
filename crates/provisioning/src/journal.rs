//! The creation journal: what a driver must remember across a crash to stay idempotent on a
//! cloud whose lists are eventually consistent.
//!
//! The cloud's metadata is the source of truth (every server carries its node instance id),
//! but a server created a moment ago may not show in lists yet. So before each create request
//! the driver records an *intent* for the key (fsynced), and the server's id once the cloud
//! answers. Whoever creates or deletes that key later — this process after a retry, or a
//! restarted one after a `kill -9` — knows that a server may exist that lists do not show yet:
//! it waits until the intent is older than the cloud's consistency window before trusting a
//! list, and deletes the ids recorded even when lists miss them. A key is forgotten once its
//! servers are deleted.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What the journal knows of one key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRecord {
    /// When the last create request for the key was about to be sent.
    pub last_intent: Option<SystemTime>,
    /// Cloud ids of servers made for the key and not yet deleted.
    pub server_ids: BTreeSet<String>,
}

/// One line of the journal file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    /// A create request for `key` is about to be sent, at `at_ms` (Unix milliseconds).
    Intent { key: String, at_ms: u64 },
    /// The cloud made server `id` for `key`.
    Created { key: String, id: String },
    /// Server `id` of `key` is deleted.
    Deleted { key: String, id: String },
    /// Every server of `key` is deleted.
    Forgotten { key: String },
}

/// A journal failed to persist: creating without it could duplicate servers after a crash.
#[derive(Debug, thiserror::Error)]
#[error("creation journal {path}: {source}")]
pub struct JournalError {
    path: PathBuf,
    source: std::io::Error,
}

/// The journal, in memory and, when opened on a file, in an append-only JSON-lines file
/// written with `fsync` before the cloud request it announces.
pub struct Journal {
    keys: Mutex<HashMap<String, KeyRecord>>,
    file: Option<(PathBuf, Mutex<File>)>,
}

impl Journal {
    /// A journal that lives as long as the process (tests, the embedded mode).
    pub fn in_memory() -> Self {
        Journal {
            keys: Mutex::new(HashMap::new()),
            file: None,
        }
    }

    /// Opens (or creates) the journal at `path`, replays it, and rewrites it with only what
    /// is still live, so it does not grow without bound. A line that does not parse (the tail
    /// of a write cut short by a crash) is skipped.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let err = |source| JournalError {
            path: path.to_owned(),
            source,
        };
        let mut keys: HashMap<String, KeyRecord> = HashMap::new();
        match File::open(path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line.map_err(err)?;
                    if let Ok(entry) = serde_json::from_str::<Entry>(&line) {
                        apply(&mut keys, entry);
                    }
                }
                // A request announced before a crash may have reached the cloud as late as
                // the crash, which is unknown: count its window from now.
                let now = SystemTime::now();
                for record in keys.values_mut() {
                    if record.last_intent.is_some() {
                        record.last_intent = Some(now);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let compacted = path.with_extension("compacting");
        {
            let mut out = File::create(&compacted).map_err(err)?;
            for (key, record) in &keys {
                for entry in entries(key, record) {
                    writeln!(out, "{}", line(&entry)).map_err(err)?;
                }
            }
            out.sync_all().map_err(err)?;
        }
        std::fs::rename(&compacted, path).map_err(err)?;
        let file = OpenOptions::new().append(true).open(path).map_err(err)?;
        Ok(Journal {
            keys: Mutex::new(keys),
            file: Some((path.to_owned(), Mutex::new(file))),
        })
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<String, KeyRecord>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the journal knows of `key` (a default record when nothing).
    pub fn get(&self, key: &str) -> KeyRecord {
        self.keys().get(key).cloned().unwrap_or_default()
    }

    /// Records that a create request for `key` is about to go out.
    pub fn intent(&self, key: &str) -> Result<(), JournalError> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.record(Entry::Intent {
            key: key.into(),
            at_ms,
        })
    }

    pub fn created(&self, key: &str, id: &str) -> Result<(), JournalError> {
        self.record(Entry::Created {
            key: key.into(),
            id: id.into(),
        })
    }

    pub fn deleted(&self, key: &str, id: &str) -> Result<(), JournalError> {
        self.record(Entry::Deleted {
            key: key.into(),
            id: id.into(),
        })
    }

    pub fn forget(&self, key: &str) -> Result<(), JournalError> {
        self.record(Entry::Forgotten { key: key.into() })
    }

    fn record(&self, entry: Entry) -> Result<(), JournalError> {
        if let Some((path, file)) = &self.file {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            writeln!(file, "{}", line(&entry))
                .and_then(|()| file.sync_data())
                .map_err(|source| JournalError {
                    path: path.clone(),
                    source,
                })?;
        }
        apply(&mut self.keys(), entry);
        Ok(())
    }
}

fn line(entry: &Entry) -> String {
    serde_json::to_string(entry).unwrap_or_default()
}

fn apply(keys: &mut HashMap<String, KeyRecord>, entry: Entry) {
    match entry {
        Entry::Intent { key, at_ms } => {
            keys.entry(key).or_default().last_intent =
                Some(UNIX_EPOCH + Duration::from_millis(at_ms));
        }
        Entry::Created { key, id } => {
            keys.entry(key).or_default().server_ids.insert(id);
        }
        Entry::Deleted { key, id } => {
            if let Some(record) = keys.get_mut(&key) {
                record.server_ids.remove(&id);
            }
        }
        Entry::Forgotten { key } => {
            keys.remove(&key);
        }
    }
}

/// The entries that rebuild `record`.
fn entries(key: &str, record: &KeyRecord) -> Vec<Entry> {
    let intent = record.last_intent.map(|at| Entry::Intent {
        key: key.into(),
        at_ms: at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
    });
    let created = record.server_ids.iter().map(|id| Entry::Created {
        key: key.into(),
        id: id.clone(),
    });
    intent.into_iter().chain(created).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_journal_remembers_intents_and_live_ids_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        {
            let journal = Journal::open(&path).unwrap();
            journal.intent("a").unwrap();
            journal.created("a", "id-1").unwrap();
            journal.created("a", "id-2").unwrap();
            journal.deleted("a", "id-1").unwrap();
            journal.intent("b").unwrap();
            journal.created("b", "id-3").unwrap();
            journal.forget("b").unwrap();
            journal.intent("c").unwrap();
        }
        // A write cut short by a crash leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{{\"created\":{{\"key\":\"c\",").unwrap();
        drop(file);
        let journal = Journal::open(&path).unwrap();
        let a = journal.get("a");
        assert!(a.last_intent.is_some());
        assert_eq!(a.server_ids, BTreeSet::from(["id-2".to_string()]));
        assert_eq!(journal.get("b"), KeyRecord::default());
        assert!(journal.get("c").last_intent.is_some());
        assert!(journal.get("c").server_ids.is_empty());
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 3, "compacted to a's intent and id and c's intent");
    }
}
