//! Task graphs: tasks, dependencies, and the per-instance chains the lifecycle builders make.
//!
//! A graph is a flat vector of small tasks and a compressed successor list, so a 100,000-instance
//! install is a few vectors, not a web of allocations. Tasks are numbered in the order the
//! builder made them; a graph built again from the same inputs numbers them the same, which is
//! what lets `resume` match journal entries to tasks.

use std::collections::HashMap;

use crate::state::State;

pub(crate) type TaskId = u32;

/// Which side of a relationship an operation runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Source,
    Target,
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Sets the instance's state; runs inside the engine.
    SetState(State),
    /// Runs operation number `op` (see [`Graph::op_name`]) of the instance's node.
    Op { op: u16 },
    /// Runs operation `op` of the instance's relationship number `rel`, on one side.
    RelOp { op: u16, rel: u32, side: Side },
    /// Makes (`create`) or frees the instance's server through the provisioner: the create or
    /// delete of a Compute node that has none of its own.
    Provision { create: bool },
    /// Joins steps; does nothing.
    Barrier,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Task {
    pub kind: Kind,
    pub instance: u32,
}

/// A built graph: tasks, their successors, and how many predecessors each has.
pub(crate) struct Graph {
    pub tasks: Vec<Task>,
    ops: Vec<String>,
    succ_start: Vec<u32>,
    succ: Vec<TaskId>,
    pub indegree: Vec<u32>,
}

impl Graph {
    pub fn op_name(&self, op: u16) -> &str {
        &self.ops[op as usize]
    }

    pub fn successors(&self, task: TaskId) -> &[TaskId] {
        let t = task as usize;
        &self.succ[self.succ_start[t] as usize..self.succ_start[t + 1] as usize]
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }
}

/// Builds a [`Graph`].
#[derive(Default)]
pub(crate) struct GraphBuilder {
    tasks: Vec<Task>,
    ops: Vec<String>,
    op_index: HashMap<String, u16>,
    edges: Vec<(TaskId, TaskId)>,
}

impl GraphBuilder {
    pub fn add(&mut self, kind: Kind, instance: u32) -> TaskId {
        self.tasks.push(Task { kind, instance });
        (self.tasks.len() - 1) as TaskId
    }

    /// The number of an operation name, interned.
    pub fn op(&mut self, name: &str) -> u16 {
        if let Some(&i) = self.op_index.get(name) {
            return i;
        }
        let i = self.ops.len() as u16;
        self.ops.push(name.to_owned());
        self.op_index.insert(name.to_owned(), i);
        i
    }

    /// `after` waits for `before`.
    pub fn edge(&mut self, before: TaskId, after: TaskId) {
        self.edges.push((before, after));
    }

    /// Every task of `after` waits for every task of `before`, through a barrier when both
    /// sides have several tasks (so the edge count stays linear).
    pub fn join(&mut self, before: &[TaskId], after: &[TaskId], instance: u32) {
        if before.len() > 1 && after.len() > 1 {
            let barrier = self.add(Kind::Barrier, instance);
            self.join(before, &[barrier], instance);
            self.join(&[barrier], after, instance);
            return;
        }
        for &b in before {
            for &a in after {
                self.edge(b, a);
            }
        }
    }

    pub fn build(self) -> Graph {
        let n = self.tasks.len();
        let mut counts = vec![0u32; n + 1];
        let mut indegree = vec![0u32; n];
        for &(b, a) in &self.edges {
            counts[b as usize + 1] += 1;
            indegree[a as usize] += 1;
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let succ_start = counts.clone();
        let mut fill = counts;
        let mut succ = vec![0; self.edges.len()];
        for &(b, a) in &self.edges {
            succ[fill[b as usize] as usize] = a;
            fill[b as usize] += 1;
        }
        Graph {
            tasks: self.tasks,
            ops: self.ops,
            succ_start,
            succ,
            indegree,
        }
    }
}

/// A sequence of steps for one instance: each step's tasks run in parallel, after all of the
/// previous step's. Knows its first and last step so instances can be ordered against each other.
pub(crate) struct Chain {
    pub instance: u32,
    first: Vec<TaskId>,
    last: Vec<TaskId>,
}

impl Chain {
    pub fn new(instance: u32) -> Chain {
        Chain {
            instance,
            first: Vec::new(),
            last: Vec::new(),
        }
    }

    /// Appends a step (ignored when empty).
    pub fn step(&mut self, g: &mut GraphBuilder, tasks: Vec<TaskId>) {
        if tasks.is_empty() {
            return;
        }
        if self.first.is_empty() {
            self.first = tasks.clone();
        } else {
            g.join(&self.last, &tasks, self.instance);
        }
        self.last = tasks;
    }

    pub fn task(&mut self, g: &mut GraphBuilder, kind: Kind) {
        let t = g.add(kind, self.instance);
        self.step(g, vec![t]);
    }

    /// Ends the chain as one entry task and one exit task (adding barriers where a step has
    /// several tasks, or the chain is empty).
    pub fn finish(mut self, g: &mut GraphBuilder) -> Ends {
        if self.first.is_empty() {
            let t = g.add(Kind::Barrier, self.instance);
            return Ends { first: t, last: t };
        }
        let first = if self.first.len() == 1 {
            self.first[0]
        } else {
            let b = g.add(Kind::Barrier, self.instance);
            g.join(&[b], &self.first, self.instance);
            b
        };
        if self.last.len() > 1 {
            let b = g.add(Kind::Barrier, self.instance);
            g.join(&self.last, &[b], self.instance);
            self.last = vec![b];
        }
        Ends {
            first,
            last: self.last[0],
        }
    }
}

/// The entry and exit task of an instance's subgraph.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    pub first: TaskId,
    pub last: TaskId,
}
