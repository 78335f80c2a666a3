//! `drover deployments create|list|outputs|delete`.

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::Client;
use super::table;

#[derive(Subcommand)]
pub enum DeploymentsCommand {
    /// Create a deployment of a blueprint.
    Create {
        id: String,
        #[arg(short = 'b', long = "blueprint-id")]
        blueprint: String,
        /// Inputs: a YAML/JSON file or K=V[;K=V…]; repeatable, later ones win.
        #[arg(short = 'i', long = "inputs")]
        inputs: Vec<String>,
    },
    List {
        /// Only the deployments of this blueprint.
        #[arg(short = 'b', long = "blueprint-id")]
        blueprint: Option<String>,
    },
    /// Print a deployment's outputs as JSON.
    Outputs { id: String },
    Delete {
        id: String,
        /// Delete even when it has live node instances.
        #[arg(short, long)]
        force: bool,
    },
}

pub fn run(cmd: DeploymentsCommand, client: &Client) -> anyhow::Result<()> {
    match cmd {
        DeploymentsCommand::Create {
            id,
            blueprint,
            inputs,
        } => {
            let inputs = crate::inputs::parse(&inputs)?;
            let body = json!({"blueprint_id": blueprint, "inputs": inputs});
            client.put_json(&format!("/deployments/{id}"), &body)?;
            println!("deployment {id} created from blueprint {blueprint}");
        }
        DeploymentsCommand::List { blueprint } => {
            let items = client.list_by("/deployments", "blueprint_id", blueprint.as_deref())?;
            table::print(&items, &["id", "blueprint_id", "created_at"]);
        }
        DeploymentsCommand::Outputs { id } => {
            let answer = client.get(&format!("/deployments/{id}/outputs"), &[])?;
            let outputs = answer.get("outputs").cloned().unwrap_or(Value::Null);
            println!("{}", serde_json::to_string_pretty(&outputs)?);
        }
        DeploymentsCommand::Delete { id, force } => {
            let force = force.to_string();
            client.delete(&format!("/deployments/{id}"), &[("force", &force)])?;
            println!("deployment {id} deleted");
        }
    }
    Ok(())
}
