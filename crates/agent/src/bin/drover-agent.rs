//! `drover-agent`: runs operations on a machine.
//!
//! `consume` is the agent proper: it consumes a tasks queue on RabbitMQ and answers every task
//! there (`drover_agent::AgentService`). `run-task` runs one task given as JSON, which is also
//! how the ctx end-to-end tests exercise the real binary. `hollow N` hosts N simulated agents
//! for scale tests (`drover_agent::HollowHost`). Started under the name `ctx` (a symlink the
//! runner puts on a script's PATH), it is the ctx client instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use drover_agent::{
    AgentIdentity, AgentQueue, AgentService, DEFAULT_CONCURRENCY, ExternalConfig, ExternalPlugin,
    Heartbeat, HollowHost, LoadAverage, LogRecord, LogSink, OperationRunner, PluginCommand,
    PluginRegistry, PluginsDir, RunnerConfig, Shipper, ShipperConfig,
};
use drover_bus::{AmqpBus, Bus};
use drover_model::{OperationTask, TaskOutcome};
use drover_telemetry::BusArgs;

#[derive(Parser)]
#[command(name = "drover-agent", version, about = "Runs drover operations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one operation task (JSON, from FILE or stdin); print its result as JSON on stdout
    /// and its logs on stderr. Exits 0 when the operation succeeded, 1 when it failed.
    RunTask {
        /// The task file; stdin when omitted.
        file: Option<PathBuf>,
        /// The agent's working directory.
        #[arg(long, default_value = ".")]
        work_dir: PathBuf,
        #[command(flatten)]
        plugins: PluginArgs,
    },
    /// Consume a tasks queue on RabbitMQ and run its tasks until the broker stays unreachable;
    /// each result goes to the results queue of the workflow replica that sent the task, and
    /// the operations' logs and task events to the ingest queue.
    Consume {
        #[command(flatten)]
        bus: BusArgs,
        /// `central`, or this agent's name (its queue is `agent.<NAME>`).
        #[arg(long)]
        queue: String,
        /// The deployment of the instance this agent serves, told in its heartbeats so that the
        /// monitor heals the right one (the process cloud sets it for the agents it starts).
        #[arg(long, env = "DROVER_DEPLOYMENT_ID", default_value = "")]
        deployment_id: String,
        /// The node instance this agent serves, told in its heartbeats.
        #[arg(long, env = "DROVER_NODE_INSTANCE_ID", default_value = "")]
        node_instance_id: String,
        /// Tasks run at once (and the consumer's prefetch).
        #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
        concurrency: u16,
        /// Heartbeat interval in milliseconds; 0 sends none.
        #[arg(long, default_value_t = 200)]
        heartbeat_ms: u64,
        /// The agent's working directory.
        #[arg(long, default_value = ".")]
        work_dir: PathBuf,
        /// Answer every operation with success without running it, as hollow agents do: a
        /// central agent for scale tests whose blueprints name plugins that do nothing.
        #[arg(long)]
        hollow: bool,
        #[command(flatten)]
        plugins: PluginArgs,
    },
    /// Host N hollow agents `hollow-0` … `hollow-<N-1>` for scale tests: each consumes its own
    /// queue and heartbeats, and answers every operation with success without running it.
    Hollow {
        /// How many agents.
        agents: usize,
        #[command(flatten)]
        bus: BusArgs,
        /// How long each operation "runs", in milliseconds; 0 answers at once (a dry run).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Heartbeat interval in milliseconds; 0 sends none.
        #[arg(long, default_value_t = 200)]
        heartbeat_ms: u64,
        /// Operations each agent runs at once (and its consumer's prefetch).
        #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
        concurrency: u16,
        /// The working directory the (unused) runner requires.
        #[arg(long, default_value = ".")]
        work_dir: PathBuf,
    },
}

/// Connects as `name` (what the broker's connection list shows).
async fn connect(bus: &BusArgs, name: &str) -> anyhow::Result<Arc<AmqpBus>> {
    let bus = bus
        .connect(bus.topology(), name)
        .await
        .context("cannot connect to the broker")?;
    Ok(Arc::new(bus))
}

/// External plugins (JSON lines over stdin/stdout; see the README's "Writing a plugin").
#[derive(Args)]
struct PluginArgs {
    /// An external plugin: NAME=COMMAND, the command split on whitespace (repeatable).
    #[arg(long = "plugin", value_name = "NAME=COMMAND", value_parser = parse_plugin)]
    plugins: Vec<(String, PluginCommand)>,
    /// A directory of plugin executables: plugin NAME is DIR/NAME.
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Seconds an external plugin's operation may take when its task sets no timeout.
    #[arg(long, default_value_t = 3600)]
    plugin_timeout_s: u64,
}

