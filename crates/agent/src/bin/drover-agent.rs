//! `drover-agent`: runs operations on a machine.
//!
//! Today it runs one task given as JSON (`run-task`), which is also how the ctx end-to-end
//! tests exercise the real binary; the bus consumer, heartbeats and hollow mode come with
//! issue 4. Started under the name `ctx` (a symlink the runner puts on a script's PATH), it is
//! the ctx client instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use drover_agent::{LogRecord, OperationRunner, PluginRegistry, RunnerConfig};
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
    let Command::RunTask { file, work_dir } = command;
    let text = match &file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?,
    };
    let task: OperationTask = serde_json::from_str(&text).context("invalid task JSON")?;
    let logs = Arc::new(|record: LogRecord| {
        eprintln!(
            "{:?} {:?} [{}] {}",
            record.level, record.stream, record.node_instance_id, record.message
        )
    });
    let runner = OperationRunner::new(
        RunnerConfig::new(work_dir),
        PluginRegistry::with_builtins(),
        logs,
    )
    .context("cannot set up the runner")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(runner.run(task));
    println!("{}", serde_json::to_string(&result)?);
    Ok(match result.outcome {
        TaskOutcome::Succeeded { .. } => ExitCode::SUCCESS,
        TaskOutcome::Failed { .. } => ExitCode::from(1),
    })
}
