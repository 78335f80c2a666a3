//! The remote commands: a drover manager's REST API (Cloudify's v3.1, through nginx), one
//! module per resource, with the manager and credentials of `drover profiles use`.

mod blueprints;
mod client;
mod deployments;
mod events;
mod executions;
mod node_instances;
mod profile;
mod table;

pub use blueprints::BlueprintsCommand;
pub use deployments::DeploymentsCommand;
pub use events::EventsCommand;
pub use executions::ExecutionsCommand;
pub use node_instances::NodeInstancesCommand;
pub use profile::ProfilesCommand;

use crate::Failure;
use client::Client;

/// A remote command, as the top level parses it.
pub enum Remote {
    Blueprints(BlueprintsCommand),
    Deployments(DeploymentsCommand),
    Executions(ExecutionsCommand),
    Events(EventsCommand),
    NodeInstances(NodeInstancesCommand),
}

pub fn run(cmd: Remote) -> Result<(), Failure> {
    let client = Client::new(&profile::Profile::load()?)?;
    match cmd {
        Remote::Blueprints(cmd) => blueprints::run(cmd, &client)?,
        Remote::Deployments(cmd) => deployments::run(cmd, &client)?,
        Remote::Executions(cmd) => executions::run(cmd, &client)?,
        Remote::Events(cmd) => events::run(cmd, &client)?,
        Remote::NodeInstances(cmd) => node_instances::run(cmd, &client)?,
    }
    Ok(())
}

pub fn profiles(cmd: ProfilesCommand) -> Result<(), Failure> {
    Ok(profile::run(cmd)?)
}
