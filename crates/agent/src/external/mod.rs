//! External plugins: a long-lived executable per plugin, in any language, speaking JSON lines
//! over stdin/stdout (the protocol is in [`protocol`] and the README's "Writing a plugin").
//!
//! The process starts on the plugin's first operation, is started again on the next operation
//! after it died, and is killed when the agent drops the plugin. An operation fails clearly
//! when the plugin cannot be started, dies or breaks the protocol mid-operation, or outlives
//! its timeout (the task's `timeout_s`, else [`ExternalConfig::default_timeout`]).

mod process;
mod protocol;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_model::{Map, OperationTask, TaskOutcome};
use serde_json::Value;

use crate::log::{LogRecord, LogStream};
use crate::plugin::{OperationEnv, Plugin, PluginFuture, PluginOutput, PluginRegistry};
pub use process::PluginCommand;
use process::{Broken, Incoming, PluginProcess};
use protocol::Reply;

/// Limits of external plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalConfig {
    /// The longest line a plugin may write; a longer one is a protocol error.
    pub max_line_bytes: usize,
    /// How long an operation may take when its task sets no timeout.
    pub default_timeout: Duration,
}

impl Default for ExternalConfig {
    fn default() -> Self {
        ExternalConfig {
            max_line_bytes: 1024 * 1024,
            default_timeout: Duration::from_secs(3600),
        }
    }
}

/// One external plugin, registered under its name in a [`PluginRegistry`].
pub struct ExternalPlugin {
    name: String,
    command: PluginCommand,
    config: ExternalConfig,
    process: tokio::sync::Mutex<Option<Arc<PluginProcess>>>,
}

impl ExternalPlugin {
    pub fn new(name: impl Into<String>, command: PluginCommand, config: ExternalConfig) -> Self {
        ExternalPlugin {
            name: name.into(),
            command,
            config,
            process: tokio::sync::Mutex::new(None),
        }
    }

    /// The running process, started (again) if there is none or it died.
    async fn process(&self) -> std::io::Result<Arc<PluginProcess>> {
        let mut slot = self.process.lock().await;
        if let Some(process) = slot.as_ref().filter(|p| p.is_usable()) {
            return Ok(process.clone());
        }
        if slot.is_some() {
            tracing::warn!(plugin = %self.name, "plugin process died; starting it again");
        }
        let process = Arc::new(PluginProcess::start(
            &self.name,
            &self.command,
            self.config.max_line_bytes,
        )?);
        *slot = Some(process.clone());
        Ok(process)
    }

    async fn execute(&self, task: &OperationTask, env: &OperationEnv) -> PluginOutput {
        let process = match self.process().await {
            Ok(process) => process,
            Err(e) => {
                return PluginOutput::failed(
                    format!(
                        "cannot start plugin {:?} ({}): {e}",
                        self.name, self.command
                    ),
                    false,
                );
            }
        };
        let mut properties = Properties::of(task);
        let limit = task
            .timeout_s
            .filter(|s| *s > 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(self.config.default_timeout);
        let mut in_flight = match process.run(task).await {
            Ok(in_flight) => in_flight,
            Err(broken) => return self.broken(broken, properties),
        };
        let replies = async {
            loop {
                match in_flight.replies.recv().await {
                    Some(Incoming::Reply(Reply::Result { outcome, .. })) => return Ok(outcome),
                    Some(Incoming::Reply(Reply::Log { level, message, .. })) => {
                        (env.logs)(LogRecord::of(task, LogStream::Plugin, level, message))
                    }
                    Some(Incoming::Reply(Reply::RuntimeProperties {
                        node_instance_id,
                        set,
                        ..
                    })) => properties.set(node_instance_id, set),
                    Some(Incoming::Broken(broken)) => return Err(broken),
                    // The process is gone without a word: the reader always says why first.
                    None => return Err(Broken::Exited("vanished".into())),
                }
            }
        };
        match tokio::time::timeout(limit, replies).await {
            Ok(Ok(outcome)) => PluginOutput {
                outcome,
                runtime_properties: properties.changed(),
            },
            Ok(Err(broken)) => self.broken(broken, properties),
            Err(_) => {
                process.cancel(&in_flight.id).await;
                PluginOutput {
                    outcome: TaskOutcome::Failed {
                        error: format!(
                            "plugin {:?} did not answer within the {limit:?} timeout",
                            self.name
                        ),
                        recoverable: false,
                        retry_after_s: None,
                    },
                    runtime_properties: properties.changed(),
                }
            }
        }
    }

    /// The failure of an operation whose process broke; a crash may pass, a protocol error
    /// will not.
    fn broken(&self, broken: Broken, properties: Properties) -> PluginOutput {
        let (error, recoverable) = match broken {
            Broken::Exited(how) => (
                format!("plugin {:?} {how} during the operation", self.name),
                true,
            ),
            Broken::Malformed(what) => (
                format!("plugin {:?} broke the protocol: {what}", self.name),
                false,
            ),
        };
        PluginOutput {
            outcome: TaskOutcome::Failed {
                error,
                recoverable,
                retry_after_s: None,
            },
            runtime_properties: properties.changed(),
        }
    }
}

impl Plugin for ExternalPlugin {
    fn run<'a>(&'a self, task: &'a OperationTask, env: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(self.execute(task, env))
    }
}

