//! What an execution writes to its journal, and what `resume` reads back.
//!
//! The first entry is the workflow's plan (which phases, which instances it adds or removes);
//! then, per phase, the instances' states when it started (its graph is a function of them) and
//! one short entry per task state change. Entries are written in batches by the executor.

use std::collections::HashMap;

use drover_model::{InstanceRelationship, NodeInstance};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::lifecycle::Phase;

/// The decisions a workflow makes before it runs anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct WorkflowPlan {
    pub phases: Vec<Phase>,
    /// Run, in order, when a phase fails (the rollback of a scale-out).
    #[serde(default)]
    pub rollback: Vec<Phase>,
    /// Instances created before the first phase (scale-out); deleted again by a rollback.
    #[serde(default)]
    pub added: Vec<NodeInstance>,
    /// Instances deleted after the last phase succeeded (scale-in).
    #[serde(default)]
    pub removed: Vec<String>,
    /// Relationships that existing instances gain to added instances (a scaled-out node that
    /// others connect to), by source instance id: added with the instances.
    #[serde(default)]
    pub relinked: Vec<(String, Vec<InstanceRelationship>)>,
}

/// One journal line. Phases are numbered in the order they run: `phases`, then `rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub(crate) enum Entry {
    Planned {
        plan: WorkflowPlan,
    },
    /// A phase started; instance id → state at that moment.
    Phase {
        p: u32,
        states: HashMap<String, String>,
    },
    /// Tasks `t` of phase `p` finished (succeeded, or failed and were ignored); one entry per
    /// flush, not per task.
    Done {
        p: u32,
        t: Vec<u32>,
    },
    /// Task `t` failed and runs again as attempt `a`.
    Retry {
        p: u32,
        t: u32,
        a: u32,
    },
    /// Task `t` failed for good at attempt `a`.
    Failed {
        p: u32,
        t: u32,
        a: u32,
    },
    PhaseEnd {
        p: u32,
        ok: bool,
    },
}

impl Entry {
    pub fn to_raw(&self) -> Box<RawValue> {
        // Serialising these plain structs cannot fail: no maps with non-string keys.
        let text = serde_json::to_string(self).unwrap_or_default();
        RawValue::from_string(text).unwrap_or_else(|_| Box::<RawValue>::default())
    }
}

/// What the journal says about one phase.
#[derive(Debug, Default)]
pub(crate) struct PhaseRecord {
    pub states: Option<HashMap<String, String>>,
    pub done: Vec<u32>,
    /// The attempt each task is at, for tasks past their first.
    pub attempts: HashMap<u32, u32>,
    pub ended: Option<bool>,
}

/// The journal of an execution, read back.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub plan: Option<WorkflowPlan>,
    pub phases: HashMap<u32, PhaseRecord>,
}

impl Replay {
    pub fn read(entries: &[Box<RawValue>]) -> Result<Replay, String> {
        let mut replay = Replay::default();
        for (n, raw) in entries.iter().enumerate() {
            let entry: Entry = serde_json::from_str(raw.get())
                .map_err(|e| format!("journal entry {}: {e}", n + 1))?;
            match entry {
                Entry::Planned { plan } => replay.plan = Some(plan),
                Entry::Phase { p, states } => {
                    replay.phases.entry(p).or_default().states = Some(states)
                }
                Entry::Done { p, t } => replay.phases.entry(p).or_default().done.extend(t),
                Entry::Retry { p, t, a } => {
                    replay.phases.entry(p).or_default().attempts.insert(t, a);
                }
                Entry::Failed { p, t, a } => {
                    // Resuming runs a failed task again, as a new attempt with a new id.
                    replay
                        .phases
                        .entry(p)
                        .or_default()
                        .attempts
                        .insert(t, a + 1);
                }
                Entry::PhaseEnd { p, ok } => replay.phases.entry(p).or_default().ended = Some(ok),
            }
        }
        Ok(replay)
    }
}
