//! Plugins: what actually runs an operation, chosen by the task's `plugin` name.
//!
//! Built in: [`ScriptPlugin`](crate::script::ScriptPlugin) (Cloudify's script plugin) and
//! [`DryRun`] (used for every task with `dry_run` set). External plugins
//! ([`ExternalPlugin`](crate::external::ExternalPlugin): a long-lived executable per plugin
//! speaking JSON lines) register under their names in the same [`PluginRegistry`], or are
//! found in a directory by its fallback ([`PluginsDir`](crate::external::PluginsDir)).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use drover_model::{Map, OperationTask, TaskOutcome};
use serde_json::Value;

use crate::log::LogSink;

/// The plugin name of Cloudify's script plugin.
pub const SCRIPT_PLUGIN: &str = "script";

/// What a plugin reports; the runner adds the task's ids to make a `TaskResult`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutput {
    pub outcome: TaskOutcome,
    /// Runtime properties after the operation of the instances it changed, by instance id.
    pub runtime_properties: BTreeMap<String, Map>,
}

impl PluginOutput {
    pub fn succeeded(result: Value) -> Self {
        PluginOutput {
            outcome: TaskOutcome::Succeeded { result },
            runtime_properties: BTreeMap::new(),
        }
    }

    pub fn failed(error: impl Into<String>, recoverable: bool) -> Self {
        PluginOutput {
            outcome: TaskOutcome::Failed {
                error: error.into(),
                recoverable,
                retry_after_s: None,
            },
            runtime_properties: BTreeMap::new(),
        }
    }
}

/// What the runner lends a plugin for each operation.
#[derive(Clone)]
pub struct OperationEnv {
    /// The agent's working directory: default cwd of scripts, home of downloaded resources.
    pub work_dir: PathBuf,
    /// The executable that acts as `ctx` when started under that name.
    pub ctx_executable: PathBuf,
    pub logs: LogSink,
}

pub type PluginFuture<'a> = Pin<Box<dyn Future<Output = PluginOutput> + Send + 'a>>;

/// Runs operations of one plugin. Failures are outcomes, never panics or errors.
pub trait Plugin: Send + Sync {
    fn run<'a>(&'a self, task: &'a OperationTask, env: &'a OperationEnv) -> PluginFuture<'a>;
}

/// Succeeds without running anything: the operation of a dry-run execution.
pub struct DryRun;

impl DryRun {
    /// What every dry-run operation reports.
    pub fn output() -> PluginOutput {
        PluginOutput::succeeded(Value::Null)
    }
}

impl Plugin for DryRun {
    fn run<'a>(&'a self, _task: &'a OperationTask, _env: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async { DryRun::output() })
    }
}

/// Plugins by name.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    plugins: HashMap<String, Arc<dyn Plugin>>,
    /// Runs the operations of every plugin not registered by name (hollow agents answer
    /// whatever they are sent).
    fallback: Option<Arc<dyn Plugin>>,
}

impl PluginRegistry {
    /// No plugins at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in plugins: `script`.
    pub fn with_builtins() -> Self {
        let mut registry = Self::empty();
        registry.register(SCRIPT_PLUGIN, Arc::new(crate::script::ScriptPlugin));
        registry
    }

    /// Adds or replaces the plugin for `name`.
    pub fn register(&mut self, name: impl Into<String>, plugin: Arc<dyn Plugin>) {
        self.plugins.insert(name.into(), plugin);
    }

    /// Runs every operation whose plugin is not registered by name.
    pub fn set_fallback(&mut self, plugin: Arc<dyn Plugin>) {
        self.fallback = Some(plugin);
    }

    /// The plugin registered as `name`, else the fallback.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(name).or(self.fallback.as_ref())
    }

    /// The plugin a task names. A task without a plugin name whose implementation is a file
    /// path is a script (Cloudify maps such operations to its script plugin).
    pub fn plugin_name(task: &OperationTask) -> &str {
        if task.plugin.is_empty() && crate::script::looks_like_script(&task.implementation) {
            SCRIPT_PLUGIN
        } else {
            &task.plugin
        }
    }
}
