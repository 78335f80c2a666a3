//! Remembers the results of recent tasks so a re-sent task is answered, not run again.
//!
//! After a workflow replica takes over an execution it re-sends the tasks that were in flight
//! with their original ids. A task is keyed by its id and attempt number: a retry is a new
//! attempt and runs; a re-send of the same attempt gets the first result, and if the first run
//! is still going the re-send waits for it instead of starting a second one.

use std::sync::{Arc, Mutex};

use drover_model::TaskResult;
use hashlink::LruCache;
use tokio::sync::OnceCell;

/// The identity of one run of one task.
pub type TaskKey = (String, u32);

/// A bounded LRU of task results (or of runs in progress).
pub struct TaskMemo {
    entries: Mutex<LruCache<TaskKey, Arc<OnceCell<TaskResult>>>>,
}

impl TaskMemo {
    /// Remembers at most `capacity` tasks (at least one).
    pub fn new(capacity: usize) -> Self {
        TaskMemo {
            entries: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    /// The slot of `key`, new and empty if the task was not seen (or was forgotten).
    pub fn slot(&self, key: TaskKey) -> Arc<OnceCell<TaskResult>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = entries.get(&key) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(OnceCell::new());
        entries.insert(key, Arc::clone(&slot));
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let memo = TaskMemo::new(2);
        let a = memo.slot(("a".into(), 0));
        memo.slot(("b".into(), 0));
        assert!(Arc::ptr_eq(&a, &memo.slot(("a".into(), 0))));
        memo.slot(("c".into(), 0)); // evicts b, the least recently used
        assert!(Arc::ptr_eq(&a, &memo.slot(("a".into(), 0))));
        let b_again = memo.slot(("b".into(), 0));
        assert!(b_again.get().is_none());
        assert!(!Arc::ptr_eq(&memo.slot(("a".into(), 1)), &a));
    }
}
