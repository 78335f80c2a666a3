//! Imports: finding every imported file, reading it, namespacing it and merging it into one
//! document, as Cloudify's `dsl_parser.elements.imports` does.
//!
//! The traversal is breadth first from the main blueprint; a file already imported under the same
//! namespace is skipped (so import cycles and self-imports end). Sections merge by Cloudify's
//! rules: types, plugins, workflows, relationships … may not be defined twice, except the
//! `cloudify.`-prefixed names and everything from Cloudify's basic types file, which later imports
//! may redefine; inputs, outputs, node templates and capabilities merge from `cloudify_dsl_1_3` on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::Options;
use crate::error::Error;
use crate::version::Version;
use crate::yaml::{self, Key, Mark, Node, Value};

/// drover's own types file, used for the well-known types URLs when there is no spec mirror.
const BUILTIN_TYPES: &str = include_str!("../types/types.yaml");
/// The name the built-in types file goes by in marks and errors.
const BUILTIN_NAME: &str = "<drover built-in types.yaml>";
/// The most files one blueprint may import (transitively).
const MAX_IMPORTS: usize = 1000;
/// Separates an import's namespace from its URL (`ns--plugin.yaml`).
pub const NAMESPACE_DELIMITER: &str = "--";

/// Sections that imports may extend but never redefine an entry of.
const MERGE_NO_OVERRIDE: &[&str] = &[
    "interfaces",
    "node_types",
    "plugins",
    "workflows",
    "relationships",
    "policy_types",
    "groups",
    "policy_triggers",
    "data_types",
];
/// Sections mergeable across imports from `cloudify_dsl_1_3`.
const MERGEABLE_FROM_1_3: &[&str] = &[
    "inputs",
    "outputs",
    "node_templates",
    "capabilities",
    "blueprint_labels",
    "labels",
    "resource_tags",
];
/// Sections where the first file's value wins.
const DONT_OVERWRITE: &[&str] = &["description", "metadata"];
/// Sections that stay with their file.
const IGNORE: &[&str] = &["dsl_definitions", "imports", "tosca_definitions_version"];

/// The main blueprint with all its imports merged in.
pub struct Merged {
    /// The merged top-level mapping.
    pub document: Node,
    /// The main blueprint's DSL version.
    pub version: Version,
    /// Where script paths of operations are looked up: the main blueprint's directory.
    pub resource_base: Option<PathBuf>,
}

/// Where an import is read from.
#[derive(Clone)]
enum Source {
    File(PathBuf),
    Builtin,
}

impl Source {
    fn key(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Builtin => BUILTIN_NAME.to_string(),
        }
    }
}

/// One file read in the traversal.
struct Imported {
    document: Node,
    source: Source,
    namespace: Option<String>,
    is_cloudify_types: bool,
}

/// Reads the main blueprint (`text`, from `file` when it has one) and all its imports.
pub fn load(
    text: &str,
    file: Option<&Path>,
    base_dir: &Path,
    options: &Options,
) -> Result<Merged, Error> {
    let main_source = match file {
        Some(f) => Source::File(f.to_path_buf()),
        None => Source::File(base_dir.join("<blueprint>")),
    };
    // One bound on values for the blueprint and all its imports.
    let mut budget = yaml::MAX_NODES;
    let main = yaml::load_within(text, file.map(Rc::from), &mut budget)?;
    if !matches!(main.value, Value::Map(_)) {
        return Err(main.mark.error(
            "",
            format!("a blueprint is a mapping of sections, got {}", main.kind()),
        ));
    }
    let version = Version::of_document(&main)?;
    let mut seen: HashSet<(String, Option<String>)> = HashSet::new();
    seen.insert((main_source.key(), None));
    let mut order = vec![Imported {
        is_cloudify_types: is_cloudify_types(&main),
        document: main,
        source: main_source,
        namespace: None,
    }];
    let mut queue = VecDeque::from([0usize]);
    while let Some(index) = queue.pop_front() {
        let Some(parent) = order.get(index) else {
            break;
        };
        let imports = import_list(&parent.document, &version)?;
        let parent_dir = match &parent.source {
            Source::File(p) => p.parent().map(Path::to_path_buf),
            Source::Builtin => None,
        };
        let parent_namespace = parent.namespace.clone();
        for (raw, mark) in imports {
            let (namespace, url) = split_namespace(&raw);
            let namespace = match (&parent_namespace, namespace) {
                (Some(p), Some(n)) => Some(format!("{p}{NAMESPACE_DELIMITER}{n}")),
                (p, n) => n.or_else(|| p.clone()),
            };
            let source = resolve(url, parent_dir.as_deref(), &version, options)
                .map_err(|message| mark.error("imports", message))?;
            if !seen.insert((source.key(), namespace.clone())) {
                continue;
            }
            if order.len() >= MAX_IMPORTS {
                return Err(
                    mark.error("imports", format!("more than {MAX_IMPORTS} files imported"))
                );
            }
            let document = read(&source, &mark, &raw, &mut budget)?;
            check_version(&document, &version, &source)?;
            let cloudify_types = is_cloudify_types(&document);
            if cloudify_types && namespace.is_some() && namespace != parent_namespace {
                return Err(mark.error(
                    "imports",
                    format!(
                        "import {raw:?}: Cloudify's basic types cannot be imported with a namespace"
                    ),
                ));
            }
            let namespace = if cloudify_types { None } else { namespace };
            order.push(Imported {
                document,
                source,
                namespace,
                is_cloudify_types: cloudify_types,
            });
            queue.push_back(order.len() - 1);
        }
    }
    let resource_base = match &order.first().map(|i| &i.source) {
        Some(Source::File(p)) => p.parent().map(Path::to_path_buf),
        _ => None,
    };
    let mut merged: Vec<(Key, Node)> = Vec::new();
    let mut root_mark = Mark::default();
    for (i, mut imported) in order.into_iter().enumerate() {
        if i == 0 {
            root_mark = imported.document.mark.clone();
        }
        if let Some(ns) = &imported.namespace {
            crate::namespace::apply(&mut imported.document, ns);
        }
        merge(&mut merged, imported, &version, i == 0)?;
    }
    Ok(Merged {
        document: Node::new(Value::Map(merged), root_mark),
        version,
        resource_base,
    })
}

