//! [`open`] and [`open_events`]: a store or event index from a URL, so every binary takes the
//! same `--store URL`.

use std::path::Path;
use std::sync::Arc;

use crate::{
    EventIndex, FileEventIndex, FileStore, MemoryStore, OpenSearchEventIndex, OpenSearchOptions,
    OpenSearchStore, Result, StateStore, StoreError,
};

enum Target<'a> {
    Dir(&'a str),
    Memory,
    OpenSearch(OpenSearchOptions),
}

fn parse(url: &str) -> Result<Target<'_>> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Target::OpenSearch(OpenSearchOptions::from_url(url)?));
    }
    if url == "memory:" {
        return Ok(Target::Memory);
    }
    let dir = url.strip_prefix("file:").unwrap_or(url);
    if dir.is_empty() || (dir.contains("://") && !url.starts_with("file:")) {
        return Err(StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: "expected file:DIR, a directory, memory: or http(s)://HOST:PORT".into(),
        });
    }
    Ok(Target::Dir(dir))
}

/// The state store a URL names: `file:DIR` or a plain path (the embedded [`FileStore`]),
/// `memory:` ([`MemoryStore`]) or `http(s)://host:port[?prefix=P&retention_days=N]`
/// ([`OpenSearchStore`]).
pub fn open(url: &str) -> Result<Arc<dyn StateStore>> {
    Ok(match parse(url)? {
        Target::Dir(dir) => Arc::new(FileStore::open(dir)?),
        Target::Memory => Arc::new(MemoryStore::new()),
        Target::OpenSearch(options) => Arc::new(OpenSearchStore::open(options)?),
    })
}

/// The event index a URL names: as [`open`], the embedded one under `DIR/events/`; `memory:`
/// has none (events are worth keeping).
pub fn open_events(url: &str) -> Result<Arc<dyn EventIndex>> {
    Ok(match parse(url)? {
        Target::Dir(dir) => Arc::new(FileEventIndex::open(Path::new(dir).join("events"))?),
        Target::Memory => {
            return Err(StoreError::InvalidUrl {
                url: url.to_owned(),
                reason: "there is no in-memory event index; use file:DIR".into(),
            });
        }
        Target::OpenSearch(options) => Arc::new(OpenSearchEventIndex::open(options)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_implementation() {
        assert!(matches!(parse("memory:"), Ok(Target::Memory)));
        assert!(matches!(parse("file:/x"), Ok(Target::Dir("/x"))));
        assert!(matches!(parse(".drover"), Ok(Target::Dir(".drover"))));
        match parse("http://127.0.0.1:9200/?prefix=t1&retention_days=7") {
            Ok(Target::OpenSearch(o)) => {
                assert_eq!(o.url, "http://127.0.0.1:9200");
                assert_eq!((o.prefix.as_str(), o.event_retention_days), ("t1", 7));
            }
            _ => panic!("an http URL is OpenSearch"),
        }
        for bad in [
            "",
            "ftp://x",
            "http://h:1?prefix=UP",
            "http://h:1?retention_days=0",
            "http://h:1?x=1",
        ] {
            assert!(
                matches!(parse(bad), Err(StoreError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
