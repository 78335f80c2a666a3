//! Threshold-based auto-scaling: scale a group out when a metric's group average stays above a
//! threshold for a while, then wait out a cooldown before deciding again (Cloudify's
//! `threshold` policy type with a scale trigger). Pure: time and values are arguments.

use std::time::{Duration, Instant};

/// One group's rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    /// The scaling group (the blueprint's `groups`) to scale.
    pub group: String,
    /// The value above which the group is overloaded.
    pub threshold: f64,
    /// How long the value must stay above the threshold: a spike does not scale.
    pub sustained: Duration,
    /// After a decision, how long before the next: the new instances need time to take load.
    pub cooldown: Duration,
    /// Instances added per decision.
    pub delta: u32,
}

/// A decision to scale `group` by `delta` instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleDecision {
    pub group: String,
    pub delta: u32,
}

/// What a [`ScalePolicy`] remembers between observations.
#[derive(Debug, Clone, Default)]
pub struct ScaleState {
    above_since: Option<Instant>,
    last_decision: Option<Instant>,
}

impl ScalePolicy {
    /// The group's average `value` at `now`: a decision when it has been above the threshold
    /// for `sustained` and the cooldown since the last decision has passed.
    pub fn observe(
        &self,
        state: &mut ScaleState,
        value: f64,
        now: Instant,
    ) -> Option<ScaleDecision> {
        if value.is_nan() || value <= self.threshold {
            state.above_since = None;
            return None;
        }
        let since = *state.above_since.get_or_insert(now);
        let cooling = state
            .last_decision
            .is_some_and(|last| now.saturating_duration_since(last) < self.cooldown);
        if cooling || now.saturating_duration_since(since) < self.sustained {
            return None;
        }
        state.last_decision = Some(now);
        // The load must build up again (or stay up) for a full period before the next one.
        state.above_since = None;
        Some(ScaleDecision {
            group: self.group.clone(),
            delta: self.delta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalePolicy {
        ScalePolicy {
            group: "web".into(),
            threshold: 0.8,
            sustained: Duration::from_secs(30),
            cooldown: Duration::from_secs(120),
            delta: 2,
        }
    }

    /// Feeds `value(t)` every second for `seconds`; the seconds at which it decided.
    fn decisions(value: impl Fn(u64) -> f64, seconds: u64) -> Vec<u64> {
        let policy = policy();
        let mut state = ScaleState::default();
        let start = Instant::now();
        (0..seconds)
            .filter(|&t| {
                let now = start + Duration::from_secs(t);
                policy.observe(&mut state, value(t), now).is_some()
            })
            .collect()
    }

    #[test]
    fn sustained_load_scales_once_then_waits_out_the_cooldown() {
        assert_eq!(decisions(|_| 0.95, 200), [30, 150]);
    }

    #[test]
    fn spikes_shorter_than_the_period_never_scale() {
        // 20 s above, 5 s below, over and over.
        assert!(decisions(|t| if t % 25 < 20 { 0.95 } else { 0.5 }, 300).is_empty());
    }

    #[test]
    fn at_the_threshold_or_unknown_is_not_above() {
        assert!(decisions(|_| 0.8, 100).is_empty());
        assert!(decisions(|_| f64::NAN, 100).is_empty());
    }

    #[test]
    fn a_decision_names_the_group_and_delta() {
        let policy = policy();
        let mut state = ScaleState::default();
        let start = Instant::now();
        assert_eq!(policy.observe(&mut state, 0.9, start), None);
        assert_eq!(
            policy.observe(&mut state, 0.9, start + Duration::from_secs(31)),
            Some(ScaleDecision {
                group: "web".into(),
                delta: 2
            })
        );
    }
}
