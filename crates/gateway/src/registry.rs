//! What the gateway itself keeps: which tenant owns each blueprint and deployment, secrets and
//! API tokens. The state store has no notion of tenants, so the gateway records ownership here
//! and hides from a tenant whatever another one owns.
//!
//! [`FileRegistry`] keeps everything in one JSON file (mode 0600: it holds secrets) under the
//! data directory, rewritten atomically on each change. Replicas of the gateway sharing it must
//! share the directory; see the crate doc.

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

/// A secret: its value never appears in `Debug` output (so never in logs).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    pub key: String,
    pub value: String,
    pub created_at: String,
    pub updated_at: String,
    pub visibility: String,
    pub is_hidden_value: bool,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("key", &self.key)
            .field("value", &"<hidden>")
            .finish()
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
    /// tenant → key → secret.
    secrets: BTreeMap<String, BTreeMap<String, Secret>>,
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

    fn secret(&self, tenant: &str, key: &str) -> Result<Option<Secret>, RegistryError>;
    fn secrets(&self, tenant: &str) -> Result<Vec<Secret>, RegistryError>;
    fn put_secret(&self, tenant: &str, secret: Secret) -> Result<(), RegistryError>;
    /// Whether it existed.
    fn delete_secret(&self, tenant: &str, key: &str) -> Result<bool, RegistryError>;

    fn put_token(&self, token: Token) -> Result<(), RegistryError>;
    fn token(&self, id: &str) -> Result<Option<Token>, RegistryError>;
    fn tokens(&self, username: &str) -> Result<Vec<Token>, RegistryError>;
    fn delete_token(&self, id: &str) -> Result<bool, RegistryError>;
}

/// [`Registry`] in one JSON file.
pub struct FileRegistry {
    path: PathBuf,
    state: Mutex<State>,
}

impl FileRegistry {
    pub fn open(dir: &Path) -> Result<FileRegistry, RegistryError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| RegistryError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("gateway-registry.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| RegistryError::Corrupt {
                    path: path.display().to_string(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(FileRegistry {
            path,
            state: Mutex::new(state),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, RegistryError> {
        Ok(f(&self.state.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Applies a change and writes the file (temporary file, fsync, rename) before returning.
    fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, RegistryError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut state);
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| RegistryError::Io {
            path: tmp.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec(&*state).map_err(|e| io(e.into()))?;
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
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

    fn secret(&self, tenant: &str, key: &str) -> Result<Option<Secret>, RegistryError> {
        self.read(|s| s.secrets.get(tenant).and_then(|m| m.get(key)).cloned())
    }

    fn secrets(&self, tenant: &str) -> Result<Vec<Secret>, RegistryError> {
        self.read(|s| {
            s.secrets
                .get(tenant)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default()
        })
    }

    fn put_secret(&self, tenant: &str, secret: Secret) -> Result<(), RegistryError> {
        self.write(|s| {
            s.secrets
                .entry(tenant.to_owned())
                .or_default()
                .insert(secret.key.clone(), secret);
        })
    }

    fn delete_secret(&self, tenant: &str, key: &str) -> Result<bool, RegistryError> {
        if self.secret(tenant, key)?.is_none() {
            return Ok(false);
        }
        self.write(|s| {
            s.secrets
                .get_mut(tenant)
                .is_some_and(|m| m.remove(key).is_some())
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
        let secret = Secret {
            key: "k".into(),
            value: "v".into(),
            created_at: "t".into(),
            updated_at: "t".into(),
            visibility: "tenant".into(),
            is_hidden_value: false,
        };
        r.put_secret("a", secret.clone()).unwrap();
        assert!(!format!("{secret:?}").contains("\"v\""));
        let r = FileRegistry::open(dir.path()).unwrap();
        assert_eq!(
            r.owned(Kind::Blueprint, "a").unwrap(),
            vec!["bp".to_owned()]
        );
        assert!(r.owned(Kind::Blueprint, "b").unwrap().is_empty());
        assert_eq!(r.secret("a", "k").unwrap(), Some(secret));
        assert_eq!(r.secret("b", "k").unwrap(), None);
    }
}
