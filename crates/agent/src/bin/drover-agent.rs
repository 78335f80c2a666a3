//! `drover-agent`: runs operations on a machine.
//!
//! `consume` is the agent proper: it consumes a tasks queue on RabbitMQ and answers every task
//! there (`drover_agent::AgentService`). `run-task` runs one task given as JSON, which is also
//! how the ctx end-to-end tests exercise the real binary. Heartbeats and hollow mode come with
//! issue 4. Started under the name `ctx` (a symlink the runner puts on a script's PATH), it is
//! the ctx client instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use drover_agent::{
    AgentQueue, AgentService, DEFAULT_CONCURRENCY, LogRecord, LogSink, OperationRunner,
    PluginRegistry, RunnerConfig,
};
use drover_bus::{AmqpBus, AmqpOptions, Topology};
use drover_model::{OperationTask, TaskOutcome};

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
    },
    /// Consume a tasks queue on RabbitMQ and run its tasks until the broker stays unreachable;
    /// each result goes to the results queue of the workflow replica that sent the task.
    Consume {
        /// The broker, e.g. amqp://127.0.0.1:5673/%2f.
        #[arg(long)]
        amqp_url: String,
        /// `central`, or this agent's name (its queue is `agent.<NAME>`).
        #[arg(long)]
        queue: String,
        /// Tasks run at once (and the consumer's prefetch).
        #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
        concurrency: u16,
        /// The prefix of every exchange and queue name, as the workflow replicas use it.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Let the broker delete queues unused for this many seconds (for tests sharing a
        /// broker; every user of a queue must declare it alike).
        #[arg(long)]
        queue_expiry_s: Option<u64>,
        /// The agent's working directory.
        #[arg(long, default_value = ".")]
        work_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    drover_agent::ctx::main_if_invoked_as_ctx();
    let cli = Cli::parse();
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
        Command::RunTask { file, work_dir } => runtime.block_on(run_task(file, work_dir)),
        Command::Consume {
            amqp_url,
            queue,
            concurrency,
            prefix,
            queue_expiry_s,
            work_dir,
        } => {
            let mut topology = Topology::new().with_prefix(prefix);
            if let Some(seconds) = queue_expiry_s {
                topology = topology.with_queue_expiry(Duration::from_secs(seconds));
            }
            let service = async {
                let bus = AmqpBus::connect(AmqpOptions::new(amqp_url, topology))
                    .await
                    .context("cannot connect to the broker")?;
                let service = AgentService::new(
                    Arc::new(bus),
                    Arc::new(runner(work_dir)?),
                    AgentQueue::from(queue.as_str()),
                )
                .with_concurrency(concurrency);
                service.run().await.context("the tasks queue failed")
            };
            runtime.block_on(service)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runner(work_dir: PathBuf) -> anyhow::Result<OperationRunner> {
    let logs: LogSink = Arc::new(|record: LogRecord| {
        eprintln!(
            "{:?} {:?} [{}] {}",
            record.level, record.stream, record.node_instance_id, record.message
        )
    });
    OperationRunner::new(
        RunnerConfig::new(work_dir),
        PluginRegistry::with_builtins(),
        logs,
    )
    .context("cannot set up the runner")
}

async fn run_task(file: Option<PathBuf>, work_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let text = match &file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?,
    };
    let task: OperationTask = serde_json::from_str(&text).context("invalid task JSON")?;
    let result = runner(work_dir)?.run(task).await;
    println!("{}", serde_json::to_string(&result)?);
    Ok(match result.outcome {
        TaskOutcome::Succeeded { .. } => ExitCode::SUCCESS,
        TaskOutcome::Failed { .. } => ExitCode::from(1),
    })
}
