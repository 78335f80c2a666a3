//! What a script can read and change through `ctx` during one operation, and the grammar of
//! the calls (Cloudify's ctx proxy walks `ctx` object attributes; the commonly used subset is
//! spelled out here, with `-` and `_` interchangeable in names as Cloudify allows).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use drover_model::{Map, OperationTask, TaskNode};
use serde_json::{Value, json};

use super::protocol::{CtxRequest, CtxResponse};
use super::{path, render};
use crate::log::{LogLevel, LogRecord, LogSink, LogStream};

/// How the script asked the operation to end, overriding its exit status.
#[derive(Debug, Clone, PartialEq)]
pub enum StopRequest {
    /// `ctx abort-operation MSG`: a non-recoverable failure.
    Abort(String),
    /// `ctx retry-operation MSG [AFTER]`: a recoverable failure, retried after AFTER seconds.
    Retry {
        message: String,
        after_s: Option<f64>,
    },
}

/// One side of the operation: a node instance and whether the script changed it.
struct Instance {
    node: TaskNode,
    changed: bool,
}

/// Which instance a call addresses.
#[derive(Clone, Copy)]
enum Side {
    /// The instance of a node operation.
    Own,
    Source,
    Target,
}

/// The context of one operation, as the ctx proxy serves it.
pub struct CtxState {
    task: OperationTask,
    /// The node instance (node operation) or the source (relationship operation).
    first: Instance,
    /// The target of a relationship operation.
    target: Option<Instance>,
    downloads_dir: PathBuf,
    logs: LogSink,
    returns: Option<Value>,
    stop: Option<StopRequest>,
    /// Downloads so far, to give each its own directory.
    downloads: u32,
}

/// What the script left behind when it ended.
#[derive(Debug, Default)]
pub struct CtxOutcome {
    pub returns: Option<Value>,
    pub stop: Option<StopRequest>,
    /// Runtime properties of the instances the script changed, by instance id.
    pub runtime_properties: BTreeMap<String, Map>,
}

impl CtxState {
    /// `downloads_dir` receives `ctx download-resource` files that have no explicit target.
    pub fn new(task: &OperationTask, downloads_dir: PathBuf, logs: LogSink) -> Self {
        let (first, target) = match &task.relationship {
            Some(rel) => (rel.source.clone(), Some(rel.target.clone())),
            None => (task.node.clone(), None),
        };
        let instance = |node| Instance {
            node,
            changed: false,
        };
        CtxState {
            task: task.clone(),
            first: instance(first),
            target: target.map(instance),
            downloads_dir,
            logs,
            returns: None,
            stop: None,
            downloads: 0,
        }
    }

    pub fn finish(self) -> CtxOutcome {
        let runtime_properties = [Some(self.first), self.target]
            .into_iter()
            .flatten()
            .filter(|i| i.changed)
            .map(|i| (i.node.node_instance_id, i.node.runtime_properties))
            .collect();
        CtxOutcome {
            returns: self.returns,
            stop: self.stop,
            runtime_properties,
        }
    }

    /// Answers one request; never panics on a malformed one.
    pub fn handle(&mut self, request: CtxRequest) -> CtxResponse {
        let json_args: HashSet<usize> = request.json_args.into_iter().collect();
        let args = Args {
            values: request.args,
            json_args,
            next: 0,
        };
        match self.dispatch(args) {
            Ok(Reply::Value(value)) => CtxResponse::Result(value),
            Ok(Reply::Stop(message)) => CtxResponse::StopOperation { message },
            Err(message) => CtxResponse::Error { message },
        }
    }

