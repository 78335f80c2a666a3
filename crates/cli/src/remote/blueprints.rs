//! `drover blueprints upload|list|delete`.

use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;

use super::client::Client;
use super::table;

#[derive(Subcommand)]
pub enum BlueprintsCommand {
    /// Upload a blueprint: a YAML file (its directory is packed and sent) or an archive
    /// (.tar.gz, .tgz, .tar or .zip with one top-level directory).
    Upload {
        path: std::path::PathBuf,
        /// The blueprint's id.
        #[arg(short = 'b', long = "blueprint-id")]
        id: String,
        /// The main YAML file inside an archive.
        #[arg(
            short = 'n',
            long = "blueprint-filename",
            default_value = "blueprint.yaml"
        )]
        filename: String,
    },
    List,
    Delete {
        id: String,
        /// Delete even when deployments use it.
        #[arg(short, long)]
        force: bool,
    },
}

pub fn run(cmd: BlueprintsCommand, client: &Client) -> anyhow::Result<()> {
    match cmd {
        BlueprintsCommand::Upload { path, id, filename } => {
            let (archive, main) = archive(&path, &id, filename)?;
            let query = [("application_file_name", main.as_str())];
            client.put_bytes(&format!("/blueprints/{id}"), &query, archive)?;
            println!("blueprint {id} uploaded");
        }
        BlueprintsCommand::List => {
            let items = client.list("/blueprints", &[])?;
            table::print(&items, &["id", "main_file_name", "created_at", "state"]);
        }
        BlueprintsCommand::Delete { id, force } => {
            let force = force.to_string();
            client.delete(&format!("/blueprints/{id}"), &[("force", &force)])?;
            println!("blueprint {id} deleted");
        }
    }
    Ok(())
}

/// The archive to send and its main file's name: an archive file as it is, or a YAML file's
/// directory packed as a tar.gz under one top-level directory named after the blueprint.
fn archive(path: &Path, id: &str, filename: String) -> anyhow::Result<(Vec<u8>, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let lower = name.to_ascii_lowercase();
    if [".tar.gz", ".tgz", ".tar", ".zip"]
        .iter()
        .any(|ext| lower.ends_with(ext))
    {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok((bytes, filename));
    }
    if !path.is_file() {
        bail!("{} is not a file", path.display());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    tar.follow_symlinks(true);
    tar.append_dir_all(id, dir)
        .with_context(|| format!("packing {}", dir.display()))?;
    let bytes = tar.into_inner()?.finish()?;
    Ok((bytes, name.to_owned()))
}
