//! What a running workflow shows: a progress bar on a terminal (plain lines otherwise), the
//! workflow's own events and failures as lines, and with `--events-json` every event as a JSON
//! line, in order.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_model::Event;
use drover_workflow::{Observer, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Plain progress lines at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

pub struct Reporter {
    events: Option<(BufWriter<File>, String)>,
    /// The first error writing the events file (reported at the end, not per event).
    events_error: Option<std::io::Error>,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
    /// A plain progress line held back by the rate limit, printed before the next shown event.
    pending_line: Option<String>,
}

impl Reporter {
    pub fn new(events_json: Option<&Path>) -> anyhow::Result<Reporter> {
        let events = match events_json {
            Some(path) => {
                let file = File::create(path)
                    .with_context(|| format!("creating the events file {}", path.display()))?;
                Some((BufWriter::new(file), path.display().to_string()))
            }
            None => None,
        };
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} instances  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Ok(Reporter {
            events,
            events_error: None,
            bar,
            started: Instant::now(),
            last_line: None,
            pending_line: None,
        })
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// Flushes the events file; reports a write error that happened on the way.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }

        if let Some((mut file, path)) = self.events.take() {
            if let Some(e) = self.events_error.take() {
                return Err(e).with_context(|| format!("writing {path}"));
            }
            file.flush().with_context(|| format!("writing {path}"))?;
        }
        Ok(())
    }
}

impl Observer for Reporter {
    fn wants_task_events(&self) -> bool {
        self.events.is_some()
    }

    fn event(&mut self, event: &Event) {
        if let Some((file, _)) = &mut self.events
            && self.events_error.is_none()
        {
            let written = serde_json::to_writer(&mut *file, event)
                .map_err(std::io::Error::from)
                .and_then(|()| file.write_all(b"\n"));
            if let Err(e) = written {
                self.events_error = Some(e);
            }
        }
        let shown = event.event_type.starts_with("workflow_")
            || event.event_type == "task_failed"
            || event.event_type == "task_rescheduled";
        if shown {
            // The last progress of a phase comes before what the workflow says about its end.
            if let Some(line) = self.pending_line.take() {
                eprintln!("{line}");
            }
            let who = event.context.node_id.as_deref().unwrap_or_default();
            let sep = if who.is_empty() { "" } else { " " };
            self.line(&format!(
                "{} {}{sep}{who}: {}",
                event.timestamp, event.event_type, event.message.text
            ));
        }
    }

    fn progress(&mut self, p: &Progress) {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = p.operations_done as f64 / elapsed;
        let phase = if p.phases > 1 {
            format!("phase {}/{}  ", p.phase + 1, p.phases)
        } else {
            String::new()
        };
        let message = format!(
            "{phase}{} operations ({rate:.0}/s)  {} failures",
            p.operations_done, p.failures
        );
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.instances_total);
                bar.set_position(p.instances_done);
                bar.set_message(message);
            }
            None => {
                let line = format!(
                    "progress: {}/{} instances  {message}",
                    p.instances_done, p.instances_total
                );
                if self.last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
                    self.last_line = Some(Instant::now());
                    self.pending_line = None;
                    eprintln!("{line}");
                } else {
                    self.pending_line = Some(line);
                }
            }
        }
    }
}
