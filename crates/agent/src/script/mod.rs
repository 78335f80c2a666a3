//! Cloudify's script plugin: runs a script from the blueprint with the operation inputs as
//! environment variables and a `ctx` command on its `PATH`.
//!
//! Outcome, as in Cloudify: `ctx abort-operation` / `ctx retry-operation` decide it when the
//! script called them; otherwise a non-zero exit is a recoverable failure carrying the tail of
//! stderr, and exit 0 is success with the value of `ctx returns` (or null). A script that
//! outlives the task's timeout is killed with its whole process group, and the failure is not
//! recoverable (Cloudify's default for operation timeouts). Processes a script leaves running
//! in the background after exiting normally are left alone: start scripts launch daemons.

pub(crate) mod output;
mod spec;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use drover_model::{OperationTask, TaskOutcome};
use serde_json::Value;
use tokio::process::Command;

use crate::ctx::{CTX_COMMAND, CTX_SOCKET_URL, CtxOutcome, CtxServer, CtxState, StopRequest};
use crate::log::{LogLevel, LogRecord, LogStream};
use crate::plugin::{OperationEnv, Plugin, PluginFuture, PluginOutput};
use output::{Tail, read_lines};
pub use spec::{SCRIPT_RUNNER_RUN, ScriptSpec, looks_like_script};

/// Lines of stderr quoted in the failure message of a script that exits non-zero.
const STDERR_TAIL_LINES: usize = 20;

/// How long output is still read after the script exits; a background process that inherited
/// the script's stdout would otherwise keep the operation open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The `script` plugin.
pub struct ScriptPlugin;

impl Plugin for ScriptPlugin {
    fn run<'a>(&'a self, task: &'a OperationTask, env: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(run_script(task, env))
    }
}

async fn run_script(task: &OperationTask, env: &OperationEnv) -> PluginOutput {
    let spec = match spec::resolve(task) {
        Ok(spec) => spec,
        Err(message) => return PluginOutput::failed(message, false),
    };
    // A private directory for the ctx socket and the `ctx` link, short enough for a socket
    // path (the work dir may be deep) and removed when the operation ends.
    let scratch = match tempfile::Builder::new().prefix("drover-op-").tempdir() {
        Ok(dir) => dir,
        Err(e) => return PluginOutput::failed(format!("cannot create a temp dir: {e}"), true),
    };
    let bin_dir = scratch.path().join("bin");
    let ctx_link = bin_dir.join(CTX_COMMAND);
    if let Err(e) = std::fs::create_dir(&bin_dir)
        .and_then(|()| std::os::unix::fs::symlink(&env.ctx_executable, &ctx_link))
    {
        return PluginOutput::failed(format!("cannot set up the ctx command: {e}"), true);
    }
    let state = CtxState::new(task, env.work_dir.join("resources"), env.logs.clone());
    let server = match CtxServer::start(&scratch.path().join("ctx.sock"), state) {
        Ok(server) => server,
        Err(e) => return PluginOutput::failed(format!("cannot start the ctx proxy: {e}"), true),
    };
    let run = execute(task, env, &spec, &server, &bin_dir).await;
    let ctx = server.finish();
    decide(run, ctx)
}

/// How the script process ended.
enum Ended {
    Exited {
        code: Option<i32>,
        stderr_tail: String,
    },
    TimedOut(Duration),
    CouldNotStart(String),
}

