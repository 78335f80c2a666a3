//! `drover local …`: a deployment run entirely in this process — the embedded state store under
//! `--state-dir` (default `./.drover/`), the workflow engine, and an in-process agent that runs
//! script operations (dry-run tasks are acknowledged without running). The engine and the agent
//! meet as the services do, through `BusDispatcher` and `AgentService`, on an in-memory bus
//! instead of RabbitMQ: one code path for both.
//!
//! One deployment per state directory, with the id `local`, as Cloudify's `cfy local`. Events go
//! to the terminal and `--events-json`; the state directory keeps what a resume needs.

mod agent;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use drover_bus::{MemoryBus, Topology};
use drover_model::{ExecutionStatus, Map};
use drover_provisioning::Provisioner;
use drover_store::{FileStore, StateStore};
use drover_workflow::NewDeployment;
use drover_workflow::{
    BusDispatcher, CancelMode, Canceller, Engine, InProcessDispatcher, NoRunner, ProvisionConfig,
    ProvisioningDispatcher, RunOptions, remote_provisioner,
};

use crate::{Failure, inputs};

/// The deployment id of `drover local`.
const DEPLOYMENT: &str = "local";

#[derive(Subcommand)]
pub enum LocalCommand {
    /// Make a deployment of a blueprint and run its install workflow.
    Install {
        blueprint: PathBuf,
        /// A YAML/JSON inputs file, or KEY=VALUE pairs (`;`-separated); may be repeated.
        #[arg(short, long = "inputs")]
        inputs: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the uninstall workflow.
    Uninstall {
        /// Go on when an operation fails.
        #[arg(long)]
        ignore_failure: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run a workflow: install, uninstall, scale, heal, execute_operation, start, stop, restart.
    Execute {
        workflow: String,
        /// A workflow parameter, KEY=VALUE (the value is read as YAML); may be repeated.
        #[arg(short = 'p', long = "parameter", value_name = "KEY=VALUE")]
        parameters: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Continue the last execution that did not finish (after a crash, a cancel or a failure).
    Resume {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Print the deployment's outputs as JSON.
    Outputs {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print the node instances.
    Instances {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Table,
}

#[derive(Args)]
pub struct StateArgs {
    /// Where the deployment's state lives.
    #[arg(long, value_name = "DIR", default_value = ".drover")]
    state_dir: PathBuf,
    /// The state store instead of the state directory's: file:DIR, memory: or
    /// http(s)://HOST:PORT[?prefix=P] (OpenSearch). The directory still holds the agent's work.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

/// Options of every command that runs a workflow.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Send and acknowledge every task without running operations.
    #[arg(long)]
    dry_run: bool,
    /// Operations in flight at most.
    #[arg(long, default_value_t = 100)]
    parallelism: usize,
    /// Write every event as a JSON line to FILE, in order.
    #[arg(long, value_name = "FILE")]
    events_json: Option<PathBuf>,
    /// Retries of a failed operation (unless the operation sets max_retries); -1: unlimited.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    task_retries: i64,
    /// Seconds between retries (unless the operation sets retry_interval).
    #[arg(long, default_value_t = 1.0)]
    task_retry_interval: f64,
    /// Get Compute servers from drover-provisioner (http://HOST:PORT) instead of the
    /// in-process `sim` cloud; operations still run in this process.
    #[arg(long, value_name = "URL")]
    provisioner_url: Option<String>,
}

pub fn run(command: LocalCommand) -> Result<(), Failure> {
    // One thread: the engine and the in-process agent pass every task and result to each
    // other, which on one thread costs a queue push instead of waking another thread; scripts
    // run as processes and the blocking pool still serves their `ctx` calls.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(command))
}

async fn run_async(command: LocalCommand) -> Result<(), Failure> {
    match command {
        LocalCommand::Install {
            blueprint,
            inputs,
            run,
        } => {
            let inputs = inputs::parse(&inputs)?;
            let options = drover_dsl::Options {
                inputs: inputs.clone(),
                ..Default::default()
            };
            let plan = drover_dsl::plan_file(&blueprint, &options)
                .map_err(|e| Failure::Invalid(e.to_string()))?;
            let local = Local::open(&run).await?;
            local.refuse_to_replace_an_installed_deployment()?;
            let blueprint_id = blueprint
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "blueprint".into());
            let dir = blueprint
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .map(std::path::absolute)
                .transpose()
                .context("resolving the blueprint's directory")?;
            local
                .engine
                .create_deployment(
                    NewDeployment::new(DEPLOYMENT, &blueprint_id, plan)
                        .inputs(inputs)
                        .blueprint_dir(dir.map(|d| d.display().to_string())),
                )
                .map_err(|e| Failure::Invalid(e.to_string()))?;
            local.execute("install", Map::new(), &run).await
        }
        LocalCommand::Uninstall {
            ignore_failure,
            run,
        } => {
            let mut params = Map::new();
            if ignore_failure {
                params.insert("ignore_failure".into(), true.into());
            }
            Local::open(&run)
                .await?
                .execute("uninstall", params, &run)
                .await
        }
        LocalCommand::Execute {
            workflow,
            parameters,
            run,
        } => {
            let params = parse_parameters(&parameters)?;
            Local::open(&run)
                .await?
                .execute(&workflow, params, &run)
                .await
        }
        LocalCommand::Resume { run } => Local::open(&run).await?.resume(&run).await,
        LocalCommand::Outputs { state } => {
            let store = open_store(&state)?;
            // Outputs run no operation: an engine whose dispatcher refuses them suffices.
            let engine = Engine::new(store, InProcessDispatcher::new(NoRunner));
            let outputs = engine
                .outputs(DEPLOYMENT)
                .map_err(|e| Failure::Invalid(e.to_string()))?;
            print_json(&serde_json::Value::Object(outputs))
        }
        LocalCommand::Instances { format, state } => {
            let store = open_store(&state)?;
            let instances = store
                .node_instances(DEPLOYMENT)
                .map_err(anyhow::Error::from)?;
            match format {
                Format::Json => {
                    print_json(&serde_json::to_value(&instances).map_err(anyhow::Error::from)?)
                }
                Format::Table => {
                    println!("{:<32} {:<24} {:<14} host", "id", "node", "state");
                    for i in instances {
                        println!(
                            "{:<32} {:<24} {:<14} {}",
                            i.id,
                            i.node_id,
                            i.state,
                            i.host_id.unwrap_or_default()
                        );
                    }
                    Ok(())
                }
            }
        }
    }
}

fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    println!("{text}");
    Ok(())
}

/// `-p KEY=VALUE` pairs, values read as YAML (`delta=2` is a number, `ids=[a, b]` a list).
fn parse_parameters(pairs: &[String]) -> anyhow::Result<Map> {
    let mut params = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("-p {pair:?}: expected KEY=VALUE");
        };
        let value = drover_dsl::yaml_to_json(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        params.insert(key.trim().to_string(), value);
    }
    Ok(params)
}

fn open_store(state: &StateArgs) -> anyhow::Result<Arc<dyn StateStore>> {
    if let Some(url) = &state.store {
        return drover_store::open(url).with_context(|| format!("opening the store {url}"));
    }
    let store = FileStore::open(&state.state_dir)
        .with_context(|| format!("opening the state directory {}", state.state_dir.display()))?;
    Ok(Arc::new(store))
}

/// The results queue's owner name on the embedded bus.
const OWNER: &str = "local";

/// The embedded engine over one state directory, and its agent.
struct Local {
    engine: Engine<ProvisioningDispatcher<BusDispatcher>>,
    state_dir: PathBuf,
    agent: tokio::task::JoinHandle<()>,
}

impl Drop for Local {
    fn drop(&mut self) {
        self.agent.abort();
    }
}

impl Local {
    async fn open(run: &RunArgs) -> anyhow::Result<Local> {
        let store = open_store(&run.state)?;
        let state_dir = run.state.state_dir.clone();
        let bus = Arc::new(MemoryBus::new(Topology::new()));
        let agent = agent::start(bus.clone(), state_dir.join("work"), run.parallelism)
            .context("starting the in-process agent")?;
        let dispatcher = BusDispatcher::start(bus, OWNER)
            .await
            .context("starting the dispatcher")?;
        let provisioner = match &run.provisioner_url {
            Some(url) => remote_provisioner(url, ProvisionConfig::default().batch_size)
                .context("--provisioner-url")?,
            None => Provisioner::in_memory(),
        };
        let dispatcher =
            ProvisioningDispatcher::new(dispatcher, Some(provisioner), ProvisionConfig::default());
        Ok(Local {
            engine: Engine::new(store, dispatcher),
            state_dir,
            agent,
        })
    }

    fn refuse_to_replace_an_installed_deployment(&self) -> Result<(), Failure> {
        let instances = self
            .engine
            .store()
            .node_instances(DEPLOYMENT)
            .map_err(anyhow::Error::from)?;
        if instances
            .iter()
            .any(|i| i.state != "uninitialized" && i.state != "deleted")
        {
            return Err(Failure::Invalid(format!(
                "{} holds a deployment that is installed; uninstall it first, or use another --state-dir",
                self.state_dir.display()
            )));
        }
        Ok(())
    }

    async fn execute(&self, workflow: &str, mut params: Map, run: &RunArgs) -> Result<(), Failure> {
        params
            .entry("task_retries")
            .or_insert(run.task_retries.into());
        params
            .entry("task_retry_interval")
            .or_insert(run.task_retry_interval.into());
        let execution = self
            .engine
            .create_execution(DEPLOYMENT, workflow, params, run.dry_run)
            .map_err(|e| Failure::Invalid(e.to_string()))?;
        self.run(&execution.id, run).await
    }

    async fn resume(&self, run: &RunArgs) -> Result<(), Failure> {
        let executions = self
            .engine
            .store()
            .executions(DEPLOYMENT)
            .map_err(anyhow::Error::from)?;
        let Some(last) = executions.last() else {
            return Err(Failure::Invalid("there is no execution to resume".into()));
        };
        if last.status == ExecutionStatus::Terminated {
            return Err(Failure::Invalid(format!(
                "the last execution ({} of {}) finished; nothing to resume",
                last.id, last.workflow_id
            )));
        }
        self.run(&last.id.clone(), run).await
    }

    async fn run(&self, execution_id: &str, run: &RunArgs) -> Result<(), Failure> {
        let mut reporter = report::Reporter::new(run.events_json.as_deref())?;
        let (canceller, cancel) = Canceller::new();
        // Events go to --events-json and the terminal, not the state store: the state store keeps
        // what a resume needs, and 10,000 instances make 200,000 events.
        let options = RunOptions {
            parallelism: run.parallelism,
            keep_events: false,
        };
        let interrupts = tokio::spawn(cancel_on_interrupt(canceller));
        let result = self
            .engine
            .run(execution_id, &options, &mut reporter, cancel)
            .await;
        interrupts.abort();
        let execution = result.map_err(|e| anyhow!(e))?;
        reporter.finish()?;
        match execution.status {
            ExecutionStatus::Terminated => Ok(()),
            ExecutionStatus::Cancelled => Err(Failure::Invalid(format!(
                "execution {} was cancelled; `drover local resume` continues it",
                execution.id
            ))),
            _ => Err(Failure::Invalid(format!(
                "execution {} of {} failed: {}",
                execution.id, execution.workflow_id, execution.error
            ))),
        }
    }
}

/// First Ctrl-C: cancel gracefully (tasks in flight finish); second: force.
async fn cancel_on_interrupt(canceller: Canceller) {
    for mode in [CancelMode::Graceful, CancelMode::Force] {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("cancelling ({mode:?}); Ctrl-C again to force");
        canceller.cancel(mode);
    }
}
