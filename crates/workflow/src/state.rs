//! Node instance lifecycle states, as Cloudify names them.

use std::fmt;

/// Where a node instance is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Uninitialized,
    Initializing,
    Creating,
    Created,
    Configuring,
    Configured,
    Starting,
    Started,
    Stopping,
    Stopped,
    Deleting,
    Deleted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Uninitialized => "uninitialized",
            State::Initializing => "initializing",
            State::Creating => "creating",
            State::Created => "created",
            State::Configuring => "configuring",
            State::Configured => "configured",
            State::Starting => "starting",
            State::Started => "started",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Deleting => "deleting",
            State::Deleted => "deleted",
        }
    }

    /// Reads a state name; anything unknown reads as `uninitialized`, as a fresh instance.
    pub fn parse(name: &str) -> State {
        match name {
            "initializing" => State::Initializing,
            "creating" => State::Creating,
            "created" => State::Created,
            "configuring" => State::Configuring,
            "configured" => State::Configured,
            "starting" => State::Starting,
            "started" => State::Started,
            "stopping" => State::Stopping,
            "stopped" => State::Stopped,
            "deleting" => State::Deleting,
            "deleted" => State::Deleted,
            _ => State::Uninitialized,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
