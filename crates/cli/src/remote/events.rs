//! `drover events list -e EXEC [--follow]`, and the follow loop `executions start` shares.
//!
//! Events reach the index asynchronously (agents and replicas ship them in batches, ingest
//! indexes them in bulk), so an agent's event can arrive after a later one of the replica. A
//! follow therefore asks again for a window of the recent past each poll and skips the ids it
//! has seen, and after the execution has ended it waits a little for its end event.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use clap::Subcommand;
use drover_workflow::{END_EVENT_QUIET, END_EVENT_TYPES};
use serde_json::Value;

use super::client::{Client, ClientError};
use super::table::cell;

#[derive(Subcommand)]
pub enum EventsCommand {
    /// An execution's events and logs, oldest first.
    List {
        #[arg(short = 'e', long = "execution-id")]
        execution: String,
        /// Keep printing new events until the execution has ended.
        #[arg(short, long)]
        follow: bool,
        /// Only events, no logs.
        #[arg(long)]
        no_logs: bool,
    },
}

pub fn run(cmd: EventsCommand, client: &Client) -> anyhow::Result<()> {
    let EventsCommand::List {
        execution,
        follow,
        no_logs,
    } = cmd;
    let show = |event: &Value| {
        if !(no_logs && event["type"] == "cloudify_log") {
            println!("{}", line(event));
        }
    };
    if follow {
        Follow::new(&execution).run(client, show, |_| {})?;
    } else {
        for event in client.list("/events", &[("execution_id", &execution)])? {
            show(&event);
        }
    }
    Ok(())
}

/// One event as a line: time, where, what.
pub fn line(event: &Value) -> String {
    let what = match event["type"].as_str() {
        Some("cloudify_log") => cell(&event["level"]).to_uppercase(),
        _ => cell(&event["event_type"]),
    };
    let mut place = cell(&event["node_instance_id"]);
    if let Some(op) = event["operation"].as_str() {
        let op = op.rsplit('.').next().unwrap_or(op);
        place = format!("{place}.{op}");
    }
    let place = if place.is_empty() {
        String::new()
    } else {
        format!(" [{place}]")
    };
    format!(
        "{}{place} {what}: {}",
        cell(&event["timestamp"]),
        cell(&event["message"])
    )
}

const FINAL: [&str; 3] = ["terminated", "failed", "cancelled"];

/// How far back each poll looks for events that arrived late.
const WINDOW: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);
/// How long to wait for the end event once the execution has ended.
const END_GRACE: Duration = Duration::from_secs(15);

/// Follows one execution's events until it has ended.
pub struct Follow {
    execution: String,
    seen: HashSet<String>,
    /// The newest timestamp seen (RFC 3339 UTC strings order as times).
    newest: Option<String>,
}

impl Follow {
    pub fn new(execution: &str) -> Self {
        Follow {
            execution: execution.to_owned(),
            seen: HashSet::new(),
            newest: None,
        }
    }

    /// Calls `on_event` for every new event, oldest first, and `on_poll` with the execution
    /// after each poll; returns the ended execution.
    pub fn run(
        mut self,
        client: &Client,
        mut on_event: impl FnMut(&Value),
        mut on_poll: impl FnMut(&Value),
    ) -> Result<Value, ClientError> {
        let mut ended_at: Option<Instant> = None;
        let mut end_seen = false;
        let mut last_fresh = Instant::now();
        loop {
            let execution = client.get(&format!("/executions/{}", self.execution), &[])?;
            let fresh = self.poll(client)?;
            if !fresh.is_empty() {
                last_fresh = Instant::now();
            }
            for event in fresh {
                end_seen |= END_EVENT_TYPES.contains(&event["event_type"].as_str().unwrap_or(""));
                on_event(&event);
            }
            on_poll(&execution);
            if FINAL.contains(&execution["status"].as_str().unwrap_or("")) {
                let since = *ended_at.get_or_insert_with(Instant::now);
                if end_seen && last_fresh.elapsed() >= END_EVENT_QUIET
                    || since.elapsed() > END_GRACE
                {
                    return Ok(execution);
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// The events not seen yet, from the window before the newest one seen.
    fn poll(&mut self, client: &Client) -> Result<Vec<Value>, ClientError> {
        let range = self.newest.as_deref().map(|newest| {
            let since = humantime::parse_rfc3339_weak(newest.trim_end_matches('Z'))
                .map(|t| t - WINDOW)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            format!("@timestamp,{},", humantime::format_rfc3339_millis(since))
        });
        let mut query = vec![("execution_id", self.execution.as_str())];
        if let Some(range) = &range {
            query.push(("_range", range));
        }
        let mut fresh = Vec::new();
        for event in client.list("/events", &query)? {
            let id = cell(&event["_storage_id"]);
            if self.seen.insert(id) {
                let ts = cell(&event["timestamp"]);
                if self.newest.as_deref().is_none_or(|n| ts.as_str() > n) {
                    self.newest = Some(ts);
                }
                fresh.push(event);
            }
        }
        Ok(fresh)
    }
}
