//! [`Tracker`]: every agent a replica hears from, its failure detector, and the decision that an
//! agent has failed or recovered.
//!
//! A detector only sees one agent. Two things make many agents look dead at once without any of
//! them being so, and the tracker guards against both before it confirms a failure:
//!
//! - **The monitor itself stalls** (a pause of its process, a starved CPU): heartbeats wait in
//!   the shard queue unread while the clock runs. A check that comes much later than scheduled
//!   starts a grace period as long as the stall, in which nothing is confirmed, so the consumers
//!   can drain what queued meanwhile.
//! - **The broker or a shard hiccups**: every agent of the shard goes silent together. When more
//!   than [`TrackerConfig::mass_fraction`] of a shard's agents are suspected at once, the
//!   suspicions are held for up to [`TrackerConfig::mass_hold`]; if they are still there after
//!   that, they are real (a rack lost) and confirmed.
//!
//! Pure: time is an argument, so the tests drive it with synthetic times.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use drover_model::Heartbeat;

use crate::phi::{PhiConfig, PhiDetector};

/// How the tracker turns suspicions into failures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    pub phi: PhiConfig,
    /// A check this much later than the previous one means the monitor stalled.
    pub stall: Duration,
    /// The share of a shard's live agents suspected together above which the shard, not the
    /// agents, is taken to be the problem. 0.5: a shard holds a hash-spread sample of agents,
    /// so half of them failing together is not a pattern of independent failures.
    pub mass_fraction: f64,
    /// Shards with fewer live agents than this are never held (one dead agent of two is half).
    pub mass_min_agents: usize,
    /// How long a mass suspicion is held before it is believed.
    pub mass_hold: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            phi: PhiConfig::default(),
            stall: Duration::from_millis(250),
            mass_fraction: 0.5,
            mass_min_agents: 8,
            mass_hold: Duration::from_secs(5),
        }
    }
}

/// Whether an agent is taken to be alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Alive,
    /// Confirmed failed at this time; it recovers with its next heartbeat.
    Failed {
        since: Instant,
    },
}

/// What changed for an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A confirmed failure: `silent` is how long its last heartbeat was ago (the detection
    /// latency measured from the last sign of life).
    Failed {
        agent: String,
        serves: Serves,
        shard: u32,
        silent: Duration,
        phi: f64,
    },
    /// A failed agent heartbeats again after being failed for `down`.
    Recovered {
        agent: String,
        serves: Serves,
        shard: u32,
        down: Duration,
    },
}

/// What an agent's heartbeats say it serves; empty strings where the agent did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Serves {
    pub deployment_id: String,
    pub node_instance_id: String,
}

/// An agent as [`Tracker::agents`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    pub name: String,
    pub shard: u32,
    pub state: AgentState,
    pub phi: f64,
    pub silent: Duration,
    pub heartbeats: u64,
}

/// One shard during a check: its live agents, and the suspected ones with their phi.
type ShardCheck<'a> = (usize, Vec<(&'a str, f64)>);

struct Agent {
    shard: u32,
    serves: Serves,
    /// The metrics of its latest heartbeat.
    metrics: BTreeMap<String, f64>,
    detector: PhiDetector,
    state: AgentState,
    heartbeats: u64,
}

