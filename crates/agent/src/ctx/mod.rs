//! `ctx`: how a script reads and changes its operation's context, as in Cloudify's script
//! plugin.
//!
//! The runner starts a [`CtxServer`] per operation on a Unix socket, exports its address as
//! `CTX_SOCKET_URL`, and puts a directory first on the script's `PATH` holding `ctx`, a symlink
//! to the running executable. That executable (the `drover` CLI or `drover-agent`) calls
//! [`main_if_invoked_as_ctx`] first thing in `main`, so when it is started under the name `ctx`
//! it acts as the client instead of as itself. No separate binary needs to be installed on the
//! machine that runs the operation.
//!
//! The calls (names take `-` or `_`; `@VALUE` is a JSON argument; a plain VALUE is parsed as
//! JSON when it is valid JSON, else kept as a string):
//!
//! | call | answers / does |
//! |---|---|
//! | `ctx logger info\|warning\|error\|debug MSG…` | a log record for the operation |
//! | `ctx instance id` | the node instance id |
//! | `ctx instance runtime-properties [KEY [VALUE]]` | all, one (`a.b[0].c`), or set one |
//! | `ctx node id\|name\|type`, `ctx node properties [KEY]` | the node (properties read-only) |
//! | `ctx source\|target instance …`, `ctx source\|target node …` | relationship operations |
//! | `ctx deployment id`, `ctx execution-id`, `ctx workflow-id`, `ctx task-id`, `ctx type` | ids |
//! | `ctx operation name\|retry-number` | the operation |
//! | `ctx download-resource PATH [TARGET]` | copies a blueprint file, prints the local path |
//! | `ctx download-resource-and-render PATH [TARGET] [@VARS]` | same, `{{ path }}` substituted |
//! | `ctx returns VALUE` | the operation's result |
//! | `ctx abort-operation MSG` | ends the operation as a non-recoverable failure |
//! | `ctx retry-operation MSG [SECONDS]` | ends it as a recoverable failure, retried after |
//!
//! Reading a missing key is an error (exit 1, message on stderr), as in Cloudify.

mod client;
mod path;
mod protocol;
mod render;
mod server;
mod state;

use std::path::Path;

pub use protocol::{CTX_SOCKET_URL, CtxRequest, CtxResponse};
pub use server::CtxServer;
pub use state::{CtxOutcome, CtxState, StopRequest};

/// The file name under which an executable acts as the `ctx` client.
pub const CTX_COMMAND: &str = "ctx";

/// When this process was started as `ctx` (the file name of `argv[0]`), runs the ctx client and exits
/// with its status; otherwise returns at once. Call it first in `main`.
pub fn main_if_invoked_as_ctx() {
    let mut args = std::env::args_os();
    let invoked_as_ctx = args
        .next()
        .as_deref()
        .and_then(|argv0| Path::new(argv0).file_name())
        .is_some_and(|name| name == CTX_COMMAND);
    if invoked_as_ctx {
        std::process::exit(client::run(args.collect()));
    }
}
