//! YAML loading into a tree where every value remembers its file, line and column.
//!
//! The tree is built from `saphyr-parser` events rather than through a generic loader so that
//! the abuse guards live in one place: a cap on the input size, on the nesting depth (the later
//! stages recurse over the tree), and on the number of nodes that aliases may expand to (a
//! "billion laughs" document is rejected before it is materialised). Scalars are resolved with
//! YAML 1.1 rules, as PyYAML (and so Cloudify) reads them: `yes`/`no`/`on`/`off` are booleans.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::Value as Json;

use crate::error::{Error, Location};

/// The largest YAML file read, in bytes.
pub const MAX_FILE_BYTES: usize = 20 * 1024 * 1024;
/// The deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 128;
/// The most nodes one document, or one blueprint with all its imports, may hold once aliases
/// are expanded.
pub const MAX_NODES: usize = 2_000_000;

/// Where a value was written: file (shared by all values of a file), 1-based line and column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mark {
    pub file: Option<Rc<Path>>,
    pub line: usize,
    pub column: usize,
}

impl Mark {
    /// The location of this mark for an error about the field at `path`.
    pub fn at(&self, path: impl Into<String>) -> Location {
        Location {
            file: self.file.as_ref().map(|f| f.to_path_buf()),
            line: self.line,
            column: self.column,
            path: path.into(),
        }
    }

    /// An error about the value at this mark, whose field path is `path`.
    pub fn error(&self, path: impl Into<String>, message: impl Into<String>) -> Error {
        Error::at(self.at(path), message)
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
}

/// A YAML value. Mapping keys are kept as strings (with their own marks), in document order,
/// without duplicates (a repeated key keeps its first position and its last value, as PyYAML).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub mark: Mark,
}