    fn dispatch(&mut self, mut args: Args) -> Result<Reply, String> {
        let first = args.name("a ctx attribute (instance, node, logger …)")?;
        let reply = match first.as_str() {
            "logger" => self.log(&mut args)?,
            "instance" => {
                if self.target.is_some() {
                    return Err(
                        "ctx instance is not available in a relationship operation; \
                                use ctx source instance or ctx target instance"
                            .into(),
                    );
                }
                self.instance(Side::Own, &mut args)?
            }
            "node" => {
                if self.target.is_some() {
                    return Err("ctx node is not available in a relationship operation; \
                                use ctx source node or ctx target node"
                        .into());
                }
                self.node(Side::Own, &mut args)?
            }
            side @ ("source" | "target") => {
                if self.target.is_none() {
                    return Err(format!(
                        "ctx {side} is only available in a relationship operation"
                    ));
                }
                let side = if side == "source" {
                    Side::Source
                } else {
                    Side::Target
                };
                match args.name("instance or node")?.as_str() {
                    "instance" => self.instance(side, &mut args)?,
                    "node" => self.node(side, &mut args)?,
                    other => return Err(format!("ctx source/target has no attribute {other:?}")),
                }
            }
            "deployment" => match args.name("id")?.as_str() {
                "id" => Reply::string(&self.task.deployment_id),
                other => return Err(format!("ctx deployment has no attribute {other:?}")),
            },
            "execution_id" => Reply::string(&self.task.execution_id),
            "workflow_id" => Reply::string(&self.task.workflow_id),
            "task_id" => Reply::string(&self.task.task_id),
            "type" => Reply::string(if self.target.is_some() {
                "relationship-instance"
            } else {
                "node-instance"
            }),
            "operation" => match args.name("name or retry_number")?.as_str() {
                "name" => Reply::string(&self.task.operation),
                "retry_number" => Reply::Value(json!(self.task.attempt)),
                other => return Err(format!("ctx operation has no attribute {other:?}")),
            },
            "returns" => {
                let value = args.value().ok_or("ctx returns needs a value")?;
                self.returns = Some(value);
                Reply::Value(Value::Null)
            }
            "abort_operation" => {
                let call = args.call(&["message"])?;
                let message = call.text(0).unwrap_or_default();
                self.stop = Some(StopRequest::Abort(message.clone()));
                Reply::Stop(message)
            }
            "retry_operation" => {
                let call = args.call(&["message", "retry_after"])?;
                let message = call.text(0).unwrap_or_default();
                let after_s = match call.get(1) {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(as_seconds(v)?),
                };
                self.stop = Some(StopRequest::Retry {
                    message: message.clone(),
                    after_s,
                });
                Reply::Stop(message)
            }
            "download_resource" => {
                let call = args.call(&["resource_path", "target_path"])?;
                Reply::Value(self.download(&call, false)?)
            }
            "download_resource_and_render" => {
                let call = args.call(&["resource_path", "target_path", "template_variables"])?;
                Reply::Value(self.download(&call, true)?)
            }
            other => return Err(format!("ctx has no attribute {other:?}")),
        };
        args.finish()?;
        Ok(reply)
    }

    fn log(&mut self, args: &mut Args) -> Result<Reply, String> {
        let level_name = args.name("a log level (info, warning, error, debug)")?;
        let level = LogLevel::parse(&level_name)
            .ok_or_else(|| format!("unknown log level {level_name:?}"))?;
        let message = args
            .rest()
            .iter()
            .map(display)
            .collect::<Vec<_>>()
            .join(" ");
        (self.logs)(LogRecord::of(&self.task, LogStream::Ctx, level, message));
        Ok(Reply::Value(Value::Null))
    }

    fn side_mut(&mut self, side: Side) -> &mut Instance {
        match (side, self.target.as_mut()) {
            (Side::Target, Some(target)) => target,
            _ => &mut self.first,
        }
    }

    fn instance(&mut self, side: Side, args: &mut Args) -> Result<Reply, String> {
        let instance = self.side_mut(side);
        match args.name("id or runtime_properties")?.as_str() {
            "id" => Ok(Reply::string(&instance.node.node_instance_id)),
            "runtime_properties" => {
                let Some(key) = args.key()? else {
                    return Ok(Reply::Value(Value::Object(
                        instance.node.runtime_properties.clone(),
                    )));
                };
                match args.value() {
                    None => Ok(Reply::Value(
                        path::get(&instance.node.runtime_properties, &key)?.clone(),
                    )),
                    Some(value) => {
                        path::set(&mut instance.node.runtime_properties, &key, value)?;
                        instance.changed = true;
                        Ok(Reply::Value(Value::Null))
                    }
                }
            }
            other => Err(format!("ctx instance has no attribute {other:?}")),
        }
    }

