//! `drover`: the command line.
//!
//! Exit statuses: 0 success, 1 an invalid blueprint or a failed workflow, local or on a manager
//! (the reason on stderr), 2 a usage error (clap's), 3 anything else that went wrong (an
//! unreadable inputs file, a manager that cannot be reached …).

mod blueprint;
mod inputs;
mod local;
mod remote;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Orchestrates deployments of thousands of node instances from Cloudify DSL blueprints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate blueprints and make their deployment plans.
    #[command(subcommand)]
    Blueprint(blueprint::BlueprintCommand),
    /// Run a deployment in this process: install, uninstall, execute workflows, resume.
    #[command(subcommand)]
    Local(local::LocalCommand),
    /// Which manager the remote commands use, and as whom.
    #[command(subcommand)]
    Profiles(remote::ProfilesCommand),
    /// A manager's blueprints.
    #[command(subcommand)]
    Blueprints(remote::BlueprintsCommand),
    /// A manager's deployments.
    #[command(subcommand)]
    Deployments(remote::DeploymentsCommand),
    /// Workflow executions on a manager.
    #[command(subcommand)]
    Executions(remote::ExecutionsCommand),
    /// Events and logs of executions on a manager.
    #[command(subcommand)]
    Events(remote::EventsCommand),
    /// Node instances on a manager.
    #[command(subcommand)]
    NodeInstances(remote::NodeInstancesCommand),
}

/// The outcome of a command that did not succeed.
pub enum Failure {
    /// The user's input is wrong (an invalid blueprint): exit 1.
    Invalid(String),
    /// Anything else: exit 3.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// mimalloc: planning 100,000 instances is mostly small allocations (ids, names), where it is
/// about twice as fast as the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    drover_agent::ctx::main_if_invoked_as_ctx();
    restore_default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Blueprint(cmd) => blueprint::run(cmd),
        Command::Local(cmd) => local::run(cmd),
        Command::Profiles(cmd) => remote::profiles(cmd),
        Command::Blueprints(cmd) => remote::run(remote::Remote::Blueprints(cmd)),
        Command::Deployments(cmd) => remote::run(remote::Remote::Deployments(cmd)),
        Command::Executions(cmd) => remote::run(remote::Remote::Executions(cmd)),
        Command::Events(cmd) => remote::run(remote::Remote::Events(cmd)),
        Command::NodeInstances(cmd) => remote::run(remote::Remote::NodeInstances(cmd)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}

/// Rust ignores SIGPIPE, so `drover local instances | head` would panic on a closed pipe; a
/// command-line tool should end quietly instead, as `ls | head` does.
fn restore_default_sigpipe() {
    // SAFETY: called first thing in main, before any thread is spawned; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