impl Node {
    pub fn new(value: Value, mark: Mark) -> Self {
        Self { value, mark }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of `key` when this is a mapping holding it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// A short name of the kind of value, for "expected X, got Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The JSON form of this value (mapping order kept).
    pub fn to_json(&self) -> Json {
        match &self.value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            Value::Str(s) => Json::String(s.clone()),
            Value::Seq(items) => Json::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Reads a YAML file as text, reading at most `MAX_FILE_BYTES` (so that a huge or endless file,
/// `/dev/zero` say, is an error and not a memory exhaustion). Errors are messages.
pub fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} is more than the {MAX_FILE_BYTES} bytes a blueprint file may have",
            path.display()
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// Loads the first document of `text` (an empty document is `null`). `file` names the file in
/// marks and errors.
pub fn load(text: &str, file: Option<Rc<Path>>) -> Result<Node, Error> {
    let mut budget = MAX_NODES;
    load_within(text, file, &mut budget)
}

/// Loads like [`load`], taking the document's values from `budget` (values left), so that files
/// loaded together share one bound.
pub fn load_within(text: &str, file: Option<Rc<Path>>, budget: &mut usize) -> Result<Node, Error> {
    let mark_of = |span: &Span| Mark {
        file: file.clone(),
        line: span.start.line(),
        column: span.start.col() + 1,
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(Mark { file: file.clone(), line: 1, column: 1 }.error(
            "",
            format!(
                "the file is {} bytes, more than the {MAX_FILE_BYTES} bytes a blueprint file may have",
                text.len()
            ),
        ));
    }
    let mut builder = Builder {
        budget: *budget,
        ..Builder::default()
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| {
            Mark {
                file: file.clone(),
                line: e.marker().line(),
                column: e.marker().col() + 1,
            }
            .error("", format!("invalid YAML: {}", e.info()))
        })?;
        let mark = mark_of(&span);
        if builder.event(event, mark.clone())? {
            break;
        }
    }
    *budget = builder.budget;
    Ok(builder.root.unwrap_or_else(|| {
        Node::new(
            Value::Null,
            Mark {
                file,
                line: 1,
                column: 1,
            },
        )
    }))
}

/// Builds the tree from parser events, with a stack instead of recursion.
#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    /// Anchored nodes by anchor id.
    anchors: Vec<Option<Built>>,
    /// Values that may still be made.
    budget: usize,
    root: Option<Node>,
}

/// A finished node, with how many values it holds and how deep it nests (for the guards, which
/// an alias must pass without the tree being walked).
#[derive(Clone)]
struct Built {
    node: Node,
    size: usize,
    height: usize,
}

/// A collection being built.
struct Open {
    node: Node,
    /// Values in it so far (itself included).
    size: usize,
    /// Nesting below it so far.
    height: usize,
    anchor: usize,
    /// A mapping's key waiting for its value.
    key: Option<Node>,
    /// Keys merged in with `<<`, applied (without overriding) when the mapping closes.
    merges: Vec<Node>,
    /// Positions of a large mapping's keys, so that finding a repeated key stays O(1).
    index: HashMap<String, usize>,
}

/// Mappings smaller than this find repeated keys by scanning.
const INDEX_FROM: usize = 16;

impl Builder {
    /// Handles one event; returns true at the end of the first document.
    fn event(&mut self, event: Event<'_>, mark: Mark) -> Result<bool, Error> {
        match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::Nothing => {}
            Event::StreamEnd | Event::DocumentEnd => return Ok(true),
            Event::Alias(id) => {
                let Some(Some(anchored)) = self.anchors.get(id) else {
                    return Err(mark.error("", "invalid YAML: unknown alias"));
                };
                let (size, height) = (anchored.size, anchored.height);
                if self.stack.len() + height > MAX_DEPTH {
                    return Err(mark.error(
                        "",
                        format!("the document nests deeper than {MAX_DEPTH} levels"),
                    ));
                }
                self.count(size, &mark)?;
                let Some(Some(anchored)) = self.anchors.get(id) else {
                    return Err(mark.error("", "invalid YAML: unknown alias"));
                };
                let node = Node::new(anchored.node.value.clone(), mark);
                self.add(Built { node, size, height })?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, &mark)?;
                let plain = style == ScalarStyle::Plain && tag.is_none();
                let value = if plain {
                    resolve_plain(&text)
                } else if let Some(tag) =
                    tag.filter(|t| t.handle == "tag:yaml.org,2002:" || t.handle == "!!")
                {
                    resolve_tagged(&tag.suffix, &text, &mark)?
                } else {
                    Value::Str(text.into_owned())
                };
                let built = Built {
                    node: Node::new(value, mark),
                    size: 1,
                    height: 0,
                };
                self.remember(anchor, &built)?;
                self.add(built)?;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.count(1, &mark)?;
                if self.stack.len() >= MAX_DEPTH {
                    return Err(mark.error(
                        "",
                        format!("the document nests deeper than {MAX_DEPTH} levels"),
                    ));
                }
                let value = if matches!(event, Event::SequenceStart(..)) {
                    Value::Seq(Vec::new())
                } else {
                    Value::Map(Vec::new())
                };
                self.stack.push(Open {
                    node: Node::new(value, mark),
                    size: 1,
                    height: 0,
                    anchor,
                    key: None,
                    merges: Vec::new(),
                    index: HashMap::new(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(mut open) = self.stack.pop() else {
                    return Err(mark.error("", "invalid YAML: unbalanced collection"));
                };
                apply_merges(&mut open)?;
                let built = Built {
                    node: open.node,
                    size: open.size,
                    height: open.height,
                };
                self.remember(open.anchor, &built)?;
                self.add(built)?;
            }
        }
        Ok(false)
    }

    fn count(&mut self, n: usize, mark: &Mark) -> Result<(), Error> {
        match self.budget.checked_sub(n) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(mark.error(
                "",
                format!(
                    "the blueprint expands to more than {MAX_NODES} values, imports and aliases included (alias bomb?)"
                ),
            )),
        }
    }

    /// Keeps a copy of an anchored node; the copy counts against the node budget, so that
    /// nested anchors cannot multiply a large value either.
    fn remember(&mut self, anchor: usize, built: &Built) -> Result<(), Error> {
        if anchor == 0 {
            return Ok(());
        }
        self.count(built.size, &built.node.mark)?;
        if self.anchors.len() <= anchor {
            self.anchors.resize(anchor + 1, None);
        }
        if let Some(slot) = self.anchors.get_mut(anchor) {
            *slot = Some(built.clone());
        }
        Ok(())
    }