    fn node(&mut self, side: Side, args: &mut Args) -> Result<Reply, String> {
        let node = &self.side_mut(side).node;
        match args.name("id, name, type or properties")?.as_str() {
            "id" | "name" => Ok(Reply::string(&node.node_id)),
            "type" => Ok(Reply::string(&node.node_type)),
            "properties" => match args.key()? {
                None => Ok(Reply::Value(Value::Object(node.properties.clone()))),
                Some(key) if args.is_done() => {
                    Ok(Reply::Value(path::get(&node.properties, &key)?.clone()))
                }
                Some(_) => Err("node properties are read-only".into()),
            },
            other => Err(format!("ctx node has no attribute {other:?}")),
        }
    }

    /// Copies a blueprint resource to a local file and answers its path.
    fn download(&mut self, call: &Call, render_it: bool) -> Result<Value, String> {
        let resource = call
            .text(0)
            .ok_or("download-resource needs a resource path")?;
        let blueprint_dir = self
            .task
            .blueprint_dir
            .as_deref()
            .ok_or("the task has no blueprint directory to download resources from")?;
        let source = Path::new(blueprint_dir).join(&resource);
        let content = std::fs::read(&source)
            .map_err(|e| format!("cannot read resource {}: {e}", source.display()))?;
        let content = if render_it {
            let template = String::from_utf8(content)
                .map_err(|_| format!("resource {resource} is not UTF-8 text"))?;
            let variables = match call.get(2) {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(vars)) => vars.clone(),
                Some(_) => return Err("template_variables must be an object".into()),
            };
            render::render(&template, &self.template_context(variables))?.into_bytes()
        } else {
            content
        };
        let target = match call.text(1) {
            Some(target) => PathBuf::from(target),
            None => {
                let name = Path::new(&resource)
                    .file_name()
                    .ok_or_else(|| format!("resource path {resource:?} names no file"))?;
                // A directory per download keeps the file name (scripts go by its extension)
                // without one download overwriting another.
                self.downloads += 1;
                let dir = self
                    .downloads_dir
                    .join(sanitize(&self.first.node.node_instance_id))
                    .join(format!(
                        "{}-{}",
                        sanitize(&self.task.task_id),
                        self.downloads
                    ));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                dir.join(name)
            }
        };
        std::fs::write(&target, content)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        Ok(Value::String(target.display().to_string()))
    }

    /// The `ctx` object templates see, with the template variables beside it.
    fn template_context(&self, mut variables: Map) -> Value {
        let view = |i: &Instance| {
            json!({
                "node": {"id": i.node.node_id, "name": i.node.node_id, "type": i.node.node_type,
                         "properties": i.node.properties},
                "instance": {"id": i.node.node_instance_id,
                             "runtime_properties": i.node.runtime_properties},
            })
        };
        let mut ctx = json!({
            "deployment": {"id": self.task.deployment_id},
            "execution_id": self.task.execution_id,
            "workflow_id": self.task.workflow_id,
            "operation": {"name": self.task.operation, "retry_number": self.task.attempt},
        });
        let sides = match &self.target {
            Some(target) => vec![("source", view(&self.first)), ("target", view(target))],
            None => {
                let own = view(&self.first);
                vec![
                    ("node", own["node"].clone()),
                    ("instance", own["instance"].clone()),
                ]
            }
        };
        for (name, value) in sides {
            ctx[name] = value;
        }
        variables.entry("ctx").or_insert(ctx);
        Value::Object(variables)
    }
}

/// What a handled call answers.
enum Reply {
    Value(Value),
    Stop(String),
}

