//! The creation journal: what a driver must remember across a crash to stay idempotent on a
//! cloud whose lists are eventually consistent.
//!
//! The cloud's metadata is the source of truth (every server carries its deployment and node
//! instance id), but a server created a moment ago may not show in lists yet. So before each
//! create request the driver records an *intent* for the key (fsynced), and the server's id once the cloud
//! answers. Whoever creates or deletes that key later — this process after a retry, or a
//! restarted one after a `kill -9` — knows that a server may exist that lists do not show yet:
//! it waits until the intent is older than the cloud's consistency window before trusting a
//! list, and deletes the ids recorded even when lists miss them. A key is forgotten once its
//! servers are deleted. Keys are [`ServerKey`]s (deployment and node instance), as node
//! instance ids repeat across deployments; lines written before the journal recorded the
//! deployment read as deployment `""`, which no key names.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::driver::ServerKey;

/// What the journal knows of one key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRecord {
    /// When the last create request for the key was about to be sent, or was answered if
    /// that is later: lists may miss the key's server until the consistency window has passed
    /// since then.
    pub last_intent: Option<SystemTime>,
    /// Cloud ids of servers made for the key and not yet deleted.
    pub server_ids: BTreeSet<String>,
}

/// One line of the journal file; `deployment` and `key` together name a [`ServerKey`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    /// A create request for `key` is about to be sent, at `at_ms` (Unix milliseconds).
    Intent {
        #[serde(default)]
        deployment: String,
        key: String,
        at_ms: u64,
    },
    /// The cloud made server `id` for `key`.
    Created {
        #[serde(default)]
        deployment: String,
        key: String,
        id: String,
    },
    /// Server `id` of `key` is deleted.
    Deleted {
        #[serde(default)]
        deployment: String,
        key: String,
        id: String,
    },
    /// Every server of `key` is deleted.
    Forgotten {
        #[serde(default)]
        deployment: String,
        key: String,
    },
}

impl Entry {
    /// The key the entry is about.
    fn server_key(&self) -> ServerKey {
        match self {
            Entry::Intent {
                deployment, key, ..
            }
            | Entry::Created {
                deployment, key, ..
            }
            | Entry::Deleted {
                deployment, key, ..
            }
            | Entry::Forgotten { deployment, key } => ServerKey::new(key, deployment),
        }
    }
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
    keys: Mutex<HashMap<ServerKey, KeyRecord>>,
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
        let mut keys: HashMap<ServerKey, KeyRecord> = HashMap::new();
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

    fn keys(&self) -> MutexGuard<'_, HashMap<ServerKey, KeyRecord>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the journal knows of `key` (a default record when nothing).
    pub fn get(&self, key: &ServerKey) -> KeyRecord {
        self.keys().get(key).cloned().unwrap_or_default()
    }

    /// The newest create request announced for any key of `deployment_id` (of every
    /// deployment when `None`): until the consistency window has passed since then, a list of
    /// those servers may miss one.
    pub fn newest_intent(&self, deployment_id: Option<&str>) -> Option<SystemTime> {
        self.keys()
            .iter()
            .filter(|(key, _)| deployment_id.is_none_or(|d| key.deployment_id == d))
            .filter_map(|(_, record)| record.last_intent)
            .max()
    }

