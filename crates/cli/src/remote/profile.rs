//! `drover profiles use URL`: where the remote commands go and as whom. The profile is one
//! JSON file in the user's config directory (`$DROVER_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/drover`, else `~/.config/drover`), mode 0600 since it holds the password.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

#[derive(Subcommand)]
pub enum ProfilesCommand {
    /// Point the remote commands at a manager: URL is its REST root (e.g.
    /// http://127.0.0.1:8080; `/api/v3.1` is added).
    Use {
        url: String,
        #[arg(short = 'u', long, default_value = "admin")]
        username: String,
        #[arg(short = 'p', long, default_value = "admin")]
        password: String,
        #[arg(short = 't', long = "tenant", default_value = "default_tenant")]
        tenant: String,
    },
    /// Show the active profile (without its password).
    Show,
}

/// A manager and the credentials to use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub url: String,
    pub username: String,
    pub password: String,
    pub tenant: String,
}

const FILE: &str = "profile.json";

fn config_dir() -> anyhow::Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("DROVER_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("drover"));
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("drover")),
        None => bail!("no config directory: set DROVER_CONFIG_DIR or HOME"),
    }
}

impl Profile {
    /// The stored profile; an error that says how to make one when there is none.
    pub fn load() -> anyhow::Result<Profile> {
        let path = config_dir()?.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("no profile: run `drover profiles use URL` first")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| format!("{} is not a profile", path.display()))
    }

    /// Writes the profile, readable by the user only.
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let dir = config_dir()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

pub fn run(cmd: ProfilesCommand) -> anyhow::Result<()> {
    match cmd {
        ProfilesCommand::Use {
            url,
            username,
            password,
            tenant,
        } => {
            let url = url.trim_end_matches('/').to_owned();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("{url:?} is not an http:// or https:// URL");
            }
            let profile = Profile {
                url,
                username,
                password,
                tenant,
            };
            let version = super::client::Client::new(&profile)?.get("/version", &[])?;
            let path = profile.save()?;
            println!(
                "using {} (drover {}) as {} in {}; saved in {}",
                profile.url,
                version["version"].as_str().unwrap_or("?"),
                profile.username,
                profile.tenant,
                path.display()
            );
            Ok(())
        }
        ProfilesCommand::Show => {
            let p = Profile::load()?;
            println!(
                "url: {}\nusername: {}\ntenant: {}",
                p.url, p.username, p.tenant
            );
            Ok(())
        }
    }
}
