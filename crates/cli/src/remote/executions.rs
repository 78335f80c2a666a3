//! `drover executions start|list|get|cancel`. A start follows the execution's events under a
//! progress bar unless `--no-follow`, and fails (exit 1) when the execution does not succeed.

use std::cell::Cell;
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::client::Client;
use super::events::{Follow, line};
use super::table::{self, cell};
use crate::Failure;

#[derive(Subcommand)]
pub enum ExecutionsCommand {
    /// Start a workflow on a deployment and follow it to its end.
    Start {
        workflow: String,
        #[arg(short = 'd', long = "deployment-id")]
        deployment: String,
        /// Parameters: a YAML/JSON file or K=V[;K=V…]; repeatable, later ones win.
        #[arg(short = 'p', long = "parameters")]
        parameters: Vec<String>,
        /// Print the execution's id and return without waiting.
        #[arg(long)]
        no_follow: bool,
        /// Start even when another execution of the deployment runs.
        #[arg(short, long)]
        force: bool,
    },
    List {
        #[arg(short = 'd', long = "deployment-id")]
        deployment: Option<String>,
    },
    /// Print one execution as JSON.
    Get { id: String },
    Cancel {
        id: String,
        /// Stop at once instead of letting running operations end.
        #[arg(short, long)]
        force: bool,
    },
}

pub fn run(cmd: ExecutionsCommand, client: &Client) -> Result<(), Failure> {
    match cmd {
        ExecutionsCommand::Start {
            workflow,
            deployment,
            parameters,
            no_follow,
            force,
        } => {
            let parameters = crate::inputs::parse(&parameters)?;
            let body = json!({
                "deployment_id": deployment,
                "workflow_id": workflow,
                "parameters": parameters,
                "force": force,
            });
            let execution = client
                .post_json("/executions", &body)
                .map_err(anyhow::Error::from)?;
            let id = cell(&execution["id"]);
            if no_follow {
                println!("{id}");
                return Ok(());
            }
            eprintln!("execution {id}: {workflow} on {deployment}");
            let ended = follow(client, &id)?;
            ended_well(&ended)
        }
        ExecutionsCommand::List { deployment } => {
            let items = client
                .list_by("/executions", "deployment_id", deployment.as_deref())
                .map_err(anyhow::Error::from)?;
            table::print(
                &items,
                &["id", "workflow_id", "deployment_id", "status", "created_at"],
            );
            Ok(())
        }
        ExecutionsCommand::Get { id } => {
            let execution = client
                .get(&format!("/executions/{id}"), &[])
                .map_err(anyhow::Error::from)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&execution).map_err(anyhow::Error::from)?
            );
            Ok(())
        }
        ExecutionsCommand::Cancel { id, force } => {
            let action = if force { "force-cancel" } else { "cancel" };
            let execution = client
                .post_json(&format!("/executions/{id}"), &json!({"action": action}))
                .map_err(anyhow::Error::from)?;
            println!("execution {id}: {}", cell(&execution["status"]));
            Ok(())
        }
    }
}

/// Follows an execution's events under a spinner that counts operations; returns it ended.
fn follow(client: &Client, id: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let (done, failed) = (Cell::new(0u64), Cell::new(0u64));
    let ended = Follow::new(id).run(
        client,
        |event| {
            match event["event_type"].as_str() {
                Some("task_succeeded") => done.set(done.get() + 1),
                Some("task_failed") => failed.set(failed.get() + 1),
                _ => {}
            }
            // A hidden bar (stderr is not a terminal) prints nothing: the events go to stdout.
            if bar.is_hidden() {
                println!("{}", line(event));
            } else {
                bar.println(line(event));
            }
        },
        |execution| {
            bar.set_message(format!(
                "{}: {} operations done, {} failed",
                cell(&execution["status"]),
                done.get(),
                failed.get()
            ))
        },
    );
    bar.finish_and_clear();
    Ok(ended?)
}

fn ended_well(execution: &Value) -> Result<(), Failure> {
    let id = cell(&execution["id"]);
    match execution["status"].as_str() {
        Some("terminated") => {
            eprintln!("execution {id} succeeded");
            Ok(())
        }
        status => Err(Failure::Invalid(format!(
            "execution {id} {}: {}",
            status.unwrap_or("ended"),
            cell(&execution["error"])
        ))),
    }
}
