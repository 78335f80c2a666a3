//! What the gateway alone keeps: which tenant owns each blueprint and deployment, and API
//! tokens. The state store has no notion of tenants, so the gateway records ownership here and
//! hides from a tenant whatever another one owns. Secrets are not here: the engine reads them
//! too (`get_secret`), so they live in the state store ([`drover_store::StateStore::put_secret`]).
//!
//! This file stays because nothing but the gateway reads ownership and tokens, and gateways on
//! one machine share it (below); replicas on several machines would need these records in the
//! state store too (not done).
//!
//! [`FileRegistry`] keeps everything in one JSON file (mode 0600: it holds token secrets) under
//! the data directory, rewritten atomically on each change.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a gateway registry: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The kinds of resources a tenant owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blueprint,
    Deployment,
}

impl Kind {
    fn key(self, id: &str) -> String {
        match self {
            Kind::Blueprint => format!("blueprint/{id}"),
            Kind::Deployment => format!("deployment/{id}"),
        }
    }
}

/// An API token; the value is `ctok-<id>-<secret>`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub secret: String,
    pub username: String,
    pub description: Option<String>,
    pub expiration_date: Option<String>,
    pub created_at: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("id", &self.id).finish()
    }
}

impl Token {
    pub fn value(&self) -> String {
        format!("ctok-{}-{}", self.id, self.secret)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// `blueprint/<id>` or `deployment/<id>` → tenant.
    owners: BTreeMap<String, String>,
    tokens: BTreeMap<String, Token>,
}

/// The gateway's own durable records.
pub trait Registry: Send + Sync {
    /// The tenant owning a resource, if any does.
    fn owner(&self, kind: Kind, id: &str) -> Result<Option<String>, RegistryError>;
    /// Records `tenant` as the owner unless another owner exists; returns the existing owner.
    fn claim(&self, kind: Kind, id: &str, tenant: &str) -> Result<Option<String>, RegistryError>;
    fn release(&self, kind: Kind, id: &str) -> Result<(), RegistryError>;
    /// Ids of a kind a tenant owns.
    fn owned(&self, kind: Kind, tenant: &str) -> Result<Vec<String>, RegistryError>;

    fn put_token(&self, token: Token) -> Result<(), RegistryError>;
    fn token(&self, id: &str) -> Result<Option<Token>, RegistryError>;
    fn tokens(&self, username: &str) -> Result<Vec<Token>, RegistryError>;
    fn delete_token(&self, id: &str) -> Result<bool, RegistryError>;
}

/// [`Registry`] in one JSON file. Gateway processes sharing the data directory share it: a
/// change is made under an exclusive lock on `gateway-registry.lock`, on the file as it is on
/// disk then, and written by rename; a read first reloads the file if another process replaced
/// it since (a `stat` per call). So a blueprint claimed through one replica is seen through the
/// others at once, and concurrent changes through two replicas both stay. The directory must be
/// on one machine's file system (no file locks over NFS).
pub struct FileRegistry {
    path: PathBuf,
    lock_path: PathBuf,
    cached: Mutex<Cached>,
}

/// The registry as last read, and which version of the file that was.
struct Cached {
    state: State,
    stamp: Option<Stamp>,
}

/// A version of the file: each write renames a new file into place, so a new inode, and the
/// modification time and length besides.
type Stamp = (u64, std::time::SystemTime, u64);

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.display().to_string();
    move |source| RegistryError::Io { path, source }
}

fn stamp(path: &Path) -> Result<Option<Stamp>, RegistryError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.ino(),
            m.modified().map_err(io_error(path))?,
            m.len(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

fn load(path: &Path) -> Result<State, RegistryError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| RegistryError::Corrupt {
            path: path.display().to_string(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(io_error(path)(e)),
    }
}

impl FileRegistry {
    pub fn open(dir: &Path) -> Result<FileRegistry, RegistryError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let registry = FileRegistry {
            path: dir.join("gateway-registry.json"),
            lock_path: dir.join("gateway-registry.lock"),
            cached: Mutex::new(Cached {
                state: State::default(),
                stamp: None,
            }),
        };
        registry.read(|_| ())?;
        Ok(registry)
    }

    /// Reloads the file when it is not the version cached.
    fn refresh(&self, cached: &mut Cached) -> Result<(), RegistryError> {
        let now = stamp(&self.path)?;
        if now.is_none() || now != cached.stamp {
            cached.state = load(&self.path)?;
            cached.stamp = now;
        }
        Ok(())
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, RegistryError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut cached)?;
        Ok(f(&cached.state))
    }

    /// Applies a change to the file as it is now and writes it (temporary file, fsync,
    /// rename), under the lock file, before returning.
    fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, RegistryError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io_error(&self.lock_path))?;
        lock.lock().map_err(io_error(&self.lock_path))?;
        self.refresh(&mut cached)?;
        let out = f(&mut cached.state);
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        let io = io_error(&tmp);
        let bytes = serde_json::to_vec(&cached.state).map_err(|e| io(e.into()))?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let io = io_error(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_error(&tmp))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io_error(&self.path))?;
        cached.stamp = stamp(&self.path)?;
        Ok(out)
    }
}