/// The `imports` of a document: strings, or (from `cloudify_dsl_1_5`) single-entry mappings
/// `{URL: {properties}}` that set an imported plugin's properties.
fn import_list(document: &Node, version: &Version) -> Result<Vec<(String, Mark)>, Error> {
    let Some(imports) = document.get("imports") else {
        return Ok(Vec::new());
    };
    let items = match &imports.value {
        Value::Seq(items) => items,
        Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(imports.mark.error(
                "imports",
                format!("expected a list of imports, got {}", imports.kind()),
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    let mut keys = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let url = match &item.value {
            Value::Str(s) => s.clone(),
            Value::Map(entries) if entries.len() == 1 => {
                version.require(
                    item,
                    &format!("imports.{i}"),
                    "an import with properties",
                    1,
                    5,
                )?;
                entries
                    .first()
                    .map(|(k, _)| k.name.clone())
                    .unwrap_or_default()
            }
            _ => {
                return Err(item.mark.error(
                    format!("imports.{i}"),
                    "an import is a string, or a single-entry mapping of a string to properties",
                ));
            }
        };
        if !keys.insert(url.clone()) {
            return Err(item
                .mark
                .error(format!("imports.{i}"), format!("duplicate import {url:?}")));
        }
        out.push((url, item.mark.clone()));
    }
    Ok(out)
}

/// Splits `ns--url` into the namespace and the URL (the last `--` separates them, as Cloudify's
/// `rpartition`; a URL with no `--` has no namespace).
fn split_namespace(raw: &str) -> (Option<String>, &str) {
    match raw.rfind(NAMESPACE_DELIMITER) {
        Some(i) if i > 0 => (
            Some(raw[..i].to_string()),
            &raw[i + NAMESPACE_DELIMITER.len()..],
        ),
        _ => (None, raw),
    }
}

/// Prefixes of Cloudify's spec site, mirrored by `--spec-mirror`.
const SPEC_SITES: &[&str] = &[
    "http://www.getcloudify.org/spec/",
    "https://www.getcloudify.org/spec/",
    "http://getcloudify.org/spec/",
    "https://getcloudify.org/spec/",
    "http://cloudify.co/spec/",
    "https://cloudify.co/spec/",
    "http://www.cloudify.co/spec/",
    "https://www.cloudify.co/spec/",
];
/// The manager-relative import of Cloudify's basic types.
const MANAGER_TYPES: &str = "cloudify/types/types.yaml";

/// Finds where an import is read from, or says why it cannot be.
fn resolve(
    url: &str,
    parent_dir: Option<&Path>,
    version: &Version,
    options: &Options,
) -> Result<Source, String> {
    for (prefix, dir) in &options.resolver_rules {
        if let Some(rest) = url.strip_prefix(prefix.as_str()) {
            return existing(dir.join(rest.trim_start_matches('/')), url);
        }
    }
    if url.starts_with("blueprint:") {
        return Err(format!(
            "cannot resolve import {url:?}: blueprint imports name a blueprint uploaded to a manager, and imports are resolved offline"
        ));
    }
    if let Some(plugin) = url.strip_prefix("plugin:") {
        let name = plugin.split('?').next().unwrap_or_default().trim();
        let Some(mirror) = &options.spec_mirror else {
            return Err(format!(
                "cannot resolve import {url:?}: plugin imports need a spec mirror (--spec-mirror)"
            ));
        };
        return existing(mirror.join("plugins").join(name).join("plugin.yaml"), url);
    }
    if url.contains("://") {
        let rest = SPEC_SITES.iter().find_map(|site| url.strip_prefix(site));
        return match (rest, &options.spec_mirror) {
            (Some(rest), Some(mirror)) => existing(mirror.join(rest), url),
            (Some(rest), None) if is_types_path(rest) => Ok(Source::Builtin),
            _ => Err(format!(
                "cannot resolve import {url:?}: no resolver rule or spec mirror covers it (imports are resolved offline)"
            )),
        };
    }
    if let Some(dir) = parent_dir {
        let candidate = dir.join(url);
        if candidate.is_file() {
            return Ok(Source::File(candidate));
        }
    }
    if url == MANAGER_TYPES {
        return match &options.spec_mirror {
            Some(mirror) => {
                let variant =
                    mirror.join(format!("cloudify/types/types_{}.yaml", version.suffix()));
                if variant.is_file() {
                    Ok(Source::File(variant))
                } else {
                    existing(mirror.join(MANAGER_TYPES), url)
                }
            }
            None => Ok(Source::Builtin),
        };
    }
    match parent_dir {
        Some(dir) => existing(dir.join(url), url),
        None => Err(format!("cannot resolve import {url:?}: not found")),
    }
}

/// `cloudify/<version>/types.yaml` on the spec site.
fn is_types_path(rest: &str) -> bool {
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), ["cloudify", _, "types.yaml"])
}

