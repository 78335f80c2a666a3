//! Blueprint archives (tar, tar.gz, zip) unpacked safely: only regular files and directories,
//! relative paths without `..`, bounded entry count and unpacked size (so a zip bomb stops at
//! the bound), into a fresh directory.

use std::io::{Cursor, Read};
use std::path::{Component, Path, PathBuf};

/// Bounds on what an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 256 << 20,
            max_entries: 10_000,
        }
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("unsupported archive format: expected zip, tar or tar.gz")]
    Format,
    #[error("malformed archive: {0}")]
    Malformed(String),
    #[error("archive entry {0:?}: only relative paths inside the archive are allowed")]
    UnsafePath(String),
    #[error("archive entry {0:?}: links and special files are not allowed")]
    Link(String),
    #[error("archive unpacks to more than {0} bytes")]
    TooBig(u64),
    #[error("archive has more than {0} entries")]
    TooManyEntries(usize),
    #[error("the archive must contain exactly one top-level directory, found {0}")]
    TopLevel(usize),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Unpacks `bytes` into `dest` (created; must not exist) and returns the archive's single
/// top-level directory inside `dest`.
pub fn unpack(bytes: &[u8], dest: &Path, limits: Limits) -> Result<PathBuf, ArchiveError> {
    std::fs::create_dir_all(dest).map_err(|e| ArchiveError::Io(dest.display().to_string(), e))?;
    let mut sink = Sink {
        dest,
        limits,
        written: 0,
        entries: 0,
    };
    if bytes.starts_with(b"PK\x03\x04") {
        unpack_zip(bytes, &mut sink)?;
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        unpack_tar(flate2::read::GzDecoder::new(bytes), &mut sink)?;
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        unpack_tar(bytes, &mut sink)?;
    } else {
        return Err(ArchiveError::Format);
    }
    let tops: Vec<PathBuf> = std::fs::read_dir(dest)
        .map_err(|e| ArchiveError::Io(dest.display().to_string(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    match tops.as_slice() {
        [top] if top.is_dir() => Ok(top.clone()),
        _ => Err(ArchiveError::TopLevel(tops.len())),
    }
}

/// Where entries go, with the running totals the limits bound.
struct Sink<'a> {
    dest: &'a Path,
    limits: Limits,
    written: u64,
    entries: usize,
}

impl Sink<'_> {
    fn path(&mut self, name: &str) -> Result<PathBuf, ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries(self.limits.max_entries));
        }
        let relative =
            safe_relative(name).ok_or_else(|| ArchiveError::UnsafePath(name.to_owned()))?;
        Ok(self.dest.join(relative))
    }

    fn dir(&mut self, name: &str) -> Result<(), ArchiveError> {
        let path = self.path(name)?;
        std::fs::create_dir_all(&path).map_err(|e| ArchiveError::Io(name.to_owned(), e))
    }

    fn file(&mut self, name: &str, content: &mut dyn Read) -> Result<(), ArchiveError> {
        let path = self.path(name)?;
        let io = |e| ArchiveError::Io(name.to_owned(), e);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = std::fs::File::create(&path).map_err(io)?;
        // Read errors are the archive's fault (corrupt data), write errors ours.
        let room = self.limits.max_unpacked_bytes - self.written;
        let mut copied = 0u64;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveError::Malformed(format!("{name}: {e}"))),
            };
            copied += n as u64;
            if copied > room {
                return Err(ArchiveError::TooBig(self.limits.max_unpacked_bytes));
            }
            std::io::Write::write_all(&mut file, &buf[..n]).map_err(io)?;
        }
        self.written += copied;
        Ok(())
    }
}

/// `name` as a relative path of normal components only (no root, no `..`, not empty).
pub fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty() && !name.contains('\0') && !name.contains('\\')).then_some(out)
}

fn unpack_tar(reader: impl Read, sink: &mut Sink<'_>) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match entry.header().entry_type() {
            tar::EntryType::Directory => sink.dir(&name)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => sink.file(&name, &mut entry)?,
            // Metadata entries (pax headers, GNU long names) that tar itself consumes.
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {}
            _ => return Err(ArchiveError::Link(name)),
        }
    }
    Ok(())
}

fn unpack_zip(bytes: &[u8], sink: &mut Sink<'_>) -> Result<(), ArchiveError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    for i in 0..archive.len() {
        let mut file = archive
            .by_index(i)
            .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        let name = file.name().to_owned();
        let kind = file.unix_mode().map(|m| m & 0o170_000);
        if file.is_dir() {
            sink.dir(&name)?;
        } else if kind.is_none_or(|k| k == 0o100_000 || k == 0) {
            sink.file(&name, &mut file)?;
        } else {
            return Err(ArchiveError::Link(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_relative_refuses_escapes() {
        assert_eq!(safe_relative("a/b.yaml"), Some(PathBuf::from("a/b.yaml")));
        assert_eq!(safe_relative("./a/"), Some(PathBuf::from("a")));
        for bad in ["/etc/passwd", "../x", "a/../../x", "", ".", "a\\..\\x"] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }
}