/// The runtime properties an operation may change: its instance's, and for a relationship
/// operation the source's and the target's.
struct Properties {
    default: String,
    instances: BTreeMap<String, (Map, bool)>,
}

impl Properties {
    fn of(task: &OperationTask) -> Self {
        let mut instances = BTreeMap::new();
        let mut add = |node: &drover_model::TaskNode| {
            instances
                .entry(node.node_instance_id.clone())
                .or_insert_with(|| (node.runtime_properties.clone(), false));
        };
        add(&task.node);
        if let Some(rel) = &task.relationship {
            add(&rel.source);
            add(&rel.target);
        }
        Properties {
            default: task.node.node_instance_id.clone(),
            instances,
        }
    }

    /// Applies one update; an instance the operation does not see is ignored with a warning.
    fn set(&mut self, instance: Option<String>, set: Map) {
        let instance = instance.unwrap_or_else(|| self.default.clone());
        let Some((properties, changed)) = self.instances.get_mut(&instance) else {
            tracing::warn!(%instance, "a plugin set runtime properties of an unrelated instance");
            return;
        };
        for (key, value) in set {
            match value {
                Value::Null => properties.remove(&key),
                value => properties.insert(key, value),
            };
        }
        *changed = true;
    }

    fn changed(self) -> BTreeMap<String, Map> {
        self.instances
            .into_iter()
            .filter(|(_, (_, changed))| *changed)
            .map(|(id, (properties, _))| (id, properties))
            .collect()
    }
}

/// External plugins found by name in a directory: the plugin `NAME` is the executable
/// `<dir>/NAME`. Meant as a registry's fallback, so plugins installed while the agent runs are
/// found.
pub struct PluginsDir {
    dir: PathBuf,
    config: ExternalConfig,
    started: Mutex<HashMap<String, Arc<ExternalPlugin>>>,
}

impl PluginsDir {
    pub fn new(dir: impl Into<PathBuf>, config: ExternalConfig) -> Self {
        PluginsDir {
            dir: dir.into(),
            config,
            started: Mutex::default(),
        }
    }

    fn plugin(&self, name: &str) -> Result<Arc<ExternalPlugin>, String> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(format!("no plugin named {name:?} on this agent"));
        }
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plugin) = started.get(name) {
            return Ok(plugin.clone());
        }
        let program = self.dir.join(name);
        if !program.is_file() {
            return Err(format!(
                "no plugin named {name:?} on this agent (not registered, and no executable {})",
                program.display()
            ));
        }
        let command = PluginCommand {
            program,
            args: Vec::new(),
        };
        let plugin = Arc::new(ExternalPlugin::new(name, command, self.config));
        started.insert(name.to_owned(), plugin.clone());
        Ok(plugin)
    }
}

impl Plugin for PluginsDir {
    fn run<'a>(&'a self, task: &'a OperationTask, env: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async move {
            match self.plugin(PluginRegistry::plugin_name(task)) {
                Ok(plugin) => plugin.execute(task, env).await,
                Err(message) => PluginOutput::failed(message, false),
            }
        })
    }
}