async fn execute(
    task: &OperationTask,
    env: &OperationEnv,
    spec: &ScriptSpec,
    server: &CtxServer,
    bin_dir: &Path,
) -> Ended {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(CTX_SOCKET_URL, server.url())
        .current_dir(match &spec.cwd {
            Some(cwd) => env.work_dir.join(cwd),
            None => env.work_dir.clone(),
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // `ctx` first on PATH, in front of a PATH the script's env may have set.
    let path = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    command.env("PATH", format!("{}:{path}", bin_dir.display()));
    // Python buffers stdout in blocks when it is a pipe; unbuffered, its lines reach the log
    // sink as they are printed, as a shell script's do.
    if std::env::var_os("PYTHONUNBUFFERED").is_none()
        && !spec.env.iter().any(|(k, _)| k == "PYTHONUNBUFFERED")
    {
        command.env("PYTHONUNBUFFERED", "1");
    }

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Ended::CouldNotStart(format!(
                "cannot run {} {:?}: {e}",
                spec.program.display(),
                spec.args
            ));
        }
    };
    // Killed on timeout, and when this future is dropped (a cancelled task) before the
    // script exits; left alone once the script exited by itself.
    let mut group = GroupGuard(child.id().map(ProcessGroup));

    let log = |stream: LogStream, level: LogLevel| {
        let sink = env.logs.clone();
        let task = task.clone();
        move |message: String| sink(LogRecord::of(&task, stream, level, message))
    };
    let stderr_tail = Tail::new(STDERR_TAIL_LINES);
    let mut readers = tokio::task::JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        readers.spawn(read_lines(
            stdout,
            None,
            log(LogStream::Stdout, LogLevel::Info),
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.spawn(read_lines(
            stderr,
            Some(stderr_tail.clone()),
            log(LogStream::Stderr, LogLevel::Info),
        ));
    }

    let limit = task
        .timeout_s
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    let status = match limit {
        None => child.wait().await,
        Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                group.kill();
                let _ = child.wait().await;
                let _ = tokio::time::timeout(OUTPUT_GRACE, readers.join_all()).await;
                log(LogStream::Runner, LogLevel::Warning)(format!(
                    "killed after the {limit:?} timeout"
                ));
                return Ended::TimedOut(limit);
            }
        },
    };
    group.disarm();
    if tokio::time::timeout(OUTPUT_GRACE, async {
        while readers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        readers.abort_all();
    }
    match status {
        Ok(status) => Ended::Exited {
            code: status.code(),
            stderr_tail: stderr_tail.text(),
        },
        Err(e) => Ended::CouldNotStart(format!("lost the script process: {e}")),
    }
}

/// The operation's outcome from how the script ended and what it told ctx.
fn decide(ended: Ended, ctx: CtxOutcome) -> PluginOutput {
    let outcome = match (ctx.stop, ended) {
        (Some(StopRequest::Abort(message)), _) => failed(message, false, None),
        (Some(StopRequest::Retry { message, after_s }), _) => failed(message, true, after_s),
        (None, Ended::Exited { code: Some(0), .. }) => TaskOutcome::Succeeded {
            result: ctx.returns.unwrap_or(Value::Null),
        },
        (None, Ended::Exited { code, stderr_tail }) => {
            let status = match code {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            };
            let error = if stderr_tail.is_empty() {
                format!("script {status}")
            } else {
                format!("script {status}; stderr:\n{stderr_tail}")
            };
            failed(error, true, None)
        }
        (None, Ended::TimedOut(limit)) => failed(
            format!("script timed out after {limit:?} and was killed"),
            false,
            None,
        ),
        (None, Ended::CouldNotStart(message)) => failed(message, false, None),
    };
    PluginOutput {
        outcome,
        runtime_properties: ctx.runtime_properties,
    }
}

fn failed(error: String, recoverable: bool, retry_after_s: Option<f64>) -> TaskOutcome {
    TaskOutcome::Failed {
        error,
        recoverable,
        retry_after_s,
    }
}

/// Kills the script's process group when dropped, unless disarmed.
struct GroupGuard(Option<ProcessGroup>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            group.kill();
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The script's process group (the script is its leader).
struct ProcessGroup(u32);

impl ProcessGroup {
    fn kill(&self) {
        let Ok(pgid) = libc::pid_t::try_from(self.0) else {
            return;
        };
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
        // process group the script leads (it was spawned with process_group(0)).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}
