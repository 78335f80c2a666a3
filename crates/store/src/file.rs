//! [`FileStore`]: the embedded state store, plain files under one directory.
//!
//! Layout (all JSON):
//! ```text
//! DIR/blueprints/ID.json                replaced atomically
//! DIR/deployments/ID/deployment.json    replaced atomically (write, fsync, rename, fsync dir)
//! DIR/deployments/ID/instances.jsonl    append-only upserts and deletions, compacted on read
//! DIR/executions/ID/execution.json      replaced atomically
//! DIR/executions/ID/journal.jsonl       append-only, one fsync per batch
//! DIR/executions/ID/events.jsonl        append-only, not fsynced (a record, not state)
//! DIR/secrets/TENANT.json               a tenant's secrets by key, mode 0600, replaced atomically
//! ```
//! A kill -9 can leave the last line of an append-only file half written; readers drop such a
//! torn last line (its batch was never acknowledged), and report any other unreadable line.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use drover_model::{Deployment, Event, Execution, NodeInstance};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Blueprint, JournalEntry, Result, Secret, StateStore, StoreError, next_version};

/// Compact an instances log once it holds this many times more lines than live instances.
const COMPACT_RATIO: usize = 4;

/// The embedded state store, under one directory (`./.drover/` by default in `drover local`).
pub struct FileStore {
    root: PathBuf,
    /// Serialises writers: appends of one batch must not interleave with another's.
    write: Mutex<()>,
}

/// One line of `instances.jsonl`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum InstanceLine {
    Deleted { deleted: String },
    Put(Box<NodeInstance>),
}

impl FileStore {
    /// Opens (creating if needed) a store under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["blueprints", "deployments", "executions", "secrets"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        Ok(Self {
            root,
            write: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deployment_dir(&self, id: &str) -> Result<PathBuf> {
        Ok(self.root.join("deployments").join(checked_id(id)?))
    }

    fn blueprint_path(&self, id: &str) -> Result<PathBuf> {
        Ok(self
            .root
            .join("blueprints")
            .join(format!("{}.json", checked_id(id)?)))
    }

    fn secrets_path(&self, tenant: &str) -> Result<PathBuf> {
        Ok(self
            .root
            .join("secrets")
            .join(format!("{}.json", checked_id(tenant)?)))
    }

    fn read_secrets(&self, tenant: &str) -> Result<BTreeMap<String, Secret>> {
        Ok(read_json(&self.secrets_path(tenant)?)?.unwrap_or_default())
    }

    /// Changes a tenant's secrets as they are on disk, under the write lock, and writes them
    /// back when `change` says it changed them; returns what it said.
    fn change_secrets(
        &self,
        tenant: &str,
        change: impl FnOnce(&mut BTreeMap<String, Secret>) -> bool,
    ) -> Result<bool> {
        let path = self.secrets_path(tenant)?;
        let _guard = self.lock();
        let mut secrets = self.read_secrets(tenant)?;
        let changed = change(&mut secrets);
        if changed {
            write_private(&path, &serde_json::to_vec(&secrets)?)?;
        }
        Ok(changed)
    }

    fn execution_dir(&self, id: &str) -> Result<PathBuf> {
        Ok(self.root.join("executions").join(checked_id(id)?))
    }

    fn read_instances(&self, path: &Path) -> Result<(IndexMap<String, NodeInstance>, usize)> {
        let mut map = IndexMap::new();
        let mut lines = 0;
        for_each_line::<InstanceLine>(path, |line| {
            lines += 1;
            match line {
                InstanceLine::Deleted { deleted } => {
                    map.shift_remove(&deleted);
                }
                InstanceLine::Put(instance) => {
                    map.insert(instance.id.clone(), *instance);
                }
            }
        })?;
        Ok((map, lines))
    }
}

impl StateStore for FileStore {
    fn put_blueprint(&self, blueprint: &Blueprint) -> Result<()> {
        let path = self.blueprint_path(&blueprint.id)?;
        let _guard = self.lock();
        write_atomic(&path, &serde_json::to_vec(blueprint)?)
    }

    fn blueprint(&self, id: &str) -> Result<Option<Blueprint>> {
        read_json(&self.blueprint_path(id)?)
    }

    fn blueprints(&self) -> Result<Vec<String>> {
        let mut found: Vec<Blueprint> = Vec::new();
        for name in list_dir(&self.root.join("blueprints"))? {
            if let Some(id) = name.strip_suffix(".json")
                && let Some(b) = self.blueprint(id)?
            {
                found.push(b);
            }
        }
        found.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(found.into_iter().map(|b| b.id).collect())
    }