impl PluginArgs {
    /// The built-in plugins and these external ones.
    fn registry(self) -> PluginRegistry {
        let config = ExternalConfig {
            default_timeout: Duration::from_secs(self.plugin_timeout_s),
            ..ExternalConfig::default()
        };
        let mut registry = PluginRegistry::with_builtins();
        for (name, command) in self.plugins {
            let plugin = ExternalPlugin::new(name.clone(), command, config);
            registry.register(name, Arc::new(plugin));
        }
        if let Some(dir) = self.plugins_dir {
            registry.set_fallback(Arc::new(PluginsDir::new(dir, config)));
        }
        registry
    }
}

fn parse_plugin(arg: &str) -> Result<(String, PluginCommand), String> {
    let (name, command) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not NAME=COMMAND"))?;
    let command =
        PluginCommand::parse(command).ok_or_else(|| format!("no command for {name:?}"))?;
    if name.is_empty() {
        return Err(format!("no name in {arg:?}"));
    }
    Ok((name.to_owned(), command))
}

/// `None` for 0: no heartbeats.
fn heartbeat_interval(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn main() -> ExitCode {
    drover_agent::ctx::main_if_invoked_as_ctx();
    let cli = Cli::parse();
    // `run-task` prints the operation's logs on stderr: only warnings besides them.
    let quiet = matches!(cli.command, Command::RunTask { .. });
    drover_telemetry::init_tracing(if quiet { "warn" } else { "info" });
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match command {
        Command::RunTask {
            file,
            work_dir,
            plugins,
        } => runtime.block_on(run_task(file, work_dir, plugins.registry())),
        Command::Consume {
            bus,
            queue,
            deployment_id,
            node_instance_id,
            concurrency,
            heartbeat_ms,
            work_dir,
            hollow,
            plugins,
        } => {
            let plugins = if hollow {
                PluginRegistry::hollow(Duration::ZERO)
            } else {
                plugins.registry()
            };
            let service = async {
                let bus = connect(&bus, &format!("drover-agent {queue}")).await?;
                let identity = AgentIdentity::new(queue.clone(), deployment_id, node_instance_id);
                let _heartbeat = heartbeat_interval(heartbeat_ms).map(|interval| {
                    Heartbeat::start_with_metrics(
                        bus.clone(),
                        identity,
                        interval,
                        Some(Arc::new(LoadAverage)),
                    )
                });
                let (shipper, _shipping) =
                    Shipper::start(bus.clone(), &queue, ShipperConfig::default());
                let runner = runner(work_dir, plugins, shipper.log_sink())?;
                let service =
                    AgentService::new(bus, Arc::new(runner), AgentQueue::from(queue.as_str()))
                        .with_concurrency(concurrency)
                        .with_events(shipper);
                service.run().await.context("the tasks queue failed")
            };
            runtime.block_on(service)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hollow {
            agents,
            bus,
            delay_ms,
            heartbeat_ms,
            concurrency,
            work_dir,
        } => {
            let host = async {
                let bus: Arc<dyn Bus> = connect(&bus, "drover-agent hollow").await?;
                let plugins = PluginRegistry::hollow(Duration::from_millis(delay_ms));
                let runner = Arc::new(runner(work_dir, plugins, stderr_logs())?);
                let host = HollowHost::start(
                    bus.clone(),
                    agents,
                    heartbeat_interval(heartbeat_ms),
                    |queue| {
                        AgentService::new(bus.clone(), runner.clone(), queue)
                            .with_concurrency(concurrency)
                    },
                );
                host.run().await.context("a hollow agent's queue failed")
            };
            runtime.block_on(host)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints every log line on stderr.
fn stderr_logs() -> LogSink {
    Arc::new(|record: LogRecord| {
        eprintln!(
            "{:?} {:?} [{}] {}",
            record.level, record.stream, record.node_instance_id, record.message
        )
    })
}

fn runner(
    work_dir: PathBuf,
    plugins: PluginRegistry,
    logs: LogSink,
) -> anyhow::Result<OperationRunner> {
    OperationRunner::new(RunnerConfig::new(work_dir), plugins, logs)
        .context("cannot set up the runner")
}

async fn run_task(
    file: Option<PathBuf>,
    work_dir: PathBuf,
    plugins: PluginRegistry,
) -> anyhow::Result<ExitCode> {
    let text = match &file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?,
    };
    let task: OperationTask = serde_json::from_str(&text).context("invalid task JSON")?;
    let result = runner(work_dir, plugins, stderr_logs())?.run(task).await;
    println!("{}", serde_json::to_string(&result)?);
    Ok(match result.outcome {
        TaskOutcome::Succeeded { .. } => ExitCode::SUCCESS,
        TaskOutcome::Failed { .. } => ExitCode::from(1),
    })
}
