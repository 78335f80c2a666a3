//! One running plugin executable: requests written to its stdin, replies read from its stdout
//! and handed to the operation waiting for that id.
//!
//! Whatever breaks the stream (the process exits, a line is not a reply, a line is too long)
//! ends the process: every operation in flight gets the reason, and the next operation starts a
//! new process. The process is killed when the last handle to it is dropped (the agent stops).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::protocol::{Reply, Request};
use crate::script::output::read_lines;

/// How a plugin is started: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl PluginCommand {
    /// A command line split on whitespace (no quoting): `python3 plugins/echo.py`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let program = words.next()?.into();
        Some(PluginCommand {
            program,
            args: words.map(str::to_owned).collect(),
        })
    }
}

impl std::fmt::Display for PluginCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.program.display())?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// What an operation hears from the process.
#[derive(Debug)]
pub(super) enum Incoming {
    Reply(Reply),
    /// The process is gone or broke the protocol; no result will come.
    Broken(Broken),
}

/// Why a process can serve no more requests.
#[derive(Debug, Clone)]
pub(super) enum Broken {
    Exited(String),
    Malformed(String),
}

#[derive(Default)]
struct Waiting {
    /// Set once the process broke; no request is accepted after.
    broken: Option<Broken>,
    operations: HashMap<String, mpsc::UnboundedSender<Incoming>>,
}

impl Waiting {
    fn break_with(&mut self, reason: Broken) {
        for (_, operation) in self.operations.drain() {
            let _ = operation.send(Incoming::Broken(reason.clone()));
        }
        self.broken.get_or_insert(reason);
    }
}

type Shared = Arc<Mutex<Waiting>>;

fn lock(waiting: &Shared) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

/// A started plugin process.
pub(super) struct PluginProcess {
    name: String,
    stdin: tokio::sync::Mutex<ChildStdin>,
    waiting: Shared,
    next_id: AtomicU64,
    /// Owns the child: aborting it (on drop) kills the process.
    reader: JoinHandle<()>,
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// An operation in flight; dropping it forgets the id (a late reply is ignored).
pub(super) struct InFlight {
    pub id: String,
    pub replies: mpsc::UnboundedReceiver<Incoming>,
    waiting: Shared,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.waiting).operations.remove(&self.id);
    }
}

impl PluginProcess {
    /// Starts the plugin; its stderr goes to the agent's log (it belongs to no one operation).
    pub(super) fn start(
        name: &str,
        command: &PluginCommand,
        max_line_bytes: usize,
    ) -> std::io::Result<Self> {
        let mut child = Command::new(&command.program)
            .args(&command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PYTHONUNBUFFERED", "1")
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the plugin's pipes were not set up"));
        };
        let plugin = name.to_owned();
        tokio::spawn(read_lines(stderr, None, move |line| {
            tracing::info!(%plugin, "plugin stderr: {line}");
        }));
        let waiting = Shared::default();
        let reader = tokio::spawn(read_replies(
            child,
            BufReader::new(stdout),
            max_line_bytes,
            waiting.clone(),
        ));
        Ok(PluginProcess {
            name: name.to_owned(),
            stdin: tokio::sync::Mutex::new(stdin),
            waiting,
            next_id: AtomicU64::new(1),
            reader,
        })
    }

    /// Whether it can take requests (it has not exited or broken the protocol).
    pub(super) fn is_usable(&self) -> bool {
        lock(&self.waiting).broken.is_none()
    }

    /// Sends a `run` request for `task`; its replies come through the returned handle.
    pub(super) async fn run(&self, task: &drover_model::OperationTask) -> Result<InFlight, Broken> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (sender, replies) = mpsc::unbounded_channel();
        {
            let mut waiting = lock(&self.waiting);
            if let Some(broken) = &waiting.broken {
                return Err(broken.clone());
            }
            waiting.operations.insert(id.clone(), sender);
        }
        let in_flight = InFlight {
            id,
            replies,
            waiting: self.waiting.clone(),
        };
        self.send(&Request::run(&in_flight.id, task)).await?;
        Ok(in_flight)
    }

    /// Tells the plugin an operation was given up (best effort).
    pub(super) async fn cancel(&self, id: &str) {
        let _ = self.send(&Request::Cancel { id }).await;
    }

    async fn send(&self, request: &Request<'_>) -> Result<(), Broken> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| Broken::Malformed(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        let written = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        written.await.map_err(|e| {
            let reason = Broken::Exited(format!("cannot write to plugin {}: {e}", self.name));
            lock(&self.waiting).break_with(reason.clone());
            reason
        })
    }
}

/// One line read with a length cap.
enum Read {
    Complete(Vec<u8>),
    TooLong,
    Eof,
}

async fn read_line(reader: &mut (impl AsyncBufRead + Unpin), max: usize) -> std::io::Result<Read> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Read::Eof
            } else {
                Read::Complete(line)
            });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => (end, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Ok(Read::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(Read::Complete(line));
        }
    }
}

/// Hands each reply to its operation until the stream breaks, then fails those in flight.
async fn read_replies(
    mut child: Child,
    mut stdout: impl AsyncBufRead + Unpin,
    max_line_bytes: usize,
    waiting: Shared,
) {
    let reason = loop {
        let line = match read_line(&mut stdout, max_line_bytes).await {
            Ok(Read::Complete(line)) => line,
            Ok(Read::TooLong) => {
                break Broken::Malformed(format!(
                    "a line longer than the {max_line_bytes}-byte limit"
                ));
            }
            Ok(Read::Eof) | Err(_) => break Broken::Exited(exit_status(&mut child).await),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply: Reply = match serde_json::from_slice(&line) {
            Ok(reply) => reply,
            Err(e) => {
                let shown: String = String::from_utf8_lossy(&line).chars().take(200).collect();
                break Broken::Malformed(format!("a malformed line ({e}): {shown}"));
            }
        };
        let mut waiting = lock(&waiting);
        let id = reply.id().to_owned();
        let done = matches!(reply, Reply::Result { .. });
        match waiting.operations.get(&id) {
            Some(operation) => {
                let _ = operation.send(Incoming::Reply(reply));
                if done {
                    waiting.operations.remove(&id);
                }
            }
            None => tracing::debug!(%id, "reply for no operation in flight (timed out?) ignored"),
        }
    };
    lock(&waiting).break_with(reason);
    // Dropping the child kills it, if it still runs (it broke the protocol).
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// How the process ended, waiting briefly for it after its stdout closed.
async fn exit_status(child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => format!("exited ({status})"),
        Ok(Err(e)) => format!("was lost ({e})"),
        Err(_) => "closed its stdout".to_owned(),
    }
}