fn existing(path: PathBuf, url: &str) -> Result<Source, String> {
    if path.is_file() {
        Ok(Source::File(path))
    } else {
        Err(format!(
            "cannot resolve import {url:?}: {} does not exist",
            path.display()
        ))
    }
}

/// Reads and loads an imported file.
fn read(source: &Source, mark: &Mark, raw: &str, budget: &mut usize) -> Result<Node, Error> {
    let document = match source {
        Source::Builtin => yaml::load_within(
            BUILTIN_TYPES,
            Some(Rc::from(Path::new(BUILTIN_NAME))),
            budget,
        )?,
        Source::File(path) => {
            let text = yaml::read_file(path)
                .map_err(|m| mark.error("imports", format!("import {raw:?}: {m}")))?;
            yaml::load_within(&text, Some(Rc::from(path.as_path())), budget)?
        }
    };
    match document.value {
        Value::Map(_) => Ok(document),
        Value::Null => Ok(Node::new(Value::Map(Vec::new()), document.mark)),
        _ => Err(document.mark.error(
            "",
            format!(
                "an imported file is a mapping of sections, got {}",
                document.kind()
            ),
        )),
    }
}

/// An imported file may not use a later DSL version than the main blueprint.
fn check_version(document: &Node, main: &Version, source: &Source) -> Result<(), Error> {
    let Some(node) = document.get("tosca_definitions_version") else {
        return Ok(());
    };
    let imported = Version::parse(node)?;
    if imported > *main {
        return Err(node.mark.error(
            "tosca_definitions_version",
            format!(
                "{} uses {}, a later DSL version than the main blueprint's {}",
                source.key(),
                imported.name(),
                main.name()
            ),
        ));
    }
    Ok(())
}

/// Cloudify's basic types file: `metadata.cloudify_types`, or the one defining
/// `cloudify.nodes.Root`.
fn is_cloudify_types(document: &Node) -> bool {
    let marked = document
        .get("metadata")
        .and_then(|m| m.get("cloudify_types"))
        .is_some_and(|v| !matches!(v.value, Value::Null | Value::Bool(false)));
    marked
        || document
            .get("node_types")
            .and_then(|t| t.get("cloudify.nodes.Root"))
            .is_some()
}