    /// Adds a finished node to the collection being built (or makes it the root).
    fn add(&mut self, built: Built) -> Result<(), Error> {
        let Some(open) = self.stack.last_mut() else {
            self.root = Some(built.node);
            return Ok(());
        };
        open.size = open.size.saturating_add(built.size);
        open.height = open.height.max(built.height + 1);
        let node = built.node;
        if let Value::Seq(items) = &mut open.node.value {
            items.push(node);
            return Ok(());
        }
        let Some(key) = open.key.take() else {
            open.key = Some(node);
            return Ok(());
        };
        let name = match &key.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            Value::Null => "None".to_string(),
            Value::Seq(_) | Value::Map(_) => {
                return Err(key.mark.error("", "a mapping key must be a scalar"));
            }
        };
        if name == "<<" && matches!(key.value, Value::Str(_)) {
            open.merges.push(node);
            return Ok(());
        }
        if let Value::Map(entries) = &mut open.node.value {
            if entries.len() >= INDEX_FROM && open.index.is_empty() {
                open.index = entries
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.name.clone(), i))
                    .collect();
            }
            let existing = if open.index.is_empty() {
                entries.iter().position(|(k, _)| k.name == name)
            } else {
                open.index.get(&name).copied()
            };
            match existing.and_then(|i| entries.get_mut(i)) {
                Some(entry) => entry.1 = node,
                None => {
                    if !open.index.is_empty() {
                        open.index.insert(name.clone(), entries.len());
                    }
                    entries.push((
                        Key {
                            name,
                            mark: key.mark,
                        },
                        node,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Applies `<<` merge keys: entries of the merged mappings that the mapping lacks are added
/// (earlier merged mappings win over later ones, as in YAML 1.1).
fn apply_merges(open: &mut Open) -> Result<(), Error> {
    let merges = std::mem::take(&mut open.merges);
    let Value::Map(entries) = &mut open.node.value else {
        return Ok(());
    };
    for merge in merges {
        let sources: Vec<Node> = match merge.value {
            Value::Map(_) => vec![merge],
            Value::Seq(items) => items,
            _ => {
                return Err(merge
                    .mark
                    .error("<<", "a merge key takes a mapping or a list of mappings"));
            }
        };
        for source in sources {
            let Value::Map(source_entries) = source.value else {
                return Err(source
                    .mark
                    .error("<<", "a merge key takes a mapping or a list of mappings"));
            };
            for (k, v) in source_entries {
                if !entries.iter().any(|(e, _)| e.name == k.name) {
                    entries.push((k, v));
                }
            }
        }
    }
    Ok(())
}

/// Resolves an untagged plain scalar with YAML 1.1 rules (PyYAML's SafeLoader).
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return Value::Bool(true);
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return Value::Bool(false);
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = parse_int(text) {
        return Value::Int(i);
    }
    if let Some(f) = parse_float(text) {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

/// YAML 1.1 integers: decimal, `0x` hex, `0o`/leading-zero octal, `0b` binary, `_` separators.
fn parse_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, text.get(1..)?),
        b'+' => (false, text.get(1..)?),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.as_bytes().first()?.is_ascii_digit() {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    let (radix, body) = if let Some(h) = clean.strip_prefix("0x") {
        (16, h)
    } else if let Some(b) = clean.strip_prefix("0b") {
        (2, b)
    } else if let Some(o) = clean.strip_prefix("0o") {
        (8, o)
    } else if clean.len() > 1 && clean.starts_with('0') {
        (8, &clean[1..])
    } else {
        (10, clean.as_str())
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i64::from_str_radix(body, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// YAML 1.1 floats need a dot (`1.5`, `1.0e+3`, `.5`); `1e3` stays a string, as in PyYAML.
fn parse_float(text: &str) -> Option<f64> {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let (whole, fraction) = mantissa.split_once('.')?;
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit() || c == '_');
    let whole_ok =
        whole.is_empty() || (whole.starts_with(|c: char| c.is_ascii_digit()) && digits(whole));
    let fraction_ok = digits(fraction) && !(whole.is_empty() && fraction.is_empty());
    // YAML 1.1 exponents carry a sign: `1.0e+3`, not `1.0e3`.
    let exponent_ok = exponent.is_none_or(|e| {
        e.len() > 1
            && e.starts_with(['+', '-'])
            && e.get(1..)
                .is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()))
    });
    if !(whole_ok && fraction_ok && exponent_ok) {
        return None;
    }
    text.replace('_', "").parse().ok()
}

/// A scalar with an explicit core tag (`!!str 1`, `!!int "3"`).
fn resolve_tagged(suffix: &str, text: &str, mark: &Mark) -> Result<Value, Error> {
    let bad = || {
        mark.error(
            "",
            format!("invalid YAML: {text:?} is not a valid !!{suffix}"),
        )
    };
    Ok(match suffix {
        "str" => Value::Str(text.to_string()),
        "int" => Value::Int(parse_int(text).ok_or_else(bad)?),
        "float" => match resolve_plain(text) {
            Value::Float(f) => Value::Float(f),
            Value::Int(i) => Value::Float(i as f64),
            _ => return Err(bad()),
        },
        "bool" => match resolve_plain(text) {
            Value::Bool(b) => Value::Bool(b),
            _ => return Err(bad()),
        },
        "null" => Value::Null,
        _ => resolve_plain(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Json {
        load(text, None)
            .map(|n| n.to_json())
            .unwrap_or_else(|e| Json::String(e.to_string()))
    }

    #[test]
    fn scalars_follow_yaml_1_1() {
        let v = json(
            "a: yes\nb: off\nc: 010\nd: 0x1f\ne: 1.5\nf: 1e3\ng: '1'\nh: ~\ni: 1_000\nj: 1.0e+2\nk: 1.0e2\nl: .5\nm: 1.2.3\n",
        );
        assert_eq!(
            v,
            serde_json::json!({"a": true, "b": false, "c": 8, "d": 31, "e": 1.5, "f": "1e3",
                               "g": "1", "h": null, "i": 1000, "j": 100.0, "k": "1.0e2",
                               "l": 0.5, "m": "1.2.3"})
        );
    }

    #[test]
    fn marks_are_one_based() {
        let node =
            load("a:\n  b: 1\n", None).unwrap_or_else(|_| Node::new(Value::Null, Mark::default()));
        let b = node
            .get("a")
            .and_then(|a| a.get("b"))
            .map(|b| (b.mark.line, b.mark.column));
        assert_eq!(b, Some((2, 6)));
    }

    #[test]
    fn merge_keys_do_not_override() {
        let v = json("x: &x {a: 1, b: 2}\ny:\n  <<: *x\n  b: 3\n");
        assert_eq!(v["y"], serde_json::json!({"b": 3, "a": 1}));
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let err = load("a: [1,\nb: c", None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("2:1: invalid YAML"), "{err}");
    }

    #[test]
    fn alias_bomb_is_rejected() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = load(&text, None)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(err.contains("alias bomb"), "{err}");
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let text: String = (0..MAX_DEPTH + 20)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        let err = load(&text, None)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(err.contains("nests deeper"), "{err}");
        // Deeper flow nesting stops in the YAML scanner, also as an error.
        assert!(load(&"[".repeat(1_000_000), None).is_err());
    }

    #[test]
    fn aliases_cannot_nest_past_the_depth_limit() {
        // Each anchor nests the previous one 10 levels deeper.
        let mut text = String::from("a0: &a0 x\n");
        for i in 1..40 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} {}*a{p}{}\n",
                "[".repeat(10),
                "]".repeat(10)
            ));
        }
        let err = load(&text, None)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(err.contains("nests deeper"), "{err}");
    }

    #[test]
    fn nested_anchors_count_their_copies() {
        // 100 nested anchored mappings around one large list: each anchor keeps a copy.
        let list = format!("[{}]", vec!["1"; 30_000].join(", "));
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("{}k{i}: &k{i}\n", "  ".repeat(i)));
        }
        text.push_str(&format!("{}v: {list}\n", "  ".repeat(100)));
        let err = load(&text, None)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(err.contains("alias bomb"), "{err}");
    }

    #[test]
    fn huge_files_are_rejected() {
        let text = "a".repeat(MAX_FILE_BYTES + 1);
        let err = load(&text, None)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(err.contains("more than"), "{err}");
    }
}