    fn delete_blueprint(&self, id: &str) -> Result<()> {
        let path = self.blueprint_path(id)?;
        let _guard = self.lock();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path, e)),
            _ => Ok(()),
        }
    }

    fn put_deployment(&self, deployment: &Deployment) -> Result<()> {
        let dir = self.deployment_dir(&deployment.id)?;
        let _guard = self.lock();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        write_atomic(
            &dir.join("deployment.json"),
            &serde_json::to_vec(deployment)?,
        )
    }

    fn deployment(&self, id: &str) -> Result<Option<Deployment>> {
        read_json(&self.deployment_dir(id)?.join("deployment.json"))
    }

    fn deployments(&self) -> Result<Vec<String>> {
        let mut found: Vec<Deployment> = Vec::new();
        for id in list_dir(&self.root.join("deployments"))? {
            if let Some(d) = self.deployment(&id)? {
                found.push(d);
            }
        }
        found.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(found.into_iter().map(|d| d.id).collect())
    }

    fn delete_deployment(&self, id: &str) -> Result<()> {
        let dir = self.deployment_dir(id)?;
        let _guard = self.lock();
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&dir, e)),
            _ => Ok(()),
        }
    }

    fn put_node_instances(&self, deployment_id: &str, instances: &[NodeInstance]) -> Result<()> {
        let dir = self.deployment_dir(deployment_id)?;
        let mut buf = Vec::with_capacity(instances.len() * 256);
        for instance in instances {
            serde_json::to_writer(&mut buf, instance)?;
            buf.push(b'\n');
        }
        let _guard = self.lock();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        append(&dir.join("instances.jsonl"), &buf)
    }

    fn delete_node_instances(&self, deployment_id: &str, ids: &[String]) -> Result<()> {
        let dir = self.deployment_dir(deployment_id)?;
        let mut buf = Vec::new();
        for id in ids {
            serde_json::to_writer(
                &mut buf,
                &InstanceLine::Deleted {
                    deleted: id.clone(),
                },
            )?;
            buf.push(b'\n');
        }
        let _guard = self.lock();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        append(&dir.join("instances.jsonl"), &buf)
    }

    fn node_instances(&self, deployment_id: &str) -> Result<Vec<NodeInstance>> {
        let path = self.deployment_dir(deployment_id)?.join("instances.jsonl");
        let _guard = self.lock();
        let (map, lines) = self.read_instances(&path)?;
        if lines > COMPACT_RATIO * map.len().max(256) {
            let mut buf = Vec::new();
            for instance in map.values() {
                serde_json::to_writer(&mut buf, instance)?;
                buf.push(b'\n');
            }
            write_atomic(&path, &buf)?;
        }
        Ok(map.into_values().collect())
    }

    fn node_instance(&self, deployment_id: &str, id: &str) -> Result<Option<NodeInstance>> {
        let path = self.deployment_dir(deployment_id)?.join("instances.jsonl");
        let _guard = self.lock();
        Ok(self.read_instances(&path)?.0.shift_remove(id))
    }

    fn update_node_instance(
        &self,
        deployment_id: &str,
        instance: &NodeInstance,
    ) -> Result<NodeInstance> {
        let dir = self.deployment_dir(deployment_id)?;
        let path = dir.join("instances.jsonl");
        // Under the write lock from the read to the append: no other writer slips in between.
        let _guard = self.lock();
        let (map, _) = self.read_instances(&path)?;
        let new = next_version(map.get(&instance.id), instance)?;
        let mut buf = serde_json::to_vec(&new)?;
        buf.push(b'\n');
        append(&path, &buf)?;
        Ok(new)
    }

    fn put_execution(&self, execution: &Execution) -> Result<()> {
        let dir = self.execution_dir(&execution.id)?;
        let _guard = self.lock();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        write_atomic(&dir.join("execution.json"), &serde_json::to_vec(execution)?)
    }

    fn execution(&self, id: &str) -> Result<Option<Execution>> {
        read_json(&self.execution_dir(id)?.join("execution.json"))
    }

    fn executions(&self, deployment_id: &str) -> Result<Vec<Execution>> {
        let mut found = Vec::new();
        for id in list_dir(&self.root.join("executions"))? {
            if let Some(e) = self.execution(&id)?
                && e.deployment_id == deployment_id
            {
                found.push(e);
            }
        }
        found.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(found)
    }

    fn append_journal(&self, execution_id: &str, entries: &[JournalEntry]) -> Result<()> {
        let dir = self.execution_dir(execution_id)?;
        let mut buf = Vec::with_capacity(entries.len() * 32);
        for entry in entries {
            buf.extend_from_slice(entry.get().as_bytes());
            buf.push(b'\n');
        }
        let _guard = self.lock();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        append(&dir.join("journal.jsonl"), &buf)
    }

    fn journal(&self, execution_id: &str) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        let path = self.execution_dir(execution_id)?.join("journal.jsonl");
        for_each_line::<JournalEntry>(&path, |e| out.push(e))?;
        Ok(out)
    }

    fn append_events(&self, execution_id: &str, events: &[Event]) -> Result<()> {
        let dir = self.execution_dir(execution_id)?;
        let mut buf = Vec::with_capacity(events.len() * 256);
        for event in events {
            serde_json::to_writer(&mut buf, event)?;
            buf.push(b'\n');
        }
        let _guard = self.lock();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        append_unsynced(&dir.join("events.jsonl"), &buf)
    }

    fn events(&self, execution_id: &str) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        let path = self.execution_dir(execution_id)?.join("events.jsonl");
        for_each_line::<Event>(&path, |e| out.push(e))?;
        Ok(out)
    }

    fn put_secret(&self, tenant: &str, secret: &Secret) -> Result<()> {
        self.change_secrets(tenant, |all| {
            all.insert(secret.key.clone(), secret.clone());
            true
        })
        .map(drop)
    }

    fn secret(&self, tenant: &str, key: &str) -> Result<Option<Secret>> {
        Ok(self.read_secrets(tenant)?.remove(key))
    }

    fn secrets(&self, tenant: &str) -> Result<Vec<Secret>> {
        Ok(self.read_secrets(tenant)?.into_values().collect())
    }

    fn delete_secret(&self, tenant: &str, key: &str) -> Result<bool> {
        self.change_secrets(tenant, |all| all.remove(key).is_some())
    }
}