/// The agents one replica tracks.
pub struct Tracker {
    config: TrackerConfig,
    agents: HashMap<String, Agent>,
    last_check: Option<Instant>,
    grace_until: Option<Instant>,
    /// Per shard, since when a mass suspicion has been held.
    mass_since: BTreeMap<u32, Instant>,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            agents: HashMap::new(),
            last_check: None,
            grace_until: None,
            mass_since: BTreeMap::new(),
        }
    }

    /// `beat` arrived at `now` from `shard`. A failed agent recovers, with a fresh detector:
    /// the outage says nothing about its normal pace.
    pub fn heartbeat(&mut self, beat: Heartbeat, shard: u32, now: Instant) -> Option<Transition> {
        let phi = self.config.phi;
        // Looked up before inserting: the name is only copied for an agent heard of first.
        let entry = match self.agents.get_mut(&beat.agent) {
            Some(entry) => entry,
            None => self.agents.entry(beat.agent.clone()).or_insert(Agent {
                shard,
                serves: Serves::default(),
                metrics: BTreeMap::new(),
                detector: PhiDetector::new(phi),
                state: AgentState::Alive,
                heartbeats: 0,
            }),
        };
        entry.shard = shard;
        entry.heartbeats += 1;
        if entry.serves.deployment_id != beat.deployment_id {
            entry.serves.deployment_id = beat.deployment_id;
        }
        if entry.serves.node_instance_id != beat.node_instance_id {
            entry.serves.node_instance_id = beat.node_instance_id;
        }
        entry.metrics = beat.metrics;
        let recovered = match entry.state {
            AgentState::Failed { since } => {
                entry.detector = PhiDetector::new(phi);
                entry.state = AgentState::Alive;
                Some(Transition::Recovered {
                    agent: beat.agent,
                    serves: entry.serves.clone(),
                    shard,
                    down: now.saturating_duration_since(since),
                })
            }
            AgentState::Alive => None,
        };
        entry.detector.heartbeat(now);
        recovered
    }

    /// Judges every live agent at `now`; returns the failures confirmed by this check.
    pub fn check(&mut self, now: Instant) -> Vec<Transition> {
        if let Some(last) = self.last_check.replace(now) {
            let gap = now.saturating_duration_since(last);
            if gap > self.config.stall {
                tracing::warn!(?gap, "monitor stalled: confirming no failure for as long");
                self.grace_until = Some(now + gap);
            }
        }
        if self.grace_until.is_some_and(|until| now < until) {
            return Vec::new();
        }

        // Per shard: live agents, and the suspected ones with their phi.
        let mut shards: BTreeMap<u32, ShardCheck<'_>> = BTreeMap::new();
        for (name, agent) in &self.agents {
            if agent.state != AgentState::Alive {
                continue;
            }
            let shard = shards.entry(agent.shard).or_default();
            shard.0 += 1;
            let phi = agent.detector.phi(now);
            if phi >= self.config.phi.threshold {
                shard.1.push((name, phi));
            }
        }

        let mut confirmed = Vec::new();
        for (shard, (alive, suspected)) in shards {
            let mass = alive >= self.config.mass_min_agents
                && suspected.len() as f64 > alive as f64 * self.config.mass_fraction;
            if !mass {
                self.mass_since.remove(&shard);
            } else {
                let since = *self.mass_since.entry(shard).or_insert(now);
                if now.saturating_duration_since(since) < self.config.mass_hold {
                    continue;
                }
                tracing::warn!(
                    shard,
                    suspected = suspected.len(),
                    alive,
                    "mass suspicion held too long: confirming it"
                );
            }
            for (name, phi) in suspected {
                confirmed.push((name.to_owned(), shard, phi));
            }
        }

        confirmed
            .into_iter()
            .filter_map(|(name, shard, phi)| {
                let agent = self.agents.get_mut(&name)?;
                let silent = agent
                    .detector
                    .last_arrival()
                    .map(|last| now.saturating_duration_since(last))
                    .unwrap_or_default();
                agent.state = AgentState::Failed { since: now };
                Some(Transition::Failed {
                    agent: name,
                    serves: agent.serves.clone(),
                    shard,
                    silent,
                    phi,
                })
            })
            .collect()
    }

    /// Forgets the agents of a shard this replica no longer consumes: their heartbeats now go
    /// to another replica, and their silence here means nothing.
    pub fn release_shard(&mut self, shard: u32) {
        self.agents.retain(|_, agent| agent.shard != shard);
        self.mass_since.remove(&shard);
    }

    /// Every tracked agent, by name.
    pub fn agents(&self, now: Instant) -> Vec<AgentView> {
        let mut agents: Vec<AgentView> = self
            .agents
            .iter()
            .map(|(name, agent)| AgentView {
                name: name.clone(),
                shard: agent.shard,
                state: agent.state,
                phi: agent.detector.phi(now),
                silent: agent
                    .detector
                    .last_arrival()
                    .map(|last| now.saturating_duration_since(last))
                    .unwrap_or_default(),
                heartbeats: agent.heartbeats,
            })
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        agents
    }

    /// The live agents: what each serves and the metrics of its latest heartbeat.
    pub fn live_metrics(&self) -> impl Iterator<Item = (&Serves, &BTreeMap<String, f64>)> {
        self.agents
            .values()
            .filter(|a| a.state == AgentState::Alive)
            .map(|a| (&a.serves, &a.metrics))
    }

    /// How many agents are alive and how many failed.
    pub fn counts(&self) -> (usize, usize) {
        let alive = self
            .agents
            .values()
            .filter(|a| a.state == AgentState::Alive)
            .count();
        (alive, self.agents.len() - alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_millis(200);
    const TICK: Duration = Duration::from_millis(20);

    fn beat(agent: &str) -> Heartbeat {
        Heartbeat {
            agent: agent.into(),
            deployment_id: "d1".into(),
            node_instance_id: format!("host_{agent}"),
            ..Heartbeat::default()
        }
    }

    fn names(transitions: &[Transition]) -> Vec<String> {
        let mut names: Vec<String> = transitions
            .iter()
            .map(|t| match t {
                Transition::Failed { agent, .. } | Transition::Recovered { agent, .. } => {
                    agent.clone()
                }
            })
            .collect();
        names.sort();
        names
    }

    /// Runs `agents` agents on `shards` shards from `start` until `until`, checking every tick;
    /// an agent beats unless `silent(agent, time)` says it is silent then. Returns every
    /// transition with when it happened.
    fn run(
        tracker: &mut Tracker,
        agents: usize,
        start: Instant,
        until: Duration,
        silent: impl Fn(usize, Duration) -> bool,
    ) -> Vec<(Duration, Transition)> {
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        while t <= until {
            if t.as_millis().is_multiple_of(BEAT.as_millis()) {
                for a in 0..agents {
                    if !silent(a, t) {
                        let shard = (a % 4) as u32;
                        if let Some(tr) =
                            tracker.heartbeat(beat(&format!("a{a}")), shard, start + t)
                        {
                            out.push((t, tr));
                        }
                    }
                }
            }
            out.extend(tracker.check(start + t).into_iter().map(|tr| (t, tr)));
            t += TICK;
        }
        out
    }

    #[test]
    fn a_dead_agent_fails_once_within_a_second_and_recovers_when_it_beats_again() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let start = Instant::now();
        let dead =
            |a, t: Duration| a == 3 && t >= Duration::from_secs(10) && t < Duration::from_secs(20);
        let seen = run(&mut tracker, 40, start, Duration::from_secs(25), dead);
        assert_eq!(seen.len(), 2, "{seen:?}");
        let (at, ref failed) = seen[0];
        let serves = Serves {
            deployment_id: "d1".into(),
            node_instance_id: "host_a3".into(),
        };
        assert!(
            matches!(failed, Transition::Failed { agent, serves: s, .. } if agent == "a3" && *s == serves),
            "{failed:?}"
        );
        // Its last beat was at 9.8 s; detected within a second of death.
        assert!(
            at > Duration::from_secs(10) && at < Duration::from_secs(11),
            "{at:?}"
        );
        let (at, ref recovered) = seen[1];
        assert!(matches!(recovered, Transition::Recovered { agent, .. } if agent == "a3"));
        assert_eq!(at, Duration::from_secs(20));
        assert_eq!(tracker.counts(), (40, 0));
    }

    #[test]
    fn a_shard_going_silent_briefly_is_held_not_failed() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let start = Instant::now();
        // Shard 1 (a1, a5, …) hears nothing for 2 s: a broker hiccup.
        let hiccup = |a: usize, t: Duration| {
            a % 4 == 1 && t >= Duration::from_secs(10) && t < Duration::from_secs(12)
        };
        let seen = run(&mut tracker, 80, start, Duration::from_secs(20), hiccup);
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn a_mass_failure_that_lasts_is_confirmed_after_the_hold() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let start = Instant::now();
        let gone = |a: usize, t: Duration| a % 4 == 1 && t >= Duration::from_secs(10);
        let seen = run(&mut tracker, 80, start, Duration::from_secs(20), gone);
        assert_eq!(seen.len(), 20, "{seen:?}");
        for (at, _) in &seen {
            assert!(
                *at > Duration::from_secs(15) && *at < Duration::from_secs(17),
                "{at:?}"
            );
        }
    }

    #[test]
    fn a_stalled_monitor_confirms_nothing_until_it_caught_up() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let start = Instant::now();
        run(&mut tracker, 20, start, Duration::from_secs(5), |_, _| {
            false
        });
        // The monitor sleeps 3 s; then the queued beats are read and a check follows.
        let woke = start + Duration::from_secs(8);
        assert!(tracker.check(woke).is_empty());
        for a in 0..20 {
            tracker.heartbeat(beat(&format!("a{a}")), (a % 4) as u32, woke + TICK);
        }
        assert!(tracker.check(woke + TICK * 2).is_empty());
        assert_eq!(tracker.counts(), (20, 0));
    }

    #[test]
    fn releasing_a_shard_forgets_its_agents() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let start = Instant::now();
        run(&mut tracker, 8, start, Duration::from_secs(2), |_, _| false);
        tracker.release_shard(2);
        let left: Vec<String> = tracker.agents(start).into_iter().map(|a| a.name).collect();
        assert_eq!(left, ["a0", "a1", "a3", "a4", "a5", "a7"]);
        // Everyone falls silent: only the agents still tracked fail.
        let later = start + Duration::from_secs(2);
        let seen = run(&mut tracker, 8, later, Duration::from_secs(3), |_, _| true);
        let failed: Vec<Transition> = seen.into_iter().map(|(_, t)| t).collect();
        assert_eq!(names(&failed), left);
    }
}