impl Registry for FileRegistry {
    fn owner(&self, kind: Kind, id: &str) -> Result<Option<String>, RegistryError> {
        self.read(|s| s.owners.get(&kind.key(id)).cloned())
    }

    fn claim(&self, kind: Kind, id: &str, tenant: &str) -> Result<Option<String>, RegistryError> {
        if let Some(owner) = self.owner(kind, id)? {
            return Ok(Some(owner));
        }
        // Checked again under the write lock: another request may have claimed it since.
        self.write(|s| match s.owners.get(&kind.key(id)) {
            Some(owner) => Some(owner.clone()),
            None => {
                s.owners.insert(kind.key(id), tenant.to_owned());
                None
            }
        })
    }

    fn release(&self, kind: Kind, id: &str) -> Result<(), RegistryError> {
        self.write(|s| {
            s.owners.remove(&kind.key(id));
        })
    }

    fn owned(&self, kind: Kind, tenant: &str) -> Result<Vec<String>, RegistryError> {
        let prefix = kind.key("");
        self.read(|s| {
            s.owners
                .iter()
                .filter(|(k, t)| t.as_str() == tenant && k.starts_with(&prefix))
                .map(|(k, _)| k[prefix.len()..].to_owned())
                .collect()
        })
    }

    fn put_token(&self, token: Token) -> Result<(), RegistryError> {
        self.write(|s| {
            s.tokens.insert(token.id.clone(), token);
        })
    }

    fn token(&self, id: &str) -> Result<Option<Token>, RegistryError> {
        self.read(|s| s.tokens.get(id).cloned())
    }

    fn tokens(&self, username: &str) -> Result<Vec<Token>, RegistryError> {
        self.read(|s| {
            s.tokens
                .values()
                .filter(|t| t.username == username)
                .cloned()
                .collect()
        })
    }

    fn delete_token(&self, id: &str) -> Result<bool, RegistryError> {
        if self.token(id)?.is_none() {
            return Ok(false);
        }
        self.write(|s| s.tokens.remove(id).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reopen_and_keeps_tenants_apart() {
        let dir = tempfile::tempdir().unwrap();
        let r = FileRegistry::open(dir.path()).unwrap();
        assert_eq!(r.claim(Kind::Blueprint, "bp", "a").unwrap(), None);
        assert_eq!(
            r.claim(Kind::Blueprint, "bp", "b").unwrap(),
            Some("a".into())
        );
        let r = FileRegistry::open(dir.path()).unwrap();
        assert_eq!(
            r.owned(Kind::Blueprint, "a").unwrap(),
            vec!["bp".to_owned()]
        );
        assert!(r.owned(Kind::Blueprint, "b").unwrap().is_empty());
    }

    #[test]
    fn replicas_sharing_the_directory_see_and_keep_each_others_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileRegistry::open(dir.path()).unwrap();
        let b = FileRegistry::open(dir.path()).unwrap();
        assert_eq!(a.claim(Kind::Blueprint, "bp", "t1").unwrap(), None);
        assert_eq!(a.owner(Kind::Blueprint, "bp").unwrap(), Some("t1".into()));
        assert_eq!(b.owner(Kind::Blueprint, "bp").unwrap(), Some("t1".into()));
        assert_eq!(
            b.claim(Kind::Blueprint, "bp", "t2").unwrap(),
            Some("t1".into())
        );
        assert_eq!(b.claim(Kind::Deployment, "d", "t1").unwrap(), None);
        assert_eq!(a.claim(Kind::Deployment, "e", "t1").unwrap(), None);
        for r in [&a, &b] {
            let mut owned = r.owned(Kind::Deployment, "t1").unwrap();
            owned.sort();
            assert_eq!(owned, ["d", "e"]);
        }
        a.release(Kind::Blueprint, "bp").unwrap();
        assert_eq!(b.owner(Kind::Blueprint, "bp").unwrap(), None);
    }
}