    /// Records that a create request for `key` is about to go out.
    pub fn intent(&self, key: &ServerKey) -> Result<(), JournalError> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.record(Entry::Intent {
            deployment: key.deployment_id.clone(),
            key: key.key.clone(),
            at_ms,
        })
    }

    /// Records that the cloud made server `id` for `key`. The request may have reached the
    /// cloud well after its intent (it waits for its pace, and a 429 is sent again after its
    /// Retry-After), so the key's consistency window restarts at the answer. Only in memory: a
    /// reopened journal counts every window from its opening anyway.
    pub fn created(&self, key: &ServerKey, id: &str) -> Result<(), JournalError> {
        self.record(Entry::Created {
            deployment: key.deployment_id.clone(),
            key: key.key.clone(),
            id: id.into(),
        })?;
        self.keys().entry(key.clone()).or_default().last_intent = Some(SystemTime::now());
        Ok(())
    }

    pub fn deleted(&self, key: &ServerKey, id: &str) -> Result<(), JournalError> {
        self.record(Entry::Deleted {
            deployment: key.deployment_id.clone(),
            key: key.key.clone(),
            id: id.into(),
        })
    }

    pub fn forget(&self, key: &ServerKey) -> Result<(), JournalError> {
        self.record(Entry::Forgotten {
            deployment: key.deployment_id.clone(),
            key: key.key.clone(),
        })
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

fn apply(keys: &mut HashMap<ServerKey, KeyRecord>, entry: Entry) {
    let key = entry.server_key();
    match entry {
        Entry::Intent { at_ms, .. } => {
            keys.entry(key).or_default().last_intent =
                Some(UNIX_EPOCH + Duration::from_millis(at_ms));
        }
        Entry::Created { id, .. } => {
            keys.entry(key).or_default().server_ids.insert(id);
        }
        Entry::Deleted { id, .. } => {
            if let Some(record) = keys.get_mut(&key) {
                record.server_ids.remove(&id);
            }
        }
        Entry::Forgotten { .. } => {
            keys.remove(&key);
        }
    }
}

/// The entries that rebuild `record`.
fn entries(key: &ServerKey, record: &KeyRecord) -> Vec<Entry> {
    let intent = record.last_intent.map(|at| Entry::Intent {
        deployment: key.deployment_id.clone(),
        key: key.key.clone(),
        at_ms: at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
    });
    let created = record.server_ids.iter().map(|id| Entry::Created {
        deployment: key.deployment_id.clone(),
        key: key.key.clone(),
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
        let key = |k: &str| ServerKey::new(k, "d");
        {
            let journal = Journal::open(&path).unwrap();
            journal.intent(&key("a")).unwrap();
            journal.created(&key("a"), "id-1").unwrap();
            journal.created(&key("a"), "id-2").unwrap();
            journal.deleted(&key("a"), "id-1").unwrap();
            journal.intent(&key("b")).unwrap();
            journal.created(&key("b"), "id-3").unwrap();
            journal.forget(&key("b")).unwrap();
            journal.intent(&key("c")).unwrap();
        }
        // A write cut short by a crash leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{{\"created\":{{\"key\":\"c\",").unwrap();
        drop(file);
        let journal = Journal::open(&path).unwrap();
        let a = journal.get(&key("a"));
        assert!(a.last_intent.is_some());
        assert_eq!(a.server_ids, BTreeSet::from(["id-2".to_string()]));
        assert_eq!(journal.get(&key("b")), KeyRecord::default());
        assert!(journal.get(&key("c")).last_intent.is_some());
        assert!(journal.get(&key("c")).server_ids.is_empty());
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 3, "compacted to a's intent and id and c's intent");
    }

    #[test]
    fn one_node_instance_id_in_two_deployments_is_two_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let (d1, d2) = (ServerKey::new("a", "d1"), ServerKey::new("a", "d2"));
        {
            let journal = Journal::open(&path).unwrap();
            journal.created(&d1, "id-1").unwrap();
            journal.created(&d2, "id-2").unwrap();
            journal.forget(&d2).unwrap();
        }
        let journal = Journal::open(&path).unwrap();
        assert_eq!(
            journal.get(&d1).server_ids,
            BTreeSet::from(["id-1".to_string()])
        );
        assert_eq!(journal.get(&d2), KeyRecord::default());
    }

    #[test]
    fn the_newest_intent_is_per_deployment() {
        let journal = Journal::in_memory();
        assert_eq!(journal.newest_intent(None), None);
        journal.intent(&ServerKey::new("a", "d1")).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        journal.intent(&ServerKey::new("b", "d2")).unwrap();
        let d1 = journal.newest_intent(Some("d1")).unwrap();
        let d2 = journal.newest_intent(Some("d2")).unwrap();
        assert!(d1 < d2, "{d1:?} {d2:?}");
        assert_eq!(journal.newest_intent(None), Some(d2));
        assert_eq!(journal.newest_intent(Some("d3")), None);
    }

    #[test]
    fn a_create_answered_late_restarts_the_window_at_the_answer() {
        let journal = Journal::in_memory();
        let key = ServerKey::new("a", "d");
        journal.intent(&key).unwrap();
        let sent = journal.get(&key).last_intent.unwrap();
        std::thread::sleep(Duration::from_millis(20));
        journal.created(&key, "id-1").unwrap();
        let answered = journal.get(&key).last_intent.unwrap();
        assert!(
            answered.duration_since(sent).unwrap() >= Duration::from_millis(20),
            "{sent:?} {answered:?}"
        );
        assert_eq!(journal.newest_intent(Some("d")), Some(answered));
    }
}