impl Reply {
    fn string(s: &str) -> Self {
        Reply::Value(Value::String(s.to_string()))
    }
}

/// The arguments of a request, consumed left to right.
struct Args {
    values: Vec<Value>,
    json_args: HashSet<usize>,
    next: usize,
}

impl Args {
    fn is_done(&self) -> bool {
        self.next >= self.values.len()
    }

    fn take(&mut self) -> Option<(Value, bool)> {
        let value = self.values.get(self.next)?.clone();
        let is_json = self.json_args.contains(&self.next);
        self.next += 1;
        Some((value, is_json))
    }

    /// An attribute name; `-` and `_` are the same, as in Cloudify.
    fn name(&mut self, expected: &str) -> Result<String, String> {
        match self.take() {
            Some((Value::String(s), _)) => Ok(s.replace('-', "_")),
            Some((other, _)) => Err(format!("expected {expected}, got {other}")),
            None => Err(format!("expected {expected}")),
        }
    }

    /// A property key, if one is left.
    fn key(&mut self) -> Result<Option<String>, String> {
        match self.take() {
            None => Ok(None),
            Some((Value::String(s), _)) => Ok(Some(s)),
            Some((other, _)) => Err(format!("a property key must be a string, got {other}")),
        }
    }

    /// A value argument: JSON-prefixed as given, plain text parsed as JSON when it is JSON.
    fn value(&mut self) -> Option<Value> {
        let (value, is_json) = self.take()?;
        Some(match value {
            Value::String(text) if !is_json => {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            other => other,
        })
    }

    fn rest(&mut self) -> Vec<Value> {
        let rest = self.values.get(self.next..).unwrap_or_default().to_vec();
        self.next = self.values.len();
        rest
    }

    /// The arguments of a method call: positional, and keyword arguments in a trailing
    /// JSON object (as Cloudify's proxy passes a trailing dict as kwargs).
    fn call(&mut self, params: &[&str]) -> Result<Call, String> {
        let has_kwargs = self.values.len() > self.next
            && self.json_args.contains(&(self.values.len() - 1))
            && self.values.last().is_some_and(Value::is_object);
        let mut kwargs = if has_kwargs {
            match self.values.pop() {
                Some(Value::Object(kwargs)) => kwargs,
                _ => Map::new(),
            }
        } else {
            Map::new()
        };
        let positional = self.rest();
        if positional.len() > params.len() {
            return Err(format!(
                "too many arguments: expected at most {} ({})",
                params.len(),
                params.join(", ")
            ));
        }
        let mut values: Vec<Option<Value>> = positional.into_iter().map(Some).collect();
        values.resize(params.len(), None);
        for (slot, name) in values.iter_mut().zip(params) {
            if let Some(value) = kwargs.remove(*name) {
                *slot = Some(value);
            }
        }
        if let Some(unknown) = kwargs.keys().next() {
            return Err(format!("unexpected keyword argument {unknown:?}"));
        }
        Ok(Call { values })
    }

    fn finish(&self) -> Result<(), String> {
        match self.values.get(self.next) {
            None => Ok(()),
            Some(extra) => Err(format!("unexpected argument {}", display(extra))),
        }
    }
}

/// Method-call arguments by parameter position.
struct Call {
    values: Vec<Option<Value>>,
}

impl Call {
    fn get(&self, i: usize) -> Option<&Value> {
        self.values.get(i)?.as_ref()
    }

    fn text(&self, i: usize) -> Option<String> {
        self.get(i).filter(|v| !v.is_null()).map(display)
    }
}

/// How `ctx` prints a value and how messages join: strings raw, anything else as JSON.
pub fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_seconds(value: &Value) -> Result<f64, String> {
    let seconds = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    seconds
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| format!("retry_after must be a number of seconds, got {value}"))
}

/// A node instance id as a single, safe path component.
fn sanitize(id: &str) -> String {
    let cleaned: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".to_string()
    } else {
        cleaned
    }
}