/// Rejects ids that would escape the store's directory or hide in it.
fn checked_id(id: &str) -> Result<&str> {
    if id.is_empty() || id.starts_with('.') || id.contains(['/', '\\', '\0']) {
        return Err(StoreError::InvalidId(id.to_owned()));
    }
    Ok(id)
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
        {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                line: e.line(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Writes a whole file so that a crash leaves either the old content or the new.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    replace(path, bytes, &options)
}

/// [`write_atomic`] for a file only its owner may read (secrets). Its temporary file is always
/// a new one made with mode 0600 (`create_new`): one a crash left behind is removed first, as
/// it may have another mode or be held open by someone else.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // A failure surfaces in the open.
    let _ = fs::remove_file(temporary(path));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    replace(path, bytes, &options)
}

/// Where `path`'s next content is written before it is renamed over `path`.
fn temporary(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

/// Writes `bytes` to `path`'s temporary file, opened with `options`, makes it durable and
/// renames it over `path`.
fn replace(path: &Path, bytes: &[u8], options: &OpenOptions) -> Result<()> {
    let tmp = temporary(path);
    let mut file = options.open(&tmp).map_err(|e| io_err(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    sync_dir(path)
}

/// Appends one batch without waiting for the disk: events are a record of what happened, not
/// state a resume needs, and a killed process loses nothing the kernel already has.
pub(crate) fn append_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| io_err(path, e))
}

/// Appends one batch and makes it durable.
fn append(path: &Path, bytes: &[u8]) -> Result<()> {
    let new = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.write_all(bytes).map_err(|e| io_err(path, e))?;
    file.sync_data().map_err(|e| io_err(path, e))?;
    if new {
        sync_dir(path)?;
    }
    Ok(())
}

fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Reads a JSON-lines file (missing: empty), dropping a torn last line.
pub(crate) fn for_each_line<T: DeserializeOwned>(path: &Path, mut f: impl FnMut(T)) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| io_err(path, e))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let complete = line.ends_with('\n');
        match serde_json::from_str::<T>(line.trim_end()) {
            Ok(value) => f(value),
            // Only the last line can be torn, and it has no newline yet.
            Err(_) if !complete => return Ok(()),
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    line: number,
                    message: e.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_shared_suite() {
        let dir = tempfile::tempdir().unwrap();
        crate::suite::run(&FileStore::open(dir.path()).unwrap());
    }

    #[test]
    fn survives_reopen_and_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let entry: JournalEntry =
            serde_json::value::RawValue::from_string("{\"t\":1}".into()).unwrap();
        store.append_journal("e1", &[entry.clone(), entry]).unwrap();
        let path = dir.path().join("executions/e1/journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"t\":").unwrap();
        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(reopened.journal("e1").unwrap().len(), 2);
    }

    #[test]
    fn rejects_ids_that_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.execution("../x"),
            Err(StoreError::InvalidId(_))
        ));
    }

    #[test]
    fn keeps_secrets_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let secret = Secret {
            key: "k".into(),
            value: "v".into(),
            created_at: "t".into(),
            updated_at: "t".into(),
            visibility: "tenant".into(),
            is_hidden_value: false,
        };
        // A crash left a temporary file anyone may read.
        fs::create_dir_all(dir.path().join("secrets")).unwrap();
        fs::write(dir.path().join("secrets/t1.tmp"), "stale").unwrap();
        fs::set_permissions(
            dir.path().join("secrets/t1.tmp"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        store.put_secret("t1", &secret).unwrap();
        let mode = fs::metadata(dir.path().join("secrets/t1.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        assert!(matches!(
            store.put_secret("../t", &secret),
            Err(StoreError::InvalidId(_))
        ));
        // Deleting what a tenant does not have writes nothing.
        assert!(!store.delete_secret("t2", "k").unwrap());
        assert!(!dir.path().join("secrets/t2.json").exists());
    }

    #[test]
    fn compacts_the_instances_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut ni = NodeInstance {
            id: "a_1".into(),
            ..Default::default()
        };
        for v in 0..1100 {
            ni.version = v;
            store.put_node_instances("d", &[ni.clone()]).unwrap();
        }
        assert_eq!(store.node_instances("d").unwrap()[0].version, 1099);
        let text = fs::read_to_string(dir.path().join("deployments/d/instances.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1);
    }
}