/// Merges one file's sections into the combined document. The main blueprint keeps its
/// `dsl_definitions`, for the schema to check their version gate.
fn merge(
    combined: &mut Vec<(Key, Node)>,
    imported: Imported,
    version: &Version,
    is_main: bool,
) -> Result<(), Error> {
    let Value::Map(sections) = imported.document.value else {
        return Ok(());
    };
    for (key, value) in sections {
        let name = key.name.as_str();
        if IGNORE.contains(&name) && !(is_main && name == "dsl_definitions") {
            continue;
        }
        let Some(existing) = combined.iter_mut().find(|(k, _)| k.name == key.name) else {
            combined.push((key, value));
            continue;
        };
        if DONT_OVERWRITE.contains(&name) {
            continue;
        }
        let mergeable = MERGE_NO_OVERRIDE.contains(&name)
            || (version.at_least(1, 3) && MERGEABLE_FROM_1_3.contains(&name));
        if !mergeable {
            let hint = if MERGEABLE_FROM_1_3.contains(&name) {
                format!(
                    " ({name} can be imported multiple times only from cloudify_dsl_1_3 and above)"
                )
            } else {
                String::new()
            };
            return Err(key.mark.error(
                name,
                format!("import failed: non-mergeable field {name:?}{hint}"),
            ));
        }
        let Value::Map(entries) = value.value else {
            continue;
        };
        if matches!(existing.1.value, Value::Null) {
            existing.1.value = Value::Map(Vec::new());
        }
        let Value::Map(target) = &mut existing.1.value else {
            return Err(existing.1.mark.error(name, "expected a mapping"));
        };
        let mut index: HashMap<String, usize> = target
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.name.clone(), i))
            .collect();
        for (entry_key, entry) in entries {
            match index.get(&entry_key.name).and_then(|i| target.get_mut(*i)) {
                Some(slot) => {
                    merge_entry(slot, name, entry_key, entry, imported.is_cloudify_types)?
                }
                None => {
                    index.insert(entry_key.name.clone(), target.len());
                    target.push((entry_key, entry));
                }
            }
        }
    }
    Ok(())
}

/// Merges an entry into a section that already has one of its name, by Cloudify's
/// `_merge_into_dict_or_throw_on_duplicate`.
fn merge_entry(
    slot: &mut (Key, Node),
    section: &str,
    key: Key,
    entry: Node,
    from_cloudify_types: bool,
) -> Result<(), Error> {
    if from_cloudify_types || key.name.starts_with("cloudify.") {
        slot.1 = entry;
        return Ok(());
    }
    match section {
        "node_templates" => merge_node_template(&mut slot.1, entry, &key),
        "labels" | "blueprint_labels" | "resource_tags" => Ok(()),
        "workflows" => Ok(()),
        _ => Err(key.mark.error(
            format!("{section}.{}", key.name),
            format!(
                "import failed: {section} {:?} is defined twice (also at line {})",
                key.name, slot.0.mark.line
            ),
        )),
    }
}

/// A node template defined in two files: one of them may only add relationships.
fn merge_node_template(existing: &mut Node, entry: Node, key: &Key) -> Result<(), Error> {
    let conflict = || {
        key.mark.error(
            format!("node_templates.{}", key.name),
            format!(
                "import failed: node template {:?} is defined twice",
                key.name
            ),
        )
    };
    let only_relationships =
        |n: &Node| n.as_map().is_some_and(|m| m.len() == 1) && n.get("relationships").is_some();
    let existing_only_relationships = only_relationships(existing);
    let entry_only_relationships = only_relationships(&entry);
    if !existing_only_relationships && !entry_only_relationships {
        return Err(conflict());
    }
    let (Value::Map(target), Value::Map(source)) = (&mut existing.value, entry.value) else {
        return Err(conflict());
    };
    for (k, v) in source {
        match target.iter_mut().find(|(t, _)| t.name == k.name) {
            Some((
                _,
                Node {
                    value: Value::Seq(list),
                    ..
                },
            )) if k.name == "relationships" => {
                if let Value::Seq(more) = v.value {
                    list.extend(more);
                }
            }
            Some(slot) => slot.1 = v,
            None => target.push((k, v)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_split_at_the_last_delimiter() {
        assert_eq!(
            split_namespace("a--b--c.yaml"),
            (Some("a--b".into()), "c.yaml")
        );
        assert_eq!(split_namespace("plain.yaml"), (None, "plain.yaml"));
    }

    #[test]
    fn well_known_types_urls_resolve_to_the_builtin_file() {
        let options = Options::default();
        let v = Version::default();
        for url in [
            "http://www.getcloudify.org/spec/cloudify/4.3.3/types.yaml",
            "https://cloudify.co/spec/cloudify/6.4.0/types.yaml",
            "cloudify/types/types.yaml",
        ] {
            assert!(
                matches!(resolve(url, None, &v, &options), Ok(Source::Builtin)),
                "{url}"
            );
        }
        let err = resolve("http://example.com/x.yaml", None, &v, &options)
            .err()
            .unwrap_or_default();
        assert!(err.contains("no resolver rule"), "{err}");
    }
}
