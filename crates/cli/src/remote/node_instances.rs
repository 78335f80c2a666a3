//! `drover node-instances list|get`.

use clap::Subcommand;

use super::client::Client;
use super::table;

#[derive(Subcommand)]
pub enum NodeInstancesCommand {
    List {
        /// Only this deployment's instances.
        #[arg(short = 'd', long = "deployment-id")]
        deployment: Option<String>,
    },
    /// Print one instance, with its runtime properties, as JSON.
    Get { id: String },
}

pub fn run(cmd: NodeInstancesCommand, client: &Client) -> anyhow::Result<()> {
    match cmd {
        NodeInstancesCommand::List { deployment } => {
            let items =
                client.list_by("/node-instances", "deployment_id", deployment.as_deref())?;
            table::print(
                &items,
                &["id", "deployment_id", "node_id", "state", "host_id"],
            );
        }
        NodeInstancesCommand::Get { id } => {
            let instance = client.get(&format!("/node-instances/{id}"), &[])?;
            println!("{}", serde_json::to_string_pretty(&instance)?);
        }
    }
    Ok(())
}
